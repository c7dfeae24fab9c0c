"""CLEVER scores (Weng et al. 2018, "Evaluating the robustness of neural networks: an extreme value theory approach").

Untargeted CLEVER in the l_2 and l_inf norms (Algorithm 1 of the paper, untargeted variant): for each
competing class ``j`` and each of ``num_batches`` batches, sample ``batch_size`` points uniformly in the
norm ball ``B_p(x, R)``, record the largest dual norm ``||grad g_j||_q`` of the margin
``g_j = logit_t - logit_j`` in the batch, fit a reverse Weibull distribution to the batch maxima, and take
its location as the local cross-Lipschitz estimate ``L_j``. The score is ``min_j min(g_j(x) / L_j, R)``.
"""

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from scipy import optimize, stats
from torch import Tensor, nn

from bounds.modes import evaluation_mode

_SHAPE_STARTS = (0.1, 1.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def reverse_weibull_location(maxima: np.ndarray | Tensor) -> float:
    """Location of the reverse Weibull distribution fitted to batch maxima (the CLEVER Lipschitz estimate).

    As in the CLEVER reference code, the sample is shifted by its maximum and divided by its range, one
    maximum-likelihood fit is started from each of several shape values, and the fit with the largest
    Kolmogorov-Smirnov p-value is kept. Fits that fail, or a sample with no spread (e.g. a linear model,
    whose gradient is constant), fall back to the sample maximum.

    Args:
        maxima: 1-D sample of batch maxima.

    Returns:
        The fitted location (an estimate of the supremum of the gradient norm).

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
    rescaled = (sample - top) / spread
    best_location, best_p = top, -1.0
    for shape in _SHAPE_STARTS:
        try:
            c, loc, scale = stats.weibull_max.fit(rescaled, shape, optimizer=_quiet_fmin)
            p_value = stats.kstest(rescaled, "weibull_max", args=(c, loc, scale)).pvalue
        except (ValueError, RuntimeError, FloatingPointError):
            continue
        if np.isfinite(loc) and np.isfinite(p_value) and p_value > best_p:
            best_location, best_p = top + loc * spread, float(p_value)
    return best_location


def _quiet_fmin(func: Callable[..., float], x0: np.ndarray, args: tuple = (), disp: int = 0) -> np.ndarray:
    """Scipy's optimizer protocol for ``rv_continuous.fit``: Nelder-Mead without printing."""
    return optimize.fmin(func, x0, args=args, disp=disp)


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
    max_points_per_pass: int = 16384,
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
        input_range: Clip samples to ``(low, high)`` as the reference code clips to the image range;
            ``None`` (default) samples the whole ball.
        generator: Random generator for the samples (on ``x``'s device).
        max_points_per_pass: Samples per forward pass (examples are grouped up to this many).

    Returns:
        ``[B]`` scores; negative when ``t`` is not the predicted class.

    Raises:
        ValueError: On malformed arguments.
    """
    if x.dim() < 2:
        raise ValueError(f"x must be batched with shape [B, ...], got shape {tuple(x.shape)}")
    if norm not in ("l2", "linf"):
        raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")
    if radius <= 0 or num_batches < 1 or batch_size < 1:
        raise ValueError(
            f"need radius > 0, num_batches >= 1, batch_size >= 1; got {radius}, {num_batches}, {batch_size}"
        )
    dual = 2.0 if norm == "l2" else 1.0
    with evaluation_mode(model), torch.inference_mode(False):
        x = x.detach().clone()
        with torch.no_grad():
            logits = model(x)
        num_classes = logits.shape[1]
        if num_classes < 2:
            raise ValueError(f"CLEVER needs at least 2 classes, got {num_classes}")
        target = logits.argmax(dim=1) if y is None else y.detach().clone().to(x.device)
        if target.shape != (x.shape[0],):
            raise ValueError(f"y must have shape [{x.shape[0]}], got {tuple(target.shape)}")
        k = num_classes - 1 if top_k is None else min(top_k, num_classes - 1)
        if k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        others = logits.scatter(1, target[:, None], -torch.inf).topk(k, dim=1).indices  # [B, k]
        margins = logits.gather(1, target[:, None]) - logits.gather(1, others)  # [B, k]
        maxima = torch.empty(x.shape[0], k, num_batches, dtype=torch.float64)
        group = max(1, max_points_per_pass // batch_size)
        for start in range(0, x.shape[0], group):
            rows = slice(start, min(start + group, x.shape[0]))
            maxima[rows] = _batch_maxima(
                model,
                x[rows],
                target[rows],
                others[rows],
                norm,
                dual,
                radius,
                num_batches,
                batch_size,
                input_range,
                generator,
            )
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
    norm: str,
    dual: float,
    radius: float,
    num_batches: int,
    batch_size: int,
    input_range: tuple[float, float] | None,
    generator: torch.Generator | None,
) -> Tensor:
    """``[B, k, num_batches]`` maxima of the dual gradient norms of the margins over each batch of samples."""
    count, k = x.shape[0], others.shape[1]
    maxima = torch.empty(count, k, num_batches, dtype=torch.float64)
    with torch.enable_grad():
        for i in range(num_batches):
            with torch.no_grad():
                points = _sample_ball(x, batch_size, norm, radius, generator)
                if input_range is not None:
                    points = points.clamp(float(input_range[0]), float(input_range[1]))
            points = points.flatten(0, 1).requires_grad_(True)
            logits = model(points).view(count, batch_size, -1)
            own = logits.gather(2, target.view(count, 1, 1).expand(count, batch_size, 1)).squeeze(2)
            for r in range(k):
                other = logits.gather(2, others[:, r].view(count, 1, 1).expand(count, batch_size, 1)).squeeze(2)
                (grad,) = torch.autograd.grad((own - other).sum(), points, retain_graph=r < k - 1)
                norms = torch.linalg.vector_norm(grad.flatten(1), ord=dual, dim=1).view(count, batch_size)
                maxima[:, r, i] = norms.amax(dim=1).double().cpu()
    return maxima
