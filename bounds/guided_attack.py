"""Bound-guided attacks (Amoeba Section 5.1, Algorithm 2) and the distances of Amoeba Table 4."""

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bounds.attacks.common import AttackResult, Mask, predictions_succeed
from bounds.certificate import Certificate
from bounds.modes import evaluation_mode

GuidableAttack = Callable[..., AttackResult]
"""``attack(model, x, y, *, mask=...) -> AttackResult``, e.g. ``functools.partial(pgd, eps=..., ...)``."""


def _smallest_proportion(radii: Tensor, p: float) -> Tensor:
    """Bool mask of the ``ceil(p * n)`` smallest entries of each example (ties broken by position)."""
    flat = radii.flatten(1)
    count = min(math.ceil(p * flat.shape[1] - 1e-9), flat.shape[1])
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if count > 0:
        # A stable sort keeps ties (e.g. the zero radii of uncertified examples) in pixel order.
        order = torch.sort(flat, dim=1, stable=True).indices[:, :count]
        mask.scatter_(1, order, True)
    return mask.view_as(radii)


def guided_masks(certificate: Certificate, p: float) -> Mask:
    """Masks selecting the proportion ``p`` of pixels with the smallest certified radii (Algorithm 2, line 4).

    Args:
        certificate: Radii of the batch to attack.
        p: Proportion of pixels in ``[0, 1]``; each mask selects ``ceil(p * n)`` of the ``n`` pixels.

    Returns:
        For an ``"asymmetric"`` (Amoeba) certificate the pair ``(positive_mask, negative_mask)``: the pixels
        with the smallest ``eps_upper`` may increase and those with the smallest ``eps_lower`` may decrease
        (attack ``A^a``). For the symmetric kinds one mask from ``eps_lower == eps_upper`` (attack ``A^s``).

    Raises:
        ValueError: If ``p`` is outside ``[0, 1]``.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if certificate.kind == "asymmetric":
        return _smallest_proportion(certificate.eps_upper, p), _smallest_proportion(certificate.eps_lower, p)
    return _smallest_proportion(certificate.eps_lower, p)


def apply_masks(x: Tensor, x_attacked: Tensor, mask: Mask) -> Tensor:
    """Algorithm 2, line 5: ``X + M_1 * [A(X) - X]_+ + M_2 * [A(X) - X]_-`` (one mask: ``X + M * (A(X) - X)``).

    Args:
        x: Inputs the attack started from.
        x_attacked: The attack's output ``A(X, y)``.
        mask: One mask or ``(positive_mask, negative_mask)``.

    Returns:
        The masked adversarial inputs; for an attack that already honoured the mask this equals ``x_attacked``.
    """
    delta = x_attacked - x
    if isinstance(mask, tuple):
        positive, negative = mask
        return x + torch.where(positive, delta.clamp(min=0), 0.0) + torch.where(negative, delta.clamp(max=0), 0.0)
    return x + torch.where(mask, delta, 0.0)


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    with evaluation_mode(model), torch.inference_mode(False), torch.no_grad():
        return model(x)


def _select(mask: Mask, index: Tensor) -> Mask:
    if isinstance(mask, tuple):
        return mask[0][index], mask[1][index]
    return mask[index]


def guided_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    certificate: Certificate,
    attack: GuidableAttack,
    *,
    p_start: float = 0.1,
    p_step: float = 0.1,
    p_max: float = 1.0,
    targeted: bool = False,
) -> tuple[AttackResult, Tensor]:
    """Amoeba Algorithm 2 (modeling stronger adversarial threats): attack only the least robust pixels.

    Round ``r`` uses ``p = min(p_start + r * p_step, p_max)``, builds :func:`guided_masks` from the
    certificate, runs ``attack(model, x, y, mask=masks)`` on the examples not yet fooled, and applies line 5
    (:func:`apply_masks`) to its output, so any attack is restricted to the masks even if it ignored them.
    An example stops at the first ``p`` whose attack succeeds ("until successful attack"); examples that
    are never fooled keep the result of ``p_max``.

    Deviation from the pseudo code: every round restarts the attack from the clean ``x`` with the larger
    mask instead of from the previous round's ``X_adv`` (line 3), so an attack's budget (e.g. ``eps``)
    stays relative to the clean input, matching the l_inf column of Amoeba Table 4.

    Args:
        model: Classifier mapping ``x`` to logits.
        x: Clean inputs ``[B, ...]``.
        y: Labels ``[B]`` (targets when ``targeted``); usually ``certificate.labels``.
        certificate: Certified radii of ``x`` (Amoeba for ``A^a``, non-uniform for ``A^s``).
        attack: A callable ``attack(model, x, y, *, mask) -> AttackResult`` with its other options bound.
        p_start: First proportion of pixels.
        p_step: Increase of the proportion per round (``> 0``).
        p_max: Last proportion (``<= 1``).
        targeted: Success means predicting ``y`` rather than leaving it.

    Returns:
        ``(result, p_used)``: the combined :class:`AttackResult` (``steps`` of each example from the round
        that produced it, its last row adjusted so ``steps`` still sums to ``adversarial - x``) and the ``p``
        of each example's final round ``[B]``.

    Raises:
        ValueError: On inconsistent shapes or proportions.
    """
    if certificate.eps_lower.shape != x.shape:
        raise ValueError(f"certificate radii {tuple(certificate.eps_lower.shape)} do not match x {tuple(x.shape)}")
    if not (0.0 <= p_start <= p_max <= 1.0) or p_step <= 0:
        raise ValueError(f"need 0 <= p_start <= p_max <= 1 and p_step > 0, got {p_start}, {p_max}, {p_step}")
    x = x.detach()
    adversarial = x.clone()
    success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    p_used = torch.full((x.shape[0],), float("nan"), dtype=torch.float64, device=x.device)
    steps: Tensor | None = None
    num_init = 0
    rounds = math.floor((p_max - p_start) / p_step + 1e-9) + 1
    proportions = [min(p_start + r * p_step, p_max) for r in range(rounds)]
    if proportions[-1] < p_max:
        proportions.append(p_max)
    for p in proportions:
        pending = (~success).nonzero().squeeze(1)
        if pending.numel() == 0:
            break
        masks = _select(guided_masks(certificate, p), pending)
        x_pending = x[pending]
        result = attack(model, x_pending, y[pending], mask=masks)
        masked = apply_masks(x_pending, result.adversarial, masks)
        round_steps = result.steps.clone()
        if round_steps.shape[0] > 0:
            round_steps[-1] += masked - result.adversarial
        else:
            round_steps = (masked - x_pending).unsqueeze(0)
        if steps is None or steps.shape[0] != round_steps.shape[0]:
            if steps is not None:
                raise ValueError("the attack returned a different number of steps in different rounds")
            steps = x.new_zeros((round_steps.shape[0],) + tuple(x.shape))
            num_init = result.num_init_steps
        succeeded = predictions_succeed(_logits(model, masked), y[pending], targeted)
        adversarial[pending] = masked
        steps[:, pending] = round_steps
        success[pending] = succeeded
        p_used[pending] = p
    assert steps is not None
    return AttackResult(adversarial=adversarial, steps=steps, success=success, num_init_steps=num_init), p_used


def perturbation_distances(x: Tensor, x_adv: Tensor) -> dict[str, Tensor]:
    """Per-example distances between clean and adversarial inputs (the columns of Amoeba Table 4).

    Args:
        x: Clean inputs ``[B, ...]``.
        x_adv: Adversarial inputs, same shape.

    Returns:
        ``{"l_inf", "l_0", "l_2", "l_1"}``, each a ``[B]`` tensor; ``l_0`` counts the pixels that changed at all.

    Raises:
        ValueError: If the shapes differ.
    """
    if x.shape != x_adv.shape:
        raise ValueError(f"x {tuple(x.shape)} and x_adv {tuple(x_adv.shape)} must have the same shape")
    delta = (x_adv - x).flatten(1)
    return {
        "l_inf": delta.abs().amax(dim=1),
        "l_0": (delta != 0).sum(dim=1).to(x.dtype),
        "l_2": torch.linalg.vector_norm(delta, ord=2, dim=1),
        "l_1": delta.abs().sum(dim=1),
    }
