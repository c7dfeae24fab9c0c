"""Projected gradient descent (Madry et al. 2018) in the l_inf and l_2 norms."""

from typing import Literal

import torch
from torch import Tensor, nn

from bounds.attacks.common import (
    AttackResult,
    Box,
    LossFn,
    Mask,
    attack_mode,
    check_inputs,
    feasible_interval,
    final_success,
    flat_norm,
    input_gradient,
    per_example,
    summed_cross_entropy,
)

_TINY = 1e-12


def _random_start(x: Tensor, eps: Tensor, norm: str, generator: torch.Generator | None) -> Tensor:
    """A uniform random point of the l_inf cube, or of the l_2 ball, of radius ``eps`` around ``x``."""
    if norm == "linf":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + (2 * noise - 1) * eps
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    direction = direction / (flat_norm(direction, 2) + _TINY)
    dims = x[0].numel()
    radius = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype)
    return x + direction * eps * radius ** (1.0 / dims)


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: Literal["linf", "l2"] = "linf",
    eps: Tensor | float,
    step_size: Tensor | float,
    steps: int,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
    input_range: tuple[float, float] | None = (-1.0, 1.0),
    box: Box | None = None,
    mask: Mask | None = None,
    targeted: bool = False,
    record_steps: bool = True,
) -> AttackResult:
    """Projected gradient descent (Madry et al. 2018), batched and stateless.

    Each step ascends the loss (descends it when ``targeted``): ``x <- Proj(x + step_size * d)`` with
    ``d = sign(grad)`` for ``linf`` and ``d = grad / ||grad||_2`` for ``l2``. The projection is onto the
    ``eps`` ball around the clean ``x`` (for ``l2`` the ball projection comes first), then a clamp onto the
    input range, the optional box ``[x - eps_lower, x + eps_upper]`` and the masks (Amoeba Algorithm 2).
    For ``l2`` the gradient components that point out of that per-pixel interval are dropped before the
    normalisation, so the step budget goes to the pixels that can still move (this is what makes a masked
    l_2 attack spend its budget on the selected pixels).

    The model runs in eval mode (every submodule's mode is restored afterwards); input gradients come from
    ``torch.autograd.grad`` on the inputs only, so parameter ``.grad`` and ``requires_grad`` flags are
    untouched, and the attack works inside ``torch.no_grad()`` / ``torch.inference_mode()`` callers.

    Args:
        model: Classifier mapping ``x`` to logits ``[B, K]``.
        x: Clean inputs ``[B, ...]``.
        y: Labels ``[B]`` (targets when ``targeted``).
        norm: ``"linf"`` or ``"l2"``.
        eps: Radius of the ball (float, or a ``[B]`` tensor of per-example radii).
        step_size: Step length ``alpha`` (float or ``[B]`` tensor).
        steps: Number of gradient steps.
        random_start: Start from a uniform random point of the ball (recorded as the first row of ``steps``).
        generator: Random generator for the start point (on ``x``'s device).
        loss_fn: ``loss_fn(logits, y) -> scalar`` summed over the batch; default cross-entropy.
        input_range: ``(low, high)`` of valid inputs (clamped), ``None`` for unbounded.
        box: Optional ``(eps_lower, eps_upper)`` per-pixel radii.
        mask: Optional mask or ``(positive_mask, negative_mask)`` pair.
        targeted: Move towards ``y`` instead of away from it.
        record_steps: Keep the per-step increments (set ``False`` in training loops to skip the copies).

    Returns:
        An :class:`AttackResult`; ``num_init_steps`` is 1 with a random start.

    Raises:
        ValueError: On malformed shapes or radii, an unknown norm, or a negative number of steps.
    """
    check_inputs(x, y)
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    loss_fn = summed_cross_entropy if loss_fn is None else loss_fn
    with attack_mode(model):
        x = x.detach().clone()
        y = y.detach().clone()
        eps_t = per_example(eps, x)
        alpha = per_example(step_size, x)
        if bool((eps_t < 0).any()) or bool((alpha < 0).any()):
            raise ValueError(f"eps and step_size must be >= 0, got eps={eps}, step_size={step_size}")
        low, high = feasible_interval(
            x, eps=eps_t if norm == "linf" else None, input_range=input_range, box=box, mask=mask
        )
        num_init = 1 if random_start else 0
        total = steps + num_init if record_steps else 0
        increments = x.new_empty((total,) + tuple(x.shape))
        x_adv = x.clone()
        with torch.no_grad():
            if random_start:
                start = _random_start(x, eps_t, norm, generator)
                x_adv = torch.clamp(start, low, high)
                if record_steps:
                    increments[0] = x_adv - x
        for t in range(steps):
            grad = input_gradient(model, loss_fn, x_adv, y)
            with torch.no_grad():
                if targeted:
                    grad = grad.neg_()
                if norm == "linf":
                    x_new = x_adv.detach() + alpha * grad.sign()
                else:
                    blocked = ((grad > 0) & (x_adv >= high)) | ((grad < 0) & (x_adv <= low))
                    grad = grad.masked_fill_(blocked, 0.0)
                    x_new = x_adv.detach() + alpha * grad / (flat_norm(grad, 2) + _TINY)
                    delta = x_new - x
                    delta = delta * torch.clamp(eps_t / (flat_norm(delta, 2) + _TINY), max=1.0)
                    x_new = x + delta
                x_new = torch.clamp(x_new, low, high)
                if record_steps:
                    torch.sub(x_new, x_adv, out=increments[num_init + t])
            x_adv = x_new
        x_adv = x_adv.detach()
        success = final_success(model, x_adv, y, targeted)
    return AttackResult(adversarial=x_adv, steps=increments, success=success, num_init_steps=num_init)


_SEED_STRIDE = 1_000_003  # example seeds seed * stride + index never collide for indices below it


def per_example_pgd(model: nn.Module, x: Tensor, y: Tensor, index: Tensor, *, eps: float, step_size: float,
                    steps: int, seed: int, input_range: tuple[float, float] | None) -> AttackResult:
    """l_inf PGD whose random start depends only on ``(seed, index)`` of each example, not on the batch.

    :func:`bounds.attacks.pgd` draws the start of a whole batch from one generator, so an example's start would
    depend on which examples share its batch (and so on the number of DDP ranks). Here each example's start
    ``x + (2u - 1) eps`` (clamped to the input range) comes from its own generator; PGD then runs from it
    without a random start, constrained by ``box`` to the original ``[x - eps, x + eps]`` (its own ball of
    radius ``2 eps`` around the start contains that cube). The iterates are those of PGD with that start; the
    start is returned as the first, non-attack step (``num_init_steps = 1``), as :func:`bounds.attacks.pgd` does.
    """
    noise = torch.stack([
        torch.rand(x.shape[1:], generator=torch.Generator().manual_seed(seed * _SEED_STRIDE + int(i)))
        for i in index.tolist()
    ]).to(device=x.device, dtype=x.dtype)
    start = x + (2 * noise - 1) * eps
    if input_range is not None:
        start = start.clamp(*input_range)
    box = ((start - (x - eps)).clamp(min=0), ((x + eps) - start).clamp(min=0))
    result = pgd(model, start, y, eps=2 * eps, step_size=step_size, steps=steps, random_start=False,
                 input_range=input_range, box=box)
    steps_taken = torch.cat([(start - x).unsqueeze(0), result.steps])
    return AttackResult(adversarial=result.adversarial, steps=steps_taken, success=result.success, num_init_steps=1)
