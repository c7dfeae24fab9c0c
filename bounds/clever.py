"""CLEVER scores (Weng et al. 2018, "Evaluating the robustness of neural networks: an extreme value theory approach").

Untargeted CLEVER in the l_2 and l_inf norms (Algorithm 1 of the paper, untargeted variant): for each
competing class ``j`` and each of ``num_batches`` batches, sample ``batch_size`` points uniformly in the
norm ball ``B_p(x, R)``, record the largest dual norm ``||grad g_j||_q`` of the margin
``g_j = logit_t - logit_j`` in the batch, fit a reverse Weibull distribution to the batch maxima, and take
its location as the local cross-Lipschitz estimate ``L_j``. The score is ``min_j min(g_j(x) / L_j, R)``.

The fit follows the authors' reference code (``get_lipschitz_estimate`` in IBM's CLEVER repository, default
method ``mle_reg``); see :func:`reverse_weibull_location`. With ``top_k=None`` and ``input_range`` set to the
classifier's ``clip_values``, :func:`clever_score` computes what IBM ART's ``art.metrics.clever_u`` computes
(``norm`` ``"l2"``/``"linf"`` for ART's ``2``/``np.inf``); ART draws its batches with replacement from a pool
of ``pool_factor * batch_size`` samples (``pool_factor=10`` here does the same), the paper and the reference
code draw fresh samples for every batch (the default here).
"""

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from scipy import optimize, stats
from torch import Tensor, nn

from bounds.modes import evaluation_mode
from bounds.validation import validate_labels

REFERENCE_SHAPE_STARTS = (0.1, 1.0, 5.0, 10.0, 20.0, 50.0, 100.0)
"""The reference code's initial Weibull shapes ``c_init``: one MLE fit from each, the best K-S p-value wins."""

_SCALE_PENALTY = 0.01
"""The reference code's ``shape_reg`` of ``mle_reg``, added as ``shape_reg * theta[2] ** 2`` to the negative
log-likelihood; ``theta[2]`` is scipy's *scale* parameter (of the rescaled sample)."""

_MIN_P_VALUE = 1e-3
"""Below this best K-S p-value the reference code calls the sample ill-conditioned and uses its maximum."""


def reverse_weibull_location(maxima: np.ndarray | Tensor, shape_starts: Sequence[float] = (20.0,)) -> float:
    """Location of the reverse Weibull distribution fitted to batch maxima (the CLEVER Lipschitz estimate).

    The procedure of the CLEVER reference code (``get_best_weibull_fit`` with ``use_reg=True``, its default
    ``mle_reg`` method): the maxima are shifted by their maximum and divided by their range; maxima of a
    bounded quantity follow a reverse Weibull distribution, so their *negation* follows a Weibull one, and
    ``scipy.stats.weibull_min.fit(-rescaled, c_init, optimizer=...)`` fits it by Nelder-Mead
    (``scipy.optimize.fmin``) on the negative log-likelihood plus ``0.01 * scale ** 2``. The reference adds
    that small penalty because Nelder-Mead otherwise diverges to huge shape, scale and location together on
    Gumbel-like samples, putting the location 10^3-10^6 times above every observed maximum (ART's single
    unpenalised fit does so on about 1-2% of the samples; this module's former ``weibull_max`` fit, without
    ``weibull_min``'s moment-matched start and without the penalty, on 20-35%). The fit with the best
    Kolmogorov-Smirnov p-value is kept and its location negated back; fits that fail, are not finite, or
    leave some of the maxima outside their support are skipped, and if no fit reaches a p-value of 0.001 the
    sample maximum is returned, as in the reference. A sample with no spread (e.g. the constant gradient of
    a linear model) or of fewer than three maxima (fewer points than parameters) also returns its maximum,
    where the reference would divide by a zero range.

    The reference starts from seven shapes (:data:`REFERENCE_SHAPE_STARTS`, run in parallel processes; its
    comment invites removing some for speed). With the penalty and the support check, the single start 20
    gave the seven starts' location to within 3e-6 (relative) on each of 744 samples (MNIST MLP and LeNet
    batch maxima in l_2 and l_inf, and reverse Weibull samples of shapes 0.7-30 and sizes 20-500), so it is
    the default: one fit per sample, as ART does, at a seventh of the cost.

    Args:
        maxima: 1-D sample of batch maxima.
        shape_starts: Initial shapes ``c_init``, one fit from each (:data:`REFERENCE_SHAPE_STARTS`: the
            reference's seven).

    Returns:
        The fitted location (an estimate of the supremum of the gradient norm), never below the sample maximum.

    Raises:
        ValueError: For an empty or non-finite sample.
    """
    sample = np.asarray(maxima.detach().cpu() if isinstance(maxima, Tensor) else maxima, dtype=np.float64).ravel()
    if sample.size == 0 or not np.isfinite(sample).all():
        raise ValueError(f"need a non-empty finite sample of maxima, got {sample!r}")
    top = float(sample.max())
    spread = top - float(sample.min())
    if sample.size < 3 or spread <= 1e-9 * max(abs(top), 1.0):
        return top
    negated = (top - sample) / spread  # -(sample - top) / spread: Weibull distributed, support from loc <= 0
    best_location, best_p = None, -1.0
    with np.errstate(all="ignore"):
        for shape in shape_starts:
            try:
                c, loc, scale = stats.weibull_min.fit(negated, shape, optimizer=_penalised_fmin)
                # the reference tests -sample against the fit mapped back; K-S is invariant under that map
                p_value = stats.kstest(negated, "weibull_min", args=(c, loc, scale)).pvalue
            except (ValueError, RuntimeError, FloatingPointError):
                continue
            # Beyond the reference: keep only fits whose support [loc, inf) holds the whole sample. Scipy's fit
            # does not forbid the others (its penalised likelihood drops points outside the support) and their
            # K-S p-value can be the best one, but a location below an observed maximum is no estimate of the
            # maxima's support end (such fits won on about 2% of the MNIST samples, up to 1.2% below the maximum).
            if np.isfinite([c, loc, scale, p_value]).all() and loc <= 0 and p_value > best_p:
                best_location, best_p = float(loc), float(p_value)
    if best_location is None or best_p < _MIN_P_VALUE:
        return top
    return top - best_location * spread


def _penalised_fmin(func: Callable[..., float], x0: np.ndarray, args: tuple = (), disp: int = 0) -> np.ndarray:
    """Scipy's optimizer protocol for ``rv_continuous.fit``: the reference's ``fmin_with_reg``, quiet.

    Nelder-Mead on the negative log-likelihood ``func(theta, data)`` plus ``0.01 * theta[2] ** 2``, where
    ``theta = (c, loc, scale)``.
    """

    def penalised(theta: np.ndarray, *data: np.ndarray) -> float:
        return func(theta, *data) + _SCALE_PENALTY * theta[2] ** 2

    return optimize.fmin(penalised, x0, args=args, disp=disp)


def _sample_ball(center: Tensor, count: int, norm: str, radius: float, generator: torch.Generator | None) -> Tensor:
    """``count`` points uniform in the l_2 ball or the l_inf cube of ``radius`` around each of ``center``'s rows."""
    shape = (center.shape[0], count) + tuple(center.shape[1:])
    if norm == "linf":
        noise = torch.rand(shape, generator=generator, device=center.device, dtype=center.dtype)
        return center[:, None] + radius * (2 * noise - 1)
    direction = torch.randn(shape, generator=generator, device=center.device, dtype=center.dtype)
    flat = direction.flatten(2)
    flat = flat / torch.linalg.vector_norm(flat, ord=2, dim=2, keepdim=True).clamp(min=1e-12)
    dims = flat.shape[2]
    length = torch.rand(shape[:2] + (1,), generator=generator, device=center.device, dtype=center.dtype)
    return center[:, None] + (radius * length ** (1.0 / dims) * flat).view(shape)


def clever_score(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    *,
    norm: Literal["l2", "linf"],
    radius: float,
    num_batches: int = 500,
    batch_size: int = 1024,
    top_k: int | None = None,
    input_range: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    pool_factor: int | None = None,
    max_points_per_pass: int = 1024,
) -> Tensor:
    """Untargeted CLEVER score of each example (Weng et al. 2018, Algorithm 1 and Eq. 7).

    Args:
        model: Classifier mapping ``x`` to logits (run in eval mode, modes restored).
        x: ``[B, ...]`` inputs.
        y: Class ``t`` whose margins are measured; default the predicted class.
        norm: Perturbation norm ``p``: ``"l2"`` (gradient norm l_2) or ``"linf"`` (gradient norm l_1).
        radius: Sampling radius ``R``; also the largest score.
        num_batches: ``N_b``, number of batch maxima per class (500 in the paper).
        batch_size: ``N_s``, samples per batch (1024 in the paper).
        top_k: Competing classes: the ``top_k`` most probable ``j != t``; ``None`` for all of them.
        input_range: Clip samples to ``(low, high)`` as the reference code clips to the image range (ART: the
            classifier's ``clip_values``); ``None`` (default) samples the whole ball.
        generator: Random generator for the samples (on ``x``'s device).
        pool_factor: ``None`` (default): fresh samples for every batch, as in the paper; an integer: as IBM
            ART's ``clever_t``, the gradients of ``pool_factor * batch_size`` samples per example, from which
            each batch is drawn with replacement (``N_b / pool_factor`` times fewer gradients).
        max_points_per_pass: Samples per forward pass (examples and batches are grouped up to this many; the
            default was the fastest per sample for the MNIST LeNet on CPU; larger suits a GPU).

    Returns:
        ``[B]`` scores; negative when ``t`` is not the predicted class.

    Raises:
        ValueError: On malformed arguments, or an input or logits that are not finite (NaN or inf).
    """
    if x.dim() < 2:
        raise ValueError(f"x must be batched with shape [B, ...], got shape {tuple(x.shape)}")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        raise ValueError(f"x must be finite (found NaN or inf at {int((~finite).sum())} entries)")
    if norm not in ("l2", "linf"):
        raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")
    if radius <= 0 or num_batches < 1 or batch_size < 1:
        raise ValueError(
            f"need radius > 0, num_batches >= 1, batch_size >= 1; got {radius}, {num_batches}, {batch_size}"
        )
    if pool_factor is not None and pool_factor < 1:
        raise ValueError(f"pool_factor must be None or >= 1, got {pool_factor}")
    with evaluation_mode(model), torch.inference_mode(False):
        x = x.detach().clone()
        with torch.no_grad():
            logits = model(x)
        if not bool(torch.isfinite(logits).all()):
            raise ValueError("the model's logits at x must be finite (found NaN or inf)")
        num_classes = logits.shape[1]
        if num_classes < 2:
            raise ValueError(f"CLEVER needs at least 2 classes, got {num_classes}")
        target = logits.argmax(dim=1) if y is None else y.detach().clone().to(x.device)
        validate_labels(target, x.shape[0], num_classes)
        k = num_classes - 1 if top_k is None else min(top_k, num_classes - 1)
        if k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        others = logits.scatter(1, target[:, None], -torch.inf).topk(k, dim=1).indices  # [B, k]
        margins = logits.gather(1, target[:, None]) - logits.gather(1, others)  # [B, k]
        maxima = _batch_maxima(
            model,
            x,
            target,
            others,
            norm=norm,
            radius=radius,
            num_batches=num_batches,
            batch_size=batch_size,
            pool_factor=pool_factor,
            input_range=input_range,
            generator=generator,
            points_per_pass=max_points_per_pass,
        )
    # One copy for the Weibull fits (scipy); the sampling stays on the model's device.
    maxima, margins = maxima.cpu(), margins.cpu()
    scores = torch.empty(x.shape[0], k, dtype=torch.float64)
    for b in range(x.shape[0]):
        for r in range(k):
            lipschitz = reverse_weibull_location(maxima[b, r].numpy())
            ratio = float(margins[b, r]) / lipschitz if lipschitz > 0 else math.inf
            scores[b, r] = min(ratio, radius)
    return scores.amin(dim=1).to(x.dtype)


def _batch_maxima(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    others: Tensor,
    *,
    norm: str,
    radius: float,
    num_batches: int,
    batch_size: int,
    pool_factor: int | None,
    input_range: tuple[float, float] | None,
    generator: torch.Generator | None,
    points_per_pass: int,
) -> Tensor:
    """``[B, k, num_batches]`` maxima of the dual gradient norms of the margins over each batch of samples.

    The samples come in blocks of ``batch_size`` per example (``num_batches`` blocks, the batches themselves,
    or ``pool_factor`` blocks forming the pool); each forward pass takes as many blocks, of one or several
    examples, as fit in ``points_per_pass`` samples, and is shared by the ``k`` margins' backward passes.
    """
    count, k = x.shape[0], others.shape[1]
    blocks = num_batches if pool_factor is None else pool_factor
    # fresh batches keep only each block's maximum; a pool keeps every norm (pool_factor * batch_size per class)
    kept = torch.empty(k, count * blocks, 1 if pool_factor is None else batch_size, dtype=torch.float64,
                       device=x.device)
    per_pass = max(1, points_per_pass // batch_size)
    with torch.enable_grad():
        for start in range(0, count * blocks, per_pass):
            ids = torch.arange(start, min(start + per_pass, count * blocks), device=x.device)
            rows = ids // blocks
            with torch.no_grad():
                points = _sample_ball(x[rows], batch_size, norm, radius, generator)
                if input_range is not None:
                    points = points.clamp(float(input_range[0]), float(input_range[1]))
            norms = _margin_gradient_norms(
                model,
                points.flatten(0, 1),
                target[rows].repeat_interleave(batch_size),
                others[rows].repeat_interleave(batch_size, dim=0),
                2.0 if norm == "l2" else 1.0,
            ).view(k, ids.numel(), batch_size)
            kept[:, ids] = norms.amax(dim=2, keepdim=True) if pool_factor is None else norms
    kept = kept.view(k, count, -1).transpose(0, 1)  # [B, k, num_batches] or [B, k, pool]
    if pool_factor is None:
        return kept.contiguous()
    maxima = torch.empty(count, k, num_batches, dtype=torch.float64, device=x.device)
    for b in range(count):  # as ART: each batch drawn with replacement from the pool (shared by the classes)
        draws = torch.randint(kept.shape[2], (num_batches * batch_size,), generator=generator, device=x.device)
        maxima[b] = kept[b][:, draws].view(k, num_batches, batch_size).amax(dim=2)
    return maxima


def _margin_gradient_norms(model: nn.Module, points: Tensor, target: Tensor, others: Tensor, dual: float) -> Tensor:
    """``[k, P]`` dual norms of ``grad (logit_t - logit_j)`` at ``P`` points: one forward, one backward per class.

    One backward per class over the shared forward: on CPU, one vmapped backward of all ``k`` margins
    (``torch.autograd.grad(..., is_grads_batched=True)``) took 0.98-1.5x its time for 9 margins of the MNIST
    LeNet at 1,024 and 4,096 samples, with ``k`` times its memory (``benchmarks/bench_acts.py`` measures both).
    """
    points = points.detach().requires_grad_(True)
    logits = model(points)
    margins = logits.gather(1, target[:, None]) - logits.gather(1, others)  # [P, k]
    k = others.shape[1]
    norms = torch.empty(k, points.shape[0], dtype=torch.float64, device=points.device)
    for r in range(k):
        (grad,) = torch.autograd.grad(margins[:, r].sum(), points, retain_graph=r < k - 1)
        norms[r] = torch.linalg.vector_norm(grad.flatten(1), ord=dual, dim=1).double()
    return norms
