"""Interval bound propagation (Amoeba Theorem 1, Equations 3 and 4) through any traceable ``nn.Module``.

Given an input box ``lower <= x <= upper``, the model is traced into a graph of operators
(:mod:`bounds.engine.graph`, ``torch.fx``) and every node maps the boxes of its inputs to a box enclosing its
output, in topological order; the operators and their rules live in one registry
(:mod:`bounds.engine.registry`):

- affine layers (``Linear``, ``Conv2d``, eval ``BatchNorm``, :class:`~bounds.normalization.InputNormalization`)
  in centre-radius form: ``mid' = W mid + b``, ``rad' = |W| rad``;
- monotone activations and pooling on the ends; GELU and SiLU through their minimum;
- residual sums, concatenation, reshapes and affine maps by constants exactly.

Custom ``forward`` methods, functional calls (``F.relu``, ``torch.flatten``, views) and residual networks such as
torchvision's ResNets are supported. Dispatch is on exact identity: an operator that is not registered, a
module whose behaviour may differ from what tracing sees (forward hooks, a ``forward`` replaced on the instance),
or a forward that tracing cannot follow raises :class:`~bounds.errors.UnsupportedLayerError` naming the operator,
its module path and source line. Inputs must be float32 or float64 with the model's dtype and device
(:func:`check_model_input`). The caller's tensors are never written (in-place activations run out of place);
the result is differentiable in ``lower`` and ``upper`` (and in the model's parameters).
"""

import torch
from torch import Tensor, nn

from bounds.engine.graph import bound_graph, run_graph
from bounds.engine.registry import Call

# Slack allowed for ``lower <= upper`` (rounding in callers that build boxes as x - eps, x + eps).
_ORDER_ATOL = 1e-6
_ORDER_RTOL = 1e-6


def check_supported(model: nn.Module) -> None:
    """Check that :func:`interval_bounds` can propagate through ``model`` without running it.

    The model is traced (and the graph cached); every input-dependent operator must be registered, and every
    module's settings supported (e.g. no negative LeakyReLU slope). Arguments of functional calls and train-mode
    ``BatchNorm``/``Dropout`` are checked when bounds are computed (certification switches the model to eval
    mode, :func:`bounds.modes.evaluation_mode`).

    Args:
        model: The model.

    Raises:
        UnsupportedLayerError: Naming the first unsupported operator, its module path and source line.
    """
    graph = bound_graph(model)
    for node in graph.nodes:
        if node.kind == "operator" and node.call == "module":
            assert node.operator is not None
            module = graph.module(model, node.target)
            node.operator.validate(Call((), {}, module, node.path, node.name, node.source))


# Floating dtypes the bound engine computes in. Half precision is refused: its rounding (a relative error of
# 1e-3 per operation) is far above the margins certificates prove, and bounds are not rounded outwards.
SUPPORTED_DTYPES = (torch.float32, torch.float64)


def check_model_input(model: nn.Module, tensor: Tensor, name: str = "x") -> None:
    """Raise ``ValueError`` unless ``tensor`` has a supported dtype and the dtype and device of ``model``.

    Runs before any work, so a mismatch gets this message instead of a raw error deep inside a bound pass.

    Args:
        model: The model to be bounded; its first floating parameter (else buffer) sets the expected dtype and
            device.
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
    reference = _reference_tensor(model)
    if reference is not None:
        tag, where, value = reference
        if value.dtype != tensor.dtype or value.device != tensor.device:
            raise ValueError(f"{name} is {tensor.dtype} on {tensor.device}, but the model's {tag} '{where}' is "
                             f"{value.dtype} on {value.device}: the inputs need the model's dtype and device "
                             f"(e.g. x.to(dtype={value.dtype}, device='{value.device}'))")


def _reference_tensor(model: nn.Module) -> tuple[str, str, Tensor] | None:
    """The model's first floating parameter (else buffer): the dtype and device inputs must have."""
    for tag, values in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for where, value in values:
            if value.is_floating_point():
                return tag, where, value
    return None


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
        # Fast path, one host synchronisation: the sums are finite when every entry is (a sum can also overflow,
        # then the exact checks below run and pass), and no entry of lower exceeds upper by more than the
        # absolute slack (the per-entry allowance below is never smaller). NaN fails both comparisons.
        if lower.numel() == 0:
            return
        if bool(torch.isfinite(lower.sum() + upper.sum()) & ((lower - upper).max() <= _ORDER_ATOL)):
            return
        for name, value in (("lower", lower), ("upper", upper)):
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                bad = value[~finite].flatten()[0].item()
                raise ValueError(f"{name} must be finite, found {bad} at {int((~finite).sum())} entries")
        excess = lower - upper
        allowed = _ORDER_ATOL + _ORDER_RTOL * torch.maximum(lower.abs(), upper.abs())
        if bool((excess > allowed).any()):
            raise ValueError(f"lower must not exceed upper; the largest excess is {excess.max().item():.3g}")


def interval_bounds(model: nn.Module, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Bound the outputs of ``model`` over the input box ``[lower, upper]`` (Amoeba Theorem 1, Eqs. 3-4).

    The box is per example and per input entry (batch first). Layers are applied as described in the
    module docstring; the model is run as it is, so put it in eval mode first (train-mode BatchNorm or
    Dropout raise a ``ValueError``).

    Args:
        model: Any model whose forward traces into registered operators (see the module docstring).
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
    return run_graph(model, lower, upper).ends()
