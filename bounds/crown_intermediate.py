"""Full-CROWN intermediate bounds: every activation's input bounded by back-substitution to the model input.

The interval bounds of a nonlinear layer's input are tightened by CROWN where that can pay: only the neurons whose
bounds matter (the unstable ReLU inputs, or all non-fixed ones before a MaxPool2d, which uses the active ones' bounds
too), windowed for convolutional maps (:mod:`bounds.crown_patches`) and densely, in chunks of examples, otherwise.
"""

import math

import torch
from torch import Tensor, nn

from bounds.crown_backward import CHUNK_ELEMENTS, back_substitute, concretize
from bounds.crown_patches import SPARSE_FRACTION, needed_first, padded_rows, patch_bounds, patches_apply
from bounds.layer_relaxations import ACTIVATIONS, Relaxations

NONLINEAR = (*ACTIVATIONS, nn.MaxPool2d)


def intermediate_crown(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]],
                        relaxations: Relaxations, stop: int, lower: Tensor, upper: Tensor,
                        in_lower: Tensor, in_upper: Tensor, only_unstable: bool) -> tuple[Tensor, Tensor]:
    """Full-CROWN bounds of the input of layer ``stop`` (``(B, *shapes[stop])``), tightening ``lower, upper``.

    The affine layers between the last nonlinear layer and ``stop`` do not depend on the example: their
    back-substituted identity (a dense Jacobian, ``J``) is computed once; then every example back-substitutes
    only its own rows of ``[J; -J]`` (its unstable neurons, or all non-fixed ones), padded to the largest
    count of its chunk.
    """
    flat_l, flat_u = lower.flatten(1), upper.flatten(1)
    # ReLU inputs with u <= 0 are fixed (output 0); without a MaxPool after it only unstable ones matter.
    not_fixed = flat_u > flat_l
    if type(layers[stop][1]) is nn.ReLU:
        not_fixed = not_fixed & (flat_u > 0)
    needed = not_fixed & (flat_l < 0) if only_unstable else not_fixed
    counts = needed.sum(1)
    if int(counts.max()) == 0:
        return lower, upper
    if patches_apply(layers, shapes, stop):
        # Windows only of the neurons that need a bound when few do; also of the active ones when those are few
        # enough too (their tighter bounds tighten the next layer's interval bounds, which decide its needed set).
        if int(not_fixed.sum(1).max()) <= SPARSE_FRACTION * flat_l.shape[1]:
            needed = not_fixed
        crown_l, crown_u = patch_bounds(layers, shapes, relaxations, stop, in_lower, in_upper,
                                        needed.view(lower.shape))
        new_l = torch.maximum(lower, crown_l)
        return new_l, torch.maximum(torch.minimum(upper, crown_u), new_l)  # rounding can cross; both are sound
    batch, neurons = flat_l.shape
    last = max(k for k in relaxations if k < stop)
    eye = torch.eye(neurons, dtype=lower.dtype, device=lower.device).view(1, neurons, *shapes[stop])
    zero = torch.zeros(1, neurons, dtype=lower.dtype, device=lower.device)
    jacobian, jac_offset = back_substitute(layers, shapes, relaxations, eye, zero, stop, start=last + 1)
    jacobian, jac_offset = jacobian[0], jac_offset[0]
    order = needed_first(needed)  # the padding of each chunk points at a dummy column ``neurons``
    largest = max(math.prod(shape) for shape in shapes[: last + 2])  # the widest map the rows pass through
    chunk = max(1, CHUNK_ELEMENTS // max(1, 2 * int(counts.max()) * largest))
    padded_l = torch.cat([flat_l, flat_l[:, :1]], 1)
    padded_u = torch.cat([flat_u, flat_u[:, :1]], 1)
    parts_l, parts_u = [], []
    for begin in range(0, batch, chunk):
        end = min(batch, begin + chunk)
        index, valid, target = padded_rows(order, counts, begin, end)
        width = index.shape[1]
        if width == 0:
            parts_l.append(padded_l[begin:end])
            parts_u.append(padded_u[begin:end])
            continue
        rows = jacobian[index]  # (b, width, ...)
        offset = jac_offset[index]
        spec = torch.cat([rows, -rows], 1)
        spec_offset = torch.cat([offset, -offset], 1)
        part = {k: v.rows(begin, end) for k, v in relaxations.items() if k < stop}
        coeffs, total = back_substitute(layers, shapes, part, spec, spec_offset, last + 1)
        bounds = concretize(coeffs, total, in_lower[begin:end], in_upper[begin:end])
        low_now, up_now = padded_l[begin:end].gather(1, target), padded_u[begin:end].gather(1, target)
        low_new = torch.where(valid, torch.maximum(low_now, bounds[:, :width]), low_now)
        up_new = torch.where(valid, torch.minimum(up_now, -bounds[:, width:]), up_now)
        up_new = torch.maximum(up_new, low_new)  # rounding can cross the two; both remain sound
        parts_l.append(padded_l[begin:end].scatter(1, target, low_new))
        parts_u.append(padded_u[begin:end].scatter(1, target, up_new))
    new_l, new_u = torch.cat(parts_l), torch.cat(parts_u)
    return new_l[:, :neurons].reshape(lower.shape), new_u[:, :neurons].reshape(upper.shape)


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
