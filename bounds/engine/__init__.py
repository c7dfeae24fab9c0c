"""The bound engine: a traced graph of registered operators, each with its interval rule and CROWN layers.

- :mod:`bounds.engine.registry`: the one registry (module types, functions, tensor methods -> operators).
- :mod:`bounds.engine.graph`: tracing (``torch.fx``), the per-model cache, and the forward interval pass.
- :mod:`bounds.engine.chain`: the model as a chain of layers for CROWN; bounds of a single layer.
- One file per operator family: :mod:`~bounds.engine.affine`, :mod:`~bounds.engine.activations`,
  :mod:`~bounds.engine.pooling`, :mod:`~bounds.engine.shape`, :mod:`~bounds.engine.arithmetic`.
"""

from bounds.engine.chain import crown_chain, layer_interval
from bounds.engine.graph import bound_graph, run_graph
from bounds.engine.registry import supported_operators

__all__ = ["bound_graph", "crown_chain", "layer_interval", "run_graph", "supported_operators"]
