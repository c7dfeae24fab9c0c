"""The margin specification every certificate checks: true-class lower bound minus other-class upper bounds.

For a box ``[lower, upper]`` and label ``y``, the model keeps label ``y`` on the whole box if
``out_lower[y] - out_upper[j] > 0`` for every ``j != y`` (Amoeba Problem 2 uses
``v_j = l[t] - u[j] - delta >= 0``).
"""

from typing import Literal

import torch
from torch import Tensor, nn

from bounds.interval import interval_bounds
from bounds.validation import validate_labels  # also imported from here by bounds.certify and bounds.crown


def margins_from_bounds(out_lower: Tensor, out_upper: Tensor, y: Tensor) -> Tensor:
    """Margin lower bounds ``out_lower[b, y_b] - out_upper[b, j]`` from output bounds.

    Args:
        out_lower: Lower bounds of the logits, ``(B, K)``.
        out_upper: Upper bounds of the logits, ``(B, K)``.
        y: Labels, integer tensor ``(B,)`` with values in ``[0, K)``.

    Returns:
        ``(B, K)`` tensor; the entry of the true class (``j == y``) is ``+inf`` so that a minimum over
        classes ignores it. Differentiable in the bounds.

    Raises:
        ValueError: If the shapes do not match or a label is out of range.
    """
    if out_lower.dim() != 2 or out_lower.shape != out_upper.shape:
        raise ValueError(
            f"output bounds must both be (B, K), got {tuple(out_lower.shape)} and {tuple(out_upper.shape)}"
        )
    batch, classes = out_lower.shape
    validate_labels(y, batch, classes)
    y = y.to(out_lower.device)
    true_lower = out_lower.gather(1, y.view(-1, 1))
    margins = true_lower - out_upper
    is_true = torch.nn.functional.one_hot(y, classes).bool()
    return margins.masked_fill(is_true, float("inf"))


Method = Literal["ibp", "crown", "alpha-crown"]
METHODS: tuple[str, ...] = ("ibp", "crown", "alpha-crown")


def margin_lower_bounds(model: nn.Module, lower: Tensor, upper: Tensor, y: Tensor, method: Method = "ibp") -> Tensor:
    """Lower bounds of ``f(x)[y] - f(x)[j]`` over the box ``[lower, upper]`` by IBP, CROWN or alpha-CROWN.

    This is the specification of Amoeba Problems 1-2: every input of the box is classified as ``y`` if
    ``min_j margin[b, j] > 0``; a certificate with margin ``delta`` needs ``>= delta``.

    Args:
        model: A model :func:`bounds.interval.interval_bounds` supports, mapping inputs to logits ``(B, K)``.
        lower: Lower ends of the input box ``(B, ...)``.
        upper: Upper ends of the input box, same shape.
        y: Labels ``(B,)``.
        method: ``"ibp"`` (Amoeba Theorem 1), ``"crown"`` (:func:`bounds.crown.crown_margin_bounds`: linear
            relaxation, never looser than ``"ibp"``) or ``"alpha-crown"``
            (:func:`bounds.alpha_crown.alpha_crown_margin_bounds`: CROWN with optimised ReLU lower slopes, never
            looser than ``"crown"``; chain models only).

    Returns:
        ``(B, K)``: for IBP ``out_lower[y] - out_upper[j]``; ``+inf`` at ``j == y``.

    Raises:
        ValueError: For bad boxes (see :func:`~bounds.interval.interval_bounds`) or labels.
        UnsupportedLayerError: For a layer interval propagation does not know.
    """
    if method == "crown":
        from bounds.crown import crown_margin_bounds  # crown imports this module

        return crown_margin_bounds(model, lower, upper, y)
    if method == "alpha-crown":
        from bounds.alpha_crown import alpha_crown_margin_bounds  # it imports this module

        return alpha_crown_margin_bounds(model, lower, upper, y)
    if method != "ibp":
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    out_lower, out_upper = interval_bounds(model, lower, upper)
    return margins_from_bounds(out_lower, out_upper, y)
