"""Amoeba Algorithm 1: augmented-Lagrangian optimisation of per-pixel radii (asymmetric or non-uniform).

Problem 2 (Amoeba Section 3.2.2) for one example with label ``t``::

    min_{eps1, eps2 > 0}  -sum_i log(eps1[i] + eps2[i])
    subject to           v_j = l[t] - u[j] - delta >= 0   for j != t,

where ``l, u`` are the interval bounds (Theorem 1) of the logits over ``[x - eps1, x + eps2]``. With a
slack ``c >= 0`` (``v = c``) the augmented Lagrangian of Eq. 6 is
``f + lambda^T (v - c) + eta/2 ||v - c||^2`` with the optimal slack ``c = max(0, v + lambda / eta)`` and
the dual step ``lambda <- lambda + eta (v - c)`` (Algorithm 1 line 5). That convention keeps
``lambda <= 0``; here ``mu = -lambda >= 0`` is stored instead, so

    c = max(0, v - mu / eta),    s = v - c = min(v, mu / eta),
    L = f - mu^T s + eta / 2 ||s||^2,    mu <- max(0, mu - eta v),

the classical Powell-Hestenes-Rockafellar form. Each example has its own ``mu``, ``eta`` and radii, and
the loss is a sum over examples, so examples never interact.

Choices that differ from the published code (Liu et al. 2019, whose code Amoeba extends: ``eps = var^2``
from ``eps = 1e-3``, 400 SGD steps of lr ``1e-3``, ``eta`` x5 every 80 steps, duals every 5 steps, final
shrink ``eps <- 0.99 eps`` until feasible), all measured with ``benchmarks/bench_certify.py``
(its ``--certify-option`` flags tune them):

- ``eps = exp(s)``: positive, scale-free steps; Adam on ``s`` (lr 0.2, no decay).
- Warm start from the uniform radius (a feasible point), 40 iterations instead of 400.
- Each example's constraints are divided by its clean margin ``min_j (f(x)_t - f(x)_j)`` (at least
  ``delta``), so
  ``v`` is a relative margin and the multipliers are of order one whatever the logit scale or input size.
- A constant penalty ``eta = 1`` (no growth) with dual updates every 5 steps: on MNIST LeNet models
  larger or growing penalties made the multipliers overshoot (iterates pushed deep inside the feasible
  set) and gave 5-15% smaller boxes; the final scale search restores feasibility anyway.
- The objective is the *mean* of ``-log`` widths (Problem 2's sum divided by ``n``; same minimiser).
- With ``input_range`` the objective uses the widths of the clipped box.
- The best feasible iterate seen is kept; the final iterate is shrunk by a bisection on a scale factor
  ``t in (0, 1]`` (``eps <- t eps``, Algorithm 1 lines 7-10 with an optimal ``tau``), and the better of
  the two (by the objective) is returned.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from bounds.margins import Method, margin_lower_bounds
from bounds.uniform import clipped_box, clipped_widths, min_margin

_MIN_EPS = 1e-8


@dataclass(frozen=True)
class LagrangianOptions:
    """Settings of :func:`optimise_radii` (defaults tuned with ``benchmarks/bench_certify.py``).

    Attributes:
        iterations: Adam steps (Algorithm 1's ``I``).
        lr: Adam learning rate on ``log eps``.
        penalty_init: Initial ``eta`` (Algorithm 1 sets ``eta^(1) = 1``).
        penalty_growth: ``eta`` is multiplied by this every ``penalty_every`` steps.
        penalty_every: Steps between penalty increases.
        dual_every: Steps between dual updates ``mu <- max(0, mu - eta v)``.
        shrink_steps: Bisection steps on the final scale factor ``t``.
        init_scale: The warm start is ``init_scale`` times the uniform radius.
        lr_decay: Decay the learning rate linearly to zero over the iterations.
    """

    iterations: int = 40
    lr: float = 0.2
    penalty_init: float = 1.0
    penalty_growth: float = 1.0
    penalty_every: int = 20
    dual_every: int = 5
    shrink_steps: int = 12
    init_scale: float = 1.0
    lr_decay: bool = False

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
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid {name}={getattr(self, name)!r}")


def log_width_objective(x: Tensor, eps_lower: Tensor, eps_upper: Tensor, input_range: tuple[float, float] | None
                        ) -> Tensor:
    """Problem 2's objective divided by ``n``: ``-mean_i log(width_i)`` per example ``(B,)``.

    Widths are those of the clipped box when ``input_range`` is given. Zero widths give ``+inf``.
    """
    return -torch.log(clipped_widths(x, eps_lower, eps_upper, input_range)).flatten(1).mean(1)


def _scale_to_feasible(model: nn.Module, x: Tensor, y: Tensor, eps_lower: Tensor, eps_upper: Tensor, target: float,
                       input_range: tuple[float, float] | None, steps: int, method: Method = "ibp") -> Tensor:
    """Largest checked ``t in [0, 1]`` with ``min margin([x - t eps1, x + t eps2]) >= target`` per example."""
    batch = x.shape[0]
    view = (batch, *([1] * (x.dim() - 1)))

    def ok(t: Tensor, active: Tensor) -> Tensor:
        index = active.nonzero().squeeze(1)
        result = torch.zeros_like(active)
        if index.numel():
            tv = t[index].view(-1, *view[1:])
            lower, upper = clipped_box(x[index], tv * eps_lower[index], tv * eps_upper[index], input_range)
            result[index] = min_margin(model, lower, upper, y[index], method) >= target
        return result

    low = torch.zeros(batch, dtype=x.dtype, device=x.device)
    high = torch.ones_like(low)
    done = ok(high, torch.ones_like(low, dtype=torch.bool))
    low = torch.where(done, high, low)
    for _ in range(steps):
        if bool(done.all()):
            break
        mid = (low + high) / 2
        good = ok(mid, ~done)
        low = torch.where(good & ~done, mid, low)
        high = torch.where(~good & ~done, mid, high)
    return low


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
    optimiser = torch.optim.Adam(params, lr=opts.lr)

    classes = None
    mu = torch.zeros(0)
    eta = torch.full((batch, 1), opts.penalty_init, dtype=x.dtype, device=x.device)
    best_objective = torch.full((batch,), float("inf"), dtype=x.dtype, device=x.device)
    best_lower = torch.zeros_like(x)
    best_upper = torch.zeros_like(x)

    with torch.no_grad():  # constraints are measured in units of the clean margin (see the module docstring)
        scale = min_margin(model, x, x, y, method).clamp(min=delta).view(batch, 1)

    for step in tqdm(range(opts.iterations), desc="Algorithm 1", disable=not progress, leave=False):
        eps_lower, eps_upper = log_lower.exp(), log_upper.exp()
        lower, upper = clipped_box(x, eps_lower, eps_upper, input_range)
        margins = margin_lower_bounds(model, lower, upper, y, method)
        if classes is None:
            classes = margins.shape[1]
            others = ~torch.nn.functional.one_hot(y, classes).bool()
            mu = torch.zeros((batch, classes), dtype=x.dtype, device=x.device)
        v = torch.where(others, margins - delta, torch.zeros_like(margins)) / scale
        objective = log_width_objective(x, eps_lower, eps_upper, input_range)
        s = torch.minimum(v, mu / eta)
        loss = (objective + (-mu * s + eta / 2 * s * s).sum(1)).sum()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            # Keep the best feasible iterate (its margins were just computed for exactly these radii).
            feasible = (margins.min(1).values >= target) & (objective < best_objective)
            best_objective = torch.where(feasible, objective, best_objective)
            best_lower = torch.where(feasible.view(view), eps_lower, best_lower)
            best_upper = torch.where(feasible.view(view), eps_upper, best_upper)
            if (step + 1) % opts.dual_every == 0:
                mu = (mu - eta * v).clamp(min=0) * others
            if (step + 1) % opts.penalty_every == 0:
                eta = eta * opts.penalty_growth
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        if opts.lr_decay:
            for group in optimiser.param_groups:
                group["lr"] = opts.lr * (1 - step / opts.iterations)
        optimiser.step()

    with torch.no_grad():
        eps_lower, eps_upper = log_lower.exp(), log_upper.exp()
        t = _scale_to_feasible(model, x, y, eps_lower, eps_upper, target, input_range, opts.shrink_steps,
                               method).view(view)
        final_lower, final_upper = t * eps_lower, t * eps_upper
        final_objective = log_width_objective(x, final_lower, final_upper, input_range)
        use_final = (final_objective < best_objective).view(view)
        return torch.where(use_final, final_lower, best_lower), torch.where(use_final, final_upper, best_upper)
