"""The basic iterative method (Kurakin et al. 2016): iterated FGSM clipped to the l_inf ball."""

from torch import Tensor, nn

from bounds.attacks.common import AttackResult, Box, LossFn, Mask
from bounds.attacks.pgd import pgd


def bim(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: Tensor | float,
    step_size: Tensor | float,
    steps: int,
    loss_fn: LossFn | None = None,
    input_range: tuple[float, float] | None = (-1.0, 1.0),
    box: Box | None = None,
    mask: Mask | None = None,
    targeted: bool = False,
    record_steps: bool = True,
) -> AttackResult:
    """Basic iterative method (Kurakin et al. 2016, "Adversarial examples in the physical world").

    ``x_{t+1} = Clip_{x, eps}(x_t + step_size * sign(grad_x loss(x_t, y)))`` from ``x_0 = x``: l_inf PGD
    without a random start. Clipping also covers the input range, the optional box and the masks.

    Args:
        model: Classifier mapping ``x`` to logits.
        x: Clean inputs ``[B, ...]``.
        y: Labels ``[B]`` (targets when ``targeted``).
        eps: l_inf radius (float or ``[B]`` tensor).
        step_size: Per-step change ``alpha`` (float or ``[B]`` tensor).
        steps: Number of iterations.
        loss_fn: ``loss_fn(logits, y) -> scalar`` summed over the batch; default cross-entropy.
        input_range: ``(low, high)`` of valid inputs, ``None`` for unbounded.
        box: Optional ``(eps_lower, eps_upper)`` per-pixel radii.
        mask: Optional mask or ``(positive_mask, negative_mask)`` pair.
        targeted: Move towards ``y`` instead of away from it.
        record_steps: Keep the per-step increments.

    Returns:
        An :class:`AttackResult` with ``steps`` of shape ``[steps, B, ...]``.
    """
    return pgd(
        model,
        x,
        y,
        norm="linf",
        eps=eps,
        step_size=step_size,
        steps=steps,
        random_start=False,
        loss_fn=loss_fn,
        input_range=input_range,
        box=box,
        mask=mask,
        targeted=targeted,
        record_steps=record_steps,
    )
