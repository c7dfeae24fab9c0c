"""The largest box CROWN certifies along a ray: uniform radii and shaped rays, by a model-based root search.

The uniform box ``[x - R, x + R]`` (or the shaped one ``[x - R s1, x + R s2]``, the shape from :func:`ray_shape` of the
interval solution) is certified by CROWN while its margin bound ``g(R) >= target``: :func:`crown_radius_bracket` (and
:func:`crown_uniform_radius`, its certified end) finds the root of ``g`` by a safeguarded model-based search, one
CROWN pass per radius tried. On a fixed relaxation the largest certified radius is a root of a concave
piecewise-linear function (:func:`_uniform_on_relaxation`, a bisection without network passes), which gives a
certified radius below every failed one.
"""

import math

import torch
from torch import Tensor, nn

from bounds.alpha_search import AlphaWarmStart
from bounds.crown import Intermediate
from bounds.linear_certify import Relaxation, radius_caps, relaxation_parts

_MIN = 1e-12


def _uniform_on_relaxation(p: Tensor, q: Tensor, d: Tensor, c1: Tensor, c2: Tensor, cap: Tensor,
                           steps: int = 40, shape: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Largest ``r <= cap`` with ``P min(r s1, c1) + Q min(r s2, c2) <= d`` (concave in ``r``; bisection).

    ``(s1, s2)`` is the ray's ``shape`` (flattened ``(B, n)``), ones when ``None``: the uniform box.
    """
    low = torch.zeros_like(cap)
    high = cap.clone()
    s1, s2 = shape if shape is not None else (torch.ones_like(c1), torch.ones_like(c2))

    def ok(r: Tensor) -> Tensor:
        rv = r.view(-1, 1)
        used = (p @ torch.minimum(rv * s1, c1).unsqueeze(2) + q @ torch.minimum(rv * s2, c2).unsqueeze(2)).squeeze(2)
        return (used <= d).all(1) & (d > 0).all(1)

    at_cap = ok(high)
    for _ in range(steps):
        mid = (low + high) / 2
        good = ok(mid)
        low, high = torch.where(good, mid, low), torch.where(good, high, mid)
    return torch.where(at_cap, cap, low)


def ray_shape(eps_lower: Tensor, eps_upper: Tensor, power: float = 0.5, floor: float = 1e-3
              ) -> tuple[Tensor, Tensor]:
    """The shape ``(s1, s2)`` of a ray of boxes ``[x - R s1, x + R s2]`` from a box's radii (e.g. the interval one).

    Each radius is divided by the box's geometric-mean half-width ``g = (prod_i (e1_i + e2_i) / 2)^(1/n)``, raised to
    ``power`` (``1``: the box's own shape, ``0``: the uniform one) with relative radii below ``floor`` lifted to it,
    and the result renormalised to unit geometric-mean half-width. On the zoo's LeNets CROWN certifies boxes along
    the ray of the interval solution's shape with ``power = 0.5`` 1.2-1.3x wider (geometric mean) than the largest
    uniform box, and wider than along the interval shape itself (``power = 1``: CROWN's relaxation differs from the
    interval bound's) or a milder one (``power = 0.35``); the asymmetric rounds of :func:`crown_optimise_radii` then
    add 1-6% on them (``benchmarks/bench_certify.py --method crown``, ``benchmarks/bench_crown.py``).

    Args:
        eps_lower: Radii below ``x`` ``(B, ...)``, ``>= 0``, with positive widths ``e1 + e2`` somewhere.
        eps_upper: Radii above ``x``, same shape.
        power: Exponent of the relative radii.
        floor: Smallest relative radius before the exponent.

    Returns:
        ``(s1, s2)`` shaped like the radii, positive, ``prod_i ((s1_i + s2_i) / 2)^(1/n) = 1`` per example.
    """
    view = (-1, *([1] * (eps_lower.dim() - 1)))

    def half_width(a: Tensor, b: Tensor) -> Tensor:
        return ((a + b) / 2).clamp(min=_MIN).flatten(1).log().mean(1).exp().view(view)

    g = half_width(eps_lower, eps_upper)
    s1, s2 = (eps_lower / g).clamp(min=floor) ** power, (eps_upper / g).clamp(min=floor) ** power
    norm = half_width(s1, s2)
    return s1 / norm, s2 / norm


def _quadratic_root(g0: Tensor, s0: Tensor, r: Tensor, g_r: Tensor) -> tuple[Tensor, Tensor]:
    """Root of ``g(R) = g0 - s0 R - b R^2`` fitted through ``(r, g_r)``, and where the fit curves down (``b > 0``).

    Elsewhere the root is meaningless and the caller takes its own fallback.
    """
    tiny = torch.finfo(g0.dtype).tiny
    curvature = ((g0 - g_r).clamp(min=tiny) - s0 * r) / (r * r).clamp(min=tiny)
    disc = (s0 * s0 + 4 * curvature * g0).clamp(min=0)
    return 2 * g0 / (s0 + disc.sqrt()).clamp(min=tiny), curvature > 0


def _model_root(g0: Tensor, s0: Tensor, a: Tensor, g_a: Tensor, h: Tensor, g_h: Tensor) -> Tensor:
    """Root of a model of ``g`` fitted to ``g(0) = g0`` and the bracket ends ``(a, g_a)``, ``(h, g_h)``.

    CROWN's margin bound falls faster than linearly as the box grows (more neurons become unstable). With a
    certified ``a > 0`` the drop is modelled as a power law ``g0 - g(R) = c R^k`` through both ends; with only
    ``h`` (``a = 0``) as ``g0 - g(R) = s0 R + b R^2`` with the zero-width slope ``s0``. A degenerate fit falls
    back to the linear root ``g0 / s0``.
    """
    tiny = torch.finfo(g0.dtype).tiny
    drop_a, drop_h = (g0 - g_a).clamp(min=tiny), (g0 - g_h).clamp(min=tiny)
    root, curved = _quadratic_root(g0, s0, h, g_h)
    quadratic = torch.where(curved, root, g0 / s0.clamp(min=tiny))
    exponent = torch.log(drop_h / drop_a) / torch.log(h / a.clamp(min=tiny)).clamp(min=tiny)
    power = a * (g0 / drop_a).clamp(min=tiny) ** (1 / exponent.clamp(min=1e-3))
    use_power = (a > 0) & (exponent > 0) & torch.isfinite(power)
    return torch.where(use_power, power, quadratic)


def crown_uniform_radius(model: nn.Module, x: Tensor, y: Tensor, *, target: float,
                         input_range: tuple[float, float] | None = None, rounds: int = 10,
                         intermediate: Intermediate = "crown", cap: float = 2.0, rtol: float = 4e-3,
                         alpha: AlphaWarmStart | None = None, start: Tensor | None = None,
                         shape: tuple[Tensor, Tensor] | None = None, first: float = 0.5) -> Tensor:
    """The largest uniform radius CROWN certifies: :func:`crown_radius_bracket`'s certified end (same arguments)."""
    return crown_radius_bracket(model, x, y, target=target, input_range=input_range, rounds=rounds,
                                intermediate=intermediate, cap=cap, rtol=rtol, alpha=alpha, start=start, shape=shape,
                                first=first)[0]


def crown_radius_bracket(model: nn.Module, x: Tensor, y: Tensor, *, target: float,
                         input_range: tuple[float, float] | None = None, rounds: int = 10,
                         intermediate: Intermediate = "crown", cap: float = 2.0, rtol: float = 4e-3,
                         alpha: AlphaWarmStart | None = None, start: Tensor | None = None,
                         shape: tuple[Tensor, Tensor] | None = None, first: float = 0.5, keep_failed: bool = False
                         ) -> tuple[Tensor, Tensor, Relaxation | None]:
    """The largest uniform radius CROWN certifies, by a safeguarded root search on the CROWN bound.

    Let ``g(R) = min_j m_j(R, R) - target`` be CROWN's margin bound on the (clipped) box of radius ``R``, built
    on that very box. Every CROWN pass at ``R`` gives two things: ``g(R)`` (``R`` is certified iff
    ``g(R) >= 0``) and, when it fails, the largest ``r < R`` the same relaxation certifies (a certified radius
    below the root: the relaxation is valid on every sub-box). Pass 0 linearises at ``x`` (zero width: the
    network's local linear map) and takes its closed-form root as the first ``R``. While ``R`` is certified
    the radius grows (by 1.05, 1.1, 1.2, 1.4, ...); once a failure is seen, a bracket ``[low, high]`` (``low``
    certified, ``g(high) < 0``) is shrunk with the root of a model of ``g`` through the bracket's ends
    (:func:`_model_root`: CROWN's margin falls faster than linearly as neurons become unstable), kept inside
    the bracket, with a geometric bisection step when the bracket did not halve and the same end moved twice,
    until ``high - low <= rtol * high`` or ``rounds`` passes. Only unfinished examples are relaxed in a pass.

    The search it replaced jumped to the geometric mean of the relaxation's radius and ``R`` without keeping the
    bracket, and stalled at 73-79% of the CROWN radius on LeNet whatever the number of rounds
    (``benchmarks/bench_crown_uniform.py`` compares both with a bisection).

    Args:
        model: A supported model in eval mode.
        x: Inputs ``(B, ...)``.
        y: Labels ``(B,)``.
        target: The margin to certify.
        input_range: Clip boxes to it, if given.
        rounds: Most CROWN passes after the zero-width one.
        intermediate: Intermediate bounds of CROWN (``"crown"`` or ``"ibp"``).
        cap: Largest radius considered.
        rtol: Relative width of the final bracket.
        alpha: Search on alpha-CROWN's bound instead (:mod:`bounds.alpha_crown`), its slopes carried from pass to
            pass (:class:`~bounds.alpha_search.AlphaWarmStart`; the zero-width pass stays CROWN: no neuron is
            unstable there).
        start: First radius to try instead of half the linearisation's root (e.g. a radius certified by CROWN,
            when refining it with ``alpha``).
        shape: Search along a shaped ray instead: the box of radius ``R`` is ``[x - R s1, x + R s2]`` for
            ``shape = (s1, s2)`` (shaped like ``x``, positive; e.g. :func:`ray_shape` of an interval solution), and
            the radius returned is the largest such ``R`` certified. ``None``: ``s1 = s2 = 1``.
        first: The first radius tried is ``first`` times the linearisation's root (without ``start``).
        keep_failed: Also return the relaxation of each example's box at ``failed`` (for
            :func:`~bounds.linear_certify.crown_optimise_radii`'s first round, which relaxes that box again).

    Returns:
        ``(radius, failed, relaxation)``: the radius ``(B,)`` is certified by a CROWN relaxation (``0`` where not even
        ``x`` is certified); ``failed`` ``(B,)`` is the smallest radius seen to fail (``inf`` where none was tried and
        failed); with ``keep_failed`` (and some failure) the relaxation of the box at ``failed`` of every example
        (zero where ``failed`` is ``inf``), else ``None``.
    """
    batch = x.shape[0]
    view = (batch, *([1] * (x.dim() - 1)))
    zero = torch.zeros(view, dtype=x.dtype, device=x.device)
    s_lower, s_upper = shape if shape is not None else (torch.ones_like(x), torch.ones_like(x))
    flat_shape = (s_lower.expand_as(x).flatten(1), s_upper.expand_as(x).flatten(1))
    p, q, d, _, _ = relaxation_parts(model, x, y, zero, zero, input_range, intermediate, target)
    inf = torch.full_like(x, cap * float(torch.maximum(s_lower.max(), s_upper.max()))).flatten(1)
    c1, c2 = radius_caps(x, inf.view_as(x), inf.view_as(x), input_range)
    radius_cap = torch.full((batch,), cap, dtype=x.dtype, device=x.device)
    linear_root = _uniform_on_relaxation(p, q, d, c1, c2, radius_cap, shape=flat_shape).clamp(min=1e-6 * cap)
    g_zero = d.min(1).values
    slope_zero = g_zero.clamp(min=0) / linear_root  # g is linear at small radii
    # The linearisation's root overestimates CROWN's by 2-6x on the zoo's models (no neuron is unstable at
    # zero width); half of it is a cheaper first box.
    guess = first * linear_root if start is None else start.clamp(min=1e-6 * cap, max=cap)
    low = torch.zeros(batch, dtype=x.dtype, device=x.device)
    anchor, g_anchor = low.clone(), g_zero.clamp(min=0)  # the last certified evaluation
    high, g_high = radius_cap.clone(), torch.full_like(low, -math.inf)  # -inf: no failure seen yet
    done = g_zero <= 0  # not certified even at x
    slow = torch.zeros(batch, dtype=torch.bool, device=x.device)
    last_side = torch.zeros(batch, dtype=torch.int8, device=x.device)
    kept: Relaxation | None = None
    for _ in range(rounds):
        if bool(done.all()):
            break
        index = (~done).nonzero().squeeze(1)
        r_view = guess[index].view(-1, *view[1:])
        xi, yi = x[index], y[index]
        if shape is None:
            r_lower = r_upper = r_view
            shape_i = None
        else:
            r_lower, r_upper = r_view * s_lower[index], r_view * s_upper[index]
            shape_i = (flat_shape[0][index], flat_shape[1][index])
        relaxation = relaxation_parts(model, xi, yi, r_lower, r_upper, input_range, intermediate, target, alpha, index)
        p, q, d, c1, c2 = relaxation
        reach = guess[index]
        g_now = (d - (p @ c1.unsqueeze(2) + q @ c2.unsqueeze(2)).squeeze(2)).min(1).values
        if keep_failed:  # the relaxation of the smallest failed box so far (failures only ever shrink it)
            failing = (g_now < 0).nonzero().squeeze(1)
            if failing.numel():
                if kept is None:
                    kept = Relaxation(*(part.new_zeros((batch, *part.shape[1:])) for part in relaxation))
                for buffer, part in zip(kept, relaxation, strict=True):
                    buffer[index[failing]] = part[failing]
        certified_below = _uniform_on_relaxation(p, q, d, c1, c2, reach, shape=shape_i)
        ok = torch.zeros_like(done).index_put((index,), g_now >= 0)
        bad = torch.zeros_like(done).index_put((index,), g_now < 0)
        g = torch.zeros_like(low).index_put((index,), g_now)
        below = torch.zeros_like(low).index_put((index,), certified_below)
        width = high - low
        low = torch.where(ok, guess, torch.where(bad, torch.maximum(low, below), low))
        anchor, g_anchor = torch.where(ok, guess, anchor), torch.where(ok, g, g_anchor)
        high, g_high = torch.where(bad, guess, high), torch.where(bad, g, g_high)
        bracketed = torch.isfinite(g_high)
        # Bisect after a step that did not halve the bracket and moved the same end as the step before.
        side = torch.where(ok, 1, torch.where(bad, -1, 0)).to(torch.int8)
        slow = bracketed & ((high - low) > width / 2) & (side == last_side)
        last_side = torch.where(side != 0, side, last_side)
        done = done | (bracketed & (high - low <= rtol * high)) | (ok & (guess >= cap))
        # Next radius: grow while certified; else the root of a model of g through the bracket's ends
        # (:func:`_model_root`), kept inside the bracket.
        # Before a failure: extrapolate g(0) - s0 R - b R^2 through the last certified radius, 1.05x-4x further.
        root, curved = _quadratic_root(g_zero, slope_zero, anchor, g_anchor)
        extrapolated = torch.where(curved, root, 4 * anchor)
        grown = torch.minimum(extrapolated.clamp(min=1.05 * anchor, max=4 * anchor), radius_cap)
        span = high - low
        model_root = _model_root(g_zero, slope_zero, anchor, g_anchor, high, g_high)
        model_root = model_root.clamp(min=low + 0.05 * span, max=high - 0.02 * span)
        middle = torch.where(low > 0, (low * high).clamp(min=0).sqrt(), low + span / 2)
        inside = torch.where(slow, middle, model_root)
        guess = torch.where(done, guess, torch.where(bracketed, inside, grown))
    return low, torch.where(torch.isfinite(g_high), high, torch.full_like(high, math.inf)), kept
