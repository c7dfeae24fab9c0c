"""Affine operators (Amoeba Theorem 1 in centre-radius form): Linear, Conv2d, eval BatchNorm, InputNormalization.

With ``mid = (l + u) / 2`` and ``rad = (u - l) / 2``: ``mid' = W mid + b`` and ``rad' = |W| rad``, so
``l' = mid' - rad'`` and ``u' = mid' + rad'``; this equals ``[W]_+ l + [W]_- u + b`` and ``[W]_+ u + [W]_- l + b``
with two products instead of four. Per-channel affine layers use the same rule with a diagonal weight.
"""

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from bounds.engine.box import Box
from bounds.engine.registry import Call, Operator, register
from bounds.errors import UnsupportedLayerError
from bounds.normalization import InputNormalization


def channel_view(values: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-channel vector to broadcast over ``like`` of shape ``(B, C, ...)``."""
    return values.reshape(1, -1, *([1] * (like.dim() - 2)))


def batch_norm_parts(layer: nn.Module, path: str) -> tuple[Tensor, Tensor]:
    """Per-channel ``(scale, shift)`` of an eval-mode ``BatchNorm1d/2d``.

    Raises:
        ValueError: In train mode (the batch statistics of the box are not the running ones).
        UnsupportedLayerError: Without running statistics.
    """
    if layer.training:
        raise ValueError(f"{type(layer).__name__} at '{path}' is in train mode; bounds need eval mode (running "
                         "statistics). Use bounds.modes.evaluation_mode(model).")
    if layer.running_mean is None or layer.running_var is None:
        raise UnsupportedLayerError(f"{type(layer).__name__}(track_running_stats=False)", path)
    scale = torch.rsqrt(layer.running_var + layer.eps)
    shift = -layer.running_mean * scale
    if layer.weight is not None:
        scale, shift = scale * layer.weight, shift * layer.weight
    if layer.bias is not None:
        shift = shift + layer.bias
    return scale, shift


@register(modules=(nn.Linear,))
class Linear(Operator):
    title = "Linear (on the last dimension of any input)"

    def interval(self, call: Call) -> Box:
        layer = call.module
        mid, rad = call.box().centre_radius()
        return Box(mid=F.linear(mid, layer.weight, layer.bias), rad=F.linear(rad, layer.weight.abs()))

    def crown_layers(self, call: Call) -> list[nn.Module] | None:
        return [call.module]


@register(modules=(nn.Conv2d,))
class Conv2d(Operator):
    title = "Conv2d (any stride, padding, padding mode, dilation, groups)"

    def interval(self, call: Call) -> Box:
        layer = call.module
        mid, rad = call.box().centre_radius()
        return Box(mid=layer._conv_forward(mid, layer.weight, layer.bias),
                   rad=layer._conv_forward(rad, layer.weight.abs(), None))

    def crown_layers(self, call: Call) -> list[nn.Module] | None:
        return [call.module]


@register(modules=(nn.BatchNorm1d, nn.BatchNorm2d))
class BatchNorm(Operator):
    title = "BatchNorm1d / BatchNorm2d (eval mode)"

    def interval(self, call: Call) -> Box:
        scale, shift = batch_norm_parts(call.module, call.path)
        mid, rad = call.box().centre_radius()
        scale_v, shift_v = channel_view(scale, mid), channel_view(shift, mid)
        return Box(mid=mid * scale_v + shift_v, rad=rad * scale_v.abs())

    def crown_layers(self, call: Call) -> list[nn.Module] | None:
        return [call.module]


@register(modules=(InputNormalization,))
class Normalization(Operator):
    title = "bounds.InputNormalization"

    def interval(self, call: Call) -> Box:
        layer = call.module
        mid, rad = call.box().centre_radius()
        inv = channel_view(1.0 / layer.std.reshape(-1), mid)
        return Box(mid=(mid - channel_view(layer.mean.reshape(-1), mid)) * inv, rad=rad * inv.abs())

    def crown_layers(self, call: Call) -> list[nn.Module] | None:
        return [call.module]
