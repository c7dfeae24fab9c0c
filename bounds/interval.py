"""Interval bound propagation (Amoeba Theorem 1, Equations 3 and 4) through ``nn.Sequential`` models.

Given an input box ``lower <= x <= upper``, every supported layer maps a box enclosing its input to a box
enclosing its output:

- ``Linear`` / ``Conv2d`` (Theorem 1) in the equivalent centre-radius form: with ``mid = (l + u) / 2`` and
  ``rad = (u - l) / 2``, ``mid' = W mid + b`` and ``rad' = |W| rad``; then ``l' = mid' - rad'`` and
  ``u' = mid' + rad'``. This equals ``[W]_+ l + [W]_- u + b`` and ``[W]_+ u + [W]_- l + b`` with two
  matrix products instead of four.
- Affine per-channel layers (``BatchNorm1d/2d`` in eval mode, :class:`~bounds.normalization.InputNormalization`):
  the same centre-radius rule with a diagonal weight.
- ``AvgPool2d``: linear with a nonnegative kernel, hence monotone: applied to both ends.
- Monotone layers (``ReLU``, ``LeakyReLU`` with a nonnegative slope, ``Sigmoid``, ``Tanh``, ``MaxPool2d``)
  and shape/identity layers (``Flatten``, ``Identity``, ``Dropout`` in eval mode): applied to both ends
  ("activating the corresponding bound", Section 3.2.2).

Nested ``nn.Sequential`` containers whose ``forward`` is exactly ``nn.Sequential.forward`` are walked in order.
Dispatch is on exact types: any other module (a subclass of a supported layer or of ``nn.Sequential`` with its
own ``forward``, a module with its own ``forward``, one with forward hooks) raises
:class:`~bounds.errors.UnsupportedLayerError` with its type and dotted path, because its forward may do
anything. Inputs must be float32 or float64 with the model's dtype and device (:func:`check_model_input`). Nothing
is cached on the model and the caller's tensors are never written (in-place activations run on copies); the
result is differentiable in ``lower`` and ``upper`` (and in the model's parameters).
"""

from collections.abc import Iterator

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from bounds.errors import UnsupportedLayerError
from bounds.normalization import InputNormalization

_AFFINE = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, InputNormalization)
_MONOTONE = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.MaxPool2d, nn.AvgPool2d)
_SHAPE = (nn.Flatten, nn.Identity, nn.Dropout)
_SUPPORTED = _AFFINE + _MONOTONE + _SHAPE

# Slack allowed for ``lower <= upper`` (rounding in callers that build boxes as x - eps, x + eps).
_ORDER_ATOL = 1e-6
_ORDER_RTOL = 1e-6


def _own_behaviour(module: nn.Module) -> str:
    """Why ``module`` may not compute what its type's ``forward`` computes (``""`` if nothing is known to differ).

    A forward assigned on the instance, an overridden ``__call__`` or forward (pre-)hooks can change the output.
    """
    if "forward" in vars(module):
        return "its forward was replaced on the instance"
    if type(module).__call__ is not nn.Module.__call__:
        return "it overrides __call__"
    if module._forward_hooks or module._forward_pre_hooks:
        return "it has forward hooks, which may change its output"
    return ""


def _leaves(module: nn.Module, path: str) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(dotted path, layer)`` for every layer of a (nested) Sequential, in execution order.

    Dispatch is on the exact type: only a module whose ``forward`` is exactly ``nn.Sequential.forward`` is walked
    as a chain of its children (a subclass with its own ``forward``, e.g. a residual block, computes something
    else), and only layers of exactly a supported type are yielded (a subclass may override ``forward``).

    Raises:
        UnsupportedLayerError: At the first module that is neither a plain Sequential nor a supported layer.
    """
    reason = _own_behaviour(module)
    if reason:
        raise UnsupportedLayerError(type(module).__name__, path, reason)
    if isinstance(module, nn.Sequential):
        if type(module).forward is not nn.Sequential.forward:
            raise UnsupportedLayerError(type(module).__name__, path,
                                        "a Sequential subclass with its own forward, which may compute anything "
                                        "other than the chain of its children")
        for name, child in module.named_children():
            yield from _leaves(child, f"{path}.{name}" if path else name)
        return
    if type(module) not in _SUPPORTED:
        raise UnsupportedLayerError(type(module).__name__, path)
    if type(module) is nn.LeakyReLU and module.negative_slope < 0:
        raise UnsupportedLayerError(f"LeakyReLU(negative_slope={module.negative_slope})", path, "not monotone")
    if type(module) is nn.MaxPool2d and module.return_indices:
        raise UnsupportedLayerError("MaxPool2d(return_indices=True)", path)
    yield path, module


def supported_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(dotted path, layer)`` of every layer of a (nested) Sequential in execution order, all supported.

    The one layer walk shared by interval propagation and CROWN.

    Raises:
        UnsupportedLayerError: At the first module that is neither a Sequential nor a supported layer.
    """
    return list(_leaves(model, ""))


def check_supported(model: nn.Module) -> None:
    """Check that :func:`interval_bounds` can propagate through ``model`` without running it.

    Only the structure is checked; train-mode ``BatchNorm``/``Dropout`` are accepted here because
    certification switches the model to eval mode (:func:`bounds.modes.evaluation_mode`).

    Args:
        model: The model (a supported layer or a nested ``nn.Sequential`` of them).

    Raises:
        UnsupportedLayerError: Naming the type and dotted path of the first unsupported module.
    """
    supported_layers(model)


# Floating dtypes the bound engine computes in. Half precision is refused: its rounding (a relative error of
# 1e-3 per operation) is far above the margins certificates prove, and bounds are not rounded outwards.
SUPPORTED_DTYPES = (torch.float32, torch.float64)


def check_model_input(model: nn.Module, tensor: Tensor, name: str = "x") -> None:
    """Raise ``ValueError`` unless ``tensor`` has a supported dtype and the dtype and device of ``model``.

    Runs before any work, so a mismatch gets this message instead of a raw error deep inside a bound pass.

    Args:
        model: The model to be bounded; its floating parameters and buffers set the expected dtype and device.
        tensor: An input (or an end of an input box).
        name: The argument's name in the message.

    Raises:
        ValueError: For an unsupported dtype (only float32 and float64), a meta tensor, or a dtype or device
            other than the model's.
    """
    if not isinstance(tensor, Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(tensor).__name__}")
    if tensor.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name} has dtype {tensor.dtype}; bounds are computed in float32 or float64 only (half "
                         "precision rounds by more than the margins a certificate proves): convert the model and "
                         "the inputs, e.g. model.float() and x.float()")
    if tensor.device.type == "meta":
        raise ValueError(f"{name} is on the meta device, which holds no values: bounds need real inputs")
    for tag, values in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for where, value in values:
            if not value.is_floating_point():
                continue
            if value.dtype != tensor.dtype or value.device != tensor.device:
                raise ValueError(f"{name} is {tensor.dtype} on {tensor.device}, but the model's {tag} '{where}' is "
                                 f"{value.dtype} on {value.device}: the inputs need the model's dtype and device "
                                 f"(e.g. x.to(dtype={value.dtype}, device='{value.device}'))")


def validate_box(lower: Tensor, upper: Tensor) -> None:
    """Raise ``ValueError`` unless ``lower <= upper`` are finite tensors of one shape (up to rounding slack)."""
    if not isinstance(lower, Tensor) or not isinstance(upper, Tensor):
        raise ValueError(f"lower and upper must be tensors, got {type(lower).__name__} and {type(upper).__name__}")
    if lower.shape != upper.shape:
        raise ValueError(f"lower and upper need the same shape, got {tuple(lower.shape)} and {tuple(upper.shape)}")
    if lower.dim() < 1:
        raise ValueError("lower and upper need a leading batch dimension, got scalars")
    if not lower.is_floating_point() or not upper.is_floating_point():
        raise ValueError(f"lower and upper must be floating point, got {lower.dtype} and {upper.dtype}")
    with torch.no_grad():
        for name, value in (("lower", lower), ("upper", upper)):
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                bad = value[~finite].flatten()[0].item()
                raise ValueError(f"{name} must be finite, found {bad} at {int((~finite).sum())} entries")
        excess = lower - upper
        allowed = _ORDER_ATOL + _ORDER_RTOL * torch.maximum(lower.abs(), upper.abs())
        if bool((excess > allowed).any()):
            raise ValueError(f"lower must not exceed upper; the largest excess is {excess.max().item():.3g}")


class _Box:
    """An interval kept lazily as ``(lower, upper)`` or ``(mid, rad)``, converting only when a layer needs it."""

    __slots__ = ("lower", "upper", "mid", "rad")

    def __init__(
        self,
        lower: Tensor | None = None,
        upper: Tensor | None = None,
        mid: Tensor | None = None,
        rad: Tensor | None = None,
    ) -> None:
        self.lower, self.upper, self.mid, self.rad = lower, upper, mid, rad

    def ends(self) -> tuple[Tensor, Tensor]:
        if self.lower is None or self.upper is None:
            assert self.mid is not None and self.rad is not None
            self.lower, self.upper = self.mid - self.rad, self.mid + self.rad
        return self.lower, self.upper

    def centre_radius(self) -> tuple[Tensor, Tensor]:
        if self.mid is None or self.rad is None:
            assert self.lower is not None and self.upper is not None
            self.mid = (self.upper + self.lower) / 2
            self.rad = ((self.upper - self.lower) / 2).clamp_min(0)
        return self.mid, self.rad


def _channel_view(values: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-channel vector to broadcast over ``like`` of shape ``(B, C, ...)``."""
    return values.reshape(1, -1, *([1] * (like.dim() - 2)))


def _affine_step(layer: nn.Module, path: str, box: _Box) -> _Box:
    mid, rad = box.centre_radius()
    if type(layer) is nn.Linear:
        return _Box(mid=F.linear(mid, layer.weight, layer.bias), rad=F.linear(rad, layer.weight.abs()))
    if type(layer) is nn.Conv2d:
        return _Box(
            mid=layer._conv_forward(mid, layer.weight, layer.bias),
            rad=layer._conv_forward(rad, layer.weight.abs(), None),
        )
    if type(layer) in (nn.BatchNorm1d, nn.BatchNorm2d):
        if layer.training:
            raise ValueError(
                f"{type(layer).__name__} at '{path}' is in train mode; interval bounds need eval mode "
                "(running statistics). Use bounds.modes.evaluation_mode(model)."
            )
        if layer.running_mean is None or layer.running_var is None:
            raise UnsupportedLayerError(f"{type(layer).__name__}(track_running_stats=False)", path)
        scale = torch.rsqrt(layer.running_var + layer.eps)
        shift = -layer.running_mean * scale
        if layer.weight is not None:
            scale = scale * layer.weight
            shift = shift * layer.weight
        if layer.bias is not None:
            shift = shift + layer.bias
        scale_v, shift_v = _channel_view(scale, mid), _channel_view(shift, mid)
        return _Box(mid=mid * scale_v + shift_v, rad=rad * scale_v.abs())
    if type(layer) is InputNormalization:
        std = layer.std.reshape(-1)
        mean = layer.mean.reshape(-1)
        inv = _channel_view(1.0 / std, mid)
        return _Box(mid=(mid - _channel_view(mean, mid)) * inv, rad=rad * inv.abs())
    raise UnsupportedLayerError(type(layer).__name__, path)  # pragma: no cover - _AFFINE is exhaustive


def interval_bounds(model: nn.Module, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Bound the outputs of ``model`` over the input box ``[lower, upper]`` (Amoeba Theorem 1, Eqs. 3-4).

    The box is per example and per input entry (batch first). Layers are applied as described in the
    module docstring; the model is run as it is, so put it in eval mode first (train-mode BatchNorm or
    Dropout raise a ``ValueError``).

    Args:
        model: A supported layer or a nested ``nn.Sequential`` of supported layers.
        lower: Lower ends of the input box, shape ``(B, ...)``.
        upper: Upper ends, same shape, ``upper >= lower`` (a slack of ``1e-6`` absolute/relative is
            tolerated and treated as a zero-width interval).

    Returns:
        ``(out_lower, out_upper)``: bounds of the model's outputs, each shaped like ``model(lower)``,
        differentiable with respect to ``lower`` and ``upper``.

    Raises:
        UnsupportedLayerError: For a module interval propagation does not know, naming type and path.
        ValueError: For mismatched shapes, non-finite entries (NaN or inf), ``lower > upper``, a dtype other
            than float32/float64, a dtype or device other than the model's, or a train-mode BatchNorm/Dropout.

    Example:
        >>> layer = nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[1.0, -2.0]])); _ = layer.bias.fill_(0.5)
        >>> lo, up = interval_bounds(layer, torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]]))
        >>> lo.tolist(), up.tolist()
        ([[-1.5]], [[1.5]])
    """
    check_model_input(model, lower, "lower")
    check_model_input(model, upper, "upper")
    validate_box(lower, upper)
    box = _Box(lower=lower, upper=upper)
    for path, layer in _leaves(model, ""):
        layer_type = type(layer)
        if layer_type in _AFFINE:
            box = _affine_step(layer, path, box)
        elif layer_type is nn.Dropout:
            if layer.training and layer.p > 0:
                raise ValueError(
                    f"Dropout at '{path}' is in train mode; interval bounds need eval mode. "
                    "Use bounds.modes.evaluation_mode(model)."
                )
        elif layer_type is nn.Identity:
            pass
        elif layer_type is nn.Flatten:
            if box.mid is not None and box.rad is not None:
                box = _Box(mid=layer(box.mid), rad=layer(box.rad))
            else:
                lo, up = box.ends()
                box = _Box(lower=layer(lo), upper=layer(up))
        elif layer_type in _MONOTONE:  # nondecreasing: ReLU, LeakyReLU (slope >= 0), Sigmoid, Tanh, Max/AvgPool2d
            lo, up = box.ends()
            if getattr(layer, "inplace", False):  # never overwrite the caller's (or an earlier layer's) tensors
                lo, up = lo.clone(), up.clone()
            box = _Box(lower=layer(lo), upper=layer(up))
        else:  # pragma: no cover - _leaves yields only the types above
            raise UnsupportedLayerError(layer_type.__name__, path)
    return box.ends()
