"""Linear-relaxation (CROWN) bounds of the margin specification through models that trace into a chain of layers.

The model is traced by the bound engine and turned into a chain of layers (:func:`bounds.engine.chain.crown_chain`:
``F.relu`` becomes ``nn.ReLU``, ``x.view(B, -1)`` a ``Flatten``, ...); any other graph (residual additions,
concatenations, arithmetic with constants) is back-substituted node by node by :mod:`bounds.crown_graph`, with
interval intermediate bounds.

CROWN (Zhang et al., NeurIPS 2018, "Efficient Neural Network Robustness Certification with General
Activation Functions", Theorem 3.2) bounds a linear function ``C f(x)`` of the outputs over an input box by
*back-substitution*: starting from ``Lambda = C`` at the output, every layer is replaced, in reverse order,
by a linear map that bounds it from the correct side:

- affine layers (``Linear``, ``Conv2d``, eval ``BatchNorm``, :class:`~bounds.normalization.InputNormalization`,
  ``AvgPool2d``) are exact: ``Lambda <- Lambda W`` and ``offset += Lambda b`` (``Conv2d``/``AvgPool2d`` via the
  transposed map: ``conv_transpose2d`` / a vector-Jacobian product);
- an activation ``sigma`` with pre-activation bounds ``l <= z <= u`` gets two lines
  ``alpha_L z + beta_L <= sigma(z) <= alpha_U z + beta_U`` on ``[l, u]``
  (:mod:`bounds.layer_relaxations`: CROWN's adaptive ReLU lines, parallel lines for Sigmoid/Tanh, and a sound
  linear relaxation of MaxPool2d); a nonnegative coefficient takes the lower line and a negative one the upper
  line (Theorem 3.2's ``lambda`` / ``Delta`` rule): ``Lambda <- [Lambda]_+ alpha_L + [Lambda]_- alpha_U`` and
  ``offset += [Lambda]_+ beta_L + [Lambda]_- beta_U``. An activation right before a max-pool with disjoint
  windows is applied at the pool's resolution, before the coefficients are spread to the selected entries.
- ``Flatten``, ``Identity`` and eval ``Dropout`` only reshape ``Lambda``.

At the input, ``min_{x in [l0, u0]} Lambda x = Lambda mid - |Lambda| rad``. The intermediate pre-activation
bounds ``l, u`` every relaxation needs come from interval propagation (CROWN-IBP) or from CROWN itself
(back-substitution from every activation's input to the model input: full CROWN). Convolutional feature maps
are back-substituted in windows (:mod:`bounds.crown_patches`, the receptive field of each neuron only); other
layers densely, and then only the neurons that are unstable for some example of the batch (the others are
decided by the interval bounds already). Both are sound, so each intermediate bound is the tighter of the two,
and the returned margin bounds are the better of CROWN's and interval propagation's (never looser than IBP).
On a zero-width box interval propagation is exact and CROWN's intermediate pass is skipped.

Where the pieces live: the dense back-substitution rules in :mod:`bounds.crown_backward`, the windowed ones in
:mod:`bounds.crown_patches`, the full-CROWN intermediate bounds in :mod:`bounds.crown_intermediate`; this module
builds the chain with its relaxations and bounds the margin specification.

Public functions: :func:`crown_margin_bounds` (lower bounds of ``f_y - f_j``, like
:func:`~bounds.margins.margin_lower_bounds`) and :func:`linear_margin_bounds` (the linear lower bound
``f_y(x') - f_j(x') >= A_j . x' + b_j`` valid on the whole box, for certification of sub-boxes in closed form).
"""

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from bounds.crown_backward import back_substitute, check_crown_layer, concretize
from bounds.crown_graph import graph_back_substitution
from bounds.crown_intermediate import NONLINEAR, block_output, intermediate_crown, only_unstable
from bounds.engine.chain import NotAChainError, crown_chain, layer_interval
from bounds.interval import check_model_input, validate_box
from bounds.layer_relaxations import (
    Relaxations,
    relax_layer,
)
from bounds.margins import margins_from_bounds, validate_labels

Intermediate = Literal["crown", "ibp"]

# Input entries per pass of the graph path (examples in chunks; :func:`_graph_margin_bound`). resnet_small's CROWN
# bound (3 x 32 x 32 inputs) holds about 8 MiB per example, and costs the same per example from 16 to 64 examples
# per pass (13-16 ms, one thread; 18 ms at 4): 2**17 gives it 42 examples per pass, about 340 MiB.
GRAPH_CHUNK_INPUT_ELEMENTS = 2**17


@dataclass(frozen=True)
class LinearMarginBound:
    """A linear lower bound of the margins valid on one input box (CROWN, Theorem 3.2).

    For every ``x'`` in ``[lower, upper]`` (the box it was built on) and every ``j != y``:
    ``f(x')_y - f(x')_j >= (coefficients[:, j] * x').sum() + offset[:, j]``.

    Attributes:
        coefficients: ``(B, K, ...)`` with the input's shape after ``K``; zero rows at ``j == y``.
        offset: ``(B, K)``; ``+inf`` at ``j == y`` (the margin with itself is not constrained).
        lower: The box's lower ends ``(B, ...)``.
        upper: The box's upper ends ``(B, ...)``.
    """

    coefficients: Tensor
    offset: Tensor
    lower: Tensor
    upper: Tensor

    def margins(self, lower: Tensor, upper: Tensor) -> Tensor:
        """Closed-form margin lower bounds ``(B, K)`` over a sub-box ``[lower, upper]`` of the build box.

        ``min_{x' in box} A_j . x' + b_j = A_j . mid - |A_j| . rad + b_j``. Only sound for sub-boxes of the box
        the relaxation was built on (the caller ensures ``self.lower <= lower <= upper <= self.upper``).
        """
        return concretize(self.coefficients, self.offset, lower, upper)


def _build(model: nn.Module, lower: Tensor, upper: Tensor, intermediate: Intermediate,
           record: dict[int, tuple[Tensor, Tensor]] | None = None
           ) -> tuple[list[tuple[str, nn.Module]], list[tuple[int, ...]], Relaxations, Tensor, Tensor]:
    """Walk the model forward: intermediate bounds (IBP, tightened by CROWN) and every layer's relaxation.

    ``record``, if given, receives the input bounds ``(l, u)`` of every nonlinear layer by layer index.

    Returns:
        ``(layers, shapes, relaxations, out_lower, out_upper)`` where ``out_*`` are the interval bounds of the
        outputs computed from the tightened intermediate bounds.
    """
    if intermediate not in ("crown", "ibp"):
        raise ValueError(f"intermediate must be 'crown' or 'ibp', got {intermediate!r}")
    check_model_input(model, lower, "lower")
    check_model_input(model, upper, "upper")
    validate_box(lower, upper)
    layers = crown_chain(model, lower, upper)
    shapes: list[tuple[int, ...]] = [tuple(lower.shape[1:])]
    relaxations: Relaxations = {}
    box_l, box_u = lower, upper
    # CROWN can only tighten an input that went through an affine layer since the last nonlinear layer (the
    # interval bounds of an activation's or pooling's output given its input bounds are already exact).
    affine_since_nonlinear = False
    seen_nonlinear = False
    # On a point (zero-width box) interval propagation is exact: nothing for CROWN to tighten.
    tighten = intermediate == "crown" and not bool((upper == lower).all())
    # Input boxes intermediate_crown may start from: the model input, its normalization (the first block's input), and
    # the outputs of the last two nonlinear blocks (the dense rows' checkpoints); older ones are dropped.
    boxes: dict[int, tuple[Tensor, Tensor]] = {}
    block_outputs: list[int] = []
    for i, (path, layer) in enumerate(layers):
        if i <= 1:
            boxes[i] = (box_l, box_u)
        elif block_output(layers, i):
            boxes[i] = (box_l, box_u)
            block_outputs.append(i)
            if len(block_outputs) > 2:
                boxes.pop(block_outputs.pop(0), None)
        check_crown_layer(layer, path)
        layer_type = type(layer)
        if layer_type in NONLINEAR:
            if tighten and seen_nonlinear and affine_since_nonlinear:
                box_l, box_u = intermediate_crown(layers, shapes, relaxations, i, box_l, box_u, lower, upper,
                                                  only_unstable=only_unstable(layers, i), boxes=boxes)
            relaxations[i] = relax_layer(layer, box_l, box_u)
            if record is not None:
                record[i] = (box_l, box_u)
            seen_nonlinear = True
            affine_since_nonlinear = False
        elif layer_type not in (nn.Flatten, nn.Identity, nn.Dropout):
            affine_since_nonlinear = True
        box_l, box_u = layer_interval(layer, path, box_l, box_u)
        shapes.append(tuple(box_l.shape[1:]))
    return layers, shapes, relaxations, box_l, box_u


def _margin_spec(y: Tensor, classes: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``C (B, K-1, K)``: row ``j`` is ``e_y - e_other_j``; and the other classes ``(B, K-1)``."""
    batch = y.shape[0]
    all_classes = torch.arange(classes, device=y.device).expand(batch, classes)
    others = all_classes[all_classes != y.view(-1, 1)].view(batch, classes - 1)
    spec = F.one_hot(y, classes).to(dtype).unsqueeze(1) - F.one_hot(others, classes).to(dtype)
    return spec, others


def chain_margin_spec(shapes: list[tuple[int, ...]], lower: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Check the chain outputs logits and the labels fit; ``(y, spec, others, zero offset)`` of the margins.

    Shared by CROWN's final back-substitution here and alpha-CROWN's (:mod:`bounds.alpha_crown`).
    """
    if len(shapes[-1]) != 1:
        raise ValueError(f"the model must output logits (B, K), got per-example shape {shapes[-1]}")
    batch, classes = lower.shape[0], shapes[-1][0]
    validate_labels(y, batch, classes)
    y = y.to(lower.device)
    spec, others = _margin_spec(y, classes, lower.dtype)
    return y, spec, others, torch.zeros(batch, classes - 1, dtype=lower.dtype, device=lower.device)


def linear_margin_bounds(model: nn.Module, lower: Tensor, upper: Tensor, y: Tensor, *,
                         intermediate: Intermediate = "crown") -> LinearMarginBound:
    """The CROWN linear lower bound of the margins ``f_y - f_j`` on the box ``[lower, upper]``.

    Back-substitution of the specification ``C = e_y - e_j`` (Zhang et al. 2018, Theorem 3.2) down to the
    input gives ``A_j, b_j`` with ``f(x')_y - f(x')_j >= A_j . x' + b_j`` for every ``x'`` in the box. Because
    the relaxation is fixed, the certified margin of any sub-box ``[x - e1, x + e2]`` of the box is the
    closed form ``A_j . x + b_j - [A_j]_+ . e1 - [A_j]_- . e2`` (:meth:`LinearMarginBound.margins`).

    Args:
        model: Any model the bound engine traces (see the module docstring), in eval mode, mapping inputs to
            logits ``(B, K)``.
        lower: Lower ends of the box ``(B, ...)``.
        upper: Upper ends, same shape.
        y: Labels ``(B,)``.
        intermediate: ``"crown"`` (full CROWN: intermediate bounds by back-substitution, tightened with the
            interval bounds) or ``"ibp"`` (CROWN-IBP: intermediate bounds by interval propagation).

    Returns:
        A :class:`LinearMarginBound` (differentiable in ``lower``/``upper`` and the parameters).

    Raises:
        UnsupportedLayerError: For a layer neither IBP nor CROWN supports.
        ValueError: For bad boxes, labels, a train-mode BatchNorm/Dropout or an unknown ``intermediate``.
    """
    try:
        layers, shapes, relaxations, _, _ = _build(model, lower, upper, intermediate)
    except NotAChainError:
        return _graph_margin_bound(model, lower, upper, y)[0]
    return _final_linear(layers, shapes, relaxations, lower, upper, y)


def _final_linear(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]],
                  relaxations: Relaxations, lower: Tensor, upper: Tensor, y: Tensor) -> LinearMarginBound:
    y, spec, others, zero = chain_margin_spec(shapes, lower, y)
    coeffs, offset = back_substitute(layers, shapes, relaxations, spec, zero, len(layers))
    return _margin_bound(coeffs, offset, others, lower, upper)


def _margin_bound(coeffs: Tensor, offset: Tensor, others: Tensor, lower: Tensor, upper: Tensor) -> LinearMarginBound:
    """The :class:`LinearMarginBound` of the back-substituted rows of the other classes ``(B, K-1, ...)``."""
    batch, classes = lower.shape[0], others.shape[1] + 1
    shape = tuple(lower.shape[1:])
    coeffs = coeffs.expand(batch, *coeffs.shape[1:])
    full_coeffs = torch.zeros(batch, classes, *shape, dtype=lower.dtype, device=lower.device)
    full_coeffs = full_coeffs.scatter(1, others.view(batch, classes - 1, *([1] * len(shape))).expand_as(coeffs),
                                      coeffs)
    full_offset = torch.full((batch, classes), torch.inf, dtype=lower.dtype, device=lower.device)
    full_offset = full_offset.scatter(1, others, offset.expand(batch, -1))
    return LinearMarginBound(full_coeffs, full_offset, lower, upper)


def _graph_margin_bound(model: nn.Module, lower: Tensor, upper: Tensor, y: Tensor
                        ) -> tuple[LinearMarginBound, Tensor, Tensor]:
    """CROWN of a branching graph (:mod:`bounds.crown_graph`): the margin bound and the output's interval bounds.

    Examples are independent, so the batch goes through in chunks of at most ``GRAPH_CHUNK_INPUT_ELEMENTS`` input
    entries (at least one example): the pass keeps every node's box and the specification rows' coefficients at
    each node for the whole chunk.
    """
    y = y.to(lower.device)
    chunk = max(1, GRAPH_CHUNK_INPUT_ELEMENTS // max(1, lower[0].numel()))
    if lower.shape[0] > chunk:
        parts = [_graph_margin_bound(model, lower[i:i + chunk], upper[i:i + chunk], y[i:i + chunk])
                 for i in range(0, lower.shape[0], chunk)]
        linear = LinearMarginBound(torch.cat([part[0].coefficients for part in parts]),
                                   torch.cat([part[0].offset for part in parts]), lower, upper)
        return linear, torch.cat([part[1] for part in parts]), torch.cat([part[2] for part in parts])
    found: dict[str, Tensor] = {}

    def specification(output: "object") -> Tensor:
        shape = output.shape  # type: ignore[attr-defined]
        if len(shape) != 2:
            raise ValueError(f"the model must output logits (B, K), got per-example shape {tuple(shape[1:])}")
        validate_labels(y, lower.shape[0], shape[1])
        spec, found["others"] = _margin_spec(y, shape[1], lower.dtype)
        return spec

    coeffs, offset, output = graph_back_substitution(model, lower, upper, specification)
    out_l, out_u = output.ends()
    return _margin_bound(coeffs, offset, found["others"], lower, upper), out_l, out_u


def crown_margin_bounds(model: nn.Module, lower: Tensor, upper: Tensor, y: Tensor, *,
                        intermediate: Intermediate = "crown") -> Tensor:
    """Lower bounds of ``f(x)[y] - f(x)[j]`` over the box by CROWN, never looser than interval propagation.

    Same convention as :func:`~bounds.margins.margin_lower_bounds`: ``(B, K)`` with ``+inf`` at ``j == y``.
    Each entry is the larger of the CROWN bound (Theorem 3.2 concretised on the box) and the interval bound
    (computed from the CROWN-tightened intermediate bounds, hence at least as tight as plain IBP).

    Args:
        model: Any model the bound engine traces, in eval mode, mapping inputs to logits (chains get full CROWN,
            other graphs :mod:`bounds.crown_graph` with interval intermediate bounds).
        lower: Lower ends of the box ``(B, ...)``.
        upper: Upper ends, same shape.
        y: Labels ``(B,)``.
        intermediate: ``"crown"`` (full CROWN) or ``"ibp"`` (CROWN-IBP) intermediate bounds.

    Returns:
        ``(B, K)`` margin lower bounds, differentiable in ``lower``/``upper``.

    Raises:
        UnsupportedLayerError: For an unsupported layer.
        ValueError: For bad boxes or labels.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]])); _ = layer.bias.zero_()
        >>> lower, upper = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])
        >>> crown_margin_bounds(layer, lower, upper, torch.tensor([0])).detach()
        tensor([[inf, -1.]])
    """
    try:
        layers, shapes, relaxations, out_l, out_u = _build(model, lower, upper, intermediate)
        linear = _final_linear(layers, shapes, relaxations, lower, upper, y)
    except NotAChainError:
        linear, out_l, out_u = _graph_margin_bound(model, lower, upper, y)
    crown = linear.margins(lower, upper)
    return torch.maximum(crown, margins_from_bounds(out_l, out_u, y.to(lower.device)))
