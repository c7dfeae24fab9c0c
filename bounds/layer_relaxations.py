"""Linear bounds of single layers on known input bounds: what CROWN back-substitutes through.

For a nonlinear layer with input bounds ``l <= z <= u`` (CROWN, Zhang et al. NeurIPS 2018, Section 3.2):

- ``ReLU`` / ``LeakyReLU(a)`` (``0 <= a <= 1``): exact on stable neurons; on unstable ones the upper line is the
  chord through ``(l, a l)`` and ``(u, u)`` and the lower line passes through the origin with CROWN's adaptive
  slope: ``1`` if ``u >= -l`` else ``a``.
- ``Sigmoid`` / ``Tanh``: two parallel lines of slope ``s = min(sigma'(l), sigma'(u))`` (the minimum of the
  unimodal derivative on ``[l, u]``), through ``(l, sigma(l))`` below and ``(u, sigma(u))`` above: sound because
  ``sigma(z) - s z`` is nondecreasing on ``[l, u]``, and never looser than the interval.
- ``ELU``, ``Softplus``, ``Hardtanh``, ``ReLU6``, ``GELU``, ``SiLU``: two lines parallel to the chord, placed by a grid
  search widened by a Lipschitz margin (:func:`chord_relaxation`), sound whatever the function's convexity.
- ``MaxPool2d``: below, the window entry with the largest lower bound (``max >= x_k``); above, the constant
  ``max_i u_i``, or the entry itself where it provably dominates the window (``l_k >= u_i`` for all ``i != k``,
  non-overlapping windows), where the relaxation is exact.

Affine per-channel layers (eval ``BatchNorm``, :class:`~bounds.normalization.InputNormalization`) are exact:
:func:`affine_parts` returns their per-channel ``(scale, shift)``.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from bounds.engine.affine import batch_norm_parts
from bounds.engine.pooling import as_pair, pool_stride
from bounds.errors import UnsupportedLayerError
from bounds.normalization import InputNormalization


@dataclass
class Relaxation:
    """Linear bounds ``slope_l z + icpt_l <= sigma(z) <= slope_u z + icpt_u`` of one activation layer.

    Every tensor has the layer's input shape ``(B, ...)``; ``has_icpt_l`` is ``False`` when ``icpt_l`` is zero.
    With ``per_spec``, ``slope_l`` alone is ``(B, S, ...)``: one lower line per specification row (alpha-CROWN's
    optimised slopes, Xu et al. ICLR 2021, :mod:`bounds.alpha_crown`); only the dense back-substitution
    (:func:`bounds.crown_backward.back_substitute`) takes such a relaxation, not the windowed one
    (:mod:`bounds.crown_patches`).
    """

    slope_l: Tensor
    icpt_l: Tensor
    slope_u: Tensor
    icpt_u: Tensor
    has_icpt_l: bool = True
    per_spec: bool = False

    def rows(self, begin: int, end: int) -> "Relaxation":
        """The relaxation of examples ``begin:end``."""
        return Relaxation(self.slope_l[begin:end], self.icpt_l[begin:end], self.slope_u[begin:end],
                          self.icpt_u[begin:end], self.has_icpt_l, self.per_spec)

    def at_pool_selection(self, pool: "PoolRelaxation") -> "Relaxation":
        """This activation's lines at the entries a following max-pool relaxation selects (pool's output shape).

        With disjoint pooling windows each activation output reaches the pool's linear bounds through at most
        one selected entry, so back-substitution can apply the activation's lines at the pool's resolution
        before spreading the coefficients to the selected entries (the same result, on fewer numbers).
        """
        index = pool.index.flatten(2)

        def pick(values: Tensor) -> Tensor:
            return values.flatten(2).gather(2, index).view_as(pool.index)

        if self.per_spec:  # (B, S, C, H, W): the same selected entries for every specification row
            batch, specs = max(self.slope_l.shape[0], index.shape[0]), self.slope_l.shape[1]
            spread = index.unsqueeze(1).expand(batch, specs, *index.shape[1:])
            slope_l = self.slope_l.expand(batch, *self.slope_l.shape[1:]).flatten(3).gather(3, spread)
            slope_l = slope_l.view(batch, specs, *pool.index.shape[1:])
        else:
            slope_l = pick(self.slope_l)
        return Relaxation(slope_l, pick(self.icpt_l) if self.has_icpt_l else pool.top.new_zeros(()),
                          pick(self.slope_u), pick(self.icpt_u), self.has_icpt_l, self.per_spec)


@dataclass
class PoolRelaxation:
    """MaxPool2d: below ``x[index]``; above ``x[index]`` where ``exact`` else the constant ``top``.

    ``index`` (flat position in the ``H x W`` input map), ``exact`` and ``top`` have the output's shape
    ``(B, C, H_out, W_out)``; ``in_shape`` is the per-example input shape ``(C, H, W)``.
    """

    index: Tensor
    exact: Tensor
    top: Tensor
    in_shape: tuple[int, ...]

    def rows(self, begin: int, end: int) -> "PoolRelaxation":
        """The relaxation of examples ``begin:end``."""
        return PoolRelaxation(self.index[begin:end], self.exact[begin:end], self.top[begin:end], self.in_shape)


# The relaxation of every nonlinear layer of a model, by the layer's index in its flat layer list.
Relaxations = dict[int, Relaxation | PoolRelaxation]
# Activations relaxed by chord-parallel lines (:func:`chord_relaxation`): the activation ``f(layer, z)``, a bound of
# ``|f'|`` and whether ``f`` is convex (then the chord itself is the upper line).
_CHORD_RELAXED = {
    nn.ELU: (lambda layer, z: F.elu(z, layer.alpha), lambda layer: max(1.0, float(layer.alpha)),
             lambda layer: 0 <= layer.alpha <= 1),
    nn.Softplus: (lambda layer, z: F.softplus(z, layer.beta, layer.threshold), lambda layer: 1.0,
                  lambda layer: False),  # PyTorch's switch to z above the threshold breaks convexity slightly
    nn.Hardtanh: (lambda layer, z: F.hardtanh(z, layer.min_val, layer.max_val), lambda layer: 1.0,
                  lambda layer: False),
    nn.ReLU6: (lambda layer, z: F.relu6(z), lambda layer: 1.0, lambda layer: False),
    nn.GELU: (lambda layer, z: F.gelu(z, approximate=layer.approximate), lambda layer: 1.2, lambda layer: False),
    nn.SiLU: (lambda layer, z: F.silu(z), lambda layer: 1.1, lambda layer: False),
}
# Elementwise activations with a :class:`Relaxation`.
ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, *_CHORD_RELAXED)
# Grid points of :func:`chord_relaxation` per neuron.
_CHORD_POINTS = 33


def activation_below_pool(layers: list[tuple[str, nn.Module]], relaxations: Relaxations, i: int, start: int
                          ) -> Relaxation | None:
    """The relaxation of the activation right before the max-pool ``layers[i]`` when it can be fused into the pool.

    Fusable: the pool's windows are disjoint, ``layers[i - 1]`` is an elementwise activation at or above
    ``start`` (the first layer of the back-substitution), and both relaxations are known.
    """
    layer = layers[i][1]
    if i - 1 < start or type(layer) is not nn.MaxPool2d or not disjoint_windows(layer):
        return None
    if type(layers[i - 1][1]) not in ACTIVATIONS:
        return None
    activation, pool = relaxations.get(i - 1), relaxations.get(i)
    if not isinstance(activation, Relaxation) or not isinstance(pool, PoolRelaxation):
        return None
    return activation.at_pool_selection(pool)


def relu_relaxation(lower: Tensor, upper: Tensor, slope: float) -> Relaxation:
    """CROWN's ReLU/LeakyReLU lines (chord above, adaptive line through the origin below)."""
    unstable = (lower < 0) & (upper > 0)
    active = lower >= 0
    denominator = torch.where(unstable, upper - lower, torch.ones_like(upper))
    chord = (upper - slope * lower) / denominator
    # Constants as tensors of the input's dtype: a Python float in torch.where is rounded to float32, which made
    # the float64 lines miss the function by ~1e-8.
    one, leak = torch.ones_like(lower), torch.full_like(lower, slope)
    stable_slope = torch.where(active, one, leak)
    slope_u = torch.where(unstable, chord, stable_slope)
    icpt_u = torch.where(unstable, lower * (slope - chord), torch.zeros_like(lower))
    slope_l = torch.where(unstable, torch.where(upper >= -lower, one, leak), stable_slope)
    return Relaxation(slope_l, torch.zeros_like(lower), slope_u, icpt_u, has_icpt_l=False)


def monotone_relaxation(layer: nn.Module, lower: Tensor, upper: Tensor) -> Relaxation:
    """Parallel lines of slope ``min(sigma'(l), sigma'(u))`` for Sigmoid/Tanh (unimodal derivatives)."""
    if type(layer) is nn.Sigmoid:
        f_l, f_u = torch.sigmoid(lower), torch.sigmoid(upper)
        d_l, d_u = f_l * (1 - f_l), f_u * (1 - f_u)
    elif type(layer) is nn.Tanh:
        f_l, f_u = torch.tanh(lower), torch.tanh(upper)
        d_l, d_u = 1 - f_l * f_l, 1 - f_u * f_u
    else:
        raise UnsupportedLayerError(type(layer).__name__, "", "no parallel-line relaxation")
    slope = torch.minimum(d_l, d_u).clamp(min=0)
    return Relaxation(slope, f_l - slope * lower, slope, f_u - slope * upper)


def chord_relaxation(f: Callable[[Tensor], Tensor], lipschitz: float, convex: bool, lower: Tensor, upper: Tensor
                     ) -> Relaxation:
    """Two lines parallel to the chord of ``f`` on ``[l, u]``, placed by a grid search with a Lipschitz margin.

    With the chord slope ``k = (f(u) - f(l)) / (u - l)``, ``g(z) = f(z) - k z`` is ``L``-Lipschitz with
    ``L = sup |f'| + |k|``, so on a grid of spacing ``h`` every point of ``[l, u]`` is within ``h / 2`` of a grid
    point and ``min g >= min_grid g - L h / 2``, ``max g <= max_grid g + L h / 2``: the lines
    ``k z + min g`` and ``k z + max g`` enclose ``f`` on ``[l, u]`` whatever its shape (GELU and SiLU are neither
    convex nor concave). For a convex ``f`` the maximum of ``g`` is at the ends, so the upper line is the chord.
    On a point (``l = u``) both lines are the constant ``f(l)``.
    """
    width = upper - lower
    flat = width > 0
    f_l, f_u = f(lower), f(upper)
    slope = torch.where(flat, (f_u - f_l) / torch.where(flat, width, torch.ones_like(width)), torch.zeros_like(width))
    steps = torch.linspace(0, 1, _CHORD_POINTS, dtype=lower.dtype, device=lower.device)
    grid = lower.unsqueeze(-1) + width.unsqueeze(-1) * steps
    g = f(grid) - slope.unsqueeze(-1) * grid
    margin = (lipschitz + slope.abs()) * width / (2 * (_CHORD_POINTS - 1))
    icpt_l = g.amin(-1) - margin
    icpt_u = torch.maximum(f_l - slope * lower, f_u - slope * upper) if convex else g.amax(-1) + margin
    return Relaxation(slope, icpt_l, slope.clone(), icpt_u)


def _pool_arguments(layer: nn.MaxPool2d | nn.AvgPool2d) -> dict[str, object]:
    """Keyword arguments of ``F.max_pool2d`` describing ``layer``'s windows."""
    return {"kernel_size": layer.kernel_size, "stride": layer.stride, "padding": layer.padding,
            "dilation": layer.dilation, "ceil_mode": layer.ceil_mode}


def conv_leading_padding(layer: nn.Conv2d) -> tuple[int, int]:
    """Zero padding before the first row and column of a convolution's input (``"same"`` resolved as PyTorch does).

    PyTorch's ``padding="same"`` pads ``dilation * (kernel - 1)`` per axis, the odd one on the bottom/right.
    """
    if layer.padding == "valid":
        return (0, 0)
    if layer.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(as_pair(layer.dilation), as_pair(layer.kernel_size),
                                                      strict=True))  # type: ignore[return-value]
    return as_pair(layer.padding)


def disjoint_windows(layer: nn.MaxPool2d) -> bool:
    """Whether the pooling windows do not overlap (stride at least the kernel, no dilation)."""
    return all(s >= k for s, k in zip(pool_stride(layer), as_pair(layer.kernel_size), strict=True)) and \
        as_pair(layer.dilation) == (1, 1)


def pool_relaxation(layer: nn.MaxPool2d, lower: Tensor, upper: Tensor) -> PoolRelaxation:
    """MaxPool2d: the entry with the largest lower bound below; the window's largest upper bound above."""
    pool = _pool_arguments(layer)
    best_lower, index = F.max_pool2d(lower, return_indices=True, **pool)
    top = F.max_pool2d(upper, **pool)
    if disjoint_windows(layer):
        # Exact where the chosen entry dominates the rest of its window: the largest upper bound of the others.
        flat = upper.flatten(2)
        masked = flat.scatter(2, index.flatten(2), -torch.inf).view_as(upper)
        others = F.max_pool2d(masked, **pool)
        exact = best_lower >= others
    else:
        exact = torch.zeros_like(best_lower, dtype=torch.bool)
    return PoolRelaxation(index, exact, top, tuple(lower.shape[1:]))


def relax_layer(layer: nn.Module, lower: Tensor, upper: Tensor) -> Relaxation | PoolRelaxation:
    """The relaxation of a nonlinear layer (activation or MaxPool2d) on its input bounds."""
    layer_type = type(layer)
    if layer_type is nn.MaxPool2d:
        return pool_relaxation(layer, lower, upper)
    if layer_type in (nn.Sigmoid, nn.Tanh):
        return monotone_relaxation(layer, lower, upper)
    if layer_type is nn.LeakyReLU:
        return relu_relaxation(lower, upper, float(layer.negative_slope))
    if layer_type is nn.ReLU:
        return relu_relaxation(lower, upper, 0.0)
    if layer_type in _CHORD_RELAXED:
        f, lipschitz, convex = _CHORD_RELAXED[layer_type]
        return chord_relaxation(lambda z: f(layer, z), lipschitz(layer), convex(layer), lower, upper)
    raise UnsupportedLayerError(layer_type.__name__, "", "no CROWN relaxation")


def affine_parts(layer: nn.Module, path: str) -> tuple[Tensor, Tensor]:
    """Per-channel ``(scale, shift)`` (each ``(C,)``) of BatchNorm (eval) and InputNormalization.

    Raises:
        ValueError: For a BatchNorm in train mode.
        UnsupportedLayerError: For a BatchNorm without running statistics.
    """
    if type(layer) is InputNormalization:
        scale = 1.0 / layer.std.reshape(-1)
        return scale, -layer.mean.reshape(-1) * scale
    if type(layer) not in (nn.BatchNorm1d, nn.BatchNorm2d):
        raise UnsupportedLayerError(type(layer).__name__, path, "not a per-channel affine layer")
    return batch_norm_parts(layer, path)


def folded_into_previous(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]], i: int
                         ) -> tuple[Tensor, Tensor] | None:
    """The weight and bias of ``layers[i - 1]`` with the per-channel affine layer ``layers[i]`` folded in, or ``None``.

    An eval BatchNorm or InputNormalization ``s z + t`` right after a ``Conv2d`` (on ``(C, H, W)`` maps) or a
    ``Linear`` (on flat features) composes into one affine map ``(s W) x + (s b + t)``: back-substitution then
    takes one pass over its coefficients instead of three (exact up to rounding).
    """
    if i == 0 or type(layers[i][1]) not in (nn.BatchNorm1d, nn.BatchNorm2d, InputNormalization):
        return None
    previous = layers[i - 1][1]
    flat_linear = type(previous) is nn.Linear and len(shapes[i]) == 1
    if not (flat_linear or (type(previous) is nn.Conv2d and len(shapes[i]) == 3)):
        return None
    scale, shift = affine_parts(layers[i][1], layers[i][0])
    channels = shapes[i][0]
    scale, shift = scale.expand(channels), shift.expand(channels)
    weight = previous.weight * scale.view(-1, *([1] * (previous.weight.dim() - 1)))
    bias = shift if previous.bias is None else previous.bias * scale + shift
    return weight, bias
