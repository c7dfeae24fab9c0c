"""Tracing a model into a graph of supported operators, the trace cache, and the forward interval pass.

Tracing uses ``torch.fx`` symbolic tracing (not ``torch.export``): it keeps the module structure (a node per
module call with its dotted path, so rules read the live module and messages name it), needs no example input,
takes milliseconds, and records the source line of every call. Modules of a registered type are leaves;
containers (``nn.Sequential`` and friends) and user modules are traced through, so a ``Sequential`` subclass with
its own ``forward`` is bounded as what its ``forward`` computes. Every node that depends on the input must map
to a registered operator (:mod:`bounds.engine.registry`); anything else raises
:class:`~bounds.errors.UnsupportedLayerError` naming the operator, the module path and the source line, before
any bound is computed. Nodes that do not depend on the input (shape arithmetic, constants) are evaluated as they
are, except random sampling functions, which are refused.

The graph is cached per model in a ``WeakKeyDictionary`` (the cache never keeps a model alive) together with a
signature of the model's module tree (paths, identities, types, train/eval flags): a changed submodule, a
replaced layer or a mode switch is traced again; parameters are read live at every call.

This file is one concept (the traced graph: how it is built, cached and run), hence its length.
"""

import inspect
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

import bounds.engine.activations  # noqa: F401  (registers its operators)
import bounds.engine.affine  # noqa: F401
import bounds.engine.arithmetic  # noqa: F401
import bounds.engine.pooling  # noqa: F401
import bounds.engine.shape  # noqa: F401
from bounds.engine.box import Box
from bounds.engine.registry import FUNCTIONS, METHODS, MODULES, Call, Operator, function_name
from bounds.engine.shape import SHAPE_ATTRIBUTES, SHAPE_METHODS
from bounds.errors import UnsupportedLayerError

_RANDOM = (torch.rand, torch.randn, torch.randint, torch.rand_like, torch.randn_like, torch.randint_like,
           torch.bernoulli, torch.normal, torch.multinomial, torch.randperm, torch.poisson)


@dataclass(frozen=True)
class Ref:
    """A reference to the value of node ``index`` inside a node's arguments."""

    index: int


@dataclass
class Node:
    """One node of the bound graph.

    Attributes:
        kind: ``"input"``, ``"constant"``, ``"attribute"``, ``"operator"`` (input-dependent, has a rule),
            ``"shape"`` (a shape query on an input-dependent value) or ``"fold"`` (input-independent, evaluated).
        target: The module path, function, method name, attribute name or constant.
        call: ``"module"``, ``"function"`` or ``"method"`` for calls.
        args: Positional arguments with :class:`Ref` for node values.
        kwargs: Keyword arguments likewise.
        operator: The registered rule of an ``"operator"`` node.
        path: Dotted path of the called module, or of the module whose forward made the call.
        name: The operator as the model calls it, for messages.
        source: ``file:line`` of the call, where tracing knows it.
        release: Node values no longer needed after this node (freed during the pass).
        flat: No keyword arguments and no references nested in containers (the pass resolves them quickly).
    """

    kind: str
    target: Any
    call: str = ""
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    operator: Operator | None = None
    path: str = ""
    name: str = ""
    source: str = ""
    release: tuple[int, ...] = ()
    flat: bool = False


@dataclass
class BoundGraph:
    """A traced model: nodes in topological order, the reference of the output, and the submodules by path.

    ``modules`` holds the traced model's submodules (never the model itself, so that the cache entry does not keep
    its key alive); :meth:`module` resolves a path.
    """

    nodes: list[Node]
    output: Ref
    modules: dict[str, nn.Module] = field(default_factory=dict)

    def module(self, model: nn.Module, path: str) -> nn.Module:
        """The module at ``path`` of ``model`` (``""``: the model)."""
        return model if path == "" else self.modules[path]


class _Tracer(fx.Tracer):
    """Registered module types are leaves; built-in torch layers that are not registered too (then refused)."""

    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if type(m) in MODULES:
            return True
        if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return False
        return type(m).__module__.startswith("torch.nn")


_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], BoundGraph]]" = weakref.WeakKeyDictionary()


class _RootState:
    """The traced model's state, compared through a weak reference (so the cache never keeps the model alive)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = weakref.ref(model)
        self.state = _state(model)


def _state(module: nn.Module) -> tuple[Any, ...]:
    """What a cached graph depends on in one module: its children, mode, hooks and instance ``forward``."""
    return (tuple(map(id, module._modules.values())), module.training,
            bool(module._forward_hooks or module._forward_pre_hooks), "forward" in module.__dict__)


def _unchanged(signature: tuple[Any, ...]) -> bool:
    """Whether every module of a traced tree still has the children, mode and hooks it had (a flat loop)."""
    root, *children = signature
    model = root.model()
    if model is None or _state(model) != root.state:
        return False
    for module, state in children:
        if _state(module) != state:
            return False
    return True


def bound_graph(model: nn.Module) -> BoundGraph:
    """The cached graph of ``model`` (traced again when its module tree, a mode or a hook changed).

    Raises:
        UnsupportedLayerError: For an operator without a rule, a module whose behaviour differs from its type's
            (hooks, a replaced ``forward``), or a forward that tracing cannot follow.
    """
    cached = _CACHE.get(model)
    if cached is not None and _unchanged(cached[0]):
        return cached[1]
    modules = dict(model.named_modules(remove_duplicate=False))
    for path, module in modules.items():
        reason = _own_behaviour(module)
        if reason:
            raise UnsupportedLayerError(type(module).__name__, path, reason)
    graph = _trace(model, modules)
    graph.modules = {path: module for path, module in modules.items() if path}
    # The root's own state is kept by value only (the entry must not reference its key).
    signature = tuple((module, _state(module)) for module in modules.values() if module is not model)
    _CACHE[model] = ((_RootState(model), *signature), graph)
    return graph


def _own_behaviour(module: nn.Module) -> str:
    """Why ``module`` may not compute what tracing sees (``""`` if nothing is known to differ)."""
    if "forward" in vars(module):
        return "its forward was replaced on the instance"
    if type(module).__call__ is not nn.Module.__call__:
        return "it overrides __call__"
    if module._forward_hooks or module._forward_pre_hooks:
        return "it has forward hooks, which may change its output"
    return ""


def _trace(model: nn.Module, modules: dict[str, nn.Module]) -> BoundGraph:
    if type(model) in MODULES:  # a single registered layer: one node
        operator_ = MODULES[type(model)]
        nodes = [Node("input", None), Node("operator", "", "module", (Ref(0),), {}, operator_, "",
                                            type(model).__name__, release=(0,))]
        return BoundGraph(nodes, Ref(1))
    if type(model).__module__.startswith("torch.nn") and not isinstance(model, (nn.Sequential, nn.ModuleList,
                                                                                nn.ModuleDict)):
        raise UnsupportedLayerError(type(model).__name__, "")
    graph = _fx_graph(model)
    return _convert(graph, model, modules)


def _fx_graph(model: nn.Module) -> fx.Graph:
    name = type(model).__name__
    try:
        parameters = list(inspect.signature(type(model).forward).parameters.values())[1:]
    except (TypeError, ValueError):
        parameters = []
    inputs = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not inputs:
        raise UnsupportedLayerError(name, "", "its forward takes no input tensor")
    concrete = {}
    for p in inputs[1:]:
        if p.default is p.empty:
            raise UnsupportedLayerError(name, "", f"its forward takes more than one input ({p.name} has no default)")
        concrete[p.name] = p.default
    try:
        return _Tracer().trace(model, concrete_args=concrete or None)
    except fx.proxy.TraceError as error:
        raise UnsupportedLayerError(name, "", f"tracing cannot follow data-dependent control flow in its forward "
                                              f"(torch.fx: {error}); write the forward without Python branches on "
                                              "tensor values") from error
    except UnsupportedLayerError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure of the user's forward under tracing is reported
        raise UnsupportedLayerError(name, "", f"torch.fx cannot trace its forward ({type(error).__name__}: "
                                              f"{error})") from error


def _source_line(node: fx.Node) -> str:
    """``file:line`` of the user code that made the call (the last stack frame outside torch)."""
    lines = (node.stack_trace or "").strip().splitlines()
    for line in reversed(lines):
        text = line.strip()
        if text.startswith("File ") and "/torch/" not in text:
            parts = text.split('"')
            if len(parts) >= 3:
                number = parts[2].split(",")[1].strip().removeprefix("line ").strip()
                return f"{parts[1]}:{number}"
    return ""


def _node_path(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        last = list(stack.values())[-1]
        return str(last[0]) if isinstance(last, tuple) else str(last)
    return ""


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return type(modules[str(node.target)]).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return function_name(node.target)


def _convert(graph: fx.Graph, model: nn.Module, modules: dict[str, nn.Module]) -> BoundGraph:
    nodes: list[Node] = []
    index: dict[fx.Node, int] = {}
    dependent: list[bool] = []
    output: Ref | None = None
    seen_input = False

    def refs(value: Any) -> Any:
        return fx.node.map_arg(value, lambda n: Ref(index[n]))

    def depends(value: Any) -> bool:
        found = []
        fx.node.map_arg(value, lambda n: found.append(dependent[index[n]]))
        return any(found)

    for fx_node in graph.nodes:
        path = _node_path(fx_node)
        source = _source_line(fx_node)
        name = _describe(fx_node, modules) if fx_node.op.startswith("call") else fx_node.op
        if fx_node.op == "placeholder":
            if not seen_input:
                node, is_dependent, seen_input = Node("input", None), True, True
            else:
                default = fx_node.args[0] if fx_node.args else None
                node, is_dependent = Node("constant", default), False
        elif fx_node.op == "get_attr":
            node, is_dependent = Node("attribute", str(fx_node.target)), False
        elif fx_node.op == "output":
            (result,) = fx_node.args
            if not isinstance(result, fx.Node) or not dependent[index[result]]:
                raise UnsupportedLayerError(type(model).__name__, "", "its forward must return one tensor of logits "
                                            "that depends on the input")
            output = Ref(index[result])
            break
        else:
            args, kwargs = refs(fx_node.args), refs(fx_node.kwargs)
            call = {"call_module": "module", "call_function": "function", "call_method": "method"}[fx_node.op]
            is_dependent = depends(fx_node.args) or depends(fx_node.kwargs)
            operator_ = _operator(fx_node, modules, call)
            if call == "function" and fx_node.target in _RANDOM:
                raise UnsupportedLayerError(name, path, "random sampling makes the model's output random", source)
            if not is_dependent:
                kind = "fold"
            elif _is_shape_query(fx_node, call):
                kind, is_dependent = "shape", False
            elif operator_ is None:
                raise UnsupportedLayerError(name, path, "no bound rule for this operator", source)
            else:
                kind = "operator"
            node = Node(kind, str(fx_node.target) if call == "module" else fx_node.target, call, args, kwargs,
                        operator_ if kind == "operator" else None, path, name, source)
        index[fx_node] = len(nodes)
        nodes.append(node)
        dependent.append(is_dependent)
    assert output is not None
    for node in nodes:
        node.flat = not _refs_in(node.kwargs) and all(type(a) is Ref or not _refs_in(a) for a in node.args)
    _set_releases(nodes, output)
    return BoundGraph(nodes, output)


def _operator(fx_node: fx.Node, modules: dict[str, nn.Module], call: str) -> Operator | None:
    if call == "module":
        return MODULES.get(type(modules[str(fx_node.target)]))
    if call == "method":
        return METHODS.get(str(fx_node.target))
    try:
        return FUNCTIONS.get(fx_node.target)
    except TypeError:  # an unhashable target
        return None


def _is_shape_query(fx_node: fx.Node, call: str) -> bool:
    if call == "method":
        return fx_node.target in SHAPE_METHODS
    if call == "function" and fx_node.target is getattr:
        return len(fx_node.args) == 2 and fx_node.args[1] in SHAPE_ATTRIBUTES
    return False


def _set_releases(nodes: list[Node], output: Ref) -> None:
    last_use: dict[int, int] = {}
    for position, node in enumerate(nodes):
        for ref in _refs_in((node.args, node.kwargs)):
            last_use[ref] = position
    last_use.pop(output.index, None)
    releases: dict[int, list[int]] = {}
    for ref, position in last_use.items():
        releases.setdefault(position, []).append(ref)
    for position, refs in releases.items():
        nodes[position].release = tuple(refs)


def _refs_in(value: Any) -> list[int]:
    if isinstance(value, Ref):
        return [value.index]
    if isinstance(value, (tuple, list)):
        return [i for item in value for i in _refs_in(item)]
    if isinstance(value, dict):
        return [i for item in value.values() for i in _refs_in(item)]
    if isinstance(value, slice):
        return _refs_in((value.start, value.stop, value.step))
    return []


def _resolve(value: Any, values: list[Any]) -> Any:
    if isinstance(value, Ref):
        return values[value.index]
    if isinstance(value, tuple):
        return tuple(_resolve(item, values) for item in value)
    if isinstance(value, list):
        return [_resolve(item, values) for item in value]
    if isinstance(value, dict):
        return {key: _resolve(item, values) for key, item in value.items()}
    if isinstance(value, slice):
        return slice(_resolve(value.start, values), _resolve(value.stop, values), _resolve(value.step, values))
    return value


def _attribute(model: nn.Module, name: str) -> Any:
    value: Any = model
    for part in name.split("."):
        value = getattr(value, part)
    return value


def _fold(node: Node, args: tuple[Any, ...], kwargs: dict[str, Any], module: nn.Module | None) -> Any:
    """Evaluate an input-independent node as the model would."""
    if node.call == "module":
        assert module is not None
        return module(*args, **kwargs)
    if node.call == "method":
        self, *rest = args
        return getattr(self, node.target)(*rest, **kwargs)
    return node.target(*args, **kwargs)


def _shape(node: Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    like = args[0].like()
    if node.call == "method":
        return getattr(like, node.target)(*args[1:], **kwargs)
    return getattr(like, args[1])


def _evaluate(graph: BoundGraph, model: nn.Module, node: Node, values: list[Any],
              visit: Callable[[Node, Call, Box], None] | None) -> Any:
    """The value of one call node.

    A function of its own, so that its arguments (boxes whose last use this is) are dropped when it returns and the
    pass never holds two layers' intermediate tensors longer than needed.
    """
    if node.flat:
        args = tuple(values[a.index] if type(a) is Ref else a for a in node.args)
        kwargs = node.kwargs
    else:
        args, kwargs = _resolve(node.args, values), _resolve(node.kwargs, values)
    module = graph.module(model, node.target) if node.call == "module" else None
    if node.kind == "fold":
        return _fold(node, args, kwargs, module)
    if node.kind == "shape":
        return _shape(node, args, kwargs)
    assert node.operator is not None
    call = Call(args, kwargs, module, node.path, node.name, node.source)
    value = node.operator.interval(call)
    if visit is not None:
        visit(node, call, value)
    return value


def run_graph(model: nn.Module, lower: Tensor, upper: Tensor,
              visit: Callable[[Node, Call, Box], None] | None = None) -> Box:
    """The forward interval pass: every node's rule in topological order, from the input box to the output box.

    Args:
        model: The model (traced once, then from the cache).
        lower: Lower ends of the input box.
        upper: Upper ends.
        visit: Called with each operator node, its call and its output box (CROWN collects its layer chain).

    Returns:
        The box of the model's output.
    """
    graph = bound_graph(model)
    values: list[Any] = [None] * len(graph.nodes)
    for position, node in enumerate(graph.nodes):
        if node.kind == "input":
            values[position] = Box(lower=lower, upper=upper)
        elif node.kind == "constant":
            values[position] = node.target
        elif node.kind == "attribute":
            values[position] = _attribute(model, node.target)
        else:
            values[position] = _evaluate(graph, model, node, values, visit)
        for ref in node.release:
            values[ref] = None
    result = values[graph.output.index]
    assert isinstance(result, Box)
    return result

