"""CROWN back-substitution through a chain of layers (Zhang et al. 2018, Theorem 3.2): the dense rules.

:func:`back_substitute` carries ``Lambda`` (the coefficients of a linear function of a layer's input) down the chain:
affine layers exactly (a per-channel affine layer after a ``Linear``/``Conv2d`` folded into it), activations and
max-pools through their relaxation's lines (``[Lambda]_+`` the lower, ``[Lambda]_-`` the upper); :func:`concretize`
bounds the result over the input box. Used by :mod:`bounds.crown` (margins and intermediate bounds),
:mod:`bounds.crown_graph` and alpha-CROWN; the windowed version of these rules is :mod:`bounds.crown_patches`.
"""

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from bounds.crown_first_block import finish_dense, first_block
from bounds.engine.pooling import as_pair
from bounds.errors import UnsupportedLayerError
from bounds.layer_relaxations import (
    ACTIVATIONS,
    PoolRelaxation,
    Relaxation,
    Relaxations,
    activation_below_pool,
    affine_parts,
    conv_leading_padding,
    folded_into_previous,
)
from bounds.normalization import InputNormalization

# Elements of the largest coefficient tensor one step of a back-substitution may build (4 bytes each in float32, a
# few live at once); the dense rows (bounds.crown_intermediate) and the windows (bounds.crown_patches) are split
# over examples (and rows) to stay below it. 2**23 float32 entries are 32 MiB, the largest block glibc's malloc
# serves from its heap and reuses: larger ones are mmap-ed afresh and page-faulted on every allocation. Measured
# on the cnn_7layer CROWN bound of one 3x32x32 example (bench_scaling.py, one thread): 117 s (50 s of it in the
# kernel) at 2**25, 75 s (7 s) at 2**23, 90 s and 93 s at 2**22 and 2**21 (more, smaller steps).
CHUNK_ELEMENTS = 2**23
# Elements of one block of rows of a dense transposed convolution (see conv_backward).
_TRANSPOSE_BLOCK_ELEMENTS = 2**20


def check_crown_layer(layer: nn.Module, path: str) -> None:
    """Raise :class:`~bounds.errors.UnsupportedLayerError` for layer settings CROWN's rules do not cover.

    Used by the chain path (:mod:`bounds.crown`) and by :mod:`bounds.crown_graph`.
    """
    if type(layer) is nn.Conv2d and layer.padding_mode != "zeros":
        raise UnsupportedLayerError(f"Conv2d(padding_mode={layer.padding_mode!r}) for CROWN", path)
    if type(layer) is nn.LeakyReLU and layer.negative_slope > 1:
        raise UnsupportedLayerError(f"LeakyReLU(negative_slope={layer.negative_slope}) (concave) for CROWN", path)


def concretize(coefficients: Tensor, offset: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """``min_{x in [lower, upper]} A x + b`` for ``A (B, S, ...)``: ``A mid - |A| rad + b`` (``(B, S)``)."""
    mid = ((upper + lower) / 2).flatten(1).unsqueeze(2)
    rad = ((upper - lower) / 2).clamp(min=0).flatten(1).unsqueeze(2)
    flat = coefficients.flatten(2)
    return (flat @ mid).squeeze(2) - (flat.abs() @ rad).squeeze(2) + offset


def conv_backward(layer: nn.Conv2d, weight: Tensor, coeffs: Tensor, in_shape: tuple[int, ...]) -> Tensor:
    """``Lambda W`` for a convolution (``weight``: the layer's, or with a BatchNorm folded in) of ``Lambda``.

    ``Lambda`` is ``(B, S, C, H, W)``.

    The transposed convolution without padding covers the padded input; the rows and columns of the zero padding
    (constants, not inputs) are cropped away, and input rows no output reads (a stride's remainder) get zeros.
    On a CPU the rows go in blocks (``conv_transpose2d`` slows down several-fold per row on large inputs: LeNet's
    1680 x 6 x 28 x 28 rows take 108 ms at once, 38 ms in blocks of 250, one thread).
    """
    batch, specs = coeffs.shape[:2]
    flat = coeffs.reshape(batch * specs, *coeffs.shape[2:])
    stride, dilation = as_pair(layer.stride), as_pair(layer.dilation)
    if flat.device.type != "cpu":
        full = F.conv_transpose2d(flat, weight, None, stride, 0, 0, layer.groups, dilation)
    else:
        block = max(1, _TRANSPOSE_BLOCK_ELEMENTS // max(flat[0].numel(), math.prod(in_shape)))
        full = torch.cat([F.conv_transpose2d(part, weight, None, stride, 0, 0, layer.groups, dilation)
                          for part in flat.split(block)])
    top, left = conv_leading_padding(layer)
    height, width = in_shape[-2:]
    full = full[..., top:top + height, left:left + width]
    full = F.pad(full, (0, width - full.shape[-1], 0, height - full.shape[-2]))
    return full.reshape(batch, specs, *in_shape)


def back_substitute(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]], relaxations: Relaxations,
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
    # To the model input, the chain's first block (convolution, activation, pool) goes in one step, the same result
    # on fewer numbers (bounds.crown_first_block).
    block = first_block(layers, shapes) if start == 0 else None
    i = stop - 1
    while i >= start:
        if block is not None and i == block.end:
            finished = finish_dense(block, relaxations, coeffs, offset, CHUNK_ELEMENTS)
            if finished is not None:
                coeffs, offset = finished
                i = block.start - 1
                continue
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
            coeffs = conv_backward(layer, weight, coeffs, in_shape)
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
            coeffs, offset = pool_backward(pool, coeffs, offset, below)
            if below is not None:
                i -= 1  # the activation before the pool was applied at the pool's resolution
        elif layer_type in ACTIVATIONS:
            relax = relaxations[i]
            assert isinstance(relax, Relaxation)
            coeffs, offset = activation_backward(relax, coeffs, offset)
        else:  # pragma: no cover - crown_chain yields only the types above
            raise UnsupportedLayerError(layer_type.__name__, path, "no CROWN rule")
        i -= 1
    return coeffs, offset


def activation_backward(relax: Relaxation, coeffs: Tensor, offset: Tensor) -> tuple[Tensor, Tensor]:
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


def pool_backward(relax: PoolRelaxation, coeffs: Tensor, offset: Tensor, activation: Relaxation | None
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
        selected, offset = activation_backward(activation, selected, offset)
    batch = max(coeffs.shape[0], relax.index.shape[0])
    specs = coeffs.shape[1]
    channels = relax.in_shape[0]
    selected = selected.expand(batch, *selected.shape[1:]).reshape(batch, specs, channels, -1)
    index = relax.index.flatten(2).unsqueeze(1).expand(batch, specs, channels, -1)
    out = coeffs.new_zeros(batch, specs, channels, relax.in_shape[1] * relax.in_shape[2])
    out = out.scatter_add(3, index, selected)
    return out.view(batch, specs, *relax.in_shape), offset
