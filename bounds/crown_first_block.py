"""CROWN through a chain's first nonlinear block in closed form: one lower and one upper line per output unit.

The first block of a chain is a ``Conv2d`` ``A`` on the model input (or on an :class:`InputNormalization` of it;
an eval BatchNorm or InputNormalization right after ``A`` folded in), an elementwise activation, and optionally a
disjoint ``MaxPool2d`` (kernel = stride, no padding). Every output unit ``u`` of the block (a pooled entry, or an
activation output without a pool) has, on the box its relaxations were built on, one lower and one upper line over
the input window of its receptive field (the lines of :mod:`bounds.layer_relaxations` composed with ``A``)::

    V_l . x_window + O_l  <=  u  <=  V_u . x_window + O_u

- Without a pool, at the activation's neuron ``(c, h, w)``: ``V = s W_A[c]`` and ``O = s b_A[c] + t`` for the
  activation's line ``s z + t`` (lower line for ``V_l, O_l``, upper line for ``V_u, O_u``).
- With a pool, the lower line is the selected entry's lower line (placed where that entry's window sits in the
  unit's); the upper line is the selected entry's upper line where the relaxation is exact, else the constant
  ``top`` (``V_u = 0``, ``O_u = top``).

CROWN's back-substitution through the block (Zhang et al. 2018, Theorem 3.2; the rules of
:mod:`bounds.crown_backward` and :mod:`bounds.crown_patches`) composes exactly these: a coefficient ``lambda`` of
a unit takes its lower line when ``lambda >= 0`` and its upper line otherwise (the pool moves the coefficient to
one entry, and no two units share an entry; the activation's line is chosen by the same sign). Two exact rewrites
use them:

- :func:`finish_dense` (blocks with a pool): rows ``Lambda`` at the block's output go to ``A``'s input by one product
  per unit position and an overlap-add (``F.fold``), instead of the spread onto the activation's map, its lines, and
  a transposed convolution over the whole map (LeNet: the 6 x 28 x 28 map of every row of the fully connected layers'
  bounds). Without a pool the layer-by-layer rules are as cheap and stay.
- :func:`next_conv_bounds`: the bounds of every output of the convolution ``B`` right after the block. Their rows
  are ``+-W_B[c]`` for every example, so the windows are built tap by tap from the unit lines (``k_B^2`` matrix
  products shared by all rows), not by back-substituting ``2 x C_B x H x W`` windows of each example through the
  block (LeNet's second convolution: 3,200 windows of 6 x 10 x 10 per example).

Both equal the back-substitution up to rounding (tested against the dense and the windowed rules). On the zoo's
LeNet one CROWN bound took 50 ms per example before and 25 ms after (one thread, 50 digits, radius 0.06); 21-22 ms
with the dense rows' checkpoint of :func:`bounds.crown_intermediate.intermediate_crown` as well.

This file is one concept (the first block's unit lines and the two rewrites built on them), hence its length.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from bounds.engine.pooling import as_pair, pool_stride
from bounds.layer_relaxations import (
    ACTIVATIONS,
    PoolRelaxation,
    Relaxation,
    Relaxations,
    conv_leading_padding,
    folded_into_previous,
)
from bounds.normalization import InputNormalization
from bounds.windows import window_columns


@dataclass(frozen=True)
class FirstBlock:
    """Where the first block sits in the chain and its geometry.

    Attributes:
        start: Index of ``A`` (``1`` after an input normalization, else ``0``).
        activation: Index of the activation layer.
        pool: Index of the max-pool, or ``None``.
        end: Index of the block's last layer (the pool, else the activation).
        weight: ``A``'s weight ``(C, C_in, k_h, k_w)`` (with a per-channel affine layer after it folded in).
        bias: ``A``'s bias ``(C,)`` (likewise; zeros without one).
        conv_stride: ``A``'s stride.
        padding: ``A``'s leading zero padding.
        pool_kernel: The pool's kernel (``(1, 1)`` without a pool).
        in_shape: ``A``'s per-example input shape ``(C_in, H, W)``.
    """

    start: int
    activation: int
    pool: int | None
    end: int
    weight: Tensor
    bias: Tensor
    conv_stride: tuple[int, int]
    padding: tuple[int, int]
    pool_kernel: tuple[int, int]
    in_shape: tuple[int, ...]

    @property
    def stride(self) -> tuple[int, int]:
        """Input stride between neighbouring units: ``A``'s stride times the pool's."""
        return tuple(p * s for p, s in zip(self.pool_kernel, self.conv_stride, strict=True))  # type: ignore[return-value]

    @property
    def window(self) -> tuple[int, int]:
        """Input window of a unit: ``(pool - 1) * stride_A + k_A`` per axis."""
        return tuple((p - 1) * s + k for p, s, k in zip(self.pool_kernel, self.conv_stride, self.weight.shape[-2:],
                                                         strict=True))  # type: ignore[return-value]


def _plain_conv(layer: nn.Module) -> bool:
    """A zero-padded ``Conv2d`` without groups or dilation."""
    return (type(layer) is nn.Conv2d and layer.groups == 1 and as_pair(layer.dilation) == (1, 1)
            and layer.padding_mode == "zeros")


def _affine(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]], i: int) -> tuple[Tensor, Tensor, int]:
    """Weight and bias of the convolution ``layers[i]`` (the affine layer after it folded in), and the next index."""
    folded = folded_into_previous(layers, shapes, i + 1) if i + 1 < len(layers) else None
    if folded is not None:
        return folded[0], folded[1], i + 2
    layer = layers[i][1]
    bias = layer.bias if layer.bias is not None else layer.weight.new_zeros(layer.weight.shape[0])
    return layer.weight, bias, i + 1


def first_block(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]]) -> FirstBlock | None:
    """The chain's first block (module docstring), or ``None`` if the chain does not start with one."""
    start = 1 if layers and type(layers[0][1]) is InputNormalization else 0
    if len(layers) <= start or len(shapes[start]) != 3 or not _plain_conv(layers[start][1]):
        return None
    conv = layers[start][1]
    weight, bias, i = _affine(layers, shapes, start)
    if i >= len(layers) or type(layers[i][1]) not in ACTIVATIONS:
        return None
    activation, pool = i, None
    pool_kernel = (1, 1)
    if i + 1 < len(layers) and type(layers[i + 1][1]) is nn.MaxPool2d:
        layer = layers[i + 1][1]
        kernel = as_pair(layer.kernel_size)
        if (pool_stride(layer) == kernel and as_pair(layer.padding) == (0, 0) and as_pair(layer.dilation) == (1, 1)
                and not layer.ceil_mode):
            pool, pool_kernel = i + 1, kernel
    end = activation if pool is None else pool
    return FirstBlock(start, activation, pool, end, weight, bias, as_pair(conv.stride), conv_leading_padding(conv),
                      pool_kernel, shapes[start])


def _relaxations_fit(block: FirstBlock, relaxations: Relaxations) -> bool:
    """Whether the block's relaxations are known and shared by all rows (not alpha-CROWN's per-row slopes)."""
    activation = relaxations.get(block.activation)
    if not isinstance(activation, Relaxation) or activation.per_spec:
        return False
    return block.pool is None or isinstance(relaxations.get(block.pool), PoolRelaxation)


@dataclass(frozen=True)
class UnitLines:
    """The lines of every unit ``(c, p, q)`` of the block, ``V_l = slope_l patch`` and ``V_u = slope_u patch``.

    Both lines of a unit run through the same entry of ``A``'s output (the pool's selection), so they share the
    ``patch``: ``W_A[c]`` placed where that entry's window sits in the unit's (``(B or 1, C, P, Q, C_in K_h K_w)``).
    ``slope_*`` and ``offset_*`` are ``(B, C, P, Q)``; ``slope_u = 0`` where the upper line is the constant ``top``.
    """

    patch: Tensor
    slope_l: Tensor
    offset_l: Tensor
    slope_u: Tensor
    offset_u: Tensor


def unit_lines(block: FirstBlock, relaxations: Relaxations) -> UnitLines:
    """The :class:`UnitLines` of the block's relaxations (module docstring)."""
    activation = relaxations[block.activation]
    assert isinstance(activation, Relaxation)
    weight, bias = block.weight, block.bias.view(-1, 1, 1)
    channels = weight.shape[0]
    if block.pool is None:
        icpt_l = activation.icpt_l if activation.has_icpt_l else 0.0
        return UnitLines(weight.reshape(1, channels, 1, 1, -1), activation.slope_l, activation.slope_l * bias + icpt_l,
                         activation.slope_u, activation.slope_u * bias + activation.icpt_u)
    pool = relaxations[block.pool]
    assert isinstance(pool, PoolRelaxation)
    lines = activation.at_pool_selection(pool)
    width = pool.in_shape[-1]
    out_h, out_w = pool.index.shape[-2:]
    (ph, pw), (kh, kw), (sh, sw) = block.pool_kernel, weight.shape[-2:], block.conv_stride
    row = pool.index // width - (torch.arange(out_h, device=pool.index.device) * ph).view(-1, 1)
    col = pool.index % width - torch.arange(out_w, device=pool.index.device) * pw
    # W_A[c] placed at every position of the pool's window: (C * ph * pw, C_in K_h K_w), gathered by the selection.
    placed = weight.new_zeros(channels, ph, pw, weight.shape[1], *block.window)
    for di in range(ph):
        for dj in range(pw):
            placed[:, di, dj, :, di * sh:di * sh + kh, dj * sw:dj * sw + kw] = weight
    choice = torch.arange(channels, device=row.device).view(-1, 1, 1) * (ph * pw) + row * pw + col
    patch = placed.view(channels * ph * pw, -1)[choice.flatten()].view(*choice.shape, -1)
    icpt_l = lines.icpt_l if lines.has_icpt_l else 0.0
    slope_u = torch.where(pool.exact, lines.slope_u, torch.zeros_like(lines.slope_u))
    offset_u = torch.where(pool.exact, lines.slope_u * bias + lines.icpt_u, pool.top)
    return UnitLines(patch, lines.slope_l, lines.slope_l * bias + icpt_l, slope_u, offset_u)


def finish_dense(block: FirstBlock, relaxations: Relaxations, coeffs: Tensor, offset: Tensor, budget: int
                 ) -> tuple[Tensor, Tensor] | None:
    """Back-substitute dense rows ``Lambda (B or 1, S, C, P, Q)`` at the output of a block with a pool to ``A``'s input.

    A unit's coefficient ``lambda`` becomes ``([lambda]_+ slope_l + [lambda]_- slope_u) patch`` at the input and
    adds ``[lambda]_+ offset_l + [lambda]_- offset_u`` to the offset; the rows go in blocks of at most about
    ``budget`` unit-window entries. Returns ``(Lambda_input (B, S, C_in, H, W), offset)``, as the layer-by-layer
    rules would, or ``None`` without a pool (the rules' activation step and transposed convolution are as cheap) or
    where the relaxations do not fit (then the caller goes on layer by layer).
    """
    if block.pool is None or not _relaxations_fit(block, relaxations):
        return None
    lines = unit_lines(block, relaxations)
    batch = max(coeffs.shape[0], lines.slope_l.shape[0])
    negative = coeffs.clamp(max=0)
    offset = offset + (coeffs.flatten(2) @ lines.offset_l.flatten(1).unsqueeze(2)).squeeze(2)
    offset = offset + (negative.flatten(2) @ (lines.offset_u - lines.offset_l).flatten(1).unsqueeze(2)).squeeze(2)
    del negative
    patch = lines.patch.expand(batch, *lines.patch.shape[1:4], -1)
    slope_u = (lines.slope_u - lines.slope_l).unsqueeze(1)
    rows = max(1, budget // (batch * patch.shape[-1] * patch.shape[2] * patch.shape[3]))  # one row's windows
    parts = []
    for part in coeffs.split(rows, 1):
        scale = torch.addcmul(part * lines.slope_l.unsqueeze(1), part.clamp(max=0), slope_u)
        windows = torch.einsum("bscpq,bcpqd->bsdpq", scale.expand(batch, -1, -1, -1, -1), patch)
        folded = _fold(block, windows.reshape(batch * part.shape[1], windows.shape[2], -1), windows.shape[-2:])
        parts.append(folded.view(batch, part.shape[1], *block.in_shape))
    return torch.cat(parts, 1), offset


def _fold(block: FirstBlock, windows: Tensor, grid: tuple[int, int]) -> Tensor:
    """Overlap-add unit windows ``(N, C_in K_h K_w, P Q)`` onto the input map ``(N, C_in, H, W)``.

    The rows and columns of ``A``'s zero padding (constants, not inputs) are cropped; input rows no unit reaches
    get zeros.
    """
    size = tuple((g - 1) * s + k for g, s, k in zip(grid, block.stride, block.window, strict=True))
    full = F.fold(windows, size, block.window, stride=block.stride)
    (top, left), (height, width) = block.padding, block.in_shape[-2:]
    full = full[..., top:top + height, left:left + width]
    return F.pad(full, (0, width - full.shape[-1], 0, height - full.shape[-2]))


def next_conv_block(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]], stop: int
                    ) -> FirstBlock | None:
    """The first block if the input of layer ``stop`` is the output of a plain convolution right after it."""
    block = first_block(layers, shapes)
    if block is None or block.end + 1 >= stop or not _plain_conv(layers[block.end + 1][1]):
        return None
    return block if _affine(layers, shapes, block.end + 1)[2] == stop else None


def next_conv_bounds(block: FirstBlock, layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]],
                     relaxations: Relaxations, stop: int, in_lower: Tensor, in_upper: Tensor, budget: int
                     ) -> tuple[Tensor, Tensor] | None:
    """CROWN bounds of every output of the convolution ``B`` after the first block (the input of layer ``stop``).

    Row ``+W_B[c]`` (lower bound) and ``-W_B[c]`` (upper bound) of output ``(c, h, w)`` reads unit ``(h t + i - p,
    w t + j - p)`` through tap ``(i, j)``; its input window is the overlap-add of those units' lines (the lower line
    where the row's weight is positive). Tap by tap, ``[W_B]_+`` and ``[W_B]_-`` of all rows multiply the lines of
    all units at once. The windows are concretised over the input box's windows, in chunks of examples (and rows)
    of at most ``budget`` window entries.

    Args:
        block: The chain's first block (:func:`next_conv_block` of ``stop``).
        layers: ``(path, layer)`` of the chain in execution order.
        shapes: ``shapes[i]``: per-example input shape of layer ``i``.
        relaxations: The relaxation of every nonlinear layer below ``stop``.
        stop: The layer whose input is bounded.
        in_lower: Lower ends ``(B, C_in, H, W)`` of the box at ``A``'s input (the model input, or its normalization).
        in_upper: Its upper ends.
        budget: Most window entries built at once (:data:`bounds.crown_backward.CHUNK_ELEMENTS`).

    Returns:
        ``(lower, upper)``, each ``(B, *shapes[stop])``, or ``None`` where the relaxations do not fit.
    """
    if not _relaxations_fit(block, relaxations):
        return None
    conv = layers[block.end + 1][1]
    weight, bias, _ = _affine(layers, shapes, block.end + 1)
    channels, out_h, out_w = shapes[stop]
    (kh, kw), (sh, sw) = weight.shape[-2:], as_pair(conv.stride)
    lead_h, lead_w = conv_leading_padding(conv)
    rows = torch.cat([weight, -weight])  # (2 C_B, C, k, k): lower bounds, then (negated) upper bounds
    taps = torch.cat([rows.clamp(min=0), rows.clamp(max=0)], 1)  # against [lower lines; upper lines]
    row_bias = torch.cat([bias, -bias])
    lines = unit_lines(block, relaxations)
    offset_l, offset_u = lines.offset_l, lines.offset_u
    grid_h, grid_w = offset_l.shape[2:4]
    pad_h = max(0, (out_h - 1) * sh + kh - lead_h - grid_h)
    pad_w = max(0, (out_w - 1) * sw + kw - lead_w - grid_w)
    offsets = F.pad(torch.cat([offset_l, offset_u], 1), (lead_w, pad_w, lead_h, pad_h))
    offset = F.conv2d(offsets, taps, row_bias, (sh, sw))[..., :out_h, :out_w]  # (B, 2 C_B, H_o, W_o)
    # Unit lines as (K_h, K_w, 2C, B, P, Q, C_in): the taps contract over 2C, and every window entry is one block.
    lines = torch.cat([lines.slope_l.unsqueeze(-1) * lines.patch, lines.slope_u.unsqueeze(-1) * lines.patch], 1)
    lines = lines.view(*lines.shape[:4], -1, *block.window).permute(5, 6, 1, 0, 2, 3, 4)
    lines = F.pad(lines, (0, 0, lead_w, pad_w, lead_h, pad_h))
    (uh, uw), (th, tw) = block.window, block.stride
    window = ((kh - 1) * th + uh, (kw - 1) * tw + uw)
    in_channels = block.in_shape[0]
    batch = in_lower.shape[0]
    per_row = out_h * out_w * in_channels * window[0] * window[1]  # window entries of one row of one example
    chunk = max(1, budget // (2 * channels * per_row))
    row_block = max(1, min(2 * channels, budget // per_row))
    mid, rad = (in_upper + in_lower) / 2, ((in_upper - in_lower) / 2).clamp(min=0)
    mid_windows = _input_windows(mid, block, (sh, sw), (lead_h, lead_w), window, (out_h, out_w))
    rad_windows = _input_windows(rad, block, (sh, sw), (lead_h, lead_w), window, (out_h, out_w))
    bounds = []
    for begin in range(0, batch, chunk):
        end = min(batch, begin + chunk)
        unit = lines[:, :, :, begin:end]
        mid_b = mid_windows[:, begin:end].flatten(2).unsqueeze(1)
        rad_b = rad_windows[:, begin:end].flatten(2).unsqueeze(1)
        parts = []
        for first in range(0, 2 * channels, row_block):
            last = min(2 * channels, first + row_block)
            coeffs = unit.new_zeros(window[0] * window[1], last - first, end - begin, out_h, out_w, in_channels)
            spread = coeffs.view(*window, *coeffs.shape[1:])
            for i in range(kh):
                for j in range(kw):
                    source = unit[:, :, :, :, i:i + (out_h - 1) * sh + 1:sh, j:j + (out_w - 1) * sw + 1:sw]
                    product = taps[first:last, :, i, j] @ source.reshape(uh * uw, source.shape[2], -1)
                    spread[i * th:i * th + uh, j * tw:j * tw + uw] += product.view(uh, uw, *coeffs.shape[1:])
            flat = coeffs.view(coeffs.shape[0], last - first, end - begin, -1)
            centre = (flat * mid_b).sum(0)
            bound = centre - (flat.abs() * rad_b).sum(0)
            parts.append(bound.view(*coeffs.shape[1:]).sum(-1))
            del coeffs, spread
        bounds.append(torch.cat(parts).transpose(0, 1))
    bound = torch.cat(bounds) + offset
    return bound[:, :channels], -bound[:, channels:]


def _input_windows(values: Tensor, block: FirstBlock, stride_b: tuple[int, int], lead_b: tuple[int, int],
                   window: tuple[int, int], out_hw: tuple[int, int]) -> Tensor:
    """The input entries under every output's window, 0 outside the map: ``(K_h K_w, B, H_o, W_o, C_in)``."""
    step = (stride_b[0] * block.stride[0], stride_b[1] * block.stride[1])
    start = (lead_b[0] * block.stride[0] + block.padding[0], lead_b[1] * block.stride[1] + block.padding[1])
    columns = window_columns(values, window, step, start, out_hw)
    return columns.view(values.shape[0], values.shape[1], -1, *out_hw).permute(2, 0, 3, 4, 1)

