"""Certification with CROWN relaxations: few network passes, the box problems solved in closed form.

For a relaxation built on a box ``B0`` (:func:`~bounds.crown.linear_margin_bounds`), every margin has a linear
lower bound ``f_y - f_j >= A_j . x' + b_j`` on ``B0``, so on any sub-box ``[x - e1, x + e2]`` of ``B0``

    m_j(e1, e2) = c_j - P_j . e1 - Q_j . e2,   c_j = A_j . x + b_j,  P_j = [A_j]_+,  Q_j = [-A_j]_+,

which is linear in the radii. Problem 2 of Amoeba on the fixed relaxation,

    max  sum_i log(e1_i + e2_i)   s.t.  P_j . e1 + Q_j . e2 <= d_j = c_j - target,   0 <= e <= caps,

is convex and needs no network pass. It is solved through its Lagrange dual (``K - 1`` multipliers
``mu >= 0``): for fixed ``mu`` every pixel maximises ``log(w) - a e1 - b e2`` (``a = mu P``, ``b = mu Q``) in
closed form (fill the cheaper side up to its cap, then the other), and the dual is minimised by Adam on
``log mu`` with Danskin's gradient ``d - (P e1 + Q e2)``; every primal iterate is scaled into the feasible set
and the best feasible one is kept (so the result is always feasible, whatever the dual's progress).

Because the relaxation is only valid inside ``B0``, the caps are ``B0``'s radii. The outer loop
re-linearises: ``B0`` is rebuilt around the last solution, enlarged by a factor (``2, 1.5, 1.33, ...``; certify's
first factor is where its ray search saw CROWN fail, and that first round reuses the search's own relaxation of the
box it failed on instead of building it again: ``known``),
so the box can grow where the caps were active and the relaxation tightens where it was too loose. The best
solution (by the objective) over the rounds is returned; :func:`bounds.certify.certify` re-verifies it with a
fresh CROWN (and IBP) evaluation on exactly the returned box.

- Uniform and shaped: the largest radius (along a ray) CROWN certifies is a root search with a network pass per
  radius tried, in :mod:`bounds.crown_radius`; this module gives it :func:`relaxation_parts` and
  :func:`radius_caps`.
- Non-uniform (``e1 = e2 = e``): per pixel ``e = min(1 / (a + b), cap)`` (a side clipped away by the input
  range is dropped from the cost and reported as ``0``).
- Shaped: ``certify(method="crown")`` for the non-uniform kinds first finds the largest box CROWN certifies along
  the ray ``[x - R s1, x + R s2]`` of the interval solution's shape (:mod:`bounds.crown_radius`, two passes), then
  runs ``crown_rounds - 2`` rounds of :func:`crown_optimise_radii` from it (two at the default ``crown_rounds=4``;
  they add little on LeNet, where CROWN's margin falls off a cliff just past the shaped box, but much on fully
  connected nets): 5 CROWN passes per example with the final check, against 9-13 before, and 1.02-1.24x wider
  boxes on the zoo's LeNet and FC100 (README, Interval propagation vs. CROWN).
"""

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from bounds.alpha_search import AlphaWarmStart
from bounds.crown import Intermediate, LinearMarginBound, linear_margin_bounds
from bounds.uniform import clipped_box

_MIN = 1e-12
# Round 1 reuses a given relaxation for an example when its caps equal the given ones to this relative tolerance.
_SAME_BOX_RTOL = 1e-5


class Relaxation(NamedTuple):
    """One CROWN relaxation in the radii (module docstring), per example, and the caps of the box it was built on.

    Attributes:
        p: ``(B, K-1, n)`` costs of ``e1``.
        q: ``(B, K-1, n)`` costs of ``e2``.
        d: ``(B, K-1)`` budgets.
        c1: ``(B, n)`` caps of ``e1`` (the box's radii below ``x``, clipped to the input range).
        c2: ``(B, n)`` caps of ``e2``.
    """

    p: Tensor
    q: Tensor
    d: Tensor
    c1: Tensor
    c2: Tensor

    def replaced(self, index: Tensor, other: "Relaxation") -> "Relaxation":
        """A copy with the examples ``index`` taken from ``other`` (whose rows are those examples, in order)."""
        parts = []
        for mine, theirs in zip(self, other, strict=True):
            part = mine.clone()
            part[index] = theirs
            parts.append(part)
        return Relaxation(*parts)


def _linear_parts(bound: LinearMarginBound, x: Tensor, y: Tensor, target: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(P, Q, d)`` of the other classes: ``P, Q (B, K-1, n)``, ``d (B, K-1)`` (see the module docstring)."""
    batch, classes = bound.offset.shape
    others = torch.arange(classes, device=x.device).expand(batch, classes) != y.view(-1, 1)
    coeffs = bound.coefficients.flatten(2)[others].view(batch, classes - 1, -1)
    offset = bound.offset[others].view(batch, classes - 1)
    c = (coeffs @ x.flatten(1).unsqueeze(2)).squeeze(2) + offset
    return coeffs.clamp(min=0), (-coeffs).clamp(min=0), c - target


def radius_caps(x: Tensor, r_lower: Tensor, r_upper: Tensor, input_range: tuple[float, float] | None
                ) -> tuple[Tensor, Tensor]:
    """Radii allowed by the relaxation box and (when clipping) the input range, flattened ``(B, n)``."""
    c1, c2 = r_lower.expand_as(x).flatten(1), r_upper.expand_as(x).flatten(1)
    if input_range is not None:
        c1 = torch.minimum(c1, (x - input_range[0]).flatten(1).clamp(min=0))
        c2 = torch.minimum(c2, (input_range[1] - x).flatten(1).clamp(min=0))
    return c1, c2


def _pixel_optimum(a: Tensor, b: Tensor, c1: Tensor, c2: Tensor, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Per pixel ``argmax log(e1 + e2) - a e1 - b e2`` over ``[0, c1] x [0, c2]`` (``e1 = e2`` if symmetric)."""
    if symmetric:
        # One radius e per pixel; a side clipped away by the input range (cap 0) costs nothing, the other side
        # is charged P e (>= P min(e, cap): conservative).
        open1, open2 = c1 > 0, c2 > 0
        cost = a * open1 + b * open2
        e = torch.minimum(1 / cost.clamp(min=_MIN), torch.maximum(c1, c2))
        return e * open1, e * open2
    lower_cheaper = a <= b
    s1, s2 = torch.minimum(a, b).clamp(min=_MIN), torch.maximum(a, b).clamp(min=_MIN)
    k1, k2 = torch.where(lower_cheaper, c1, c2), torch.where(lower_cheaper, c2, c1)
    first = torch.minimum(1 / s1, k1)
    second = torch.where(1 / s1 >= k1, (1 / s2 - k1).clamp(min=0), torch.zeros_like(k1))
    second = torch.minimum(second, k2)
    return torch.where(lower_cheaper, first, second), torch.where(lower_cheaper, second, first)


def _log_width(e1: Tensor, e2: Tensor) -> Tensor:
    return torch.log((e1 + e2).clamp(min=_MIN)).mean(1)


def solve_box_problem(p: Tensor, q: Tensor, d: Tensor, c1: Tensor, c2: Tensor, *, symmetric: bool,
                      steps: int = 200, lr: float = 0.2) -> tuple[Tensor, Tensor]:
    """Maximise ``mean_i log(e1_i + e2_i)`` s.t. ``P e1 + Q e2 <= d``, ``0 <= e1 <= c1``, ``0 <= e2 <= c2``.

    Dual method of the module docstring. Examples with some ``d_j <= 0`` (not certified even at zero width)
    get zero radii (and cost nothing: the dual runs on the others only).

    Args:
        p: ``(B, M, n)`` nonnegative costs of ``e1``.
        q: ``(B, M, n)`` nonnegative costs of ``e2``.
        d: ``(B, M)`` budgets.
        c1: ``(B, n)`` caps of ``e1``.
        c2: ``(B, n)`` caps of ``e2``.
        symmetric: Force ``e1 = e2`` (non-uniform bound).
        steps: Adam steps on ``log mu``.
        lr: Adam's learning rate.

    Returns:
        Feasible ``(e1, e2)``, each ``(B, n)``.
    """
    feasible = (d > 0).all(1)
    if not bool(feasible.all()):  # only the examples certified at zero width run the dual
        e1, e2 = torch.zeros_like(c1), torch.zeros_like(c2)
        index = feasible.nonzero().squeeze(1)
        if index.numel():
            e1[index], e2[index] = solve_box_problem(p[index], q[index], d[index], c1[index], c2[index],
                                                     symmetric=symmetric, steps=steps, lr=lr)
        return e1, e2
    batch, _, n = p.shape
    budget = d.clamp(min=_MIN)
    theta = torch.log(torch.full_like(d, n) / budget / d.shape[1])
    moment = torch.zeros_like(theta)
    second = torch.zeros_like(theta)
    best = torch.full((batch,), -math.inf, dtype=p.dtype, device=p.device)
    best_e1, best_e2 = torch.zeros_like(c1), torch.zeros_like(c2)
    beta1, beta2 = 0.9, 0.999
    for step in range(steps + 1):
        mu = theta.exp()
        a = (mu.unsqueeze(1) @ p).squeeze(1)
        b = (mu.unsqueeze(1) @ q).squeeze(1)
        e1, e2 = _pixel_optimum(a, b, c1, c2, symmetric)
        used = (p @ e1.unsqueeze(2) + q @ e2.unsqueeze(2)).squeeze(2)
        scale = (budget / used.clamp(min=_MIN)).min(1).values.clamp(max=1)
        objective = _log_width(e1, e2) + torch.log(scale.clamp(min=_MIN))
        better = objective > best
        best = torch.where(better, objective, best)
        best_e1 = torch.where(better.unsqueeze(1), e1 * scale.unsqueeze(1), best_e1)
        best_e2 = torch.where(better.unsqueeze(1), e2 * scale.unsqueeze(1), best_e2)
        if step == steps:
            break
        grad = mu * (budget - used) / n  # d(dual)/d(log mu), with the objective's 1/n
        moment = beta1 * moment + (1 - beta1) * grad
        second = beta2 * second + (1 - beta2) * grad * grad
        unbiased = moment / (1 - beta1 ** (step + 1))
        theta = theta - lr * unbiased / ((second / (1 - beta2 ** (step + 1))).sqrt() + 1e-12)
    return best_e1, best_e2


def relaxation_parts(model: nn.Module, x: Tensor, y: Tensor, r_lower: Tensor, r_upper: Tensor,
                     input_range: tuple[float, float] | None, intermediate: Intermediate, target: float,
                     alpha: AlphaWarmStart | None = None, index: Tensor | None = None) -> Relaxation:
    """Build CROWN on the (clipped) box ``[x - r_lower, x + r_upper]``; return ``P, Q, d`` and the caps.

    With ``alpha``: alpha-CROWN, warm-started from the slopes of the search's examples ``index`` (all if ``None``).
    """
    lower, upper = clipped_box(x, r_lower, r_upper, input_range)
    with torch.no_grad():
        if alpha is None:
            bound = linear_margin_bounds(model, lower, upper, y, intermediate=intermediate)
        else:
            bound = alpha.linear_bound(model, lower, upper, y, index, intermediate)
        p, q, d = _linear_parts(bound, x, y, target)
    c1, c2 = radius_caps(x, r_lower, r_upper, input_range)
    return Relaxation(p, q, d, c1, c2)


def crown_optimise_radii(model: nn.Module, x: Tensor, y: Tensor, init_lower: Tensor, init_upper: Tensor,
                         floor: Tensor, *, symmetric: bool, target: float,
                         input_range: tuple[float, float] | None = None, rounds: int = 4, steps: int = 100,
                         intermediate: Intermediate = "crown", alpha: AlphaWarmStart | None = None,
                         first_growth: Tensor | None = None, known: Relaxation | None = None
                         ) -> tuple[Tensor, Tensor]:
    """Per-pixel radii (asymmetric, or non-uniform when ``symmetric``) certified by CROWN relaxations.

    Round ``k`` builds CROWN on ``[x - g_k e1, x + g_k e2]`` around the best radii so far (``g_k = 1 + 1/k``, or
    ``first_growth`` for ``k = 1``, starting from the given certified box, every radius at least ``floor``) and
    solves Problem 2 on that
    relaxation by the dual method (:func:`solve_box_problem`); the best solution over the rounds and the initial
    box (by the objective) is returned. Where a round's relaxation does not even certify ``x`` (the box was grown
    too far for it: on the zoo's LeNet every example at ``g_1 = 2``), the next round grows by a quarter of that
    round's excess, ``1 + (g_k - 1) / 4``, instead (LeNet's asymmetric CROWN boxes +1.3%, FC100's +0.1%, at four
    rounds on 50 digits).

    Args:
        model: A supported model in eval mode.
        x: Correctly classified inputs ``(B, ...)``.
        y: Labels ``(B,)``.
        init_lower: Radii below ``x`` of a certified starting box (shaped like ``x``).
        init_upper: Radii above ``x`` of that box.
        floor: A certified uniform radius per example ``(B,)``: the smallest relaxation radius of a pixel
            (``0``: the example is not certified at all and keeps the starting box).
        symmetric: ``e1 = e2`` (non-uniform) instead of asymmetric radii.
        target: The margin to certify.
        input_range: Clip boxes to it, if given.
        rounds: Relaxations (network passes of CROWN).
        steps: Dual steps per round (100: the mean asymmetric widths of the zoo's LeNet and FC100 within 0.05% of 200).
        intermediate: Intermediate bounds of CROWN (``"crown"`` or ``"ibp"``).
        alpha: Relax with alpha-CROWN instead, the slopes of every example carried from round to round
            (:class:`~bounds.alpha_search.AlphaWarmStart`, one entry per example of ``x``).
        first_growth: ``g_1`` per example ``(B,)`` instead of ``2`` (e.g. where a ray search saw CROWN fail).
        known: A relaxation already built for every example (e.g. by the ray search, on the box where it failed;
            zero rows where it holds none); round 1 uses it instead of a new pass for the examples whose round-1
            box is the box it was built on (equal caps, to a relative ``1e-5``). Sound whatever the boxes: the
            solution stays inside the caps of ``known``, i.e. inside the box ``known`` was built on.

    Returns:
        ``(eps_lower, eps_upper)`` shaped like ``x``, certified by the relaxation of some round or equal to the
        starting box (the caller re-verifies).
    """
    view = (x.shape[0], *([1] * (x.dim() - 1)))
    best_l, best_u = init_lower.clone(), init_upper.clone()
    c1, c2 = radius_caps(x, best_l, best_u, input_range)
    best = torch.where(floor > 0, _log_width(c1, c2), torch.full_like(floor, -math.inf))
    floor = floor.clamp(min=1e-6).view(view)
    growth = torch.full(view, 2.0, dtype=x.dtype, device=x.device) if first_growth is None else first_growth.view(view)
    for k in range(1, rounds + 1):
        r_lower = (best_l * growth).clamp(min=floor)
        r_upper = (best_u * growth).clamp(min=floor)
        if k == 1 and known is not None:
            p, q, d, c1, c2 = _reuse_or_relax(model, x, y, r_lower, r_upper, input_range, intermediate, target, alpha,
                                              known)
        else:
            p, q, d, c1, c2 = relaxation_parts(model, x, y, r_lower, r_upper, input_range, intermediate, target,
                                               alpha)
        e1, e2 = solve_box_problem(p, q, d, c1, c2, symmetric=symmetric, steps=steps)
        feasible = (d > 0).all(1)  # the relaxation certifies x itself
        objective = torch.where(feasible, _log_width(e1, e2), torch.full_like(best, -math.inf))
        better = (objective > best).view(view)
        best = torch.maximum(objective, best)
        best_l = torch.where(better, e1.view_as(x), best_l)
        best_u = torch.where(better, e2.view_as(x), best_u)
        growth = torch.where(feasible.view(view), 1 + 1 / (k + 1), 1 + (growth - 1) / 4)
    return best_l, best_u


def _reuse_or_relax(model: nn.Module, x: Tensor, y: Tensor, r_lower: Tensor, r_upper: Tensor,
                    input_range: tuple[float, float] | None, intermediate: Intermediate, target: float,
                    alpha: AlphaWarmStart | None, known: Relaxation) -> Relaxation:
    """The relaxation on ``[x - r_lower, x + r_upper]``: ``known``'s where it was built on that box, else a new pass.

    A relaxation depends on its box only through the clipped box, i.e. through the caps: equal caps mean the same
    relaxation. A zero row of ``known`` (no relaxation) never matches, since every pixel has a positive cap on at least
    one side.
    """
    c1, c2 = radius_caps(x, r_lower, r_upper, input_range)
    same = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for caps, built in ((c1, known.c1), (c2, known.c2)):
        same = same & ((caps - built).abs() <= _SAME_BOX_RTOL * built).all(1)
    fresh = (~same).nonzero().squeeze(1)
    if fresh.numel() == 0:
        return known
    r_lower, r_upper = r_lower.expand_as(x), r_upper.expand_as(x)
    relaxed = relaxation_parts(model, x[fresh], y[fresh], r_lower[fresh], r_upper[fresh], input_range, intermediate,
                               target, alpha, fresh if alpha is not None else None)
    return known.replaced(fresh, relaxed)
