"""Certified robustness bounds of a batch: uniform, non-uniform (Liu et al. 2019) and asymmetric (Amoeba).

:func:`certify` is the one entry point. Every returned box is re-verified with the chosen bound method
(:func:`~bounds.interval.interval_bounds`, or :func:`~bounds.crown.crown_margin_bounds`, which is never looser)
before it is reported: an example is certified only if the margin specification (lower bound of
``f_y - f_j >= delta`` for all ``j != y``) holds on its final box. ``method="alpha-crown"``
(:mod:`bounds.alpha_crown`) runs the CROWN searches with optimised ReLU slopes, warm-started from round to round.

This file is one concept (the certification entry point: checks, the three kinds' pipeline, the final
re-verification), hence its length.
"""

import time
from dataclasses import replace

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from bounds.alpha_search import AlphaWarmStart
from bounds.certificate import KINDS, Certificate, Kind
from bounds.crown_radius import crown_radius_bracket, crown_uniform_radius, ray_shape
from bounds.interval import check_model_input, check_supported
from bounds.lagrangian import LagrangianOptions, log_width_objective, optimise_radii
from bounds.linear_certify import crown_optimise_radii
from bounds.margins import METHODS, Method, validate_labels
from bounds.modes import evaluation_mode
from bounds.uniform import min_margin, uniform_radius

# The searches aim at ``delta * (1 + _TARGET_SLACK)`` so that the final check at ``delta`` does not
# depend on last-bit differences between evaluations of the same box in different batches.
_TARGET_SLACK = 0.05
_RANGE_ATOL = 1e-6

_LINEAR = ("crown", "alpha-crown")  # the methods certified by linear relaxations (bounds.linear_certify)
# CROWN boxes failing the final check (rare: the fresh relaxation on the exact box is not guaranteed to be at
# least as tight as the one they were solved on) are shrunk by this factor up to _RETRIES times.
_RETRY_SHRINK = 0.9
_RETRIES = 3
_SHAPED_PASSES = 2  # CROWN passes along the shaped ray (method="crown", non-uniform kinds); then closed-form rounds
# Its first box: this fraction of the root of the network's linearisation at x along the ray (CROWN's root is 0.12-0.58
# of it on the zoo's LeNet, median 0.19; the uniform search's 0.5 made the first pass fail almost always).
_SHAPED_FIRST = 0.2
# The first closed-form round after it relaxes the box grown by the ratio of the smallest radius seen to fail along the
# ray to the certified one, clipped to [_MIN_GROWTH, 2] (2 where nothing failed). That ratio's median is 1.2 on the
# zoo's normal LeNet and 1.9 on FC100; a fixed 2 made the first round's relaxation fail at x itself for every LeNet
# digit. Mean asymmetric CROWN widths, 50 digits, ratio vs 2: LeNet normal / PGD x1.026 / x1.052, FC100 x1.030 / x1.025.
_MIN_GROWTH = 1.05
# The non-uniform kinds need the uniform radius only as their warm start and fallback box: it is searched to this
# relative tolerance (or uniform_rtol, if coarser). LeNet asymmetric IBP: 16 interval evaluations instead of 24, the
# widths equal to 5 digits.
_START_RTOL = 1e-2


def _validate(model: nn.Module, x: Tensor, y: Tensor, kind: str, delta: float, clip: bool,
              input_range: tuple[float, float], uniform_rtol: float, batch_size: int | None) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"x must be a floating tensor (B, ...), got {getattr(x, 'dtype', type(x))} of shape "
                         f"{tuple(getattr(x, 'shape', ()))}")
    check_model_input(model, x)
    validate_labels(y, x.shape[0])
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite (found NaN or inf)")
    if not delta > 0:
        raise ValueError(f"delta must be positive, got {delta}")
    low, high = input_range
    if not low < high:
        raise ValueError(f"input_range must be (low, high) with low < high, got {input_range}")
    if clip and x.numel() and (float(x.min()) < low - _RANGE_ATOL or float(x.max()) > high + _RANGE_ATOL):
        raise ValueError(
            f"clip_to_input_range needs x inside {input_range}, got values in [{float(x.min())}, {float(x.max())}]"
        )
    if not 0 < uniform_rtol < 1:
        raise ValueError(f"uniform_rtol must lie in (0, 1), got {uniform_rtol}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


def _validate_outputs(model: nn.Module, x: Tensor, y: Tensor) -> None:
    """Check that the model maps ``x`` to logits ``(B, K)`` and the labels lie in ``[0, K)`` (one forward pass)."""
    with torch.no_grad(), evaluation_mode(model):
        logits = model(x[:1])
    if logits.dim() != 2:
        raise ValueError(f"the model must map inputs to logits (B, K), got output shape {tuple(logits.shape)}")
    validate_labels(y, x.shape[0], logits.shape[1])


def _lagrangian_options(*, iterations: int | None, lr: float | None, penalty_init: float | None,
                        penalty_growth: float | None, penalty_every: int | None, dual_every: int | None,
                        shrink_steps: int, init_scale: float, lr_decay: bool | None) -> LagrangianOptions:
    """:func:`certify`'s Algorithm 1 settings: classical dual updates when any penalty setting is given."""
    penalties = {"penalty_init": penalty_init, "penalty_growth": penalty_growth, "penalty_every": penalty_every,
                 "dual_every": dual_every}
    given = {name: value for name, value in penalties.items() if value is not None}
    base = LagrangianOptions.classical() if given else LagrangianOptions()
    steps = {"iterations": iterations, "lr": lr, "lr_decay": lr_decay}
    return replace(base, **given, **{name: value for name, value in steps.items() if value is not None},
                   shrink_steps=shrink_steps, init_scale=init_scale)


def _prefers(x: Tensor, low_a: Tensor, up_a: Tensor, low_b: Tensor, up_b: Tensor,
             input_range: tuple[float, float] | None) -> Tensor:
    """Per example ``(B,)``: whether box ``a`` (radii) has the better Problem 2 objective than box ``b``."""
    with torch.no_grad():
        return log_width_objective(x, low_a, up_a, input_range) < log_width_objective(x, low_b, up_b, input_range)


def _better_box(x: Tensor, low_a: Tensor, up_a: Tensor, low_b: Tensor, up_b: Tensor,
                input_range: tuple[float, float] | None) -> tuple[Tensor, Tensor]:
    """Per example the box (radii) with the better Problem 2 objective (``b`` on ties)."""
    better = _prefers(x, low_a, up_a, low_b, up_b, input_range).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(better, low_a, low_b), torch.where(better, up_a, up_b)


def _certify_chunk(model: nn.Module, x: Tensor, y: Tensor, kind: str, delta: float,
                   input_range: tuple[float, float] | None, bracket: float, uniform_rtol: float,
                   options: LagrangianOptions, progress: bool, method: Method = "ibp", crown_rounds: int = 4
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Radii and certified flags of one chunk (model already in eval mode, gradients enabled)."""
    eps_lower = torch.zeros_like(x)
    eps_upper = torch.zeros_like(x)
    certified = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    index = correct.nonzero().squeeze(1)
    if index.numel() == 0:
        return eps_lower, eps_upper, certified
    xs, ys = x[index], y[index]
    view = (xs.shape[0], *([1] * (x.dim() - 1)))
    target = delta * (1 + _TARGET_SLACK)
    ibp_radius = uniform_radius(model, xs, ys, delta=target, input_range=input_range, bracket=bracket,
                                rtol=uniform_rtol if kind == "uniform" else max(uniform_rtol, _START_RTOL))
    radius = ibp_radius
    # method="crown" certifies the non-uniform kinds along the ray of the interval solution's shape (below).
    shaped = method == "crown" and kind != "uniform"
    if method in _LINEAR and not shaped:  # the uniform kind, and alpha-CROWN's start
        # A box interval propagation certifies is certified by CROWN too (never looser): CROWN's searches start
        # from the interval solution where it is better, so method="crown" never reports a smaller box.
        crown_radius = crown_uniform_radius(model, xs, ys, target=target, input_range=input_range,
                                            rounds=2 * crown_rounds + 2,
                                            cap=bracket)
        radius = torch.maximum(ibp_radius, crown_radius)
    # alpha-CROWN goes on from CROWN's results with its own bound (never looser on any box: CROWN's box is its
    # fallback), its slopes carried from round to round, so it never reports a smaller box than method="crown".
    linear_radius, alpha = radius, None
    if method == "alpha-crown":
        alpha = AlphaWarmStart(xs.shape[0])
        alpha_radius = crown_uniform_radius(model, xs, ys, target=target, input_range=input_range,
                                            rounds=crown_rounds, cap=bracket, alpha=alpha, start=radius)
        radius = torch.maximum(radius, alpha_radius)
    # An example without a certified uniform radius (e.g. a clean margin below delta) has no box to start from:
    # it stays uncertified with zero radii, and the rest of the batch goes on without it.
    live = radius > 0
    if not bool(live.all()):
        index, xs, ys, radius, ibp_radius = index[live], xs[live], ys[live], radius[live], ibp_radius[live]
        linear_radius = linear_radius[live]
        alpha = alpha.select(live.nonzero().squeeze(1)) if alpha is not None else None
        if index.numel() == 0:
            return eps_lower, eps_upper, certified
        view = (xs.shape[0], *view[1:])
    low = radius.view(view).expand_as(xs)
    up = low
    fallback_low = fallback_up = linear_radius.view(view).expand_as(xs)  # method="crown"'s box
    if kind != "uniform":
        opt_low, opt_up = optimise_radii(model, xs, ys, ibp_radius, symmetric=kind == "nonuniform", delta=delta,
                                         target=target, input_range=input_range, options=options, progress=progress)
        if method in _LINEAR:
            # The largest box CROWN certifies along the ray [x - R s1, x + R s2] of the interval solution's shape
            # (bounds.crown_radius.ray_shape): a root search on R, one CROWN pass on each box tried, then rounds
            # of crown_optimise_radii (crown_rounds passes in all). The interval box stays the fallback (CROWN is
            # never looser), so no box is smaller than with IBP.
            shape = ray_shape(opt_low, opt_up)
            scale, failed, failed_relaxation = crown_radius_bracket(
                model, xs, ys, target=target, input_range=input_range, rounds=min(crown_rounds, _SHAPED_PASSES),
                cap=bracket, shape=shape, first=_SHAPED_FIRST, keep_failed=crown_rounds > _SHAPED_PASSES)
            # The first closed-form round relaxes the box grown to where CROWN was seen to fail along the ray
            # (at most 2x, at least _MIN_GROWTH).
            growth = torch.where(torch.isfinite(failed) & (scale > 0), failed / scale.clamp(min=1e-12),
                                 torch.full_like(scale, 2.0)).clamp(min=_MIN_GROWTH, max=2.0)
            scale = scale.view(view)
            shaped_low, shaped_up = _better_box(xs, scale * shape[0], scale * shape[1], opt_low, opt_up, input_range)
            if crown_rounds > _SHAPED_PASSES:  # closed-form rounds on CROWN over grown boxes (crown_optimise_radii)
                # Where the first round's box is the one the ray search failed on (the ray box kept, its growth not
                # clipped: 78-80% of the zoo LeNets' digits), the search's relaxation of it is reused, not rebuilt.
                shaped_low, shaped_up = crown_optimise_radii(model, xs, ys, shaped_low, shaped_up, ibp_radius,
                                                             symmetric=kind == "nonuniform", target=target,
                                                             input_range=input_range,
                                                             rounds=crown_rounds - _SHAPED_PASSES,
                                                             first_growth=growth, known=failed_relaxation)
            if not shaped:  # alpha-CROWN: CROWN's box is the better of that and CROWN's asymmetric rounds
                start_low, start_up = _better_box(xs, opt_low, opt_up, fallback_low, fallback_up, input_range)
                opt_low, opt_up = crown_optimise_radii(model, xs, ys, start_low, start_up, linear_radius,
                                                       symmetric=kind == "nonuniform", target=target,
                                                       input_range=input_range, rounds=crown_rounds)
                shaped_low, shaped_up = _better_box(xs, shaped_low, shaped_up, opt_low, opt_up, input_range)
            opt_low, opt_up = shaped_low, shaped_up
        if (method == "ibp" or shaped) and uniform_rtol < _START_RTOL:  # the interval uniform box, to _START_RTOL
            # Where the exact uniform box may be the better one (its radius is at most 1 / (1 - _START_RTOL) times this
            # one), its radius is found to uniform_rtol, as for kind="uniform".
            bound = fallback_low / (1 - _START_RTOL)
            keep = (~_prefers(xs, opt_low, opt_up, bound, bound, input_range)).nonzero().squeeze(1)
            if keep.numel():
                fine = linear_radius.clone()
                fine[keep] = torch.maximum(fine[keep], uniform_radius(model, xs[keep], ys[keep], delta=target,
                                                                      input_range=input_range, bracket=bracket,
                                                                      rtol=uniform_rtol))
                fallback_low = fallback_up = fine.view(view).expand_as(xs)
        # Keep the better of the optimised box and the (feasible) uniform box, by Problem 2's objective.
        fallback_low, fallback_up = _better_box(xs, opt_low, opt_up, fallback_low, fallback_up, input_range)
        low, up = fallback_low, fallback_up
        if alpha is not None:
            start_low, start_up = _better_box(xs, radius.view(view).expand_as(xs), radius.view(view).expand_as(xs),
                                              fallback_low, fallback_up, input_range)
            opt_low, opt_up = crown_optimise_radii(model, xs, ys, start_low, start_up, radius,
                                                   symmetric=kind == "nonuniform", target=target,
                                                   input_range=input_range, rounds=crown_rounds, alpha=alpha)
            low, up = _better_box(xs, opt_low, opt_up, start_low, start_up, input_range)
    with torch.no_grad():
        if input_range is not None:  # report the clipped box's radii
            low = torch.minimum(low, xs - input_range[0]).clamp(min=0)
            up = torch.minimum(up, input_range[1] - xs).clamp(min=0)
            fallback_low = torch.minimum(fallback_low, xs - input_range[0]).clamp(min=0)
            fallback_up = torch.minimum(fallback_up, input_range[1] - xs).clamp(min=0)
        # Final check (always): re-verify exactly the reported box [x - eps_lower, x + eps_upper].
        ok = min_margin(model, xs - low, xs + up, ys, method) >= delta
        back = (~ok).nonzero().squeeze(1) if alpha is not None else ok.new_zeros(0, dtype=torch.long)
        if back.numel():  # alpha-CROWN's box failed: CROWN's box, which alpha-CROWN certifies whenever CROWN does
            low, up = low.clone(), up.clone()
            low[back], up[back] = fallback_low[back], fallback_up[back]
            ok[back] = min_margin(model, xs[back] - low[back], xs[back] + up[back], ys[back], method) >= delta
        if method in _LINEAR:
            low, up = low.clone(), up.clone()
            for _ in range(_RETRIES):
                retry = (~ok & (radius > 0)).nonzero().squeeze(1)
                if retry.numel() == 0:
                    break
                low[retry], up[retry] = low[retry] * _RETRY_SHRINK, up[retry] * _RETRY_SHRINK
                ok[retry] = min_margin(model, xs[retry] - low[retry], xs[retry] + up[retry], ys[retry], method) >= delta
        okv = ok.view(view)
        eps_lower[index] = torch.where(okv, low, torch.zeros_like(xs))
        eps_upper[index] = torch.where(okv, up, torch.zeros_like(xs))
        certified[index] = ok
    return eps_lower, eps_upper, certified


def certify(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    kind: Kind = "asymmetric",
    *,
    delta: float = 1e-4,
    clip_to_input_range: bool = False,
    input_range: tuple[float, float] = (-1.0, 1.0),
    seed: int = 0,
    iterations: int | None = None,
    lr: float | None = None,
    penalty_init: float | None = None,
    penalty_growth: float | None = None,
    penalty_every: int | None = None,
    dual_every: int | None = None,
    shrink_steps: int = LagrangianOptions.shrink_steps,
    init_scale: float = LagrangianOptions.init_scale,
    lr_decay: bool | None = None,
    uniform_rtol: float = 1e-4,
    batch_size: int | None = None,
    progress: bool = False,
    method: Method = "ibp",
    crown_rounds: int = 4,
) -> Certificate:
    """Certify per-example boxes around ``x`` in which the model keeps label ``y`` (Amoeba Problems 1-2).

    - ``"uniform"``: the largest scalar radius ``r`` per example with ``[x - r, x + r]`` certified, by
      a bracketing search (exact for interval propagation up to the relative tolerance ``uniform_rtol``).
    - ``"nonuniform"``: per-pixel ``eps1 = eps2`` (Liu et al., ICML 2019) by Algorithm 1.
    - ``"asymmetric"``: per-pixel ``eps1, eps2`` (Amoeba Algorithm 1, augmented Lagrangian of Problem 2,
      see :mod:`bounds.lagrangian`), warm-started from the uniform radius; per example the better of the
      optimised and the uniform box is kept (by Problem 2's objective).

    Every example gets its own multipliers, penalty and final scale. Examples misclassified at ``x``, and
    examples without a certified uniform radius (e.g. a clean margin below ``delta``), are not certified and
    get zero radii; the rest of the batch is certified as if they were not there. Finally every box is re-checked
    with the bound method (``margin >= delta``); an example that fails is returned uncertified with zero radii.

    Runs with gradients enabled even inside ``torch.no_grad()``/``torch.inference_mode()`` on cloned
    inputs, with the model in eval mode (every submodule's mode is restored afterwards); parameters and
    their ``requires_grad`` flags are not touched. Deterministic: the algorithms draw no random numbers
    (the warm start is the uniform radius), so equal inputs give bit-identical results; ``seed`` is kept
    in the signature for randomised options and never touches the global RNG.

    Args:
        model: Maps inputs to logits ``(B, K)``; any model whose forward traces into operators the bound engine
            supports (:mod:`bounds.engine`; CROWN of branching graphs uses interval intermediate bounds).
        x: Inputs ``(B, ...)``.
        y: Labels ``(B,)``, integers in ``[0, K)``.
        kind: ``"asymmetric"``, ``"nonuniform"`` or ``"uniform"``.
        delta: The margin the certificate proves.
        clip_to_input_range: Certify the box intersected with ``input_range`` (optimisation and final check),
            and report the clipped radii (then ``eps_lower`` and ``eps_upper`` may differ at the range
            ends even for the symmetric kinds).
        input_range: ``(low, high)`` of valid inputs; also sets the initial uniform bisection bracket.
        seed: Reserved for randomised options (none of the current ones draws random numbers).
        iterations: Algorithm 1 iterations (``I``); ``None``: 10 with the default multiplier estimates, 40 with the
            classical dual updates (:class:`~bounds.lagrangian.LagrangianOptions`).
        lr: Adam learning rate on ``log eps``; ``None``: 1.1 (decayed linearly to zero), or a constant 0.2 with the
            classical dual updates.
        penalty_init: Initial augmented-Lagrangian coefficient ``eta``. Giving any of ``penalty_init``,
            ``penalty_growth``, ``penalty_every`` or ``dual_every`` runs the classical augmented Lagrangian (dual
            updates of Algorithm 1 line 5, :meth:`~bounds.lagrangian.LagrangianOptions.classical`, the default
            before per-step multiplier estimates replaced it) with them; ``None`` for all four (the default): the
            multipliers are estimated at every step (:mod:`bounds.lagrangian`).
        penalty_growth: Factor applied to ``eta`` every ``penalty_every`` iterations (classical updates).
        penalty_every: Iterations between penalty increases (classical updates).
        dual_every: Iterations between dual updates (classical updates).
        shrink_steps: Most evaluations of the final scale-factor search (Algorithm 1 lines 7-10).
        init_scale: Warm start at ``init_scale`` times the uniform radius.
        lr_decay: Decay Adam's learning rate linearly to zero; ``None``: yes with the default multiplier estimates, no
            with the classical dual updates.
        uniform_rtol: Relative tolerance of the uniform radius search (the non-uniform kinds start from a uniform
            radius found to 1%, or to ``uniform_rtol`` if that is coarser).
        batch_size: Certify in chunks of this many examples (``None``: all at once). Results do not
            depend on it up to floating-point rounding.
        progress: Show tqdm progress bars.
        method: The bound method: ``"ibp"`` (Amoeba Theorem 1, the default) or ``"crown"`` (linear relaxation,
            :mod:`bounds.crown`, never looser than IBP). With ``"crown"`` the uniform kind is CROWN's largest
            uniform radius (:func:`~bounds.crown_radius.crown_uniform_radius`); for the other two kinds the
            interval solution is computed first (it is certified by CROWN too), then CROWN certifies the largest box
            along the ray ``[x - R s1, x + R s2]`` of that solution's shape
            (:func:`~bounds.crown_radius.ray_shape`) by a root search on ``R``, one CROWN pass on each box tried,
            and grows it by rounds of Problem 2 solved in closed form on CROWN over grown boxes (first to where
            the ray search saw CROWN fail, at most 2x, then 1.5x, ...; less after a round whose relaxation fails at
            ``x``; :func:`~bounds.linear_certify.crown_optimise_radii`); the
            interval box is the fallback, so no example gets a smaller box than with ``"ibp"``. The final check is
            a fresh CROWN (and IBP) evaluation of exactly the returned box. ``"alpha-crown"``
            (:mod:`bounds.alpha_crown`, chain models only) takes as CROWN's box the better of that box and the radii
            grown on CROWN relaxations in closed form from CROWN's largest uniform radius (``crown_rounds`` rounds of
            ``crown_optimise_radii``),
            then goes on from CROWN's radius and box with alpha-CROWN relaxations (``crown_rounds`` more passes for
            the uniform radius, ``crown_rounds`` more rounds for the other kinds), each example's slopes
            warm-started from its previous round (:class:`~bounds.alpha_search.AlphaWarmStart`); its final check is
            alpha-CROWN's, with CROWN's box as the fallback, so no example gets a smaller box than with ``"crown"``.
        crown_rounds: CROWN passes per example. ``method="crown"`` with the non-uniform kinds: the first
            ``min(crown_rounds, 2)`` along the shaped ray (plus one at zero width), the others closed-form rounds
            (:func:`~bounds.linear_certify.crown_optimise_radii`); ``"alpha-crown"`` computes that box with the same
            setting. The uniform kind and ``"alpha-crown"``: the uniform radius is searched with at most
            ``2 * crown_rounds + 2`` passes, plus one at zero width (it stops per example once converged), and the
            other kinds add ``crown_rounds`` rounds of relaxations.

    Returns:
        A :class:`~bounds.certificate.Certificate` with radii shaped like ``x`` on ``x``'s device.

    Raises:
        ValueError: For bad shapes, non-finite inputs, labels outside ``[0, K)``, a dtype other than float32 or
            float64, a dtype or device other than the model's, unknown ``kind``, non-positive ``delta`` or bad
            options (all checked before any work).
        UnsupportedLayerError: If the model contains a layer interval propagation does not support.
    """
    start = time.perf_counter()
    _validate(model, x, y, kind, delta, clip_to_input_range, input_range, uniform_rtol, batch_size)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if crown_rounds < 1:
        raise ValueError(f"crown_rounds must be positive, got {crown_rounds}")
    check_supported(model)
    if x.shape[0]:
        _validate_outputs(model, x, y)
    options = _lagrangian_options(iterations=iterations, lr=lr, penalty_init=penalty_init,
                                  penalty_growth=penalty_growth, penalty_every=penalty_every, dual_every=dual_every,
                                  shrink_steps=shrink_steps, init_scale=init_scale, lr_decay=lr_decay)
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    clip = (float(input_range[0]), float(input_range[1])) if clip_to_input_range else None
    bracket = float(input_range[1] - input_range[0])
    chunk = batch_size or max(x.shape[0], 1)
    with torch.inference_mode(False), torch.enable_grad(), evaluation_mode(model):
        xs = x.detach().clone()
        ys = y.detach().clone().to(device=x.device, dtype=torch.long)
        parts = []
        starts = range(0, xs.shape[0], chunk)
        for begin in tqdm(starts, desc=f"certify ({kind})", disable=not progress or len(starts) < 2):
            parts.append(_certify_chunk(model, xs[begin:begin + chunk], ys[begin:begin + chunk], kind, delta, clip,
                                        bracket, uniform_rtol, options, progress, method, crown_rounds))
        if parts:
            eps_lower = torch.cat([p[0] for p in parts])
            eps_upper = torch.cat([p[1] for p in parts])
            certified = torch.cat([p[2] for p in parts])
        else:
            eps_lower, eps_upper = torch.zeros_like(xs), torch.zeros_like(xs)
            certified = torch.zeros(0, dtype=torch.bool, device=x.device)
    return Certificate(kind=kind, eps_lower=eps_lower.detach(), eps_upper=eps_upper.detach(), certified=certified,
                       labels=ys, delta=float(delta), seconds=time.perf_counter() - start)
