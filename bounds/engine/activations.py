"""Elementwise activations: interval rules (monotone on the ends; unimodal ones through their minimum).

- Nondecreasing (ReLU, LeakyReLU with slope >= 0, Sigmoid, Tanh, ELU with alpha >= 0, Softplus, Hardtanh, ReLU6):
  ``[f(l), f(u)]`` ("activating the corresponding bound", Amoeba Section 3.2.2).
- Unimodal, decreasing then increasing (GELU, SiLU): the upper end is ``max(f(l), f(u))``; the lower end is the
  global minimum ``f(z*)`` where ``l <= z* <= u``, else ``min(f(l), f(u))``. ``z*`` and ``f(z*)`` are computed once
  in float64 by golden-section search, and ``f(z*)`` is lowered by ``1e-6`` so that rounding stays on the safe side.

Every rule evaluates the functional, out-of-place form, so ``inplace=True`` layers never write the caller's
tensors. Each activation is registered as its module, its functions and its tensor method.
"""

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from bounds.engine.box import Box
from bounds.engine.registry import Call, Operator, parameters, register

# Minimum of a unimodal activation lowered by this much: f(z*) is computed in float64, evaluations round.
_MINIMUM_SLACK = 1e-6


class Activation(Operator):
    """An elementwise activation ``f`` with parameters; subclasses give ``f``, its parameters and their checks."""

    names: tuple[tuple[str, Any], ...] = ()
    module_type: type[nn.Module] | None = None

    def apply(self, z: Tensor, params: dict[str, Any]) -> Tensor:
        """``f(z)`` out of place."""
        raise NotImplementedError

    def check(self, params: dict[str, Any]) -> str:
        """Why these parameters are not supported (``""``: supported)."""
        return ""

    def resolved(self, call: Call) -> dict[str, Any]:
        params = parameters(call, self.names)
        reason = self.check(params)
        if reason:
            raise call.unsupported(reason)
        return params

    def validate(self, call: Call) -> None:
        self.resolved(call)

    def interval(self, call: Call) -> Box:
        params = self.resolved(call)
        lower, upper = call.box().ends()
        return Box(lower=self.apply(lower, params), upper=self.apply(upper, params))

    def crown_layers(self, call: Call) -> list[nn.Module] | None:
        params = self.resolved(call)
        if call.module is not None:
            return [call.module]
        assert self.module_type is not None
        return [self.module_type(**params)]


class Unimodal(Activation):
    """An activation that decreases to its global minimum at ``z*`` and increases after it (GELU, SiLU)."""

    def minimum(self, params: dict[str, Any]) -> tuple[float, float]:
        """``(z*, f(z*) - slack)`` for these parameters."""
        raise NotImplementedError

    def interval(self, call: Call) -> Box:
        params = self.resolved(call)
        lower, upper = call.box().ends()
        f_l, f_u = self.apply(lower, params), self.apply(upper, params)
        z_star, f_star = self.minimum(params)
        contains = (lower <= z_star) & (upper >= z_star)
        low = torch.where(contains, torch.full_like(f_l, f_star), torch.minimum(f_l, f_u))
        return Box(lower=low, upper=torch.maximum(f_l, f_u))


def golden_minimum(f: Callable[[float], float], a: float, b: float) -> tuple[float, float]:
    """Minimiser and minimum of a unimodal ``f`` on ``[a, b]`` (golden-section search to float64 resolution)."""
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if f(c) < f(d):
            b = d
        else:
            a = c
    z = (a + b) / 2
    return z, f(z)


def _minimum_of(activation: Callable[[Tensor], Tensor], a: float, b: float) -> tuple[float, float]:
    z, value = golden_minimum(lambda t: float(activation(torch.tensor(t, dtype=torch.float64))), a, b)
    return z, value - _MINIMUM_SLACK


_GELU_MINIMA = {approximate: _minimum_of(lambda t, a=approximate: F.gelu(t, approximate=a), -3.0, 0.0)
                for approximate in ("none", "tanh")}
_SILU_MINIMUM = _minimum_of(F.silu, -4.0, 0.0)


@register(modules=(nn.ReLU,), functions=(F.relu, torch.relu), methods=("relu",))
class ReLU(Activation):
    title = "ReLU"
    module_type = nn.ReLU

    def apply(self, z: Tensor, params: dict[str, Any]) -> Tensor:
        return F.relu(z)


@register(modules=(nn.LeakyReLU,), functions=(F.leaky_relu,))
class LeakyReLU(Activation):
    title = "LeakyReLU (negative_slope >= 0)"
    names = (("negative_slope", 0.01),)
    module_type = nn.LeakyReLU

    def apply(self, z: Tensor, params: dict[str, Any]) -> Tensor:
        return F.leaky_relu(z, params["negative_slope"])

    def check(self, params: dict[str, Any]) -> str:
        return "" if params["negative_slope"] >= 0 else f"negative_slope={params['negative_slope']} is not monotone"


@register(modules=(nn.Sigmoid,), functions=(torch.sigmoid, F.sigmoid), methods=("sigmoid",))
class Sigmoid(Activation):
    title = "Sigmoid"
    module_type = nn.Sigmoid

    def apply(self, z: Tensor, params: dict[str, Any]) -> Tensor:
        return torch.sigmoid(z)


@register(modules=(nn.Tanh,), functions=(torch.tanh, F.tanh), methods=("tanh",))
class Tanh(Activation):
    title = "Tanh"
    module_type = nn.Tanh

    def apply(self, z: Tensor, params: dict[str, Any]) -> Tensor:
        return torch.tanh(z)


@register(modules=(nn.ELU,), functions=(F.elu,))
class ELU(Activation):
    title = "ELU (alpha >= 0)"
    names = (("alpha", 1.0),)
    module_type = nn.ELU

    def apply(self, z: Tensor, params: dict[str, Any]) -> Tensor:
        return F.elu(z, params["alpha"])

    def check(self, params: dict[str, Any]) -> str:
        return "" if params["alpha"] >= 0 else f"alpha={params['alpha']} is not monotone"


@register(modules=(nn.Softplus,), functions=(F.softplus,))
class Softplus(Activation):
    title = "Softplus (beta > 0)"
    names = (("beta", 1.0), ("threshold", 20.0))
    module_type = nn.Softplus

    def apply(self, z: Tensor, params: dict[str, Any]) -> Tensor:
        return F.softplus(z, params["beta"], params["threshold"])

    def check(self, params: dict[str, Any]) -> str:
        return "" if params["beta"] > 0 else f"beta={params['beta']} must be positive"

    def interval(self, call: Call) -> Box:
        # Above beta * z > threshold PyTorch returns z, which is below log(1 + e^(beta z)) / beta by at most
        # exp(-threshold) / beta: the function drops by that much there, so the upper end is raised by it.
        box = super().interval(call)
        params = self.resolved(call)
        lower, upper = box.ends()
        return Box(lower=lower, upper=upper + math.exp(-params["threshold"]) / params["beta"])


@register(modules=(nn.Hardtanh,), functions=(F.hardtanh,))
class Hardtanh(Activation):
    title = "Hardtanh"
    names = (("min_val", -1.0), ("max_val", 1.0))
    module_type = nn.Hardtanh

    def apply(self, z: Tensor, params: dict[str, Any]) -> Tensor:
        return F.hardtanh(z, params["min_val"], params["max_val"])

    def check(self, params: dict[str, Any]) -> str:
        return "" if params["min_val"] <= params["max_val"] else "min_val > max_val"


@register(modules=(nn.ReLU6,), functions=(F.relu6,))
class ReLU6(Activation):
    title = "ReLU6"
    module_type = nn.ReLU6

    def apply(self, z: Tensor, params: dict[str, Any]) -> Tensor:
        return F.relu6(z)


@register(modules=(nn.GELU,), functions=(F.gelu,))
class GELU(Unimodal):
    title = "GELU (approximate 'none' or 'tanh')"
    names = (("approximate", "none"),)
    module_type = nn.GELU

    def apply(self, z: Tensor, params: dict[str, Any]) -> Tensor:
        return F.gelu(z, approximate=params["approximate"])

    def check(self, params: dict[str, Any]) -> str:
        return "" if params["approximate"] in _GELU_MINIMA else f"approximate={params['approximate']!r}"

    def minimum(self, params: dict[str, Any]) -> tuple[float, float]:
        return _GELU_MINIMA[params["approximate"]]


@register(modules=(nn.SiLU,), functions=(F.silu,))
class SiLU(Unimodal):
    title = "SiLU"
    module_type = nn.SiLU

    def apply(self, z: Tensor, params: dict[str, Any]) -> Tensor:
        return F.silu(z)

    def minimum(self, params: dict[str, Any]) -> tuple[float, float]:
        return _SILU_MINIMUM
