"""The uniform certified radius: the largest scalar ``r`` such that interval propagation certifies ``[x - r, x + r]``.

Interval bounds are monotone in the box (a larger box never gives tighter output bounds), so the set of
certified radii is an interval ``[0, r*]`` and bisection finds ``r*`` to ``bracket / 2**steps``.
This is the uniform baseline of Amoeba Section 4 ([18]-[20]): exact for the bound method used.
"""

import torch
from torch import Tensor, nn

from bounds.margins import Method, margin_lower_bounds
from bounds.root_search import Slack, bracketed_root


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


def clipped_widths(
    x: Tensor, eps_lower: Tensor, eps_upper: Tensor, input_range: tuple[float, float] | None
) -> Tensor:
    """Widths ``upper - lower`` of :func:`clipped_box`'s box, computed from the radii without cancellation.

    ``(x + e2) - (x - e1)`` rounds to zero in floating point for radii far below ``|x|``'s resolution (e.g.
    ``1e-8`` at ``|x| ~ 1`` in float32), which made ``log`` widths infinite; ``e1 + e2`` (each side clipped to the
    range) keeps every positive radius positive.

    Returns:
        Widths shaped like ``x``, differentiable in the radii (zero gradient where the clip is active).
    """
    if input_range is not None:
        eps_lower = torch.minimum(eps_lower, (x - input_range[0]).clamp(min=0))
        eps_upper = torch.minimum(eps_upper, (input_range[1] - x).clamp(min=0))
    return (eps_lower + eps_upper).expand_as(x)


def min_margin(model: nn.Module, lower: Tensor, upper: Tensor, y: Tensor, method: Method = "ibp") -> Tensor:
    """``min_{j != y}`` of the margin lower bounds of ``method`` per example ``(B,)`` (``+inf`` with one class)."""
    return margin_lower_bounds(model, lower, upper, y, method).min(dim=1).values


def box_slack(model: nn.Module, x: Tensor, y: Tensor, eps_lower: Tensor, eps_upper: Tensor, target: float,
              input_range: tuple[float, float] | None, method: Method) -> Slack:
    """``g(t, active)``: ``min margin([x - t eps_lower, x + t eps_upper]) - target`` where ``active``, else ``-inf``.

    Args:
        model: The bounded model.
        x: Inputs ``(B, ...)``.
        y: Labels ``(B,)``.
        eps_lower: Radii below ``x`` along the ray (shaped like ``x``, or broadcastable to it).
        eps_upper: Radii above ``x``.
        target: Margin to reach.
        input_range: Clip the boxes to it, if given.
        method: The bound method.

    Returns:
        The function of ``t`` ``(B,)`` and ``active`` ``(B,)`` bool.
    """
    tail = [1] * (x.dim() - 1)
    eps_lower, eps_upper = eps_lower.expand_as(x), eps_upper.expand_as(x)

    def slack(t: Tensor, active: Tensor) -> Tensor:
        result = torch.full_like(t, -torch.inf)
        index = active.nonzero().squeeze(1)
        if index.numel():
            tv = t[index].view(-1, *tail)
            lower, upper = clipped_box(x[index], tv * eps_lower[index], tv * eps_upper[index], input_range)
            result[index] = min_margin(model, lower, upper, y[index], method) - target
        return result

    return slack


def uniform_radius(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    delta: float,
    input_range: tuple[float, float] | None = None,
    bracket: float = 2.0,
    rtol: float = 1e-4,
    max_steps: int = 40,
    max_doublings: int = 20,
    method: Method = "ibp",
) -> Tensor:
    """Largest certified uniform radius per example by a safeguarded bracketing search (forward passes only).

    A radius ``r`` is certified when ``g(r) = min_j margin(x - r, x + r) - delta >= 0``; ``g`` is
    nonincreasing in ``r``. The search keeps a bracket ``[low, high]`` with ``g(low) >= 0 > g(high)`` per
    example: it starts at the root of ``g``'s linearisation at ``0`` (slope measured at ``1e-6 bracket``),
    expands the radius while certified (up to ``bracket * 2**max_doublings``; with ``input_range`` up to
    the range width, where the clipped box covers the whole range), then shrinks the bracket
    by false position with the Illinois modification (superlinear on the piecewise-smooth ``g``),
    falling back to a bisection step whenever an update fails to halve the bracket, until
    ``high - low <= rtol * high`` (or ``max_steps``). The returned radius is always one that was checked
    and certified (``0`` if none, including when the margin at ``x`` itself is below ``delta``).

    Args:
        model: A model :func:`~bounds.interval.interval_bounds` supports, in the mode it should be bounded in.
        x: Inputs ``(B, ...)``.
        y: Labels ``(B,)``.
        delta: The margin required.
        input_range: Clip boxes to ``(low, high)`` when given.
        bracket: Initial upper end of the search interval (default: the width of ``[-1, 1]``).
        rtol: Relative tolerance of the returned radius (it is within ``rtol`` of the largest certified one).
        max_steps: Most bracket-shrinking steps.
        max_doublings: How often the bracket may double for examples certified at it.
        method: The bound of the margins (``"ibp"`` or ``"crown"``; CROWN is not exactly monotone in the box,
            the search then returns a checked, certified radius near the largest one).

    Returns:
        Radii ``(B,)``, ``>= 0``, on ``x``'s device and dtype.
    """
    batch = x.shape[0]
    cap = float(bracket) * 2.0**max_doublings
    if input_range is not None:  # the clipped box covers the whole range at this radius
        cap = float(input_range[1] - input_range[0])

    ones = torch.ones_like(x[:1])
    box = box_slack(model, x, y, ones, ones, delta, input_range, method)

    def slack(radius: Tensor, active: Tensor | None = None) -> Tensor:
        """``g(radius)``, evaluated only where ``active`` (elsewhere ``-inf``, never used)."""
        return box(radius, torch.ones_like(radius, dtype=torch.bool) if active is None else active)

    with torch.no_grad():
        zero = torch.zeros(batch, dtype=x.dtype, device=x.device)
        g_zero = slack(zero)
        # First guess: the root of g's linearisation at 0 (exact while no neuron is unstable); the slope is
        # measured at a tiny radius. It is usually within a few percent of the answer.
        tiny = torch.full_like(zero, float(bracket) * 1e-6)
        g_tiny = slack(tiny)
        slope = ((g_zero - g_tiny) / tiny).clamp(min=torch.finfo(x.dtype).tiny)
        guess = (g_zero / slope).clamp(min=float(bracket) * 1e-6, max=cap)
        low = torch.where(g_tiny >= 0, tiny, zero)
        g_low = torch.where(g_tiny >= 0, g_tiny, g_zero)
        high = guess
        g_high = slack(guess)
        # Expand while certified, by factors 1.05, 1.1, 1.2, 1.4, 1.8, 2.6, ... (the guess is usually close).
        for expansion in range(2 * max_doublings + 60):
            grow = (g_high >= 0) & (high < cap)
            if not bool(grow.any()):
                break
            low, g_low = torch.where(grow, high, low), torch.where(grow, g_high, g_low)
            factor = 1 + 0.05 * 2.0 ** min(expansion, 60)
            high = torch.where(grow, (high * factor).clamp(max=cap), high)
            g_high = torch.where(grow, slack(high, grow), g_high)
        # Finished: certified at the cap, or not even at 0.
        done = (g_high >= 0) | (g_zero < 0)
        low = torch.where(g_high >= 0, high, torch.where(g_zero < 0, zero, low))
        g_low, g_high = g_low.clamp(min=0), g_high.clamp(max=0)
        return bracketed_root(slack, low, g_low, high, g_high, done, steps=max_steps, rtol=rtol, geometric=True)
