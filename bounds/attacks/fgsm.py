"""The fast gradient sign method (Goodfellow et al. 2015)."""

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
    input_gradient,
    per_example,
    summed_cross_entropy,
)


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: Tensor | float,
    *,
    loss_fn: LossFn | None = None,
    input_range: tuple[float, float] | None = (-1.0, 1.0),
    box: Box | None = None,
    mask: Mask | None = None,
    targeted: bool = False,
) -> AttackResult:
    """Fast gradient sign method (Goodfellow et al. 2015): ``x' = Clip(x + eps * sign(grad_x loss(x, y)))``.

    The clip covers the input range, the optional box ``[x - eps_lower, x + eps_upper]`` and the masks
    (Amoeba Algorithm 2's ``FGSM^a`` / ``FGSM^s``). The model runs in eval mode, restored afterwards.

    Args:
        model: Classifier mapping ``x`` to logits.
        x: Clean inputs ``[B, ...]``.
        y: Labels ``[B]`` (targets when ``targeted``).
        eps: l_inf step (float or ``[B]`` tensor).
        loss_fn: ``loss_fn(logits, y) -> scalar`` summed over the batch; default cross-entropy.
        input_range: ``(low, high)`` of valid inputs, ``None`` for unbounded.
        box: Optional ``(eps_lower, eps_upper)`` per-pixel radii.
        mask: Optional mask or ``(positive_mask, negative_mask)`` pair.
        targeted: Descend the loss towards ``y`` instead of ascending it.

    Returns:
        An :class:`AttackResult` with one step.

    Raises:
        ValueError: On malformed shapes or a negative ``eps``.
    """
    check_inputs(x, y)
    loss_fn = summed_cross_entropy if loss_fn is None else loss_fn
    with attack_mode(model):
        x = x.detach().clone()
        y = y.detach().clone()
        eps_t = per_example(eps, x)
        low, high = feasible_interval(x, eps=eps_t, input_range=input_range, box=box, mask=mask)
        grad = input_gradient(model, loss_fn, x.clone(), y)
        with torch.no_grad():
            direction = -grad.sign() if targeted else grad.sign()
            x_adv = torch.clamp(x + eps_t * direction, low, high)
            step = (x_adv - x).unsqueeze(0)
        success = final_success(model, x_adv, y, targeted)
    return AttackResult(adversarial=x_adv, steps=step, success=success)
