"""Shared pieces of the attacks: the result type, the loss, masks, and the feasible per-pixel interval.

Every attack in :mod:`bounds.attacks` works on one feasible set per example, built once by
:func:`feasible_interval`: the intersection of the input range, the optional per-pixel box
``[x - eps_lower, x + eps_upper]``, the optional l_inf ball and the optional pixel masks. All of these
are per-pixel intervals, so the l_inf projection is a single ``clamp`` with precomputed tensor bounds.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

from bounds.modes import evaluation_mode
from bounds.validation import validate_labels

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(logits, labels) -> scalar``; must sum over examples so per-example input gradients are independent."""

Mask = Tensor | tuple[Tensor, Tensor]
"""A pixel mask: one tensor (perturb only where true), or ``(positive_mask, negative_mask)``: a pixel may
increase only where ``positive_mask`` is true and decrease only where ``negative_mask`` is true."""

Box = tuple[Tensor | float, Tensor | float]
"""``(eps_lower, eps_upper)``: the attack stays in ``[x - eps_lower, x + eps_upper]``."""


@dataclass(frozen=True)
class AttackResult:
    """The output of every attack.

    Attributes:
        adversarial: The adversarial inputs, shaped like ``x``.
        steps: ``[T, B, ...]`` per-step increments ``x_{t+1} - x_t`` after projection, so that
            ``steps.sum(0) == adversarial - x`` up to float rounding. Empty (``T == 0``) when the
            attack was asked not to record them.
        success: Bool ``[B]``: the final prediction differs from ``y`` (untargeted) or equals it (targeted).
        num_init_steps: How many leading rows of ``steps`` are not moves driven by the loss gradient
            (PGD's random start); ACTS skips them.
    """

    adversarial: Tensor
    steps: Tensor
    success: Tensor
    num_init_steps: int = 0

    @property
    def perturbation(self) -> Tensor:
        """The total perturbation ``steps.sum(0)`` (``adversarial - x`` up to rounding)."""
        return self.steps.sum(0)


def summed_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy summed over the batch (the default attack loss).

    Args:
        logits: ``[B, K]`` logits.
        labels: ``[B]`` class indices.

    Returns:
        A scalar; its gradient with respect to example ``b`` only depends on example ``b``.
    """
    return functional.cross_entropy(logits, labels, reduction="sum")


def check_inputs(x: Tensor, y: Tensor) -> None:
    """Validate a batch of inputs and labels.

    Args:
        x: ``[B, ...]`` inputs.
        y: ``[B]`` integer labels.

    Raises:
        ValueError: On mismatched or malformed shapes, or non-finite inputs (an attack on NaN "succeeds" trivially).
    """
    if x.dim() < 2:
        raise ValueError(f"x must be batched with shape [B, ...], got shape {tuple(x.shape)}")
    validate_labels(y, x.shape[0])
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        raise ValueError(f"x must be finite (found NaN or inf at {int((~finite).sum())} entries)")


def _as_bool(mask: Tensor, x: Tensor, name: str) -> Tensor:
    if mask.dim() > x.dim():
        raise ValueError(f"{name} of shape {tuple(mask.shape)} has more dimensions than x {tuple(x.shape)}")
    try:
        torch.broadcast_shapes(mask.shape, x.shape)
    except RuntimeError as error:
        raise ValueError(f"{name} of shape {tuple(mask.shape)} does not broadcast to x {tuple(x.shape)}") from error
    return mask.to(device=x.device, dtype=torch.bool)


def split_mask(mask: Mask | None, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Turn a mask argument into ``(positive_mask, negative_mask)`` bool tensors (``None``: unrestricted).

    Args:
        mask: ``None``, one mask, or a ``(positive_mask, negative_mask)`` pair.
        x: The input batch the masks must broadcast to.

    Returns:
        Where a pixel may increase, and where it may decrease.

    Raises:
        ValueError: If a mask does not broadcast to ``x``.
    """
    if mask is None:
        return None, None
    if isinstance(mask, tuple):
        if len(mask) != 2:
            raise ValueError(f"A mask pair must be (positive_mask, negative_mask), got {len(mask)} tensors")
        return _as_bool(mask[0], x, "positive_mask"), _as_bool(mask[1], x, "negative_mask")
    single = _as_bool(mask, x, "mask")
    return single, single


def feasible_interval(
    x: Tensor,
    *,
    eps: Tensor | float | None,
    input_range: tuple[float, float] | None,
    box: Box | None,
    mask: Mask | None,
) -> tuple[Tensor, Tensor]:
    """Per-pixel lower and upper limits of the attack's feasible set.

    The set is ``[x - eps, x + eps]`` (l_inf ball, skipped for ``eps=None``) intersected with the input range,
    the box ``[x - eps_lower, x + eps_upper]`` and the masks (a masked-out direction pins its limit to ``x``).

    Args:
        x: Clean inputs ``[B, ...]``.
        eps: l_inf radius (float, or a tensor broadcastable to ``x``, e.g. ``[B, 1, 1, 1]``), or ``None``.
        input_range: ``(low, high)`` of valid inputs, or ``None`` for unbounded.
        box: Optional ``(eps_lower, eps_upper)``, each a float or a tensor broadcastable to ``x``, ``>= 0``.
        mask: Optional mask or mask pair (see :data:`Mask`).

    Returns:
        ``(low, high)`` tensors shaped like ``x`` with ``low <= x <= high`` wherever ``x`` itself is valid.

    Raises:
        ValueError: For a negative radius, an empty input range, or masks that do not broadcast.
    """
    low = torch.full_like(x, -torch.inf)
    high = torch.full_like(x, torch.inf)
    if eps is not None:
        eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
        if bool((eps_t < 0).any()):
            raise ValueError(f"eps must be >= 0, got {eps}")
        low = x - eps_t
        high = x + eps_t
    if box is not None:
        eps_lower = torch.as_tensor(box[0], dtype=x.dtype, device=x.device)
        eps_upper = torch.as_tensor(box[1], dtype=x.dtype, device=x.device)
        if bool((eps_lower < 0).any()) or bool((eps_upper < 0).any()):
            raise ValueError("box radii (eps_lower, eps_upper) must be >= 0")
        low = torch.maximum(low, x - eps_lower)
        high = torch.minimum(high, x + eps_upper)
    if input_range is not None:
        range_low, range_high = float(input_range[0]), float(input_range[1])
        if not range_low < range_high:
            raise ValueError(f"input_range must be (low, high) with low < high, got {input_range}")
        low = low.clamp(min=range_low)
        high = high.clamp(max=range_high)
    positive, negative = split_mask(mask, x)
    if positive is not None:
        high = torch.where(positive, high, torch.minimum(high, x))
    if negative is not None:
        low = torch.where(negative, low, torch.maximum(low, x))
    # An input outside the range would otherwise give low > high; keep such pixels where they are.
    low = torch.minimum(low, x)
    high = torch.maximum(high, x)
    return low, high


def predictions_succeed(logits: Tensor, y: Tensor, targeted: bool) -> Tensor:
    """Attack success per example from final logits.

    Args:
        logits: ``[B, K]`` logits at the adversarial inputs.
        y: ``[B]`` true labels (untargeted) or target labels (targeted).
        targeted: Whether the attack was targeted.

    Returns:
        Bool ``[B]``.
    """
    predicted = logits.argmax(dim=1)
    return predicted == y if targeted else predicted != y


def flat_norm(t: Tensor, p: float) -> Tensor:
    """Per-example ``p``-norm of a batch, shaped ``[B, 1, ..., 1]`` for broadcasting.

    Args:
        t: ``[B, ...]`` tensor.
        p: Norm order (``2``, ``1`` or ``inf``).

    Returns:
        ``[B, 1, ..., 1]`` norms.
    """
    return torch.linalg.vector_norm(t.flatten(1), ord=p, dim=1).view(-1, *([1] * (t.dim() - 1)))


def per_example(value: Tensor | float, x: Tensor) -> Tensor:
    """A radius or step size as a tensor broadcastable to ``x``.

    A 1-D tensor of length ``B`` is read as one value per example and viewed as ``[B, 1, ..., 1]``;
    floats and other tensors are used as given (they must broadcast to ``x``).

    Args:
        value: Float or tensor.
        x: ``[B, ...]`` batch.

    Returns:
        A tensor on ``x``'s device and dtype.

    Raises:
        ValueError: If the value does not broadcast to ``x``.
    """
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if t.dim() == 1 and t.shape[0] == x.shape[0] and x.dim() > 1:
        return t.view(-1, *([1] * (x.dim() - 1)))
    try:
        torch.broadcast_shapes(t.shape, x.shape)
    except RuntimeError as error:
        raise ValueError(f"value of shape {tuple(t.shape)} does not broadcast to x {tuple(x.shape)}") from error
    return t


@contextmanager
def attack_mode(model: nn.Module) -> Iterator[None]:
    """Run an attack with input gradients anywhere: eval mode (restored per submodule), grad on, no inference mode.

    Args:
        model: The attacked model.

    Yields:
        Nothing; the body runs with gradients enabled and every submodule in eval mode.
    """
    with evaluation_mode(model), torch.inference_mode(False), torch.enable_grad():
        yield


def input_gradient(model: nn.Module, loss_fn: LossFn, x_adv: Tensor, y: Tensor) -> Tensor:
    """Gradient of the summed loss with respect to the inputs only (no parameter ``.grad`` is touched).

    Args:
        model: The attacked model.
        loss_fn: ``loss_fn(logits, y) -> scalar``.
        x_adv: Current inputs (a fresh tensor that does not require grad).
        y: Labels.

    Returns:
        ``d loss / d x_adv``.
    """
    x_adv.requires_grad_(True)
    loss = loss_fn(model(x_adv), y)
    (grad,) = torch.autograd.grad(loss, x_adv)
    return grad


def final_success(model: nn.Module, x_adv: Tensor, y: Tensor, targeted: bool) -> Tensor:
    """Evaluate the attack's success at its final point without building a graph.

    Args:
        model: The attacked model (already in eval mode).
        x_adv: Adversarial inputs.
        y: True (untargeted) or target (targeted) labels.
        targeted: Whether the attack was targeted.

    Returns:
        Bool ``[B]``.
    """
    with torch.no_grad():
        return predictions_succeed(model(x_adv), y, targeted)
