"""Amoeba Algorithm 1: Lagrangian optimisation of per-pixel radii (asymmetric or non-uniform).

Problem 2 (Amoeba Section 3.2.2) for one example with label ``t``::

    min_{eps1, eps2 > 0}  f = -sum_i log(eps1[i] + eps2[i])
    subject to           v_j = l[t] - u[j] - delta >= 0   for j != t,

where ``l, u`` are the interval bounds (Theorem 1) of the logits over ``[x - eps1, x + eps2]``. With a
slack ``c >= 0`` (``v = c``) the augmented Lagrangian of Eq. 6 is
``f + lambda^T (v - c) + eta/2 ||v - c||^2`` with the optimal slack ``c = max(0, v + lambda / eta)`` and
the dual step ``lambda <- lambda + eta (v - c)`` (Algorithm 1 line 5). That convention keeps
``lambda <= 0``; here ``mu = -lambda >= 0`` is stored instead, so (:func:`augmented_lagrangian`,
:func:`dual_update`)

    c = max(0, v - mu / eta),    s = v - c = min(v, mu / eta),
    L = f - mu^T s + eta / 2 ||s||^2,    mu <- max(0, mu - eta v),

the classical Powell-Hestenes-Rockafellar form. Each example has its own ``mu``, ``eta`` and radii, and
the loss is a sum over examples, so examples never interact.

Two multiplier updates (``LagrangianOptions.multipliers``), both with Adam on ``log eps``:

- ``"estimate"`` (the default): the multiplier of the active constraint ``v_min = min_j v_j`` is estimated at
  every step from the first-order condition along the scale direction. Scaling the box by ``tau``
  (``log eps += log tau``) changes ``f / n`` by ``-1`` (``sum_i df/d log eps_i = -1`` in Problem 2's mean form) and
  ``v_min`` by ``D = sum_i dv_min / d log eps_i < 0``, so stationarity of ``f / n - mu v_min`` along it gives
  ``mu = (sum_i df/d log eps_i) / D`` (``1 / |D|`` without clipping), and the Adam step follows the Lagrangian's
  gradient ``df/d log eps - mu dv_min/d log eps`` (the *reduced* gradient: zero along the scale direction).
  Every step then restores the constraint by one Newton step on the scale, ``log eps += (v_min - v_target) / -D``
  (at most ``e`` either way), so the iterates stay on the boundary of the feasible set, where the optimum is, and
  no multiplier has to be built up from zero. On the zoo's MNIST models 12 such steps (a constant lr 0.5, Adam
  ``beta1 = 0.5``) gave the widths 40 classical steps gave (within 0.2% on the LeNets, 2-3% wider on FC100;
  ``benchmarks/bench_certify.py``) in 35-45% of the time. The default is now 10 steps of lr 1.1 decayed linearly
  to zero: on 200 digits per model its geometric-mean widths stay within 0.1-0.2% (LeNets) and 0.4-0.6% (FC100)
  of those of the 12 constant-lr steps, with a sixth fewer gradient steps; at 100 steps the decayed schedule gives
  0.2-1.5% wider boxes than the constant one. (40 classical steps had not converged either: 120 gave 2% wider
  boxes. After 12 steps every LeNet digit was still below its width after 24, by 0.8% on average and by 0.5% or
  more for 80-90% of them, so no example is stopped early.)
- ``"dual"``: the classical update above every ``dual_every`` steps, ``eta`` multiplied by ``penalty_growth`` every
  ``penalty_every`` steps (:meth:`LagrangianOptions.classical` holds its tuned settings: 40 steps of lr 0.2).

Choices that differ from the published code (Liu et al. 2019, whose code Amoeba extends: ``eps = var^2``
from ``eps = 1e-3``, 400 SGD steps of lr ``1e-3``, ``eta`` x5 every 80 steps, duals every 5 steps, final
shrink ``eps <- 0.99 eps`` until feasible), all measured with ``benchmarks/bench_certify.py``
(its ``--certify-option`` flags tune them):

- ``eps = exp(s)``: positive, scale-free steps; Adam on ``s``.
- Warm start from the uniform radius (a feasible point), 10 iterations instead of 400.
- Each example's constraints are divided by its clean margin ``min_j (f(x)_t - f(x)_j)`` (at least
  ``delta``), so
  ``v`` is a relative margin and the multipliers are of order one whatever the logit scale or input size.
- With the classical update, a constant penalty ``eta = 1`` (no growth) with dual updates every 5 steps: on MNIST
  LeNet models larger or growing penalties made the multipliers overshoot (iterates pushed deep inside the
  feasible set) and gave 5-15% smaller boxes; the final scale search restores feasibility anyway.
- The objective is the *mean* of ``-log`` widths (Problem 2's sum divided by ``n``; same minimiser).
- With ``input_range`` the objective uses the widths of the clipped box.
- The best feasible iterate seen is kept; the final iterate is shrunk by a search on a scale factor
  ``t in (0, 1]`` (``eps <- t eps``, Algorithm 1 lines 7-10 with an optimal ``tau``; false position with the
  Illinois modification to a relative ``1e-3``, which needs 3-5 evaluations where a 12-step bisection needed 13),
  and the better of the two (by the objective) is returned.

The loop makes no host synchronisation (no ``.item()`` or Python test on a tensor): every example runs every
step, and examples never interact.

This file is one concept (Algorithm 1 and its final shrink), hence its length.
"""

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from bounds.margins import Method, margin_lower_bounds
from bounds.root_search import bracketed_root
from bounds.uniform import box_slack, clipped_box, clipped_widths, min_margin

_MIN_EPS = 1e-8
_MAX_RESTORE = 1.0  # largest restoration step on log eps (a factor e)
_SHRINK_RTOL = 1e-3  # relative precision of the final scale factor

Multipliers = Literal["estimate", "dual"]


@dataclass(frozen=True)
class LagrangianOptions:
    """Settings of :func:`optimise_radii` (defaults tuned with ``benchmarks/bench_certify.py``).

    Attributes:
        iterations: Adam steps (Algorithm 1's ``I``).
        lr: Adam learning rate on ``log eps``.
        penalty_init: Initial ``eta`` (Algorithm 1 sets ``eta^(1) = 1``; ``"dual"`` only).
        penalty_growth: ``eta`` is multiplied by this every ``penalty_every`` steps (``"dual"`` only).
        penalty_every: Steps between penalty increases (``"dual"`` only).
        dual_every: Steps between dual updates ``mu <- max(0, mu - eta v)`` (``"dual"`` only).
        shrink_steps: Most evaluations of the final scale search on ``t`` (false position, rtol ``1e-3``).
        init_scale: The warm start is ``init_scale`` times the uniform radius.
        lr_decay: Decay the learning rate linearly to zero over the iterations.
        multipliers: ``"estimate"`` (first-order multiplier estimate and a restoration step at every step) or
            ``"dual"`` (the classical augmented-Lagrangian dual updates); see the module docstring.
        momentum: Adam's ``beta1``.
    """

    iterations: int = 10
    lr: float = 1.1
    penalty_init: float = 1.0
    penalty_growth: float = 1.0
    penalty_every: int = 20
    dual_every: int = 5
    shrink_steps: int = 12
    init_scale: float = 1.0
    lr_decay: bool = True
    multipliers: Multipliers = "estimate"
    momentum: float = 0.5

    def __post_init__(self) -> None:
        checks = {
            "iterations": self.iterations >= 0,
            "lr": self.lr > 0,
            "penalty_init": self.penalty_init > 0,
            "penalty_growth": self.penalty_growth >= 1,
            "penalty_every": self.penalty_every >= 1,
            "dual_every": self.dual_every >= 1,
            "shrink_steps": self.shrink_steps >= 0,
            "init_scale": self.init_scale > 0,
            "multipliers": self.multipliers in ("estimate", "dual"),
            "momentum": 0 <= self.momentum < 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid {name}={getattr(self, name)!r}")

    @classmethod
    def classical(cls, **changes: float | int | bool) -> "LagrangianOptions":
        """The classical augmented Lagrangian's tuned settings (40 steps of a constant lr 0.2, Adam's ``beta1 = 0.9``).

        Args:
            **changes: Fields to set differently.

        Returns:
            Options with ``multipliers="dual"``.
        """
        return replace(cls(iterations=40, lr=0.2, lr_decay=False, multipliers="dual", momentum=0.9), **changes)


def log_width_objective(x: Tensor, eps_lower: Tensor, eps_upper: Tensor, input_range: tuple[float, float] | None
                        ) -> Tensor:
    """Problem 2's objective divided by ``n``: ``-mean_i log(width_i)`` per example ``(B,)``.

    Widths are those of the clipped box when ``input_range`` is given. Zero widths give ``+inf``.
    """
    return -torch.log(clipped_widths(x, eps_lower, eps_upper, input_range)).flatten(1).mean(1)


def augmented_lagrangian(objective: Tensor, v: Tensor, mu: Tensor, eta: Tensor | float) -> Tensor:
    """The augmented Lagrangian of Amoeba Eq. 6 in Powell-Hestenes-Rockafellar form, per example.

    ``L = f - mu^T s + eta / 2 ||s||^2`` with the optimal slack folded in, ``s = min(v, mu / eta)``
    (module docstring).

    Args:
        objective: ``f`` per example ``(B,)``.
        v: Constraint values ``(B, K)`` (``v >= 0`` is feasible; ``0`` at the label's own column).
        mu: Multipliers ``(B, K)``, ``>= 0``.
        eta: Penalty coefficient, a number or ``(B, 1)``.

    Returns:
        ``(B,)``, differentiable in ``objective`` and ``v``.
    """
    s = torch.minimum(v, mu / eta)
    return objective + (-mu * s + eta / 2 * s * s).sum(1)


def dual_update(mu: Tensor, v: Tensor, eta: Tensor | float, others: Tensor) -> Tensor:
    """Algorithm 1 line 5 in the ``mu = -lambda`` convention: ``mu <- max(0, mu - eta v)`` on the other classes.

    Args:
        mu: Multipliers ``(B, K)``.
        v: Constraint values ``(B, K)`` (detached by the caller when needed).
        eta: Penalty coefficient, a number or ``(B, 1)``.
        others: Bool ``(B, K)``, false at each example's label (its multiplier stays ``0``).

    Returns:
        The new multipliers ``(B, K)``.
    """
    return (mu - eta * v).clamp(min=0) * others


def _scale_to_feasible(model: nn.Module, x: Tensor, y: Tensor, eps_lower: Tensor, eps_upper: Tensor, target: float,
                       input_range: tuple[float, float] | None, steps: int, method: Method = "ibp",
                       clean_margin: Tensor | None = None, log_slope: Tensor | None = None,
                       rtol: float = _SHRINK_RTOL) -> Tensor:
    """Largest checked ``t in [0, 1]`` with ``min margin([x - t eps1, x + t eps2]) >= target`` per example.

    Algorithm 1 lines 7-10 with an optimal ``tau``: a bracketing search on ``g(t) = min margin - target``
    (``g(0) >= 0`` is the clean margin, ``g`` is nonincreasing), by false position with the Illinois modification
    and a bisection step whenever an update fails to halve the bracket, at most ``steps`` evaluations after the one
    at ``t = 1``, until ``high - low <= rtol * high`` or ``g(low) <= rtol g(0)`` (then ``low`` is within about
    ``rtol`` of the root: ``g`` falls faster as the box grows, so ``|g'| >= g(0)`` near it). With ``log_slope`` the
    first step is instead a Newton step from ``t = 1`` on ``log t``, lengthened by half (the plain step would stop
    short of the boundary for the same reason): the search then brackets the root within a few percent at once.
    Only unfinished examples are evaluated; the result is always a checked ``t`` (or ``0``).

    Args:
        model: The bounded model.
        x: Inputs ``(B, ...)``.
        y: Labels ``(B,)``.
        eps_lower: Radii below ``x`` (shaped like ``x``).
        eps_upper: Radii above ``x``.
        target: Margin to reach.
        input_range: Clip the boxes to it, if given.
        steps: Most evaluations after the one at ``t = 1``.
        method: The bound method.
        clean_margin: ``min margin`` at ``x`` itself ``(B,)`` (computed if ``None``).
        log_slope: An estimate of ``dg / d log t`` at ``t = 1`` per example ``(B,)``, negative (optional).
        rtol: Relative width of the final bracket.

    Returns:
        ``t`` per example ``(B,)``.
    """
    batch = x.shape[0]
    slack = box_slack(model, x, y, eps_lower, eps_upper, target, input_range, method)
    if clean_margin is None:
        clean_margin = min_margin(model, x, x, y, method)
    low = torch.zeros(batch, dtype=x.dtype, device=x.device)
    high = torch.ones_like(low)
    g_low = (clean_margin - target).clamp(min=0)
    close = rtol * g_low  # g(low) below this: low is within rtol of the root (g is concave enough: |g'| >= g(0))
    g_high = slack(high, torch.ones_like(low, dtype=torch.bool))
    done = g_high >= 0
    low = torch.where(done, high, low)
    g_high = g_high.clamp(max=0)
    newton = None
    if log_slope is not None:
        newton = torch.exp(1.5 * g_high / (-log_slope).clamp(min=torch.finfo(x.dtype).tiny))
    return bracketed_root(slack, low, g_low, high, g_high, done, steps=steps, rtol=rtol, first_guess=newton,
                          close=close)


def _objective_and_gradient(x: Tensor, eps_lower: Tensor, eps_upper: Tensor, input_range: tuple[float, float] | None
                            ) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`log_width_objective` ``(B,)`` and its gradients in ``log eps_lower`` and ``log eps_upper``, detached."""
    with torch.enable_grad():
        e1 = eps_lower.detach().requires_grad_(True)
        e2 = eps_upper.detach().requires_grad_(True)
        objective = log_width_objective(x, e1, e2, input_range)
        g1, g2 = torch.autograd.grad(objective.sum(), [e1, e2])
    return objective.detach(), g1 * e1.detach(), g2 * e2.detach()


def _per_example_sum(values: Tensor) -> Tensor:
    return values.flatten(1).sum(1)


def optimise_radii(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    init_radius: Tensor,
    *,
    symmetric: bool,
    delta: float,
    target: float,
    input_range: tuple[float, float] | None = None,
    options: LagrangianOptions | None = None,
    progress: bool = False,
    method: Method = "ibp",
) -> tuple[Tensor, Tensor]:
    """Solve Problem 2 approximately by Algorithm 1 for a batch; returns radii that satisfy the constraints.

    Args:
        model: A model :func:`~bounds.interval.interval_bounds` supports, already in eval mode.
        x: Correctly classified inputs ``(B, ...)`` (no gradient needed).
        y: Labels ``(B,)``.
        init_radius: Warm start per example ``(B,)``, normally the certified uniform radius; examples with ``0``
            (none certified, e.g. a clean margin below ``target``) get zero radii without optimisation.
        symmetric: ``True`` for the non-uniform bound (``eps1 = eps2``, Liu et al. 2019), ``False`` for
            Amoeba's asymmetric bound.
        delta: The ``delta`` of the constraints ``v >= 0``.
        target: Margin the returned radii must reach in the final scale search (``>= delta``; the caller
            adds a little slack against rounding differences between batched evaluations).
        input_range: Clip the box to ``(low, high)`` in the constraints and the objective, if given.
        options: Optimiser settings.
        progress: Show a tqdm bar over the iterations.
        method: The margin bound in the constraints: ``"ibp"`` or ``"crown"`` (differentiable, but one CROWN
            pass per iteration; :func:`bounds.linear_certify.crown_optimise_radii` is the fast CROWN path).

    Returns:
        ``(eps_lower, eps_upper)`` shaped like ``x``; for every example either both zero or certified at
        ``target`` by the last check made here (the caller re-verifies).
    """
    opts = options or LagrangianOptions()
    live = init_radius > 0
    if not bool(live.all()):  # no certified uniform radius: nothing to start from, zero radii (uncertified)
        eps_lower, eps_upper = torch.zeros_like(x), torch.zeros_like(x)
        if bool(live.any()):
            eps_lower[live], eps_upper[live] = optimise_radii(
                model, x[live], y[live], init_radius[live], symmetric=symmetric, delta=delta, target=target,
                input_range=input_range, options=opts, progress=progress, method=method)
        return eps_lower, eps_upper
    batch = x.shape[0]
    view = (batch, *([1] * (x.dim() - 1)))
    start = (init_radius.clamp(min=_MIN_EPS) * opts.init_scale).log().view(view).expand_as(x)
    log_lower = start.clone().requires_grad_(True)
    log_upper = log_lower if symmetric else start.clone().requires_grad_(True)
    params = [log_lower] if symmetric else [log_lower, log_upper]
    optimiser = torch.optim.Adam(params, lr=opts.lr, betas=(opts.momentum, 0.999))

    classes = None
    others = mu = torch.zeros(0)
    eta = torch.full((batch, 1), opts.penalty_init, dtype=x.dtype, device=x.device)
    best_objective = torch.full((batch,), float("inf"), dtype=x.dtype, device=x.device)
    best_lower = torch.zeros_like(x)
    best_upper = torch.zeros_like(x)

    with torch.no_grad():  # constraints are measured in units of the clean margin (see the module docstring)
        clean_margin = min_margin(model, x, x, y, method)
        scale = clean_margin.clamp(min=delta).view(batch, 1)
    v_target = (target - delta) / scale.squeeze(1)  # the restoration aims at the final check's margin
    tiny = torch.finfo(x.dtype).tiny
    log_slope = None  # d min margin / d log t at the last iterate (estimate mode), for the final scale search

    for step in tqdm(range(opts.iterations), desc="Algorithm 1", disable=not progress, leave=False):
        eps_lower, eps_upper = log_lower.exp(), log_upper.exp()
        lower, upper = clipped_box(x, eps_lower, eps_upper, input_range)
        margins = margin_lower_bounds(model, lower, upper, y, method)
        if classes is None:
            classes = margins.shape[1]
            others = ~torch.nn.functional.one_hot(y, classes).bool()
            mu = torch.zeros((batch, classes), dtype=x.dtype, device=x.device)
        if opts.multipliers == "dual":
            v = torch.where(others, margins - delta, torch.zeros_like(margins)) / scale
            objective = log_width_objective(x, eps_lower, eps_upper, input_range)
            grads = list(torch.autograd.grad(augmented_lagrangian(objective, v, mu, eta).sum(), params))
            objective = objective.detach()
        else:
            v_min = ((margins - delta) / scale).min(1).values  # +inf at the label's own column is never the minimum
            constraint = list(torch.autograd.grad(v_min.sum(), params))
            with torch.no_grad():
                objective, go_lower, go_upper = _objective_and_gradient(x, eps_lower, eps_upper, input_range)
                objective_grads = [go_lower + go_upper] if symmetric else [go_lower, go_upper]
                ray_constraint = sum(_per_example_sum(g) for g in constraint).clamp(max=-tiny)  # D < 0
                ray_objective = sum(_per_example_sum(g) for g in objective_grads)
                multiplier = (ray_objective / ray_constraint).view(view)  # mu of f / n - mu v_min
                grads = [go - multiplier * gv for go, gv in zip(objective_grads, constraint, strict=True)]
        with torch.no_grad():
            # Keep the best feasible iterate (its margins were just computed for exactly these radii).
            feasible = (margins.min(1).values >= target) & (objective < best_objective)
            best_objective = torch.where(feasible, objective, best_objective)
            best_lower = torch.where(feasible.view(view), eps_lower, best_lower)
            best_upper = torch.where(feasible.view(view), eps_upper, best_upper)
            if opts.multipliers == "dual":
                if (step + 1) % opts.dual_every == 0:
                    mu = dual_update(mu, v, eta, others)
                if (step + 1) % opts.penalty_every == 0:
                    eta = eta * opts.penalty_growth
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        if opts.lr_decay:
            for group in optimiser.param_groups:
                group["lr"] = opts.lr * (1 - step / opts.iterations)
        optimiser.step()
        if opts.multipliers == "estimate":
            with torch.no_grad():  # one Newton step on the scale towards v_min = v_target (module docstring)
                restore = ((v_min.detach() - v_target) / -ray_constraint).clamp(min=-_MAX_RESTORE, max=_MAX_RESTORE)
                restore = torch.nan_to_num(restore, nan=0.0).view(view)
                for p in params:
                    p.add_(restore)
                log_slope = ray_constraint * scale.squeeze(1)

    with torch.no_grad():
        eps_lower, eps_upper = log_lower.exp(), log_upper.exp()
        t = _scale_to_feasible(model, x, y, eps_lower, eps_upper, target, input_range, opts.shrink_steps,
                               method, clean_margin, log_slope).view(view)
        final_lower, final_upper = t * eps_lower, t * eps_upper
        final_objective = log_width_objective(x, final_lower, final_upper, input_range)
        use_final = (final_objective < best_objective).view(view)
        return torch.where(use_final, final_lower, best_lower), torch.where(use_final, final_upper, best_upper)
