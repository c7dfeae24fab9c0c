"""Shape operators: reshapes, flattening, concatenation, indexing, identity and eval-mode dropout.

They only rearrange (or copy) entries, so the box of the output is the same rearrangement of the input box,
in whichever form (ends or centre-radius) it is kept. Shape queries (``x.size(0)``, ``x.shape``, ``x.dim()``)
read the bounded tensor's shape, which is known exactly.
"""

import operator
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from bounds.engine.box import Box
from bounds.engine.registry import Call, Operator, parameters, register


@register(modules=(nn.Identity,), methods=("contiguous",))
class Identity(Operator):
    title = "Identity, Tensor.contiguous"

    def interval(self, call: Call) -> Box:
        return call.box()

    def crown_layers(self, call: Call) -> list[nn.Module] | None:
        return [nn.Identity()]


@register(modules=(nn.Dropout,), functions=(F.dropout,))
class Dropout(Operator):
    title = "Dropout (eval mode)"

    def check_eval(self, call: Call) -> None:
        """Raise ``ValueError`` for dropout that is active (train mode with ``p > 0``)."""
        if call.module is not None:
            training, p = call.module.training, call.module.p
        else:
            params = parameters(call, (("p", 0.5), ("training", True)))
            training, p = params["training"], params["p"]
        if training and p > 0:
            raise ValueError(f"Dropout at '{call.path}' is in train mode; bounds need eval mode. "
                             "Use bounds.modes.evaluation_mode(model).")

    def interval(self, call: Call) -> Box:
        self.check_eval(call)
        return call.box()

    def crown_layers(self, call: Call) -> list[nn.Module] | None:
        self.check_eval(call)
        return [nn.Identity()]


@register(modules=(nn.Flatten,), functions=(torch.flatten,), methods=("flatten",))
class Flatten(Operator):
    title = "Flatten, torch.flatten, Tensor.flatten"

    def layer(self, call: Call) -> nn.Module:
        if call.module is not None:
            return call.module
        params = parameters(call, (("start_dim", 0), ("end_dim", -1)))
        return nn.Flatten(params["start_dim"], params["end_dim"])

    def interval(self, call: Call) -> Box:
        return call.box().map_same(self.layer(call))

    def crown_layers(self, call: Call) -> list[nn.Module] | None:
        layer = self.layer(call)
        return [layer] if layer.start_dim == 1 and layer.end_dim in (-1, len(call.box().shape) - 1) else None


def _target_shape(call: Call) -> tuple[Any, ...]:
    shape = call.args[1:]
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        shape = tuple(shape[0])
    if "shape" in call.kwargs or "size" in call.kwargs:
        shape = tuple(call.kwargs.get("shape", call.kwargs.get("size")))
    if not all(isinstance(s, int) for s in shape):
        raise call.unsupported("a shape that is not made of integers")
    return shape


@register(functions=(torch.reshape,), methods=("view", "reshape"))
class Reshape(Operator):
    title = "Tensor.view, Tensor.reshape, torch.reshape"
    crown_in_graphs = True

    def interval(self, call: Call) -> Box:
        shape = _target_shape(call)
        return call.box().map_same(lambda t: t.reshape(shape))

    def crown_layers(self, call: Call) -> list[nn.Module] | None:
        shape = _target_shape(call)
        batch = call.box().shape[0]
        if len(shape) == 2 and shape[0] == batch and shape[1] in (-1, _per_example_size(call)):
            return [nn.Flatten()]
        return None


def _per_example_size(call: Call) -> int:
    size = 1
    for s in call.box().shape[1:]:
        size *= s
    return size


@register(functions=(torch.cat, torch.concat))
class Concatenate(Operator):
    title = "torch.cat"
    crown_in_graphs = True

    def interval(self, call: Call) -> Box:
        parts = call.args[0]
        dim = call.args[1] if len(call.args) > 1 else call.kwargs.get("dim", 0)
        ends = [p.ends() if isinstance(p, Box) else (p, p) for p in parts]
        return Box(lower=torch.cat([lo for lo, _ in ends], dim), upper=torch.cat([up for _, up in ends], dim))


@register(functions=(operator.getitem,))
class Index(Operator):
    title = "indexing x[...]"

    def interval(self, call: Call) -> Box:
        index = call.args[1]
        if _boxes_in(index):
            raise call.unsupported("an index that depends on the input")
        return call.box().map_same(lambda t: t[index])


def _boxes_in(value: Any) -> bool:
    if isinstance(value, Box):
        return True
    if isinstance(value, (tuple, list)):
        return any(_boxes_in(item) for item in value)
    return False


SHAPE_METHODS = ("size", "dim")
SHAPE_ATTRIBUTES = ("shape", "dtype", "device", "ndim")
