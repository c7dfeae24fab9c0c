"""CROWN over branching graphs (residual additions, concatenations) with interval intermediate bounds.

A graph that is not a chain of layers (:func:`bounds.engine.chain.crown_chain` raises
:class:`~bounds.engine.chain.NotAChainError`) is bounded by back-substitution in reverse topological order:
the forward interval pass records every operator node with the boxes of its inputs, then the specification
``Lambda = C`` starts at the output and each node passes its ``Lambda`` to its inputs, where the coefficients
reaching one value from several consumers (the two branches of a residual block) are summed:

- a node with CROWN layers (affine layers, activations, pooling, flattening) goes through those layers with the
  chain's rules (:func:`bounds.crown_backward.back_substitute`), its activations relaxed on the interval bounds of
  their inputs;
- ``a + b`` passes ``Lambda`` to both operands (``alpha Lambda`` to ``b`` for ``torch.add(a, b, alpha=...)``),
  ``a - b`` passes ``-Lambda`` to ``b``; a constant operand ``c`` adds ``<Lambda, c>`` to the offset;
- multiplication (division) by a constant scales ``Lambda`` by it, negation negates it;
- ``torch.cat`` splits ``Lambda`` along the concatenated dimension; reshapes reshape it.

The intermediate bounds are the interval bounds of the forward pass (CROWN-IBP, Zhang et al. ICLR 2020), so this
path is sound and never looser than interval propagation once combined with it (as
:func:`bounds.crown.crown_margin_bounds` does), but it does not tighten intermediate bounds as the chain path's
full CROWN does; whatever ``intermediate`` asks for, branching graphs use interval intermediate bounds.
"""

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from bounds.crown_backward import back_substitute, check_crown_layer
from bounds.engine.arithmetic import Add, Multiply, Negate, Subtract
from bounds.engine.box import Box
from bounds.engine.chain import layer_interval
from bounds.engine.graph import Node, run_graph
from bounds.engine.registry import Call
from bounds.engine.shape import Concatenate, Flatten, Identity, Reshape
from bounds.errors import UnsupportedLayerError
from bounds.layer_relaxations import ACTIVATIONS, Relaxations, relax_layer


def graph_back_substitution(model: nn.Module, lower: Tensor, upper: Tensor, specification: Callable[[Box], Tensor]
                            ) -> tuple[Tensor, Tensor, Box]:
    """``(Lambda, offset, output box)`` with ``C f(x) >= Lambda . x + offset`` on the box, for any graph.

    Args:
        model: The model (traced by the engine).
        lower: Lower ends of the input box ``(B, ...)``.
        upper: Upper ends.
        specification: Maps the output box to the specification ``C`` of shape ``(B, S, K)``.

    Raises:
        UnsupportedLayerError: For an operator without a CROWN rule.
    """
    recorded: list[tuple[Node, Call, Box]] = []
    output = run_graph(model, lower, upper, lambda node, call, out: recorded.append((node, call, out)))
    spec = specification(output)
    batch, specs = spec.shape[:2]
    offset = torch.zeros(batch, specs, dtype=lower.dtype, device=lower.device)
    coefficients: dict[int, Tensor] = {id(output): spec}
    for node, call, out in reversed(recorded):
        lam = coefficients.pop(id(out), None)
        if lam is None:
            continue
        inputs, extra = _node_backward(node, call, out, lam)
        offset = offset + extra
        for box, contribution in inputs:
            if id(box) in coefficients:
                coefficients[id(box)] = coefficients[id(box)] + contribution
            else:
                coefficients[id(box)] = contribution
    remaining = list(coefficients.values())
    if len(remaining) != 1:
        raise UnsupportedLayerError(type(model).__name__, "", "CROWN found no single path to the input")
    lam = remaining[0]
    return lam.expand(batch, *lam.shape[1:]), offset, output


def _per_specification(constant: Any, like: Box) -> Any:
    """A constant shaped against a value ``(B, ...)``, made to broadcast against ``Lambda`` ``(B, S, ...)``."""
    if isinstance(constant, Tensor) and constant.dim() == len(like.shape):
        return constant.unsqueeze(1)
    return constant


def _constant_term(lam: Tensor, constant: Any, like: Box) -> Tensor:
    """``<Lambda, c>`` per specification ``(B, S)`` for a constant broadcast to the value ``like``."""
    return (lam * _per_specification(constant, like)).reshape(*lam.shape[:2], -1).sum(2)


def _node_backward(node: Node, call: Call, out: Box, lam: Tensor) -> tuple[list[tuple[Box, Tensor]], Tensor]:
    """One node's back-substitution: ``Lambda`` for each input box and the offset it adds."""
    operator = node.operator
    zero = lam.new_zeros(lam.shape[:2])
    reshaping = isinstance(operator, (Flatten, Reshape)) and out.shape[0] == call.box().shape[0]
    if isinstance(operator, Identity) or reshaping:
        box = call.box()
        return [(box, lam.reshape(*lam.shape[:2], *box.shape[1:]))], zero
    if isinstance(operator, (Add, Subtract)):
        alpha = call.kwargs.get("alpha", 1)
        sign = 1.0 if isinstance(operator, Add) else -1.0
        parts, extra = [], zero
        for operand, factor in zip(call.args, (1.0, sign * alpha), strict=True):
            if isinstance(operand, Box):
                if operand.shape != out.shape:
                    raise call.unsupported("CROWN needs operands of the output's shape (no broadcasting)")
                parts.append((operand, lam * factor))
            else:
                extra = extra + _constant_term(lam, operand, out) * factor
        return parts, extra
    if isinstance(operator, Multiply):  # and Divide, its subclass
        box, factor = operator.scaling(call)
        if box.shape != out.shape:
            raise call.unsupported("CROWN needs the operand to have the output's shape (no broadcasting)")
        return [(box, lam * _per_specification(factor, out))], zero
    if isinstance(operator, Negate):
        return [(call.box(), -lam)], zero
    if isinstance(operator, Concatenate):
        parts = call.args[0]
        dim = call.args[1] if len(call.args) > 1 else call.kwargs.get("dim", 0)
        dim = dim % len(out.shape)
        if dim == 0:
            raise call.unsupported("CROWN cannot split along the batch dimension")
        sizes = [(p.shape if isinstance(p, Box) else tuple(p.shape))[dim] for p in parts]
        pieces = lam.split(sizes, dim=dim + 1)
        contributions, extra = [], zero
        for part, piece in zip(parts, pieces, strict=True):
            if isinstance(part, Box):
                contributions.append((part, piece))
            else:
                extra = extra + _constant_term(piece, part, out)
        return contributions, extra
    assert operator is not None
    layers = operator.crown_layers(call)
    if layers is None:
        raise call.unsupported("CROWN (method='crown') has no rule for it yet; interval propagation "
                               "(method='ibp') supports it")
    return _through_layers(node, call.box(), layers, lam)


def _through_layers(node: Node, box: Box, layers: list[nn.Module], lam: Tensor
                    ) -> tuple[list[tuple[Box, Tensor]], Tensor]:
    """Back-substitute through the CROWN layers of one node, relaxed on interval bounds of their inputs."""
    lower, upper = box.ends()
    shapes = [tuple(lower.shape[1:])]
    relaxations: Relaxations = {}
    chain = [(node.path, layer) for layer in layers]
    for i, (path, layer) in enumerate(chain):
        check_crown_layer(layer, path)
        if type(layer) in (*ACTIVATIONS, nn.MaxPool2d):
            relaxations[i] = relax_layer(layer, lower, upper)
        lower, upper = layer_interval(layer, path, lower, upper)
        shapes.append(tuple(lower.shape[1:]))
    zero = lam.new_zeros(lam.shape[:2])
    coeffs, offset = back_substitute(chain, shapes, relaxations, lam, zero, len(chain))
    return [(box, coeffs)], offset
