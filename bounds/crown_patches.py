"""CROWN back-substitution of convolutional feature maps in windows ("patches", as in auto_LiRPA).

Full CROWN needs bounds of every pre-activation neuron of a convolutional layer, each by its own
back-substitution to the input (Zhang et al. 2018, Theorem 3.2 applied to the neuron). Stored densely, the
coefficients of one neuron span the whole feature map of every earlier layer although only its receptive field
is nonzero: for the Amoeba LeNet's second convolution, 1,600 neurons x 2 sides x 6 x 28 x 28 coefficients,
about 97% of them zero. Here every neuron ``(s, h, w)`` of the layer keeps only its window: a tensor ``P`` of
shape ``(B, S, H_s, W_s, C, k_h, k_w)`` with a stride and a padding per axis, meaning that the coefficient of the
current layer's input at ``(c, h * stride - padding + i, w * stride - padding + j)`` is ``P[b, s, h, w, c, i, j]``
(Xu et al., NeurIPS 2020, "Automatic perturbation analysis", the patches mode of auto_LiRPA). The rules are the
dense ones of :mod:`bounds.crown` restricted to the window:

- ``Conv2d(W, b)`` with stride ``t``, padding ``p``, dilation ``d``: ``P <- conv_transpose2d(P, W)`` per window
  (the window grows to ``(k_h - 1) t + d (k - 1) + 1``), ``stride <- stride t``, ``padding <- padding t + p``;
  ``offset += sum(P) . b``. ``AvgPool2d`` is the depthwise convolution with weight ``1 / k^2``.
- Per-channel affine layers (eval ``BatchNorm2d``, ``InputNormalization``): ``P <- P scale``,
  ``offset += P . shift``.
- Activations: the relaxation's slope and intercept maps are cut into the same windows (``F.unfold``);
  ``[P]_+`` takes the lower line and ``[P]_-`` the upper line.
- ``MaxPool2d`` with disjoint windows (stride = kernel): each coefficient moves to the entry its relaxation
  selects inside its pooling window (a one-hot over the ``k x k`` positions), or, where it is negative and the
  window is not exact, becomes the constant ``coefficient * top``.

Window entries outside a feature map stand for the zero padding of the next layer and are zeroed after each
step; at the input the windows of the box centre and radius give ``P mid - |P| rad + offset``. The results
equal the dense back-substitution up to rounding (tested), at a cost proportional to the receptive field.

When only some neurons need a bound (the unstable ReLU inputs; at most ``SPARSE_FRACTION`` of the layer), each of
them gets its own ``1 x 1`` starting window at its grid position instead of the whole grid of every channel
(auto_LiRPA's ``unstable_idx``): the rules are the same, with the windows of the maps cut at those positions.
An eval BatchNorm right after a convolution is folded into it (one pass over ``P`` instead of three).

This file is one concept (windowed CROWN back-substitution), hence its length.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from bounds.crown_backward import CHUNK_ELEMENTS
from bounds.engine.pooling import as_pair, pool_stride
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
from bounds.windows import window_columns

_PASS_THROUGH = (nn.Identity, nn.Dropout)
# Windows with at most this many (input entries)^2 go through a transposed convolution as one dense matrix.
_DENSE_WINDOW_MAP = 2**20
# Back-substitute only the needed neurons' windows when they are at most this fraction of the layer.
SPARSE_FRACTION = 0.5


@dataclass(frozen=True)
class _Geometry:
    """Windows of one layer's input: size ``kernel``, spec neuron ``(h, w)`` starts at ``(h, w) * stride - padding``."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    def through(self, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                dilation: tuple[int, int] = (1, 1)) -> "_Geometry":
        """The windows of the input of a windowed layer (convolution or pooling) whose output has these."""
        size = tuple((k - 1) * t + d * (kk - 1) + 1
                     for k, t, d, kk in zip(self.kernel, stride, dilation, kernel, strict=True))
        return _Geometry(size, tuple(s * t for s, t in zip(self.stride, stride, strict=True)),  # type: ignore[arg-type]
                         tuple(p * t + q for p, t, q in zip(self.padding, stride, padding, strict=True)))


@dataclass(frozen=True)
class _Rows:
    """Where the specification rows sit on the ``(H_s, W_s)`` grid of the bounded layer.

    ``positions is None``: the patch tensor is ``(B, S, H_s, W_s, C, k_h, k_w)``, one window per grid position
    (every neuron of a channel). Otherwise it is ``(B, N, 1, 1, C, k_h, k_w)`` and row ``n`` of example ``b`` sits
    at the flat grid position ``positions[b, n] = h W_s + w`` (only the neurons that need a bound).
    """

    hw: tuple[int, int]
    positions: Tensor | None = None

    def rows(self, first: int, last: int) -> "_Rows":
        """The rows ``first:last`` (sparse rows only; the grid has no row axis of its own)."""
        return self if self.positions is None else _Rows(self.hw, self.positions[:, first:last])


def _pool_is_patchable(layer: nn.MaxPool2d | nn.AvgPool2d) -> bool:
    if layer.ceil_mode:
        return False
    if type(layer) is nn.MaxPool2d:  # each input entry in at most one window
        return pool_stride(layer) == as_pair(layer.kernel_size) and as_pair(layer.dilation) == (1, 1)
    return layer.count_include_pad or as_pair(layer.padding) == (0, 0)


def _geometries(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]], stop: int
                ) -> list[_Geometry] | None:
    """Window geometry at the input of every layer ``0..stop`` (index ``i``), or ``None`` if not patchable.

    Patchable: every layer below ``stop`` works on ``(C, H, W)`` maps and is a zero-padded ``Conv2d``, a
    per-channel affine layer, an elementwise activation, a disjoint ``MaxPool2d``, an ``AvgPool2d`` or a
    pass-through layer.
    """
    if any(len(shape) != 3 for shape in shapes[:stop + 1]):
        return None
    geometry = _Geometry((1, 1), (1, 1), (0, 0))
    result = [geometry]
    for i in range(stop - 1, -1, -1):
        layer = layers[i][1]
        layer_type = type(layer)
        if layer_type is nn.Conv2d:
            if layer.padding_mode != "zeros":
                return None
            geometry = geometry.through(as_pair(layer.kernel_size), as_pair(layer.stride),
                                        conv_leading_padding(layer), as_pair(layer.dilation))
        elif layer_type in (nn.MaxPool2d, nn.AvgPool2d):
            if not _pool_is_patchable(layer):
                return None
            geometry = geometry.through(as_pair(layer.kernel_size), pool_stride(layer), as_pair(layer.padding))
        elif layer_type not in (*ACTIVATIONS, *_PASS_THROUGH, nn.BatchNorm2d, InputNormalization):
            return None
        result.append(geometry)
    return result[::-1]


def patches_apply(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]], stop: int) -> bool:
    """Whether :func:`patch_bounds` can bound the input of layer ``stop`` (see :func:`_geometries`)."""
    return _geometries(layers, shapes, stop) is not None


def _windows(values: Tensor, geometry: _Geometry, spec: _Rows) -> Tensor:
    """``(B, C, H, W)`` map -> its entries under every window (0 outside), shaped like the patches of ``spec``.

    Grid rows: ``(B, 1, H_s, W_s, C, k_h, k_w)``; sparse rows: ``(B, N, 1, 1, C, k_h, k_w)``.
    """
    kh, kw = geometry.kernel
    hs, ws = spec.hw
    columns = window_columns(values, geometry.kernel, geometry.stride, geometry.padding, spec.hw)
    batch, channels = values.shape[:2]
    if spec.positions is None:
        return columns.view(batch, channels, kh, kw, hs, ws).permute(0, 4, 5, 1, 2, 3).unsqueeze(1)
    positions = spec.positions
    batch = max(batch, positions.shape[0])
    index = positions.unsqueeze(1).expand(batch, columns.shape[1], positions.shape[1])
    picked = columns.expand(batch, -1, -1).gather(2, index)
    return picked.view(batch, channels, kh, kw, -1).permute(0, 4, 1, 2, 3).unsqueeze(2).unsqueeze(2)


def _inside(geometry: _Geometry, spec: _Rows, map_hw: tuple[int, ...], device: torch.device) -> Tensor | None:
    """Mask of window entries inside the ``map_hw`` map, ``None`` if all are.

    Grid rows: ``(H_s, W_s, 1, k_h, k_w)``; sparse rows: ``(B, N, 1, 1, 1, k_h, k_w)``.
    """
    if spec.positions is None:
        starts = [torch.arange(spec.hw[axis], device=device) for axis in range(2)]
    else:
        starts = [spec.positions // spec.hw[1], spec.positions % spec.hw[1]]
    masks = []
    for axis in range(2):
        start = starts[axis] * geometry.stride[axis] - geometry.padding[axis]
        position = start.unsqueeze(-1) + torch.arange(geometry.kernel[axis], device=device)
        masks.append((position >= 0) & (position < map_hw[axis]))
    if spec.positions is None:
        inside = masks[0][:, None, None, :, None] & masks[1][None, :, None, None, :]
    else:
        inside = (masks[0][..., :, None] & masks[1][..., None, :])[:, :, None, None, None]
    return None if bool(inside.all()) else inside


def _sum_window(values: Tensor) -> Tensor:
    return values.sum(dim=(-3, -2, -1))


def _pool_window_position(relax: PoolRelaxation, layer: nn.MaxPool2d) -> Tensor:
    """Position ``i k_w + j`` of every pooling window's selected entry inside the window (``(B, C, H_o, W_o)``)."""
    (kh, kw), (ph, pw) = as_pair(layer.kernel_size), as_pair(layer.padding)
    width = relax.in_shape[-1]
    rows, cols = relax.index // width, relax.index % width
    out_h, out_w = relax.index.shape[-2:]
    first_row = (torch.arange(out_h, device=rows.device) * kh - ph).view(-1, 1)
    first_col = torch.arange(out_w, device=rows.device) * kw - pw
    return (rows - first_row) * kw + (cols - first_col)


def _through_pool(layer: nn.MaxPool2d, relax: PoolRelaxation, activation: Relaxation | None, coeffs: Tensor,
                  offset: Tensor, geometry: _Geometry, spec: _Rows) -> tuple[Tensor, Tensor]:
    """Windows through MaxPool2d's relaxation (and the fused activation before it, if given)."""
    exact = _windows(relax.exact.to(coeffs.dtype), geometry, spec) > 0
    keep = exact | (coeffs >= 0)
    selected = torch.where(keep, coeffs, 0.0)
    offset = offset + _sum_window((coeffs - selected) * _windows(relax.top, geometry, spec))
    if activation is not None:
        selected, offset = _through_activation(activation, selected, offset, geometry, spec)
    position = _windows(_pool_window_position(relax, layer).to(coeffs.dtype), geometry, spec).long()
    kh, kw = as_pair(layer.kernel_size)
    # Entry (i, di, j, dj) of the spread window holds coefficient (i, j) where the pool selected (di, dj).
    specs, hs, ws, channels, wh, ww = selected.shape[1:]
    batch = max(selected.shape[0], position.shape[0])
    row = (torch.arange(wh, device=coeffs.device) * kh).view(-1, 1) * (ww * kw)
    col = torch.arange(ww, device=coeffs.device) * kw
    target = row + col + (position // kw) * (ww * kw) + position % kw  # flat index in the spread window
    spread = selected.new_zeros(batch, specs, hs, ws, channels, wh * kh * ww * kw)
    spread.scatter_(-1, target.flatten(-2).expand(batch, specs, -1, -1, -1, -1),
                    selected.expand(batch, -1, -1, -1, -1, -1, -1).flatten(-2))
    return spread.view(batch, specs, hs, ws, channels, wh * kh, ww * kw), offset


def _through_activation(relax: Relaxation, coeffs: Tensor, offset: Tensor, geometry: _Geometry,
                        spec: _Rows) -> tuple[Tensor, Tensor]:
    """``[P]_+`` takes the lower line, ``[P]_-`` the upper line, with the lines cut into the windows."""
    negative = coeffs.clamp(max=0)
    offset = offset + _sum_window(negative * _windows(relax.icpt_u, geometry, spec))
    if relax.has_icpt_l:
        offset = offset + _sum_window((coeffs - negative) * _windows(relax.icpt_l, geometry, spec))
    slope_l = _windows(relax.slope_l, geometry, spec)
    return coeffs * slope_l + negative * (_windows(relax.slope_u, geometry, spec) - slope_l), offset


def _conv_transpose(coeffs: Tensor, weight: Tensor, stride: tuple[int, int], dilation: tuple[int, int],
                    groups: int) -> Tensor:
    """Every window through the transposed convolution (``Lambda W`` restricted to the window).

    Small windows go through the dense matrix of the map (window in -> window out), built once per call by
    transposing the identity: one matrix product is several times faster than ``conv_transpose2d`` on many
    tiny windows with few output channels.
    """
    lead = coeffs.shape[:4]
    window = coeffs.shape[4:]
    size = window.numel()
    flat = coeffs.reshape(-1, *window)
    if size * size <= _DENSE_WINDOW_MAP:
        basis = torch.eye(size, dtype=coeffs.dtype, device=coeffs.device).view(size, *window)
        matrix = F.conv_transpose2d(basis, weight, None, stride, 0, 0, groups, dilation)
        out_window = matrix.shape[1:]
        return (flat.reshape(-1, size) @ matrix.reshape(size, -1)).view(*lead, *out_window)
    out = F.conv_transpose2d(flat, weight, None, stride, 0, 0, groups, dilation)
    return out.view(*lead, *out.shape[1:])


def _back_substitute(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]], relaxations: Relaxations,
                     stop: int, geometries: list[_Geometry], spec: _Rows, coeffs: Tensor,
                     offset: Tensor) -> tuple[Tensor, Tensor]:
    """Windows ``P`` at the input of layer ``stop`` -> windows at the model input (and the offset).

    Two exact shortcuts keep the elementwise passes over ``P`` few: an eval BatchNorm (or InputNormalization)
    right after a convolution is folded into its weight and bias, and the mask of window entries outside the
    feature map is skipped where the next step zeroes them anyway (an activation's windows and the input's
    are cut from zero-padded maps).
    """
    i = stop - 1
    while i >= 0:
        path, layer = layers[i]
        out_geometry = geometries[i + 1]
        layer_type = type(layer)
        folded = folded_into_previous(layers, shapes, i)
        if folded is not None:  # a convolution with the per-channel affine map after it folded in
            i -= 1
            coeffs, offset = _through_conv(layers[i][1], *folded, coeffs, offset)
            layer_type = nn.Conv2d
        elif layer_type is nn.Conv2d:
            coeffs, offset = _through_conv(layer, layer.weight, layer.bias, coeffs, offset)
        elif layer_type is nn.AvgPool2d:
            kernel = as_pair(layer.kernel_size)
            channels = shapes[i][0]
            divisor = layer.divisor_override or kernel[0] * kernel[1]
            weight = coeffs.new_full((channels, 1, *kernel), 1.0 / divisor)
            coeffs = _conv_transpose(coeffs, weight, pool_stride(layer), (1, 1), channels)
        elif layer_type in (nn.BatchNorm2d, InputNormalization):
            scale, shift = affine_parts(layer, path)
            scale = scale.expand(shapes[i][0]).reshape(-1, 1, 1)
            offset = offset + _sum_window(coeffs * shift.expand(shapes[i][0]).reshape(-1, 1, 1))
            coeffs = coeffs * scale
        elif layer_type is nn.MaxPool2d:
            relax = relaxations[i]
            assert isinstance(relax, PoolRelaxation)
            below = activation_below_pool(layers, relaxations, i, 0)
            coeffs, offset = _through_pool(layer, relax, below, coeffs, offset, out_geometry, spec)
            if below is not None:
                i -= 1  # the activation before the pool was applied at the pool's resolution
        elif layer_type in ACTIVATIONS:
            relax = relaxations[i]
            assert isinstance(relax, Relaxation)
            coeffs, offset = _through_activation(relax, coeffs, offset, out_geometry, spec)
        elif layer_type not in _PASS_THROUGH:  # pragma: no cover - _geometries admits only the types above
            raise UnsupportedLayerError(layer_type.__name__, path, "no windowed CROWN rule")
        zeroed_below = i == 0 or (layer_type is nn.Conv2d and type(layers[i - 1][1]) in ACTIVATIONS)
        if layer_type in (nn.Conv2d, nn.AvgPool2d, nn.MaxPool2d) and not zeroed_below:  # they grow the windows
            inside = _inside(geometries[i], spec, shapes[i][1:], coeffs.device)
            if inside is not None:
                coeffs = coeffs * inside
        i -= 1
    return coeffs, offset


def _through_conv(layer: nn.Conv2d, weight: Tensor, bias: Tensor | None, coeffs: Tensor, offset: Tensor
                  ) -> tuple[Tensor, Tensor]:
    """Windows through ``Conv2d`` with this weight and bias: ``offset += sum(P) . b``, ``P <- P W`` per window."""
    if bias is not None:
        offset = offset + coeffs.sum(dim=(-2, -1)) @ bias
    coeffs = _conv_transpose(coeffs, weight, as_pair(layer.stride), as_pair(layer.dilation), layer.groups)
    return coeffs, offset


def needed_first(needed: Tensor) -> Tensor:
    """``(B, N)`` column order that lists each example's needed neurons first (``needed``: ``(B, N)`` bool)."""
    return torch.argsort(needed.to(torch.int8), dim=1, descending=True, stable=True)


def padded_rows(order: Tensor, counts: Tensor, begin: int, end: int) -> tuple[Tensor, Tensor, Tensor]:
    """The needed neurons of examples ``begin:end``, padded to the largest count of the chunk.

    Args:
        order: :func:`needed_first` of the whole batch ``(B, N)``.
        counts: Needed neurons per example ``(B,)``.
        begin: First example of the chunk.
        end: One past its last example.

    Returns:
        ``(index, valid, target)``, each ``(end - begin, width)``: the neuron of each row, whether the row is a
        needed neuron (not padding), and the column its bound goes to (``N``, a dummy column, for padding).
    """
    width = int(counts[begin:end].max())
    index = order[begin:end, :width]
    valid = torch.arange(width, device=order.device) < counts[begin:end].unsqueeze(1)
    return index, valid, torch.where(valid, index, order.shape[1])


def _concretized(coeffs: Tensor, offset: Tensor, windows_mid: Tensor, windows_rad: Tensor) -> Tensor:
    """``P mid - |P| rad + offset`` over the input box's windows: the bound of every row."""
    return _sum_window(coeffs * windows_mid) - _sum_window(coeffs.abs() * windows_rad) + offset


def patch_bounds(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]], relaxations: Relaxations,
                 stop: int, in_lower: Tensor, in_upper: Tensor, needed: Tensor | None = None
                 ) -> tuple[Tensor, Tensor]:
    """CROWN lower and upper bounds of the neurons of the input of layer ``stop``, back-substituted in windows.

    Args:
        layers: ``(path, layer)`` of the model in execution order.
        shapes: ``shapes[i]``: per-example input shape of layer ``i``.
        relaxations: The relaxation of every nonlinear layer below ``stop``.
        stop: The layer whose input is bounded; :func:`patches_apply` must hold.
        in_lower: The input box's lower ends ``(B, C, H, W)``.
        in_upper: Its upper ends.
        needed: Optional ``(B, *shapes[stop])`` mask of the neurons that need a bound (e.g. the unstable ReLU
            inputs). When few do (at most :data:`SPARSE_FRACTION` of the layer for every example), only their
            windows are back-substituted, each at its own position; the others get ``-inf`` / ``+inf``.

    Returns:
        ``(lower, upper)``, each ``(B, *shapes[stop])``.
    """
    geometries = _geometries(layers, shapes, stop)
    if geometries is None:
        raise ValueError(f"the input of layer {stop} cannot be bounded in windows")
    channels, hs, ws = shapes[stop]
    # Largest window tensor per example (a MaxPool step briefly holds kernel-size times its output's windows).
    largest = max(g.kernel[0] * g.kernel[1] * shape[0] for g, shape in zip(geometries, shapes, strict=False))
    mid, rad = (in_upper + in_lower) / 2, ((in_upper - in_lower) / 2).clamp(min=0)
    if needed is not None:
        flat_needed = needed.flatten(1)
        counts = flat_needed.sum(1)
        if int(counts.max()) <= SPARSE_FRACTION * flat_needed.shape[1]:
            return _sparse_patch_bounds(layers, shapes, relaxations, stop, geometries, largest, mid, rad,
                                        flat_needed, counts)
    spec = _Rows((hs, ws))
    per_row = hs * ws * largest  # one specification row (a channel of one side) of one example
    chunk = max(1, CHUNK_ELEMENTS // (2 * channels * per_row))
    # Wide layers (e.g. cnn_7layer's 128-channel maps) do not fit one example at a time: then the rows are split
    # too, which bounds the memory at about CHUNK_ELEMENTS window entries whatever the width.
    rows = max(1, min(2 * channels, CHUNK_ELEMENTS // per_row))
    eye = torch.eye(channels, dtype=in_lower.dtype, device=in_lower.device)
    identity = torch.cat([eye, -eye]).view(1, 2 * channels, 1, 1, channels, 1, 1)
    zero = in_lower.new_zeros(1, 2 * channels, hs, ws)
    lowers, uppers = [], []
    for begin in range(0, in_lower.shape[0], chunk):
        end = min(in_lower.shape[0], begin + chunk)
        part = {k: v.rows(begin, end) for k, v in relaxations.items() if k < stop}
        windows_mid = _windows(mid[begin:end], geometries[0], spec)
        windows_rad = _windows(rad[begin:end], geometries[0], spec)
        bounds = []
        for first in range(0, 2 * channels, rows):
            last = min(2 * channels, first + rows)
            start = identity[:, first:last].expand(1, last - first, hs, ws, channels, 1, 1)
            coeffs, offset = _back_substitute(layers, shapes, part, stop, geometries, spec, start,
                                              zero[:, first:last])
            bounds.append(_concretized(coeffs, offset, windows_mid, windows_rad))
            del coeffs
        bound = torch.cat(bounds, 1)
        lowers.append(bound[:, :channels])
        uppers.append(-bound[:, channels:])
    return torch.cat(lowers), torch.cat(uppers)


def _sparse_patch_bounds(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]],
                         relaxations: Relaxations, stop: int, geometries: list[_Geometry], largest: int, mid: Tensor,
                         rad: Tensor, needed: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`patch_bounds` for the ``needed`` neurons only (``(B, neurons)``; the others get ``-inf`` / ``+inf``).

    Every example lists its needed neurons first (padded to the largest count of its chunk with a dummy neuron
    whose bound is discarded); row ``n`` is ``+e_n`` (lower bound) and row ``N + n`` is ``-e_n`` (upper bound),
    a ``1 x 1`` window at the neuron's own grid position.
    """
    channels, hs, ws = shapes[stop]
    batch, neurons = needed.shape
    order = needed_first(needed)
    chunk = max(1, CHUNK_ELEMENTS // (2 * max(1, int(counts.max())) * largest))
    lower = mid.new_full((batch, neurons + 1), -torch.inf)
    upper = mid.new_full((batch, neurons + 1), torch.inf)
    eye = torch.eye(channels, dtype=mid.dtype, device=mid.device)
    for begin in range(0, batch, chunk):
        end = min(batch, begin + chunk)
        index, _, target = padded_rows(order, counts, begin, end)  # the dummy column takes the padding's bounds
        width = index.shape[1]
        if width == 0:
            continue
        positions = torch.cat([index % (hs * ws)] * 2, 1)
        one_hot = eye[index // (hs * ws)]  # (b, width, C): the channel of each row's neuron
        start_all = torch.cat([one_hot, -one_hot], 1)
        part = {k: v.rows(begin, end) for k, v in relaxations.items() if k < stop}
        spec_all = _Rows((hs, ws), positions)
        rows = max(1, min(2 * width, CHUNK_ELEMENTS // ((end - begin) * largest)))
        bounds = []
        for first in range(0, 2 * width, rows):
            last = min(2 * width, first + rows)
            spec = spec_all.rows(first, last)
            start = start_all[:, first:last].reshape(end - begin, last - first, 1, 1, channels, 1, 1)
            zero = mid.new_zeros(end - begin, last - first, 1, 1)
            coeffs, offset = _back_substitute(layers, shapes, part, stop, geometries, spec, start, zero)
            windows_mid = _windows(mid[begin:end], geometries[0], spec)
            windows_rad = _windows(rad[begin:end], geometries[0], spec)
            bounds.append(_concretized(coeffs, offset, windows_mid, windows_rad).flatten(1))
            del coeffs
        bound = torch.cat(bounds, 1)
        lower[begin:end].scatter_(1, target, bound[:, :width])
        upper[begin:end].scatter_(1, target, -bound[:, width:])
    shape = (batch, *shapes[stop])
    return lower[:, :neurons].reshape(shape), upper[:, :neurons].reshape(shape)
