"""Pure functions of asymmetric-bound-guided (certified) training: box shapes, boxes and the robust loss.

Amoeba Section 6 suggests "finding model parameters that maximize both eps1 and eps2 in each dimension". The
functions here make that trainable with interval bound propagation (IBP training, Gowal et al. 2018) over
per-example asymmetric boxes whose *shape* is the model's own Amoeba bound.

Shape (a few warm-started steps of Algorithm 1). For example ``(x, t)`` and a current size ``s``, start from
the uniform radii ``eps1 = eps2 = s`` (or from radii given by the caller) and take ``K`` Adam steps on
``(log eps1, log eps2)`` of Problem 2's augmented Lagrangian (the Powell-Hestenes-Rockafellar form of
:mod:`bounds.lagrangian`, multipliers ``mu >= 0``)::

    v_j = l[t] - u[j] - delta                     (interval bounds over [x - eps1, x + eps2], j != t)
    L   = -mean_i log(eps1_i + eps2_i) - mu^T m + eta / 2 ||m||^2,     m = min(v, mu / eta)
    mu <- max(0, mu - eta v)   (every ``dual_every`` steps)

The result is reduced to a scale-free shape ``(a1, a2)``: widths ``w = (eps1 + eps2) / 2`` are normalised
to unit geometric mean, per-pixel ratios are clipped to ``[1 / max_ratio, max_ratio]`` and renormalised, and
the split between the two sides keeps the optimiser's proportion ``eps1 / (eps1 + eps2)``::

    a1 = 2 w' eps1 / (eps1 + eps2),   a2 = 2 w' eps2 / (eps1 + eps2),   prod_i ((a1_i + a2_i) / 2)^(1/n) = 1.

The uniform shape is ``a1 = a2 = 1``; a box ``[x - s a1, x + s a2]`` then has the volume of the uniform box
of radius ``s`` whatever its shape.

Robust loss (IBP training). Over the box ``B = [x - s a1, x + s a2]`` with logit bounds ``(l, u)`` (Theorem 1),
the worst-case logits are ``z_worst[j] = u[j]`` for ``j != t`` and ``z_worst[t] = l[t]``, and

    robust_ce(B) = CE(z_worst, t) = log sum_j exp(z_worst[j] - z_worst[t]) >= max_{x' in B} CE(f(x'), t),

because cross-entropy is increasing in every ``z_j - z_t`` and ``z_worst[j] - z_worst[t] >= f(x')_j - f(x')_t``
for every ``x'`` of the box. In particular it upper-bounds the clean loss whenever ``x`` lies in the box.
"""

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from bounds.interval import interval_bounds
from bounds.lagrangian import augmented_lagrangian, dual_update
from bounds.margins import margin_lower_bounds
from bounds.uniform import clipped_box
from bounds.validation import validate_labels

_MIN_EPS = 1e-12


def worst_case_logits(out_lower: Tensor, out_upper: Tensor, y: Tensor) -> Tensor:
    """Worst-case logits of IBP training: ``upper[j]`` for ``j != y`` and ``lower[y]`` for the label.

    Args:
        out_lower: Lower logit bounds ``(B, K)``.
        out_upper: Upper logit bounds ``(B, K)``.
        y: Labels ``(B,)``.

    Returns:
        ``(B, K)`` logits, differentiable in both bounds.

    Raises:
        ValueError: For mismatched shapes.
    """
    if out_lower.dim() != 2 or out_lower.shape != out_upper.shape:
        raise ValueError(f"need bounds (B, K), got {tuple(out_lower.shape)}, {tuple(out_upper.shape)}")
    validate_labels(y, out_lower.shape[0])  # dtype and shape only: a range check would synchronise every step
    is_true = F.one_hot(y.long(), out_lower.shape[1]).bool()
    return torch.where(is_true, out_lower, out_upper)


def robust_cross_entropy(
    model: nn.Module, lower: Tensor, upper: Tensor, y: Tensor, reduction: str = "mean"
) -> tuple[Tensor, Tensor]:
    """Cross-entropy of the worst-case logits over the box ``[lower, upper]`` (module docstring).

    An upper bound of ``CE(model(x'), y)`` for every ``x'`` in the box, differentiable in the model's
    parameters and in the box.

    Args:
        model: A model :func:`~bounds.interval.interval_bounds` supports (in the mode it should be bounded in).
        lower: Lower ends of the input boxes ``(B, ...)``.
        upper: Upper ends ``(B, ...)``.
        y: Labels ``(B,)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` as in :func:`torch.nn.functional.cross_entropy`.

    Returns:
        ``(loss, verified)``: the loss and a detached bool ``(B,)`` that is true where the box is verified
        (every worst-case margin ``l[y] - u[j]`` positive).
    """
    out_lower, out_upper = interval_bounds(model, lower, upper)
    z_worst = worst_case_logits(out_lower, out_upper, y)
    loss = F.cross_entropy(z_worst, y, reduction=reduction)
    with torch.no_grad():
        others = z_worst.masked_fill(F.one_hot(y, z_worst.shape[1]).bool(), float("-inf"))
        verified = z_worst.gather(1, y.view(-1, 1)).squeeze(1) > others.max(1).values
    return loss, verified


def normalise_shape(eps_lower: Tensor, eps_upper: Tensor, max_ratio: float = 10.0) -> tuple[Tensor, Tensor]:
    """Scale-free box shape ``(a1, a2)`` from radii: unit geometric-mean half-width, clipped ratios.

    Args:
        eps_lower: Left radii ``(B, ...)``, ``> 0``.
        eps_upper: Right radii ``(B, ...)``, ``> 0``.
        max_ratio: Largest allowed ratio of a pixel's half-width to the geometric mean (``>= 1``); ``1``
            gives the uniform shape.

    Returns:
        ``(a1, a2)`` shaped like the radii with ``prod_i ((a1_i + a2_i) / 2)^(1/n) = 1`` per example
        (exactly after the clip when no pixel is clipped; the renormalisation after the clip can move
        pixels slightly past ``max_ratio``, never the mean).

    Raises:
        ValueError: If ``max_ratio < 1`` or the shapes differ.
    """
    if max_ratio < 1:
        raise ValueError(f"max_ratio must be >= 1, got {max_ratio}")
    if eps_lower.shape != eps_upper.shape or eps_lower.dim() < 2:
        raise ValueError(f"need radii (B, ...) of one shape, got {tuple(eps_lower.shape)}, {tuple(eps_upper.shape)}")
    eps_lower = eps_lower.clamp(min=_MIN_EPS)
    eps_upper = eps_upper.clamp(min=_MIN_EPS)
    total = eps_lower + eps_upper
    log_w = torch.log(total / 2)
    dims = tuple(range(1, log_w.dim()))
    bound = float(torch.log(torch.tensor(max_ratio)))
    log_w = (log_w - log_w.mean(dims, keepdim=True)).clamp(-bound, bound)
    log_w = log_w - log_w.mean(dims, keepdim=True)
    width = log_w.exp()
    return 2 * width * eps_lower / total, 2 * width * eps_upper / total


def shaped_box(x: Tensor, size: float | Tensor, a1: Tensor, a2: Tensor,
                       input_range: tuple[float, float] | None = None) -> tuple[Tensor, Tensor]:
    """The training box ``[x - size * a1, x + size * a2]`` (clipped to ``input_range`` when given).

    Args:
        x: Centres ``(B, ...)``.
        size: Scalar size ``s >= 0`` (or a tensor broadcastable to ``x``).
        a1: Left shape, shaped like ``x``.
        a2: Right shape, shaped like ``x``.
        input_range: Clip to ``(low, high)`` if given.

    Returns:
        ``(lower, upper)``.
    """
    return clipped_box(x, size * a1, size * a2, input_range)


def lagrangian_refresh(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps_lower: Tensor,
    eps_upper: Tensor,
    *,
    iterations: int = 10,
    lr: float = 0.1,
    delta: float = 1e-4,
    penalty: float = 1.0,
    dual_every: int = 2,
    input_range: tuple[float, float] | None = None,
) -> tuple[Tensor, Tensor]:
    """A few warm-started steps of Amoeba Algorithm 1 (Problem 2) from the radii ``(eps_lower, eps_upper)``.

    The augmented Lagrangian is the one of :mod:`bounds.lagrangian` (:func:`~bounds.lagrangian.augmented_lagrangian`
    and :func:`~bounds.lagrangian.dual_update`, the classical multiplier updates; module docstring here), with Adam on
    ``log eps``; multipliers start at zero and the penalty ``eta`` stays at ``penalty`` (a short refresh
    does not need the growth schedule). The radii returned are the last iterate, *not* shrunk to a certified
    box: callers use them as a shape or as the next warm start, never as a certificate. Gradients are taken
    with ``torch.autograd.grad`` on the radii only, so the model's ``.grad`` fields (and DDP hooks) are not
    touched. The model is used in the mode it is in.

    Args:
        model: A model :func:`~bounds.interval.interval_bounds` supports.
        x: Inputs ``(B, ...)`` (detached here).
        y: Labels ``(B,)``.
        eps_lower: Warm-start left radii, broadcastable to ``x``, ``> 0``.
        eps_upper: Warm-start right radii, broadcastable to ``x``, ``> 0``.
        iterations: Adam steps ``K`` (0 returns the warm start).
        lr: Adam learning rate on ``log eps``.
        delta: Margin of the constraints ``v >= 0``.
        penalty: The penalty coefficient ``eta``.
        dual_every: Steps between dual updates.
        input_range: Clip the box to ``(low, high)`` in constraints and objective, if given.

    Returns:
        ``(eps_lower, eps_upper)`` shaped like ``x``, detached.

    Raises:
        ValueError: For a negative ``iterations`` or non-positive ``lr``, ``penalty`` or ``dual_every``.
    """
    if iterations < 0 or lr <= 0 or penalty <= 0 or dual_every < 1:
        raise ValueError(
            f"need iterations >= 0, lr > 0, penalty > 0, dual_every >= 1; got {iterations}, {lr}, {penalty}, "
            f"{dual_every}"
        )
    x = x.detach()
    eps_lower = eps_lower.detach().clamp(min=_MIN_EPS).expand_as(x).clone()
    eps_upper = eps_upper.detach().clamp(min=_MIN_EPS).expand_as(x).clone()
    if iterations == 0:
        return eps_lower, eps_upper
    log_lower = eps_lower.log().requires_grad_(True)
    log_upper = eps_upper.log().requires_grad_(True)
    params = [log_lower, log_upper]
    optimiser = torch.optim.Adam(params, lr=lr)
    mu: Tensor | None = None
    with torch.enable_grad():
        for step in range(iterations):
            lower, upper = clipped_box(x, log_lower.exp(), log_upper.exp(), input_range)
            margins = margin_lower_bounds(model, lower, upper, y)
            others = ~F.one_hot(y, margins.shape[1]).bool()
            if mu is None:
                mu = torch.zeros_like(margins)
            v = torch.where(others, margins - delta, torch.zeros_like(margins))
            objective = -torch.log((upper - lower).clamp(min=_MIN_EPS)).flatten(1).mean(1)
            grads = torch.autograd.grad(augmented_lagrangian(objective, v, mu, penalty).sum(), params)
            with torch.no_grad():
                if (step + 1) % dual_every == 0:
                    mu = dual_update(mu, v.detach(), penalty, others)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            optimiser.step()
    return log_lower.detach().exp(), log_upper.detach().exp()


def asymmetric_shape(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    size: float,
    *,
    iterations: int = 10,
    lr: float = 0.1,
    max_ratio: float = 10.0,
    delta: float = 1e-4,
    input_range: tuple[float, float] | None = None,
) -> tuple[Tensor, Tensor]:
    """The model's Amoeba box shape near size ``size``: :func:`lagrangian_refresh` from the uniform box, normalised.

    Args:
        model: A model :func:`~bounds.interval.interval_bounds` supports.
        x: Inputs ``(B, ...)``.
        y: Labels ``(B,)``.
        size: Warm-start uniform radius ``s > 0`` (the current training size).
        iterations: Algorithm 1 steps.
        lr: Adam learning rate on ``log eps``.
        max_ratio: Per-pixel ratio clip of :func:`normalise_shape`.
        delta: Constraint margin.
        input_range: Clip boxes to this range in the optimisation, if given.

    Returns:
        ``(a1, a2)`` shaped like ``x``, unit geometric-mean half-width, detached.

    Raises:
        ValueError: For ``size <= 0`` or bad optimiser settings.
    """
    if not size > 0:
        raise ValueError(f"size must be positive, got {size}")
    start = torch.full_like(x, float(size))
    eps_lower, eps_upper = lagrangian_refresh(model, x, y, start, start, iterations=iterations, lr=lr, delta=delta,
                                              input_range=input_range)
    return normalise_shape(eps_lower, eps_upper, max_ratio)
