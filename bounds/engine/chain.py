"""The model as a chain of layers for CROWN, and interval bounds of one layer.

CROWN's optimised back-substitution (:mod:`bounds.crown`) works on a chain: every layer reads the output of the one
before. :func:`crown_chain` runs the graph's interval pass once and collects each operator's CROWN layers
(:meth:`~bounds.engine.registry.Operator.crown_layers`, e.g. ``F.relu`` becomes ``nn.ReLU()``, ``x.view(B, -1)``
becomes ``nn.Flatten()``). A node that joins branches (a residual ``add``, a ``cat``) or an operator without chain
layers raises :class:`NotAChainError`, and :mod:`bounds.crown_graph` back-substitutes through the graph instead.
"""

from typing import Any

import torch
from torch import Tensor, nn

from bounds.engine.box import Box
from bounds.engine.graph import Node, run_graph
from bounds.engine.registry import MODULES, Call
from bounds.errors import UnsupportedLayerError


def _boxes(value: Any) -> list[Box]:
    if isinstance(value, Box):
        return [value]
    if isinstance(value, (tuple, list)):
        return [box for item in value for box in _boxes(item)]
    if isinstance(value, dict):
        return [box for item in value.values() for box in _boxes(item)]
    return []


class NotAChainError(UnsupportedLayerError):
    """The traced graph is not a chain of CROWN layers.

    It branches (a residual addition, a concatenation) or has an operator without chain layers (arithmetic with
    constants, general reshapes); :mod:`bounds.crown_graph` bounds those.
    """


def crown_chain(model: nn.Module, lower: Tensor, upper: Tensor) -> list[tuple[str, nn.Module]]:
    """``(path, layer)`` of the chain of layers equivalent to ``model`` on boxes shaped like ``lower``.

    Raises:
        NotAChainError: For a graph that is not a chain of CROWN layers (:mod:`bounds.crown_graph` bounds those).
    """
    layers: list[tuple[str, nn.Module]] = []
    produced: set[int] = set()
    previous: list[Box | None] = [None]

    def visit(node: Node, call: Call, out: Box) -> None:
        inputs = _boxes((call.args, call.kwargs))
        chained = len(inputs) == 1 and (inputs[0] is previous[0] if previous[0] is not None
                                        else id(inputs[0]) not in produced)
        if not chained:
            raise NotAChainError(call.name, call.path, "the graph branches here (CROWN over the layer chain "
                                      "does not apply)", call.source)
        assert node.operator is not None
        chain = node.operator.crown_layers(call)
        if chain is None:
            raise NotAChainError(call.name, call.path, "no chain layers (the graph back-substitution applies)",
                                 call.source)
        layers.extend((node.path, layer) for layer in chain)
        produced.add(id(out))
        previous[0] = out

    with torch.no_grad():
        result = run_graph(model, lower, upper, visit)
    if previous[0] is not None and result is not previous[0]:
        raise UnsupportedLayerError(type(model).__name__, "", "CROWN needs the output to be the end of the chain")
    return layers


def layer_interval(layer: nn.Module, path: str, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Interval bounds of one registered layer over ``[lower, upper]`` (no tracing).

    Raises:
        UnsupportedLayerError: For a layer type that is not registered.
    """
    operator = MODULES.get(type(layer))
    if operator is None:
        raise UnsupportedLayerError(type(layer).__name__, path)
    call = Call((Box(lower=lower, upper=upper),), {}, layer, path, type(layer).__name__)
    return operator.interval(call).ends()
