"""Linear-relaxation (CROWN) bounds of the margin specification through models that trace into a chain of layers.

The model is traced by the bound engine and turned into a chain of layers (:func:`bounds.engine.chain.crown_chain`:
``F.relu`` becomes ``nn.ReLU``, ``x.view(B, -1)`` a ``Flatten``, ...); any other graph (residual additions,
concatenations, arithmetic with constants) is back-substituted node by node by :mod:`bounds.crown_graph`, with
interval intermediate bounds.

CROWN (Zhang et al., NeurIPS 2018, "Efficient Neural Network Robustness Certification with General
Activation Functions", Theorem 3.2) bounds a linear function ``C f(x)`` of the outputs over an input box by
*back-substitution*: starting from ``Lambda = C`` at the output, every layer is replaced, in reverse order,
by a linear map that bounds it from the correct side:

- affine layers (``Linear``, ``Conv2d``, eval ``BatchNorm``, :class:`~bounds.normalization.InputNormalization`,
  ``AvgPool2d``) are exact: ``Lambda <- Lambda W`` and ``offset += Lambda b`` (``Conv2d``/``AvgPool2d`` via the
  transposed map: ``conv_transpose2d`` / a vector-Jacobian product);
- an activation ``sigma`` with pre-activation bounds ``l <= z <= u`` gets two lines
  ``alpha_L z + beta_L <= sigma(z) <= alpha_U z + beta_U`` on ``[l, u]``
  (:mod:`bounds.layer_relaxations`: CROWN's adaptive ReLU lines, parallel lines for Sigmoid/Tanh, and a sound
  linear relaxation of MaxPool2d); a nonnegative coefficient takes the lower line and a negative one the upper
  line (Theorem 3.2's ``lambda`` / ``Delta`` rule): ``Lambda <- [Lambda]_+ alpha_L + [Lambda]_- alpha_U`` and
  ``offset += [Lambda]_+ beta_L + [Lambda]_- beta_U``. An activation right before a max-pool with disjoint
  windows is applied at the pool's resolution, before the coefficients are spread to the selected entries.
- ``Flatten``, ``Identity`` and eval ``Dropout`` only reshape ``Lambda``.

At the input, ``min_{x in [l0, u0]} Lambda x = Lambda mid - |Lambda| rad``. The intermediate pre-activation
bounds ``l, u`` every relaxation needs come from interval propagation (CROWN-IBP) or from CROWN itself
(back-substitution from every activation's input to the model input: full CROWN). Convolutional feature maps
are back-substituted in windows (:mod:`bounds.crown_patches`, the receptive field of each neuron only); other
layers densely, and then only the neurons that are unstable for some example of the batch (the others are
decided by the interval bounds already). Both are sound, so each intermediate bound is the tighter of the two,
and the returned margin bounds are the better of CROWN's and interval propagation's (never looser than IBP).
On a zero-width box interval propagation is exact and CROWN's intermediate pass is skipped.

Public functions: :func:`crown_margin_bounds` (lower bounds of ``f_y - f_j``, like
:func:`~bounds.margins.margin_lower_bounds`) and :func:`linear_margin_bounds` (the linear lower bound
``f_y(x') - f_j(x') >= A_j . x' + b_j`` valid on the whole box, for certification of sub-boxes in closed form).
"""

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from bounds.crown_patches import SPARSE_FRACTION, patch_bounds, patches_apply
from bounds.engine.chain import NotAChainError, crown_chain, layer_interval
from bounds.errors import UnsupportedLayerError
from bounds.interval import check_model_input, validate_box
from bounds.layer_relaxations import (
    ACTIVATIONS,
    PoolRelaxation,
    Relaxation,
    Relaxations,
    activation_below_pool,
    affine_parts,
    conv_leading_padding,
    folded_into_previous,
    relax_layer,
)
from bounds.margins import margins_from_bounds, validate_labels
from bounds.normalization import InputNormalization

Intermediate = Literal["crown", "ibp"]
_NONLINEAR = (*ACTIVATIONS, nn.MaxPool2d)
# Examples per chunk of the intermediate back-substitution (memory: chunk x neurons x input size).
_CHUNK_ELEMENTS = 2**26


@dataclass(frozen=True)
class LinearMarginBound:
    """A linear lower bound of the margins valid on one input box (CROWN, Theorem 3.2).

    For every ``x'`` in ``[lower, upper]`` (the box it was built on) and every ``j != y``:
    ``f(x')_y - f(x')_j >= (coefficients[:, j] * x').sum() + offset[:, j]``.

    Attributes:
        coefficients: ``(B, K, ...)`` with the input's shape after ``K``; zero rows at ``j == y``.
        offset: ``(B, K)``; ``+inf`` at ``j == y`` (the margin with itself is not constrained).
        lower: The box's lower ends ``(B, ...)``.
        upper: The box's upper ends ``(B, ...)``.
    """

    coefficients: Tensor
    offset: Tensor
    lower: Tensor
    upper: Tensor

    def margins(self, lower: Tensor, upper: Tensor) -> Tensor:
        """Closed-form margin lower bounds ``(B, K)`` over a sub-box ``[lower, upper]`` of the build box.

        ``min_{x' in box} A_j . x' + b_j = A_j . mid - |A_j| . rad + b_j``. Only sound for sub-boxes of the box
        the relaxation was built on (the caller ensures ``self.lower <= lower <= upper <= self.upper``).
        """
        return _concretize(self.coefficients, self.offset, lower, upper)


def _concretize(coefficients: Tensor, offset: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """``min_{x in [lower, upper]} A x + b`` for ``A (B, S, ...)``: ``A mid - |A| rad + b`` (``(B, S)``)."""
    mid = ((upper + lower) / 2).flatten(1).unsqueeze(2)
    rad = ((upper - lower) / 2).clamp(min=0).flatten(1).unsqueeze(2)
    flat = coefficients.flatten(2)
    return (flat @ mid).squeeze(2) - (flat.abs() @ rad).squeeze(2) + offset


def _conv_backward(layer: nn.Conv2d, weight: Tensor, coeffs: Tensor, in_shape: tuple[int, ...]) -> Tensor:
    """``Lambda W`` for a convolution (``weight``: the layer's, or with a BatchNorm folded in) of ``Lambda``.

    ``Lambda`` is ``(B, S, C, H, W)``.

    The transposed convolution without padding covers the padded input; the rows and columns of the zero padding
    (constants, not inputs) are cropped away, and input rows no output reads (a stride's remainder) get zeros.
    """
    batch, specs = coeffs.shape[:2]
    flat = coeffs.reshape(batch * specs, *coeffs.shape[2:])
    full = F.conv_transpose2d(flat, weight, None, layer.stride, 0, 0, layer.groups, layer.dilation)
    top, left = conv_leading_padding(layer)
    height, width = in_shape[-2:]
    full = full[..., top:top + height, left:left + width]
    full = F.pad(full, (0, width - full.shape[-1], 0, height - full.shape[-2]))
    return full.reshape(batch, specs, *in_shape)


def _backward(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]], relaxations: Relaxations,
              coeffs: Tensor, offset: Tensor, stop: int, start: int = 0) -> tuple[Tensor, Tensor]:
    """Back-substitute ``Lambda`` (``(B or 1, S, *shape after layer stop - 1)``) down to the model input.

    Args:
        layers: ``(path, layer)`` in execution order.
        shapes: ``shapes[i]`` is the per-example shape of the input of layer ``i`` (``shapes[-1]``: output).
        relaxations: Relaxation of every nonlinear layer index below ``stop``.
        coeffs: ``Lambda`` at the input of layer ``stop``.
        offset: Accumulated offset ``(B or 1, S)``.
        stop: Number of leading layers to go through (``len(layers)`` for the whole model).
        start: Stop at the input of this layer instead of the model input.

    Returns:
        ``(Lambda, offset)`` w.r.t. the input ``h`` of layer ``start`` (the model input by default):
        ``C f >= Lambda h + offset`` on the box.
    """
    i = stop - 1
    while i >= start:
        path, layer = layers[i]
        in_shape = shapes[i]
        layer_type = type(layer)
        weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
        folded = folded_into_previous(layers, shapes, i) if i > start else None
        if folded is not None:  # the per-channel affine layer folded into the Linear / Conv2d before it
            i -= 1
            path, layer = layers[i]
            in_shape, layer_type = shapes[i], type(layer)
            weight, bias = folded
        if layer_type is nn.Linear:  # on the last dimension of any input shape
            if bias is not None:
                offset = offset + (coeffs @ bias).reshape(*coeffs.shape[:2], -1).sum(2)
            coeffs = coeffs @ weight
        elif layer_type is nn.Conv2d:
            if bias is not None:
                offset = offset + coeffs.sum(dim=(-2, -1)) @ bias
            coeffs = _conv_backward(layer, weight, coeffs, in_shape)
        elif layer_type in (nn.BatchNorm1d, nn.BatchNorm2d, InputNormalization):
            scale, shift = affine_parts(layer, path)
            view = (1, 1, -1, *([1] * (coeffs.dim() - 3)))  # against (B, S, C, ...)
            scale, shift = scale.reshape(view), shift.reshape(view)
            offset = offset + (coeffs * shift).flatten(2).sum(2)
            coeffs = coeffs * scale
        elif layer_type in (nn.AvgPool2d, nn.AdaptiveAvgPool2d):
            batch, specs = coeffs.shape[:2]
            dummy = torch.zeros(batch * specs, *in_shape, dtype=coeffs.dtype, device=coeffs.device)
            _, pullback = torch.func.vjp(layer, dummy)
            coeffs = pullback(coeffs.reshape(batch * specs, *coeffs.shape[2:]))[0].reshape(batch, specs, *in_shape)
        elif layer_type is nn.Flatten:
            coeffs = coeffs.reshape(*coeffs.shape[:2], *in_shape)
        elif layer_type in (nn.Identity, nn.Dropout):
            pass
        elif layer_type is nn.MaxPool2d:
            pool = relaxations[i]
            assert isinstance(pool, PoolRelaxation)
            below = activation_below_pool(layers, relaxations, i, start)
            coeffs, offset = _pool_backward(pool, coeffs, offset, below)
            if below is not None:
                i -= 1  # the activation before the pool was applied at the pool's resolution
        elif layer_type in ACTIVATIONS:
            relax = relaxations[i]
            assert isinstance(relax, Relaxation)
            coeffs, offset = _activation_backward(relax, coeffs, offset)
        else:  # pragma: no cover - crown_chain yields only the types above
            raise UnsupportedLayerError(layer_type.__name__, path, "no CROWN rule")
        i -= 1
    return coeffs, offset


def _activation_backward(relax: Relaxation, coeffs: Tensor, offset: Tensor) -> tuple[Tensor, Tensor]:
    """``[Lambda]_+`` takes the lower line, ``[Lambda]_-`` the upper line (Theorem 3.2); ``relax`` is ``(B, ...)``.

    A ``per_spec`` relaxation (alpha-CROWN) has one lower slope per row of ``Lambda``: ``slope_l (B, S, ...)``.
    """
    negative = coeffs.clamp(max=0)
    offset = offset + (negative.flatten(2) @ relax.icpt_u.flatten(1).unsqueeze(2)).squeeze(2)
    if relax.has_icpt_l:
        positive = coeffs - negative
        offset = offset + (positive.flatten(2) @ relax.icpt_l.flatten(1).unsqueeze(2)).squeeze(2)
    if relax.per_spec:
        return torch.addcmul(coeffs * relax.slope_l, negative, relax.slope_u.unsqueeze(1) - relax.slope_l), offset
    coeffs = torch.addcmul(coeffs * relax.slope_l.unsqueeze(1), negative, (relax.slope_u - relax.slope_l).unsqueeze(1))
    return coeffs, offset


def _pool_backward(relax: PoolRelaxation, coeffs: Tensor, offset: Tensor, activation: Relaxation | None
                   ) -> tuple[Tensor, Tensor]:
    """Back-substitute through MaxPool2d's relaxation: a scatter of ``Lambda`` onto the selected entries.

    ``activation``: the relaxation of the activation before the pool at the selected entries
    (:func:`~bounds.layer_relaxations.activation_below_pool`), applied before the scatter; ``None``: no fusion.
    """
    keep = relax.exact.unsqueeze(1) | (coeffs >= 0)
    selected = torch.where(keep, coeffs, 0.0)
    constant = coeffs - selected  # the negative coefficients where the window is not exact
    offset = offset + (constant.flatten(2) @ relax.top.flatten(1).unsqueeze(2)).squeeze(2)
    if activation is not None:
        selected, offset = _activation_backward(activation, selected, offset)
    batch = max(coeffs.shape[0], relax.index.shape[0])
    specs = coeffs.shape[1]
    channels = relax.in_shape[0]
    selected = selected.expand(batch, *selected.shape[1:]).reshape(batch, specs, channels, -1)
    index = relax.index.flatten(2).unsqueeze(1).expand(batch, specs, channels, -1)
    out = coeffs.new_zeros(batch, specs, channels, relax.in_shape[1] * relax.in_shape[2])
    out = out.scatter_add(3, index, selected)
    return out.view(batch, specs, *relax.in_shape), offset


def _intermediate_crown(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]],
                        relaxations: Relaxations, stop: int, lower: Tensor, upper: Tensor,
                        in_lower: Tensor, in_upper: Tensor, only_unstable: bool) -> tuple[Tensor, Tensor]:
    """Full-CROWN bounds of the input of layer ``stop`` (``(B, *shapes[stop])``), tightening ``lower, upper``.

    The affine layers between the last nonlinear layer and ``stop`` do not depend on the example: their
    back-substituted identity (a dense Jacobian, ``J``) is computed once; then every example back-substitutes
    only its own rows of ``[J; -J]`` (its unstable neurons, or all non-fixed ones), padded to the largest
    count of its chunk.
    """
    flat_l, flat_u = lower.flatten(1), upper.flatten(1)
    # ReLU inputs with u <= 0 are fixed (output 0); without a MaxPool after it only unstable ones matter.
    not_fixed = flat_u > flat_l
    if type(layers[stop][1]) is nn.ReLU:
        not_fixed = not_fixed & (flat_u > 0)
    needed = not_fixed & (flat_l < 0) if only_unstable else not_fixed
    counts = needed.sum(1)
    if int(counts.max()) == 0:
        return lower, upper
    if patches_apply(layers, shapes, stop):
        # Windows only of the neurons that need a bound when few do; also of the active ones when those are few
        # enough too (their tighter bounds tighten the next layer's interval bounds, which decide its needed set).
        if int(not_fixed.sum(1).max()) <= SPARSE_FRACTION * flat_l.shape[1]:
            needed = not_fixed
        crown_l, crown_u = patch_bounds(layers, shapes, relaxations, stop, in_lower, in_upper,
                                        needed.view(lower.shape))
        new_l = torch.maximum(lower, crown_l)
        return new_l, torch.maximum(torch.minimum(upper, crown_u), new_l)  # rounding can cross; both are sound
    batch, neurons = flat_l.shape
    last = max(k for k in relaxations if k < stop)
    eye = torch.eye(neurons, dtype=lower.dtype, device=lower.device).view(1, neurons, *shapes[stop])
    zero = torch.zeros(1, neurons, dtype=lower.dtype, device=lower.device)
    jacobian, jac_offset = _backward(layers, shapes, relaxations, eye, zero, stop, start=last + 1)
    jacobian, jac_offset = jacobian[0], jac_offset[0]
    # Order each example's needed neurons first; the padding points at a dummy column ``neurons``.
    order = torch.argsort(needed.to(torch.int8), dim=1, descending=True, stable=True)
    in_size = in_lower[0].numel()
    per_example = max(1, 2 * int(counts.max()) * max(in_size, jacobian[0].numel()))
    chunk = max(1, _CHUNK_ELEMENTS // per_example)
    padded_l = torch.cat([flat_l, flat_l[:, :1]], 1)
    padded_u = torch.cat([flat_u, flat_u[:, :1]], 1)
    parts_l, parts_u = [], []
    for begin in range(0, batch, chunk):
        end = min(batch, begin + chunk)
        width = int(counts[begin:end].max())
        if width == 0:
            parts_l.append(padded_l[begin:end])
            parts_u.append(padded_u[begin:end])
            continue
        index = order[begin:end, :width]
        valid = torch.arange(width, device=lower.device).unsqueeze(0) < counts[begin:end].unsqueeze(1)
        rows = jacobian[index]  # (b, width, ...)
        offset = jac_offset[index]
        spec = torch.cat([rows, -rows], 1)
        spec_offset = torch.cat([offset, -offset], 1)
        part = {k: v.rows(begin, end) for k, v in relaxations.items() if k < stop}
        coeffs, total = _backward(layers, shapes, part, spec, spec_offset, last + 1)
        bounds = _concretize(coeffs, total, in_lower[begin:end], in_upper[begin:end])
        target = torch.where(valid, index, neurons)
        low_now, up_now = padded_l[begin:end].gather(1, target), padded_u[begin:end].gather(1, target)
        low_new = torch.where(valid, torch.maximum(low_now, bounds[:, :width]), low_now)
        up_new = torch.where(valid, torch.minimum(up_now, -bounds[:, width:]), up_now)
        up_new = torch.maximum(up_new, low_new)  # rounding can cross the two; both remain sound
        parts_l.append(padded_l[begin:end].scatter(1, target, low_new))
        parts_u.append(padded_u[begin:end].scatter(1, target, up_new))
    new_l, new_u = torch.cat(parts_l), torch.cat(parts_u)
    return new_l[:, :neurons].reshape(lower.shape), new_u[:, :neurons].reshape(upper.shape)


def _only_unstable(layers: list[tuple[str, nn.Module]], i: int) -> bool:
    """Whether only the unstable inputs of the ReLU at ``i`` need CROWN bounds.

    Its relaxation is exact on stable neurons, but a following MaxPool2d relaxation also uses the bounds of
    the active ones.
    """
    if type(layers[i][1]) is not nn.ReLU:
        return False
    for _, later in layers[i + 1:]:
        if type(later) in _NONLINEAR:
            return type(later) is not nn.MaxPool2d
    return True


def check_crown_layer(layer: nn.Module, path: str) -> None:
    """Raise :class:`~bounds.errors.UnsupportedLayerError` for layer settings CROWN's rules do not cover.

    Used by the chain path here and by :mod:`bounds.crown_graph`.
    """
    if type(layer) is nn.Conv2d and layer.padding_mode != "zeros":
        raise UnsupportedLayerError(f"Conv2d(padding_mode={layer.padding_mode!r}) for CROWN", path)
    if type(layer) is nn.LeakyReLU and layer.negative_slope > 1:
        raise UnsupportedLayerError(f"LeakyReLU(negative_slope={layer.negative_slope}) (concave) for CROWN", path)


def _build(model: nn.Module, lower: Tensor, upper: Tensor, intermediate: Intermediate,
           record: dict[int, tuple[Tensor, Tensor]] | None = None
           ) -> tuple[list[tuple[str, nn.Module]], list[tuple[int, ...]], Relaxations, Tensor, Tensor]:
    """Walk the model forward: intermediate bounds (IBP, tightened by CROWN) and every layer's relaxation.

    ``record``, if given, receives the input bounds ``(l, u)`` of every nonlinear layer by layer index.

    Returns:
        ``(layers, shapes, relaxations, out_lower, out_upper)`` where ``out_*`` are the interval bounds of the
        outputs computed from the tightened intermediate bounds.
    """
    if intermediate not in ("crown", "ibp"):
        raise ValueError(f"intermediate must be 'crown' or 'ibp', got {intermediate!r}")
    check_model_input(model, lower, "lower")
    check_model_input(model, upper, "upper")
    validate_box(lower, upper)
    layers = crown_chain(model, lower, upper)
    shapes: list[tuple[int, ...]] = [tuple(lower.shape[1:])]
    relaxations: Relaxations = {}
    box_l, box_u = lower, upper
    # CROWN can only tighten an input that went through an affine layer since the last nonlinear layer (the
    # interval bounds of an activation's or pooling's output given its input bounds are already exact).
    affine_since_nonlinear = False
    seen_nonlinear = False
    # On a point (zero-width box) interval propagation is exact: nothing for CROWN to tighten.
    tighten = intermediate == "crown" and not bool((upper == lower).all())
    for i, (path, layer) in enumerate(layers):
        check_crown_layer(layer, path)
        layer_type = type(layer)
        if layer_type in _NONLINEAR:
            if tighten and seen_nonlinear and affine_since_nonlinear:
                box_l, box_u = _intermediate_crown(layers, shapes, relaxations, i, box_l, box_u, lower, upper,
                                                   only_unstable=_only_unstable(layers, i))
            relaxations[i] = relax_layer(layer, box_l, box_u)
            if record is not None:
                record[i] = (box_l, box_u)
            seen_nonlinear = True
            affine_since_nonlinear = False
        elif layer_type not in (nn.Flatten, nn.Identity, nn.Dropout):
            affine_since_nonlinear = True
        box_l, box_u = layer_interval(layer, path, box_l, box_u)
        shapes.append(tuple(box_l.shape[1:]))
    return layers, shapes, relaxations, box_l, box_u


def _margin_spec(y: Tensor, classes: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``C (B, K-1, K)``: row ``j`` is ``e_y - e_other_j``; and the other classes ``(B, K-1)``."""
    batch = y.shape[0]
    all_classes = torch.arange(classes, device=y.device).expand(batch, classes)
    others = all_classes[all_classes != y.view(-1, 1)].view(batch, classes - 1)
    spec = F.one_hot(y, classes).to(dtype).unsqueeze(1) - F.one_hot(others, classes).to(dtype)
    return spec, others


def chain_margin_spec(shapes: list[tuple[int, ...]], lower: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Check the chain outputs logits and the labels fit; ``(y, spec, others, zero offset)`` of the margins.

    Shared by CROWN's final back-substitution here and alpha-CROWN's (:mod:`bounds.alpha_crown`).
    """
    if len(shapes[-1]) != 1:
        raise ValueError(f"the model must output logits (B, K), got per-example shape {shapes[-1]}")
    batch, classes = lower.shape[0], shapes[-1][0]
    validate_labels(y, batch, classes)
    y = y.to(lower.device)
    spec, others = _margin_spec(y, classes, lower.dtype)
    return y, spec, others, torch.zeros(batch, classes - 1, dtype=lower.dtype, device=lower.device)


def linear_margin_bounds(model: nn.Module, lower: Tensor, upper: Tensor, y: Tensor, *,
                         intermediate: Intermediate = "crown") -> LinearMarginBound:
    """The CROWN linear lower bound of the margins ``f_y - f_j`` on the box ``[lower, upper]``.

    Back-substitution of the specification ``C = e_y - e_j`` (Zhang et al. 2018, Theorem 3.2) down to the
    input gives ``A_j, b_j`` with ``f(x')_y - f(x')_j >= A_j . x' + b_j`` for every ``x'`` in the box. Because
    the relaxation is fixed, the certified margin of any sub-box ``[x - e1, x + e2]`` of the box is the
    closed form ``A_j . x + b_j - [A_j]_+ . e1 - [A_j]_- . e2`` (:meth:`LinearMarginBound.margins`).

    Args:
        model: Any model the bound engine traces (see the module docstring), in eval mode, mapping inputs to
            logits ``(B, K)``.
        lower: Lower ends of the box ``(B, ...)``.
        upper: Upper ends, same shape.
        y: Labels ``(B,)``.
        intermediate: ``"crown"`` (full CROWN: intermediate bounds by back-substitution, tightened with the
            interval bounds) or ``"ibp"`` (CROWN-IBP: intermediate bounds by interval propagation).

    Returns:
        A :class:`LinearMarginBound` (differentiable in ``lower``/``upper`` and the parameters).

    Raises:
        UnsupportedLayerError: For a layer neither IBP nor CROWN supports.
        ValueError: For bad boxes, labels, a train-mode BatchNorm/Dropout or an unknown ``intermediate``.
    """
    try:
        layers, shapes, relaxations, _, _ = _build(model, lower, upper, intermediate)
    except NotAChainError:
        return _graph_margin_bound(model, lower, upper, y)[0]
    return _final_linear(layers, shapes, relaxations, lower, upper, y)


def _final_linear(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]],
                  relaxations: Relaxations, lower: Tensor, upper: Tensor, y: Tensor) -> LinearMarginBound:
    y, spec, others, zero = chain_margin_spec(shapes, lower, y)
    coeffs, offset = _backward(layers, shapes, relaxations, spec, zero, len(layers))
    return _margin_bound(coeffs, offset, others, lower, upper)


def _margin_bound(coeffs: Tensor, offset: Tensor, others: Tensor, lower: Tensor, upper: Tensor) -> LinearMarginBound:
    """The :class:`LinearMarginBound` of the back-substituted rows of the other classes ``(B, K-1, ...)``."""
    batch, classes = lower.shape[0], others.shape[1] + 1
    shape = tuple(lower.shape[1:])
    coeffs = coeffs.expand(batch, *coeffs.shape[1:])
    full_coeffs = torch.zeros(batch, classes, *shape, dtype=lower.dtype, device=lower.device)
    full_coeffs = full_coeffs.scatter(1, others.view(batch, classes - 1, *([1] * len(shape))).expand_as(coeffs),
                                      coeffs)
    full_offset = torch.full((batch, classes), torch.inf, dtype=lower.dtype, device=lower.device)
    full_offset = full_offset.scatter(1, others, offset.expand(batch, -1))
    return LinearMarginBound(full_coeffs, full_offset, lower, upper)


def _graph_margin_bound(model: nn.Module, lower: Tensor, upper: Tensor, y: Tensor
                        ) -> tuple[LinearMarginBound, Tensor, Tensor]:
    """CROWN of a branching graph (:mod:`bounds.crown_graph`): the margin bound and the output's interval bounds."""
    from bounds.crown_graph import graph_back_substitution  # it imports this module

    y = y.to(lower.device)
    found: dict[str, Tensor] = {}

    def specification(output: "object") -> Tensor:
        shape = output.shape  # type: ignore[attr-defined]
        if len(shape) != 2:
            raise ValueError(f"the model must output logits (B, K), got per-example shape {tuple(shape[1:])}")
        validate_labels(y, lower.shape[0], shape[1])
        spec, found["others"] = _margin_spec(y, shape[1], lower.dtype)
        return spec

    coeffs, offset, output = graph_back_substitution(model, lower, upper, specification)
    out_l, out_u = output.ends()
    return _margin_bound(coeffs, offset, found["others"], lower, upper), out_l, out_u


def crown_margin_bounds(model: nn.Module, lower: Tensor, upper: Tensor, y: Tensor, *,
                        intermediate: Intermediate = "crown") -> Tensor:
    """Lower bounds of ``f(x)[y] - f(x)[j]`` over the box by CROWN, never looser than interval propagation.

    Same convention as :func:`~bounds.margins.margin_lower_bounds`: ``(B, K)`` with ``+inf`` at ``j == y``.
    Each entry is the larger of the CROWN bound (Theorem 3.2 concretised on the box) and the interval bound
    (computed from the CROWN-tightened intermediate bounds, hence at least as tight as plain IBP).

    Args:
        model: Any model the bound engine traces, in eval mode, mapping inputs to logits (chains get full CROWN,
            other graphs :mod:`bounds.crown_graph` with interval intermediate bounds).
        lower: Lower ends of the box ``(B, ...)``.
        upper: Upper ends, same shape.
        y: Labels ``(B,)``.
        intermediate: ``"crown"`` (full CROWN) or ``"ibp"`` (CROWN-IBP) intermediate bounds.

    Returns:
        ``(B, K)`` margin lower bounds, differentiable in ``lower``/``upper``.

    Raises:
        UnsupportedLayerError: For an unsupported layer.
        ValueError: For bad boxes or labels.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]])); _ = layer.bias.zero_()
        >>> lower, upper = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])
        >>> crown_margin_bounds(layer, lower, upper, torch.tensor([0])).detach()
        tensor([[inf, -1.]])
    """
    try:
        layers, shapes, relaxations, out_l, out_u = _build(model, lower, upper, intermediate)
        linear = _final_linear(layers, shapes, relaxations, lower, upper, y)
    except NotAChainError:
        linear, out_l, out_u = _graph_margin_bound(model, lower, upper, y)
    crown = linear.margins(lower, upper)
    return torch.maximum(crown, margins_from_bounds(out_l, out_u, y.to(lower.device)))
