"""Full-CROWN intermediate bounds: every activation's input bounded by back-substitution to the model input.

The interval bounds of a nonlinear layer's input are tightened by CROWN where that can pay: only the neurons whose
bounds matter (the unstable ReLU inputs, or all non-fixed ones before a MaxPool2d, which uses the active ones' bounds
too), windowed for convolutional maps (:mod:`bounds.crown_patches`) and densely, in chunks of examples, otherwise.
"""

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bounds.crown_backward import CHUNK_ELEMENTS, back_substitute, concretize
from bounds.crown_first_block import next_conv_block, next_conv_bounds
from bounds.crown_patches import SPARSE_FRACTION, needed_first, padded_rows, patch_bounds, patches_apply
from bounds.layer_relaxations import ACTIVATIONS, Relaxations

NONLINEAR = (*ACTIVATIONS, nn.MaxPool2d)


def _needed(layers: list[tuple[str, nn.Module]], stop: int, flat_l: Tensor, flat_u: Tensor, only_unstable: bool
            ) -> tuple[Tensor, Tensor]:
    """``(not_fixed, needed)`` ``(B, N)``: the neurons whose bounds can change a relaxation, and those that need one.

    ReLU inputs with ``u <= 0`` are fixed (output 0); without a MaxPool after the ReLU only unstable ones matter.
    """
    not_fixed = flat_u > flat_l
    if type(layers[stop][1]) is nn.ReLU:
        not_fixed = not_fixed & (flat_u > 0)
    return not_fixed, (not_fixed & (flat_l < 0) if only_unstable else not_fixed)


def intermediate_crown(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]],
                       relaxations: Relaxations, stop: int, lower: Tensor, upper: Tensor,
                       in_lower: Tensor, in_upper: Tensor, only_unstable: bool,
                       boxes: dict[int, tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Full-CROWN bounds of the input of layer ``stop`` (``(B, *shapes[stop])``), tightening ``lower, upper``.

    The affine layers between the last nonlinear layer and ``stop`` do not depend on the example: their
    back-substituted identity (a dense Jacobian, ``J``) is computed once; then every example back-substitutes
    only its own rows of ``[J; -J]`` (its unstable neurons, or all non-fixed ones), padded to the largest
    count of its chunk.

    ``boxes`` (interval boxes at the input of layers below ``stop``, by index: at least the model input's and, for
    the first block's input, after an input normalization; the nonlinear blocks' outputs) gives dense rows a
    checkpoint (:func:`_checkpoint`): they are concretised on the way, at the output of the nonlinear block before
    the last one, and the neurons settled there go no further (:func:`_tightened`; LeNet's second fully connected
    layer: 43 instead of 83 of its 84 neurons go on at radius 0.06); the others keep the tighter of both bounds (on
    wide boxes the checkpoint's is sometimes tighter than full CROWN's).
    """
    flat_l, flat_u = lower.flatten(1), upper.flatten(1)
    not_fixed, needed = _needed(layers, stop, flat_l, flat_u, only_unstable)
    if int(needed.sum(1).max()) == 0:
        return lower, upper
    # The convolution right after the first block: every neuron from the block's unit lines, tap by tap.
    block = next_conv_block(layers, shapes, stop)
    found = None if block is None else next_conv_bounds(block, layers, shapes, relaxations, stop, *boxes[block.start],
                                                        CHUNK_ELEMENTS)
    if found is None and patches_apply(layers, shapes, stop):
        # Windows only of the neurons that need a bound when few do; also of the active ones when those are few
        # enough too (their tighter bounds tighten the next layer's interval bounds, which decide its needed set).
        if int(not_fixed.sum(1).max()) <= SPARSE_FRACTION * flat_l.shape[1]:
            needed = not_fixed
        found = patch_bounds(layers, shapes, relaxations, stop, in_lower, in_upper, needed.view(lower.shape))
    if found is not None:
        new_l = torch.maximum(lower, found[0])
        return new_l, torch.maximum(torch.minimum(upper, found[1]), new_l)  # rounding can cross; both are sound
    neurons = flat_l.shape[1]
    last = max(k for k in relaxations if k < stop)
    eye = torch.eye(neurons, dtype=lower.dtype, device=lower.device).view(1, neurons, *shapes[stop])
    zero = torch.zeros(1, neurons, dtype=lower.dtype, device=lower.device)
    jacobian, jac_offset = back_substitute(layers, shapes, relaxations, eye, zero, stop, start=last + 1)
    start = _checkpoint(layers, last)
    checkpoint = (start, *boxes[start]) if start is not None and start in boxes else None

    def still_needed(low: Tensor, up: Tensor) -> Tensor:
        return _needed(layers, stop, low, up, only_unstable)[1]

    flat_l, flat_u = _tightened(layers, shapes, relaxations, stop, last, jacobian[0], jac_offset[0], needed, flat_l,
                                flat_u, in_lower, in_upper, checkpoint, still_needed)
    return flat_l.reshape(lower.shape), flat_u.reshape(upper.shape)


def block_output(layers: list[tuple[str, nn.Module]], i: int) -> bool:
    """Whether the input of layer ``i`` is the output of a nonlinear block (a possible :func:`_checkpoint`)."""
    return 0 < i < len(layers) and type(layers[i - 1][1]) in NONLINEAR and type(layers[i][1]) not in NONLINEAR


def _checkpoint(layers: list[tuple[str, nn.Module]], last: int) -> int | None:
    """Where dense rows are concretised on the way (:func:`_tightened`), or ``None``.

    The output of the nonlinear block before the one ending at ``last`` (a max-pool with its activation, or an
    activation), if affine layers lie between the two blocks: on LeNet the second pool's output for the second fully
    connected layer's rows, the first pool's output for the first one's.
    """
    j = last
    while j >= 0 and type(layers[j][1]) in NONLINEAR:
        j -= 1
    affine = j
    while j >= 0 and type(layers[j][1]) not in NONLINEAR:
        j -= 1
    start = j + 1
    return start if block_output(layers, start) and affine >= start else None


def _tightened(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]], relaxations: Relaxations,
               stop: int, last: int, jacobian: Tensor, jac_offset: Tensor, needed: Tensor, flat_l: Tensor,
               flat_u: Tensor, in_lower: Tensor, in_upper: Tensor, checkpoint: tuple[int, Tensor, Tensor] | None,
               still_needed: Callable[[Tensor, Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """Bounds ``(B, N)`` with the ``needed`` neurons' rows ``[J; -J]`` back-substituted to the model input.

    With a ``checkpoint`` ``(k, box_l, box_u)`` the rows stop at the input of layer ``k`` first and are concretised on
    the interval box there: those bounds are sound too, and the neurons they settle (``still_needed`` false: stable,
    or fixed) go no further, since their relaxation is exact whatever their bounds; the others go on from the same
    coefficients and keep the tighter of both bounds. Every bound is intersected with ``flat_l, flat_u``; examples go
    in chunks of at most ``CHUNK_ELEMENTS`` entries of the widest map the rows pass through.
    """
    batch, neurons = flat_l.shape
    counts = needed.sum(1)
    order = needed_first(needed)  # the padding of each chunk points at a dummy column ``neurons``
    widest = max(math.prod(shape) for shape in shapes[: last + 2])
    chunk = max(1, CHUNK_ELEMENTS // max(1, 2 * int(counts.max()) * widest))
    padded_l = torch.cat([flat_l, flat_l[:, :1]], 1)
    padded_u = torch.cat([flat_u, flat_u[:, :1]], 1)
    parts_l, parts_u = [], []
    for begin in range(0, batch, chunk):
        end = min(batch, begin + chunk)
        index, valid, target = padded_rows(order, counts, begin, end)
        low, up = padded_l[begin:end].gather(1, target), padded_u[begin:end].gather(1, target)
        if index.shape[1]:
            rows, offset = jacobian[index], jac_offset[index]
            spec = torch.cat([rows, -rows], 1)  # (b, 2 width, ...)
            spec_offset = torch.cat([offset, -offset], 1)
            part = {k: v.rows(begin, end) for k, v in relaxations.items() if k < stop}
            position = torch.arange(index.shape[1], device=index.device).expand_as(index)
            if checkpoint is not None:
                spec, spec_offset = back_substitute(layers, shapes, part, spec, spec_offset, last + 1, checkpoint[0])
                low, up = _intersect(low, up, valid, concretize(spec, spec_offset, checkpoint[1][begin:end],
                                                                checkpoint[2][begin:end]))
                go_on = valid & still_needed(low, up)
                kept = int(go_on.sum(1).max())
                position = needed_first(go_on)[:, :kept]  # each example's rows still needed, first
                kept_rows = torch.cat([position, position + index.shape[1]], 1)
                spec = spec.gather(1, kept_rows.view(*kept_rows.shape, *([1] * (spec.dim() - 2))).expand(
                    -1, -1, *spec.shape[2:]))
                spec_offset = spec_offset.gather(1, kept_rows)
                valid = go_on.gather(1, position)
            if position.shape[1]:
                coeffs, total = back_substitute(layers, shapes, part, spec, spec_offset,
                                                checkpoint[0] if checkpoint is not None else last + 1)
                bounds = concretize(coeffs, total, in_lower[begin:end], in_upper[begin:end])
                low_at, up_at = _intersect(low.gather(1, position), up.gather(1, position), valid, bounds)
                low, up = low.scatter(1, position, low_at), up.scatter(1, position, up_at)
        parts_l.append(padded_l[begin:end].scatter(1, target, low))
        parts_u.append(padded_u[begin:end].scatter(1, target, up))
    return torch.cat(parts_l)[:, :neurons], torch.cat(parts_u)[:, :neurons]


def _intersect(low: Tensor, up: Tensor, valid: Tensor, bounds: Tensor) -> tuple[Tensor, Tensor]:
    """``low, up`` ``(b, w)`` tightened where ``valid`` by rows' bounds ``(b, 2w)`` (lower rows, then negated upper)."""
    width = low.shape[1]
    low_new = torch.where(valid, torch.maximum(low, bounds[:, :width]), low)
    up_new = torch.where(valid, torch.minimum(up, -bounds[:, width:]), up)
    return low_new, torch.maximum(up_new, low_new)  # rounding can cross the two; both remain sound


def only_unstable(layers: list[tuple[str, nn.Module]], i: int) -> bool:
    """Whether only the unstable inputs of the ReLU at ``i`` need CROWN bounds.

    Its relaxation is exact on stable neurons, but a following MaxPool2d relaxation also uses the bounds of
    the active ones.
    """
    if type(layers[i][1]) is not nn.ReLU:
        return False
    for _, later in layers[i + 1:]:
        if type(later) in NONLINEAR:
            return type(later) is not nn.MaxPool2d
    return True
