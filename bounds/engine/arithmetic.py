"""Arithmetic with boxes: sums of boxes (residual connections), and affine maps by constants.

- ``a + b`` and ``a - b`` of two boxes: centres add (subtract), radii add; ``torch.add(a, b, alpha=s)`` scales ``b``.
- A box plus, minus, times or divided by a constant ``c`` (a number or a tensor that does not depend on the
  input): ``mid' = mid * c`` and ``rad' = rad * |c|`` (or ``mid + c``); ``-x`` negates the centre.
- A product or quotient of two input-dependent values is not affine and is refused.
"""

import operator
from typing import Any

import torch
from torch import Tensor

from bounds.engine.box import Box
from bounds.engine.registry import Call, Operator, register


def _is_constant(value: Any) -> bool:
    return isinstance(value, (int, float, Tensor)) and not isinstance(value, bool)


def _add(a: Any, b: Any, call: Call, sign: float) -> Box:
    """``a + sign * b`` where at least one of them is a box."""
    if isinstance(a, Box) and isinstance(b, Box):
        mid_a, rad_a = a.centre_radius()
        mid_b, rad_b = b.centre_radius()
        return Box(mid=mid_a + sign * mid_b, rad=rad_a + abs(sign) * rad_b)
    if isinstance(a, Box) and _is_constant(b):
        mid, rad = a.centre_radius()
        return Box(mid=mid + sign * b, rad=rad)
    if isinstance(b, Box) and _is_constant(a):
        mid, rad = b.centre_radius()
        return Box(mid=a + sign * mid, rad=abs(sign) * rad)
    raise call.unsupported(f"operands of types {type(a).__name__}, {type(b).__name__}")


def _scale(box: Box, factor: Any) -> Box:
    mid, rad = box.centre_radius()
    magnitude = factor.abs() if isinstance(factor, Tensor) else abs(factor)
    return Box(mid=mid * factor, rad=rad * magnitude)


def _add_call(call: Call, sign: float) -> Box:
    """``a + sign * alpha * b`` for ``(a, b, alpha=number)`` (``torch.add`` / ``torch.sub`` and the operators)."""
    alpha = call.kwargs.get("alpha", 1)
    if set(call.kwargs) - {"alpha"} or len(call.args) != 2 or not _is_constant(alpha):
        raise call.unsupported("arguments other than (a, b, alpha=number)")
    a, b = call.args
    if alpha != 1:
        b = _scale(b, alpha) if isinstance(b, Box) else b * alpha
    return _add(a, b, call, sign)


@register(functions=(operator.add, operator.iadd, torch.add), methods=("add",))
class Add(Operator):
    title = "a + b (residual connections), torch.add"
    crown_in_graphs = True

    def interval(self, call: Call) -> Box:
        return _add_call(call, 1.0)


@register(functions=(operator.sub, operator.isub, torch.sub), methods=("sub",))
class Subtract(Operator):
    title = "a - b, torch.sub"
    crown_in_graphs = True

    def interval(self, call: Call) -> Box:
        return _add_call(call, -1.0)


def _box_and_constant(call: Call, divide: bool) -> tuple[Box, Any]:
    """``(box, factor)`` of ``box * c``, ``c * box`` or (``divide``) ``box / c``; refuses anything else."""
    if call.kwargs or len(call.args) != 2:
        raise call.unsupported("arguments other than (a, b)")
    a, b = call.args
    if isinstance(a, Box) and _is_constant(b):
        return a, 1 / b if divide else b
    if isinstance(b, Box) and _is_constant(a) and not divide:
        return b, a
    raise call.unsupported("division by an input-dependent value is not affine" if divide else
                           "a product of two input-dependent values is not affine")


@register(functions=(operator.mul, operator.imul, torch.mul), methods=("mul",))
class Multiply(Operator):
    title = "multiplication by a constant"
    crown_in_graphs = True
    divide = False

    def scaling(self, call: Call) -> tuple[Box, Any]:
        """The input box and the constant factor of this call."""
        return _box_and_constant(call, self.divide)

    def interval(self, call: Call) -> Box:
        return _scale(*self.scaling(call))


@register(functions=(operator.truediv, operator.itruediv, torch.div), methods=("div",))
class Divide(Multiply):
    title = "division by a constant"
    divide = True


@register(functions=(operator.neg, torch.neg), methods=("neg",))
class Negate(Operator):
    title = "-x, torch.neg"
    crown_in_graphs = True

    def interval(self, call: Call) -> Box:
        mid, rad = call.box().centre_radius()
        return Box(mid=-mid, rad=rad)
