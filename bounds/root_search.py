"""The safeguarded bracketing root search shared by the uniform radius and Algorithm 1's final shrink.

Both look for the largest ``t`` with ``g(t) >= 0`` where ``g(t)`` is the smallest margin bound on the box
``[x - t e1, x + t e2]`` minus the target: nonincreasing in ``t``, one network pass per evaluation, per example.
:func:`bounds.uniform.box_slack` evaluates ``g`` for the unfinished examples only; :func:`bracketed_root` runs
false position with the Illinois modification (the function value at an end that stays twice in a row is halved),
strictly inside the bracket, with a bisection step (geometric once the certified end is positive, if asked) after
any step that did not halve the bracket. The returned ``t`` is always one where ``g >= 0`` was checked (or the
bracket's low end).
"""

from collections.abc import Callable

import torch
from torch import Tensor

Slack = Callable[[Tensor, Tensor], Tensor]


def bracketed_root(slack: Slack, low: Tensor, g_low: Tensor, high: Tensor, g_high: Tensor, done: Tensor, *,
                   steps: int, rtol: float, first_guess: Tensor | None = None, close: Tensor | None = None,
                   geometric: bool = False) -> Tensor:
    """The largest checked ``t`` of the bracket ``[low, high]`` (``g(low) >= 0 > g(high)``) per example.

    Args:
        slack: ``g(t, active)`` (:func:`bounds.uniform.box_slack`).
        low: Certified ends ``(B,)``.
        g_low: ``g(low) >= 0``.
        high: Failed ends.
        g_high: ``g(high) <= 0``.
        done: Examples already finished (their ``low`` is returned as it is).
        steps: Most evaluations.
        rtol: Stop once ``high - low <= rtol * high``.
        first_guess: The first step's point where finite and positive (e.g. a Newton step), instead of false
            position.
        close: Also stop once ``g(low) <= close`` (``low`` is then near the root).
        geometric: Bisect geometrically (``sqrt(low high)``) once ``low > 0``.

    Returns:
        ``t`` per example ``(B,)``.
    """
    tiny = torch.finfo(low.dtype).tiny
    g_at_low = g_low.clone()  # g_low itself is halved by the Illinois steps
    last_side = torch.zeros(low.shape, dtype=torch.int8, device=low.device)
    slow = torch.zeros(low.shape, dtype=torch.bool, device=low.device)
    for step in range(steps):
        done = done | (high - low <= rtol * high)
        if close is not None:
            done = done | (g_at_low <= close)
        if bool(done.all()):
            break
        width = high - low
        guess = low + width * g_low / (g_low - g_high).clamp(min=tiny)
        if step == 0 and first_guess is not None:
            guess = torch.where(torch.isfinite(first_guess) & (first_guess > 0), first_guess, guess)
        guess = guess.clamp(min=low + 1e-3 * width, max=high - 1e-3 * width)
        middle = torch.where(low > 0, (low * high).sqrt(), low + width / 2) if geometric else low + width / 2
        guess = torch.where(slow, middle, guess)
        g = slack(guess, ~done)
        ok, bad = (g >= 0) & ~done, (g < 0) & ~done
        g_high = torch.where(ok & (last_side == 1), g_high / 2, g_high)
        g_low = torch.where(bad & (last_side == -1), g_low / 2, g_low)
        low, g_low, g_at_low = torch.where(ok, guess, low), torch.where(ok, g, g_low), torch.where(ok, g, g_at_low)
        high, g_high = torch.where(bad, guess, high), torch.where(bad, g, g_high)
        last_side = torch.where(ok, 1, torch.where(bad, -1, last_side)).to(torch.int8)
        slow = (high - low) > width / 2
    return low
