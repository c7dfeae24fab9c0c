"""Adversarial Converging Time Score (ACTS, Wang et al. 2023, Section 3.1, Eqs. 1-7).

Choices the paper leaves open, fixed here:

- **Loss** ``D``: per-class cross-entropy ``y_j = D(x)_j = -log softmax(z(x))_j``, so the predicted class
  ``t`` has the lowest loss (Eq. 1). With this loss ``y_j - y_t = z_t - z_j`` and ``s_t - s_j =
  (grad z_j - grad z_t) . u`` (the log-sum-exp term cancels), so ACTS is the distance, in input units along
  the attack's mean unit direction ``u``, at which the linearised logit margin of class ``j`` reaches zero.
- **Norm** ``||dx||``: the l_2 norm of each example's flattened step increment ``x_{q+1} - x_q`` (Eq. 6/7).
  Steps with a zero increment have no direction and are left out of the mean; PGD's random start is not
  an attack move and is left out too.
- **C**: ``1000``. ACTS is measured in l_2 input units, and the l_2 diameter of ``[-1, 1]^M`` is
  ``2 sqrt(M)``, which stays below 1000 for inputs of up to 250,000 values (ImageNet's 3x224x224 has
  150,528), so ``C`` exceeds every finite ACTS of such inputs while keeping averages and histograms finite.
- **Speeds**: by linearity, Eq. 7's average of ``DJM_j(x) . u_q`` over the steps equals ``DJM_j(x) . u``
  with ``u`` the mean unit direction, so one forward-mode Jacobian-vector product (``torch.func.jvp``)
  gives all speeds (and the losses ``y``) at about the cost of one forward-backward pass.
"""

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional

from bounds.attacks.bim import bim
from bounds.attacks.common import AttackResult, LossFn, check_inputs
from bounds.attacks.fgsm import fgsm
from bounds.attacks.pgd import pgd
from bounds.modes import evaluation_mode

DEFAULT_C = 1000.0
"""The score given when no direction can flip the prediction (see the module docstring)."""


def mean_unit_direction(steps: Tensor) -> Tensor:
    """Mean of the per-step unit directions ``dx_q / ||dx_q||_2`` (Eq. 7), skipping zero increments.

    Args:
        steps: ``[T, B, ...]`` per-step increments.

    Returns:
        ``[B, ...]``: the mean unit direction of each example (zero if all its increments are zero).

    Raises:
        ValueError: If ``steps`` has fewer than two dimensions.
    """
    if steps.dim() < 2:
        raise ValueError(f"steps must have shape [T, B, ...], got {tuple(steps.shape)}")
    flat = steps.flatten(2)
    norms = torch.linalg.vector_norm(flat, ord=2, dim=2, keepdim=True)
    moved = norms > 0
    units = torch.where(moved, flat / torch.where(moved, norms, 1.0), 0.0)
    count = moved.sum(dim=0).clamp(min=1).to(steps.dtype)
    return (units.sum(dim=0) / count).view(steps.shape[1:])


def class_losses(logits: Tensor) -> Tensor:
    """The per-class losses ``y_j = -log softmax(z)_j`` (the predicted class has the lowest)."""
    return -functional.log_softmax(logits, dim=1)


def loss_and_speeds(model: nn.Module, x: Tensor, direction: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class losses ``y = D(x)`` and speeds ``s = DJM(x) u`` from one ``torch.func.jvp`` (Eqs. 3-7).

    Args:
        model: Classifier mapping ``x`` to logits (evaluated as is; put it in eval mode first).
        x: ``[B, ...]`` inputs.
        direction: ``[B, ...]`` tangent ``u``.

    Returns:
        ``(y, s)``, each ``[B, K]``.
    """

    def losses(inputs: Tensor) -> Tensor:
        return class_losses(model(inputs))

    return torch.func.jvp(losses, (x,), (direction,))


def acts_from_speeds(losses: Tensor, speeds: Tensor, *, top_k: int = 10, C: float = DEFAULT_C) -> Tensor:
    """Eq. 2: ``min_j f((y_j - y_t) / (s_t - s_j))`` over the ``top_k`` most probable classes ``j != t``.

    ``f(z) = z`` for ``z > 0`` and ``C`` otherwise; a non-positive ``s_t - s_j`` (the attack cannot make class
    ``j`` overtake ``t``) also gives ``C``.

    Args:
        losses: ``[B, K]`` per-class losses, ``t = argmin``.
        speeds: ``[B, K]`` speeds.
        top_k: Number of competing classes (clipped to ``K - 1``).
        C: Score of an example no competing class can reach.

    Returns:
        ``[B]`` scores.

    Raises:
        ValueError: On mismatched shapes, fewer than two classes, or ``top_k < 1``.
    """
    if losses.shape != speeds.shape or losses.dim() != 2:
        raise ValueError(f"losses {tuple(losses.shape)} and speeds {tuple(speeds.shape)} must both be [B, K]")
    num_classes = losses.shape[1]
    if num_classes < 2 or top_k < 1:
        raise ValueError(f"need K >= 2 classes and top_k >= 1, got K={num_classes}, top_k={top_k}")
    k = min(top_k, num_classes - 1)
    order = losses.argsort(dim=1)
    target, others = order[:, :1], order[:, 1 : k + 1]
    gap = losses.gather(1, others) - losses.gather(1, target)
    closing = speeds.gather(1, target) - speeds.gather(1, others)
    time = gap / torch.where(closing > 0, closing, 1.0)
    scores = torch.where((closing > 0) & (time > 0), time, torch.full_like(time, C))
    return scores.amin(dim=1)


def acts_score(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    *,
    attack: Literal["fgsm", "bim", "pgd"] | AttackResult | Tensor = "pgd",
    eps: float | None = None,
    step_size: float | None = None,
    steps: int | None = None,
    top_k: int = 10,
    C: float = DEFAULT_C,
    loss_fn: LossFn | None = None,
    input_range: tuple[float, float] | None = (-1.0, 1.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Adversarial Converging Time Score of each example (ACTS, Eq. 2 with the speeds of Eq. 7).

    Lower scores mean less robust. See the module docstring for the loss, the norm and ``C``.

    Args:
        model: Classifier mapping ``x`` to logits; any ``nn.Module`` (run in eval mode, modes restored).
        x: ``[B, ...]`` clean inputs.
        y: Labels the attack moves away from; default the predicted classes. ACTS itself always uses the
            predicted class ``t`` (Eq. 1).
        attack: ``"fgsm"``, ``"bim"`` or ``"pgd"`` (l_inf, random start) to run with ``eps``/``step_size``/
            ``steps``; or an :class:`AttackResult` of an attack already run on ``x``; or its ``[T, B, ...]``
            steps tensor.
        eps: l_inf radius of the attack to run.
        step_size: Step size of BIM/PGD (default ``eps / 2``, the paper's setting).
        steps: Steps of BIM/PGD (default 3, the paper's setting).
        top_k: Number of most probable competing classes (10 in the paper).
        C: Score when no competing class can be reached.
        loss_fn: Attack loss (default summed cross-entropy).
        input_range: Input range of the attack to run.
        generator: Random generator of PGD's start.

    Returns:
        ``[B]`` ACTS scores.

    Raises:
        ValueError: On malformed inputs, unknown attack names, or missing attack parameters; on an input, attack
            steps or model output that are not finite (NaN or inf), which would otherwise score ``C``.
    """
    if x.dim() < 2:
        raise ValueError(f"x must be batched with shape [B, ...], got shape {tuple(x.shape)}")
    _check_finite(x, "x")
    with evaluation_mode(model), torch.inference_mode(False):
        x = x.detach().clone()
        if isinstance(attack, str):
            increments = _run_attack(model, x, y, attack, eps, step_size, steps, loss_fn, input_range, generator)
        elif isinstance(attack, AttackResult):
            increments = attack.steps[attack.num_init_steps :]
        elif isinstance(attack, Tensor):
            increments = attack
        else:
            raise ValueError(f"attack must be 'fgsm', 'bim', 'pgd', an AttackResult or a steps tensor, got {attack!r}")
        if increments.dim() != x.dim() + 1 or increments.shape[1:] != x.shape:
            raise ValueError(f"attack steps must have shape [T, *{tuple(x.shape)}], got {tuple(increments.shape)}")
        _check_finite(increments, "attack steps")
        direction = mean_unit_direction(increments.detach().to(x.dtype)).clone()
        losses, speeds = loss_and_speeds(model, x, direction)
    # a NaN loss or speed would fail every comparison of Eq. 2 and silently score C, the most robust score
    _check_finite(losses, "the model's per-class losses at x")
    _check_finite(speeds, "the model's speeds at x")
    return acts_from_speeds(losses.detach(), speeds.detach(), top_k=top_k, C=C)


def _check_finite(values: Tensor, name: str) -> None:
    """Raise ``ValueError`` naming ``values`` if it holds NaN or inf."""
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        raise ValueError(f"{name} must be finite (found NaN or inf at {int((~finite).sum())} entries)")


def _run_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None,
    name: str,
    eps: float | None,
    step_size: float | None,
    steps: int | None,
    loss_fn: LossFn | None,
    input_range: tuple[float, float] | None,
    generator: torch.Generator | None,
) -> Tensor:
    if name not in ("fgsm", "bim", "pgd"):
        raise ValueError(f"attack must be 'fgsm', 'bim' or 'pgd', got {name!r}")
    if eps is None:
        raise ValueError(f"attack {name!r} needs eps")
    if y is None:
        with torch.no_grad():
            y = model(x).argmax(dim=1)
    else:
        check_inputs(x, y)
    step_size = eps / 2 if step_size is None else step_size
    steps = 3 if steps is None else steps
    common = {"loss_fn": loss_fn, "input_range": input_range}
    if name == "fgsm":
        result = fgsm(model, x, y, eps, **common)
    elif name == "bim":
        result = bim(model, x, y, eps=eps, step_size=step_size, steps=steps, **common)
    else:
        result = pgd(model, x, y, eps=eps, step_size=step_size, steps=steps, generator=generator, **common)
    return result.steps[result.num_init_steps :]
