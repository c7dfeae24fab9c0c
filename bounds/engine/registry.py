"""The one registry of supported operators: module types, functions and tensor methods -> their rules.

Each supported operator is an :class:`Operator` registered under every way a model can call it (``nn.ReLU``,
``F.relu``, ``torch.relu``, ``x.relu()``). Lookups are by exact identity (``type(module)``, the function
object, the method name), never by ``isinstance``: a subclass or an unknown callable is not found, so nothing
falls through to a default rule. Adding an operator means writing its class in the file of its family
(:mod:`bounds.engine.affine`, :mod:`~bounds.engine.activations`, :mod:`~bounds.engine.pooling`,
:mod:`~bounds.engine.shape`, :mod:`~bounds.engine.arithmetic`) with one :func:`register` line.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from bounds.engine.box import Box
from bounds.errors import UnsupportedLayerError


@dataclass
class Call:
    """One evaluation of an operator: what the graph node calls, with its arguments resolved.

    Attributes:
        args: Positional arguments; input-dependent ones are :class:`~bounds.engine.box.Box` values.
        kwargs: Keyword arguments, resolved the same way.
        module: The called module for module nodes, else ``None``.
        path: Dotted module path of the node (the called module, or the module whose forward made the call).
        name: The operator as the model calls it (``LeakyReLU``, ``F.leaky_relu``, ``Tensor.view``), for messages.
        source: ``file:line`` of the call in the model's code, where tracing knows it.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    module: nn.Module | None = None
    path: str = ""
    name: str = ""
    source: str = ""

    def unsupported(self, reason: str) -> UnsupportedLayerError:
        """The error refusing this call, naming the operator, its path, its source line and ``reason``."""
        return UnsupportedLayerError(self.name, self.path, reason, self.source)

    def box(self, position: int = 0) -> Box:
        """The input-dependent argument at ``position`` (the operator's input)."""
        value = self.args[position]
        assert isinstance(value, Box)
        return value


class Operator:
    """A supported operator: its interval rule and, where CROWN supports it, its layers in a CROWN chain.

    Subclasses implement :meth:`interval`; :meth:`crown_layers` returns the equivalent layers of the linear
    relaxation chain (:mod:`bounds.crown`), or ``None`` where CROWN does not support the operator yet.
    """

    #: Name shown in the README's operator list and in messages.
    title: str = ""
    #: Whether :mod:`bounds.crown_graph` back-substitutes through it without chain layers (sums, constants, ...).
    crown_in_graphs: bool = False

    def interval(self, call: Call) -> Box:
        """Bound the operator's output over the input boxes of ``call``."""
        raise NotImplementedError

    def crown_layers(self, call: Call) -> list[nn.Module] | None:
        """Layers equivalent to this call in a CROWN layer chain, or ``None`` if CROWN cannot bound it yet."""
        return None

    def validate(self, call: Call) -> None:
        """Raise :class:`~bounds.errors.UnsupportedLayerError` for settings of a module the rule does not support.

        ``call`` holds the module only (no arguments): :func:`bounds.interval.check_supported` runs this on every
        module node without computing bounds.
        """


MODULES: dict[type, Operator] = {}
FUNCTIONS: dict[Callable[..., Any], Operator] = {}
METHODS: dict[str, Operator] = {}
_ORDER: list[tuple[Operator, tuple[str, ...]]] = []


def register(*, modules: tuple[type, ...] = (), functions: tuple[Callable[..., Any], ...] = (),
             methods: tuple[str, ...] = ()) -> Callable[[type[Operator]], type[Operator]]:
    """Class decorator: register one instance of an :class:`Operator` subclass under each given key.

    Raises:
        ValueError: If a key is registered twice (one rule per operator).
    """

    def decorate(cls: type[Operator]) -> type[Operator]:
        operator = cls()
        names = []
        for table, keys, label in ((MODULES, modules, module_name), (FUNCTIONS, functions, function_name),
                                   (METHODS, methods, lambda k: f"Tensor.{k}")):
            for key in keys:
                if key in table:
                    raise ValueError(f"{label(key)} is registered twice")
                table[key] = operator
                names.append(label(key))
        _ORDER.append((operator, tuple(names)))
        return cls

    return decorate


def module_name(module_type: type) -> str:
    """How a model spells a module type: ``nn.ReLU``, ``bounds.InputNormalization``."""
    if module_type.__module__.startswith("torch.nn"):
        return f"nn.{module_type.__name__}"
    return f"{module_type.__module__.split('.')[0]}.{module_type.__name__}"


def function_name(function: Callable[..., Any]) -> str:
    """How a model spells a function: ``F.relu``, ``torch.cat``, ``operator.add``."""
    module = getattr(function, "__module__", None) or ""
    name = getattr(function, "__name__", repr(function))
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    if module.startswith("torch.nn.functional") or module == "torch._C._nn":
        return f"F.{name}"
    if module == "builtins":
        return name
    return f"torch.{name}"


def supported_operators() -> list[tuple[str, tuple[str, ...], bool]]:
    """``(title, spellings, crown)`` of every registered operator, in registration order (the README lists them).

    ``crown`` tells whether CROWN (``method="crown"``) supports the operator in a chain of layers.
    """
    return [(op.title, names, op.crown_in_graphs or type(op).crown_layers is not Operator.crown_layers)
            for op, names in _ORDER]


def parameters(call: Call, names: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """An operator's parameters from its module's attributes, or from the call's arguments after the input.

    Args:
        call: The call.
        names: ``(name, default)`` in the functional signature's order (after ``input``).

    Raises:
        UnsupportedLayerError: For an argument the activation does not take.
    """
    if call.module is not None:
        return {name: getattr(call.module, name) for name, _ in names}
    values = dict(names)
    extra = call.args[1:]
    for (name, _), value in zip(names, extra, strict=False):
        values[name] = value
    if len(extra) > len(names) + 1:  # one more positional is ``inplace``
        raise call.unsupported("unexpected positional arguments")
    for name, value in call.kwargs.items():
        if name in values:
            values[name] = value
        elif name != "inplace":
            raise call.unsupported(f"unexpected argument {name}=")
    return values
