"""The uniform certified radius: the largest scalar ``r`` such that interval propagation certifies ``[x - r, x + r]``.

Interval bounds are monotone in the box (a larger box never gives tighter output bounds), so the set of
certified radii is an interval ``[0, r*]`` and bisection finds ``r*`` to ``bracket / 2**steps``.
This is the uniform baseline of Amoeba Section 4 ([18]-[20]): exact for the bound method used.
"""

import torch
from torch import Tensor, nn

from bounds.margins import margin_lower_bounds


def clipped_box(
    x: Tensor, eps_lower: Tensor, eps_upper: Tensor, input_range: tuple[float, float] | None
) -> tuple[Tensor, Tensor]:
    """The box ``[x - eps_lower, x + eps_upper]``, intersected with ``input_range`` when one is given.

    Args:
        x: Centre points ``(B, ...)``.
        eps_lower: Left radii, broadcastable to ``x``.
        eps_upper: Right radii, broadcastable to ``x``.
        input_range: ``(low, high)`` to clip to, or ``None`` for no clipping.

    Returns:
        ``(lower, upper)``, differentiable in the radii (zero gradient where the clip is active).
    """
    lower, upper = x - eps_lower, x + eps_upper
    if input_range is not None:
        lower = lower.clamp(min=input_range[0])
        upper = upper.clamp(max=input_range[1])
    return lower, upper


def min_margin(model: nn.Module, lower: Tensor, upper: Tensor, y: Tensor) -> Tensor:
    """``min_{j != y} (out_lower[y] - out_upper[j])`` per example ``(B,)`` (``+inf`` with a single class)."""
    return margin_lower_bounds(model, lower, upper, y).min(dim=1).values


def uniform_radius(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    delta: float,
    input_range: tuple[float, float] | None = None,
    bracket: float = 2.0,
    steps: int = 22,
    max_doublings: int = 20,
) -> Tensor:
    """Largest certified uniform radius per example by bisection (forward passes only, no gradients).

    A radius ``r`` is certified when ``min_j margin(x - r, x + r) >= delta``. The search first doubles
    ``bracket`` for examples certified at the bracket (at most ``max_doublings`` times; with
    ``input_range`` the clipped box stops growing once it covers the range), then bisects ``steps`` times.
    The returned radius is always one that was checked and certified (``0`` if none, including when the
    margin at ``x`` itself is below ``delta``).

    Args:
        model: A model :func:`~bounds.interval.interval_bounds` supports, in the mode it should be bounded in.
        x: Inputs ``(B, ...)``.
        y: Labels ``(B,)``.
        delta: The margin required.
        input_range: Clip boxes to ``(low, high)`` when given.
        bracket: Initial upper end of the search interval (default: the width of ``[-1, 1]``).
        steps: Bisection steps; the tolerance is ``bracket / 2**steps``.
        max_doublings: How often the bracket may double for examples certified at it.

    Returns:
        Radii ``(B,)``, ``>= 0``, on ``x``'s device and dtype.
    """
    batch = x.shape[0]
    view = (batch, *([1] * (x.dim() - 1)))

    def certified(radius: Tensor) -> Tensor:
        r = radius.view(view)
        lower, upper = clipped_box(x, r, r, input_range)
        return min_margin(model, lower, upper, y) >= delta

    with torch.no_grad():
        low = torch.zeros(batch, dtype=x.dtype, device=x.device)
        high = torch.full_like(low, float(bracket))
        if input_range is not None:
            max_useful = float(input_range[1] - input_range[0])
            high = high.clamp(max=max_useful)
        grow = certified(high)
        for _ in range(max_doublings):
            if input_range is not None or not bool(grow.any()):
                break
            low = torch.where(grow, high, low)
            high = torch.where(grow, high * 2, high)
            grow = grow & certified(high)
        low = torch.where(grow, high, low)  # certified at the largest bracket tried: stop there
        for _ in range(steps):
            if bool(grow.all()):
                break
            mid = (low + high) / 2
            ok = certified(mid)
            low = torch.where(ok, mid, low)
            high = torch.where(ok, high, mid)
        return low
