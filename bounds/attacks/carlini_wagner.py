"""The Carlini & Wagner l_2 attack (Carlini and Wagner 2017), batched, with a binary search over ``c``."""

import torch
from torch import Tensor, nn

from bounds.attacks.common import (
    AttackResult,
    Box,
    Mask,
    attack_mode,
    check_inputs,
    feasible_interval,
    final_success,
)

_ATANH_LIMIT = 1.0 - 1e-6
_NO_UPPER = 1e10


def _margin(logits: Tensor, y: Tensor, targeted: bool) -> Tensor:
    """``Z_y - max_{j != y} Z_j`` (untargeted) or ``max_{j != y} Z_j - Z_y`` (targeted), per example."""
    own = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], -torch.inf).amax(dim=1)
    return others - own if targeted else own - others


def carlini_wagner_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    kappa: float = 0.0,
    c_init: float = 1e-3,
    search_steps: int = 9,
    max_iterations: int = 1000,
    lr: float = 1e-2,
    abort_early: bool = True,
    input_range: tuple[float, float] | None = (-1.0, 1.0),
    box: Box | None = None,
    mask: Mask | None = None,
    targeted: bool = False,
) -> AttackResult:
    """Carlini & Wagner l_2 attack ("Towards evaluating the robustness of neural networks", 2017).

    Minimises ``||x' - x||_2^2 + c * max(Z_y(x') - max_{j != y} Z_j(x'), -kappa)`` (untargeted; the targeted
    objective swaps the two terms) with Adam in the tanh change of variables
    ``x' = lo + (hi - lo) * (tanh(w) + 1) / 2``, where ``[lo, hi]`` is the per-pixel feasible interval: the
    input range intersected with the optional box ``[x - eps_lower, x + eps_upper]`` and the masks (a
    masked-out pixel has ``lo == hi == x``; a sign mask pins one end to ``x``). The parametrisation is
    shifted by its value at the start point so that ``x'(w_0) == x`` exactly (untouched pixels keep a zero
    perturbation, which keeps l_0 counts meaningful), then clamped to ``[lo, hi]``.

    The constant ``c`` is found per example by the reference binary search: starting at ``c_init``, ``c`` is
    multiplied by 10 until an adversarial example is found, then bisected. Each search step restarts Adam
    from ``x``. The smallest-l_2 adversarial example found over all iterations is returned; examples
    with none keep ``x``. Defaults follow the reference code (``c_init=1e-3``, 9 search steps,
    ``lr=1e-2``) except ``max_iterations`` (10000 there).

    Args:
        model: Classifier mapping ``x`` to logits.
        x: Clean inputs ``[B, ...]``.
        y: Labels ``[B]`` (targets when ``targeted``).
        kappa: Confidence margin required of an adversarial example.
        c_init: Initial trade-off constant.
        search_steps: Number of binary-search steps over ``c``.
        max_iterations: Adam iterations per search step.
        lr: Adam learning rate.
        abort_early: Stop a search step when the total loss stops decreasing (checked every tenth of it).
        input_range: ``(low, high)`` of valid inputs; C&W needs finite limits from this or from ``box``.
        box: Optional ``(eps_lower, eps_upper)`` per-pixel radii.
        mask: Optional mask or ``(positive_mask, negative_mask)`` pair.
        targeted: Reach class ``y`` instead of leaving it.

    Returns:
        An :class:`AttackResult` whose ``steps`` has one row per search step: the change of the best
        adversarial example during that step (zero when it did not improve).

    Raises:
        ValueError: On malformed shapes or arguments, or when the feasible set is unbounded.
    """
    check_inputs(x, y)
    if search_steps < 1 or max_iterations < 1:
        raise ValueError(f"search_steps and max_iterations must be >= 1, got {search_steps}, {max_iterations}")
    if c_init <= 0 or lr <= 0:
        raise ValueError(f"c_init and lr must be > 0, got c_init={c_init}, lr={lr}")
    with attack_mode(model):
        x = x.detach().clone()
        y = y.detach().clone()
        batch = x.shape[0]
        low, high = feasible_interval(x, eps=None, input_range=input_range, box=box, mask=mask)
        if not bool(torch.isfinite(low).all() & torch.isfinite(high).all()):
            raise ValueError("carlini_wagner_l2 needs a bounded feasible set: pass a finite input_range or a box")
        width = high - low
        movable = width > 0
        ratio = torch.where(movable, 2 * (x - low) / torch.where(movable, width, 1.0) - 1, 0.0)
        w_start = torch.atanh(ratio.clamp(-_ATANH_LIMIT, _ATANH_LIMIT))

        def to_input(w: Tensor) -> Tensor:
            return low + width * (torch.tanh(w) + 1) / 2

        offset = x - to_input(w_start)

        lower_c = torch.zeros(batch, dtype=x.dtype, device=x.device)
        upper_c = torch.full_like(lower_c, _NO_UPPER)
        c = torch.full_like(lower_c, c_init)
        best_l2 = torch.full_like(lower_c, torch.inf)
        best_adv = x.clone()
        increments = x.new_zeros((search_steps,) + tuple(x.shape))
        beta1, beta2, adam_eps = 0.9, 0.999, 1e-8
        check_every = max(max_iterations // 10, 1)
        view = (-1,) + (1,) * (x.dim() - 1)

        for search in range(search_steps):
            previous_best = best_adv.clone()
            w = w_start.clone()
            first = torch.zeros_like(w)
            second = torch.zeros_like(w)
            found = torch.zeros(batch, dtype=torch.bool, device=x.device)
            previous_loss = torch.inf
            for iteration in range(1, max_iterations + 1):
                w.requires_grad_(True)
                x_new = torch.clamp(to_input(w) + offset, low, high)
                logits = model(x_new)
                distance = (x_new - x).flatten(1).pow(2).sum(1)
                margin = _margin(logits, y, targeted)
                loss = (distance + c * torch.clamp(margin, min=-kappa)).sum()
                (grad,) = torch.autograd.grad(loss, w)
                with torch.no_grad():
                    succeeded = margin < -kappa
                    improved = succeeded & (distance < best_l2)
                    best_l2 = torch.where(improved, distance, best_l2)
                    best_adv = torch.where(improved.view(view), x_new.detach(), best_adv)
                    found |= succeeded
                    first.mul_(beta1).add_(grad, alpha=1 - beta1)
                    second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    step = lr * (1 - beta2**iteration) ** 0.5 / (1 - beta1**iteration)
                    w = w.detach() - step * first / (second.sqrt() + adam_eps)
                if abort_early and iteration % check_every == 0:
                    current = float(loss.detach())
                    if current > previous_loss * 0.9999:
                        break
                    previous_loss = current
            with torch.no_grad():
                upper_c = torch.where(found, torch.minimum(upper_c, c), upper_c)
                lower_c = torch.where(found, lower_c, torch.maximum(lower_c, c))
                bisect = upper_c < _NO_UPPER
                c = torch.where(bisect, (lower_c + upper_c) / 2, c * 10)
                increments[search] = best_adv - previous_best
        success = final_success(model, best_adv, y, targeted)
    return AttackResult(adversarial=best_adv, steps=increments, success=success)
