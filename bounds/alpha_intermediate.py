"""alpha-CROWN with the intermediate bounds of dense layers re-optimised jointly (``optimise_intermediate=True``).

This is the default of :mod:`bounds.alpha_crown` (``AlphaOptions.optimise_intermediate``). As auto_LiRPA's
``compute_bounds(method="CROWN-Optimized")`` (Xu et al. 2021), every iteration also recomputes the pre-activation
bounds of the layers that CROWN bounds by *dense* back-substitution (the inputs of activations after
``Flatten``/``Linear``; windowed convolutional bounds, :mod:`bounds.crown_patches`, stay CROWN's), each with its own
lower slopes per bounded neuron and side (``alpha[i, j]``: ``(B, 2 W_i, *shape_j)`` for target layer ``i`` and earlier
ReLU layer ``j``), and the final bound is back-substituted through the activations relaxed on those new bounds. All
slopes get the gradient of the final bound (one objective, as auto_LiRPA). Each recomputed bound is intersected with
CROWN's, so it is sound and never looser, and the neurons CROWN found stable stay stable. The best linear bound of
every specification row over the iterations (CROWN's included) is returned. Each step costs about the dense part of
a CROWN evaluation, forward and backward.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bounds.alpha_core import AlphaOptions, AlphaState, adam_ascent, detached, free_layers, initial_alphas
from bounds.crown_backward import back_substitute, concretize
from bounds.crown_intermediate import NONLINEAR, only_unstable
from bounds.crown_patches import patches_apply
from bounds.layer_relaxations import Relaxation, Relaxations, relax_layer

# Elements of the largest dense coefficient tensor of the joint optimisation per chunk of examples.
_JOINT_ELEMENTS = 2**23
_PASS = (nn.Flatten, nn.Identity, nn.Dropout)


@dataclass
class _Target:
    """A layer whose input bounds are recomputed: the rows ``[J; -J]`` of its needed neurons per example."""

    index: int
    last: int
    neurons: int
    rows: Tensor  # (B, W) flat neuron index (``neurons`` for padding)
    full_rows: Tensor  # (B, 2W): lower side ``r``, upper side ``neurons + r``, padding ``2 neurons``
    spec: Tensor  # (B, 2W, *shape after layer ``last``)
    offset: Tensor  # (B, 2W)

    def rows_of(self, begin: int, end: int) -> "_Target":
        """The rows of examples ``begin:end``."""
        return _Target(self.index, self.last, self.neurons, self.rows[begin:end], self.full_rows[begin:end],
                       self.spec[begin:end], self.offset[begin:end])


def dense_targets(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]], relaxations: Relaxations,
                  bounds: dict[int, tuple[Tensor, Tensor]]) -> list[_Target]:
    """The nonlinear layers whose input bounds CROWN tightened densely, with their specification rows."""
    targets, seen, affine = [], False, False
    for i, (_, layer) in enumerate(layers):
        if type(layer) in NONLINEAR:
            if seen and affine and not patches_apply(layers, shapes, i):
                low, up = (b.flatten(1) for b in bounds[i])
                needed = (low < 0) & (up > 0) if only_unstable(layers, i) else up > low
                if type(layer) is nn.ReLU:
                    needed = needed & (up > 0)
                width = int(needed.sum(1).max())
                if width:
                    targets.append(_target(layers, shapes, relaxations, i, needed, width, low.dtype))
            seen, affine = True, False
        elif type(layer) not in _PASS:
            affine = True
    return targets


def _target(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]], relaxations: Relaxations, i: int,
            needed: Tensor, width: int, dtype: torch.dtype) -> _Target:
    neurons = needed.shape[1]
    last = max(k for k in relaxations if k < i)
    eye = torch.eye(neurons, dtype=dtype, device=needed.device).view(1, neurons, *shapes[i])
    with torch.no_grad():
        jacobian, jac_offset = back_substitute(layers, shapes, relaxations, eye, eye.new_zeros(1, neurons), i,
                                         start=last + 1)
    order = torch.argsort(needed.to(torch.int8), dim=1, descending=True, stable=True)[:, :width]
    valid = torch.arange(width, device=needed.device).unsqueeze(0) < needed.sum(1, keepdim=True)
    rows = torch.where(valid, order, neurons)
    padded = torch.cat([jacobian[0], torch.zeros_like(jacobian[0, :1])])
    padded_offset = torch.cat([jac_offset[0], jac_offset.new_zeros(1)])
    spec, offset = padded[rows], padded_offset[rows]
    full_rows = torch.cat([torch.where(valid, order, 2 * neurons), torch.where(valid, order + neurons, 2 * neurons)], 1)
    return _Target(i, last, neurons, rows, full_rows, torch.cat([spec, -spec], 1), torch.cat([offset, -offset], 1))


def _per_spec(relax: Relaxation, unstable: Tensor, alpha: Tensor) -> Relaxation:
    slope = torch.where(unstable.unsqueeze(1), alpha, relax.slope_l.unsqueeze(1))
    return Relaxation(slope, relax.icpt_l, relax.slope_u, relax.icpt_u, relax.has_icpt_l, per_spec=True)


def joint_bounds(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]], fixed: Relaxations,
                 bounds: dict[int, tuple[Tensor, Tensor]], free: dict[int, tuple[Tensor, float]],
                 targets: list[_Target], alphas: dict[tuple[int, int], Tensor], final: dict[int, Tensor],
                 spec: Tensor, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """One evaluation: recompute the targets' bounds with their slopes, then the final ``(coeffs, offset)``."""
    relax: Relaxations = dict(fixed)
    current = {i: b for i, b in bounds.items()}
    for target in targets:
        part = dict(relax)
        for j in free:
            if j < target.index:
                low_j, up_j = current[j]
                relax_j = relax[j]
                assert isinstance(relax_j, Relaxation)
                part[j] = _per_spec(relax_j, (low_j < 0) & (up_j > 0), alphas[target.index, j])
        coeffs, total = back_substitute(layers, shapes, part, target.spec, target.offset, target.last + 1)
        found = concretize(coeffs, total, lower, upper)
        width = target.rows.shape[1]
        low, up = (b.flatten(1) for b in bounds[target.index])
        pad_l, pad_u = torch.cat([low, low[:, :1]], 1), torch.cat([up, up[:, :1]], 1)
        new_l = torch.maximum(pad_l.gather(1, target.rows), found[:, :width])
        new_u = torch.maximum(torch.minimum(pad_u.gather(1, target.rows), -found[:, width:]), new_l)
        low = pad_l.scatter(1, target.rows, new_l)[:, :-1].view_as(bounds[target.index][0])
        up = pad_u.scatter(1, target.rows, new_u)[:, :-1].view_as(bounds[target.index][1])
        current[target.index] = (low, up)
        relax[target.index] = relax_layer(layers[target.index][1], low, up)
    for j in free:
        low_j, up_j = current[j]
        relax_j = relax[j]
        assert isinstance(relax_j, Relaxation)
        relax[j] = _per_spec(relax_j, (low_j < 0) & (up_j > 0), final[j])
    zero = lower.new_zeros(lower.shape[0], spec.shape[1])
    return back_substitute(layers, shapes, relax, spec, zero, len(layers))


def _intermediate_alphas(fixed: Relaxations, free: dict[int, tuple[Tensor, float]], targets: list[_Target],
                         warm: dict[tuple[int, int], Tensor] | None, optimised: dict[int, Tensor] | None
                         ) -> dict[tuple[int, int], Tensor]:
    """Slopes ``alpha[i, j]`` ``(B, 2 W_i, *shape_j)``: CROWN's, or the warm full-layer ones (rows ``2 N_i + 1``)."""
    alphas = {}
    for target in targets:
        for j in free:
            if j >= target.index:
                continue
            relax = fixed[j]
            assert isinstance(relax, Relaxation)
            rows = target.spec.shape[1]
            start = relax.slope_l.unsqueeze(1).expand(-1, rows, *relax.slope_l.shape[1:])
            before = None if warm is None or optimised is None else warm.get((target.index, j))
            if before is not None and j in optimised and before.shape[0] == start.shape[0]:
                index = target.full_rows.view(*target.full_rows.shape, *([1] * (start.dim() - 2)))
                gathered = before.gather(1, index.expand(-1, -1, *start.shape[2:]))
                start = torch.where(optimised[j].unsqueeze(1), gathered, start)
            alphas[target.index, j] = start.clone()
    return alphas


def _full_rows(alphas: dict[tuple[int, int], Tensor], targets: list[_Target],
               warm: dict[tuple[int, int], Tensor] | None) -> dict[tuple[int, int], Tensor]:
    """The slopes over all ``2 N_i + 1`` rows of every target (the last row collects the padding)."""
    out = {}
    for target in targets:
        for (i, j), alpha in alphas.items():
            if i != target.index:
                continue
            rows = 2 * target.neurons + 1
            before = None if warm is None else warm.get((i, j))
            full = before.clone() if before is not None and before.shape[1] == rows and before.shape[0] == \
                alpha.shape[0] else alpha[:, :1].expand(-1, rows, *alpha.shape[2:]).clone()
            index = target.full_rows.view(*target.full_rows.shape, *([1] * (alpha.dim() - 2)))
            out[i, j] = full.scatter(1, index.expand_as(alpha), alpha.detach())
    return out


def joint_optimise(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]], fixed: Relaxations,
                   bounds: dict[int, tuple[Tensor, Tensor]], free: dict[int, tuple[Tensor, float]],
                   targets: list[_Target], final: dict[int, Tensor], spec: Tensor, lower: Tensor, upper: Tensor,
                   best_rows: tuple[Tensor, Tensor, Tensor], schedule: tuple[int, float, float],
                   warm: dict[tuple[int, int], Tensor] | None = None,
                   optimised: dict[int, Tensor] | None = None
                   ) -> tuple[Tensor, Tensor, dict[int, Tensor], dict[tuple[int, int], Tensor]]:
    """Adam on all slopes (intermediate and final) for the final bound; the best rows over the iterations.

    Args:
        layers: The chain of layers.
        shapes: Input shape of every layer.
        fixed: CROWN's relaxations (detached).
        bounds: CROWN's input bounds of every nonlinear layer.
        free: ReLU layers with unstable neurons: ``(unstable, smallest slope)``.
        targets: :func:`dense_targets`.
        final: Initial final-specification slopes ``(B, S, *shape_j)`` (optimised in place).
        spec: ``C (B, S, K)``.
        lower: Input box lower ends.
        upper: Input box upper ends.
        best_rows: CROWN's ``(bound (B, S), coeffs, offset)`` (iteration 0).
        schedule: ``(iterations, lr, lr_decay)``.
        warm: Full-row intermediate slopes of an earlier box of the same examples.
        optimised: Neurons of every layer that the warm slopes optimised.

    Returns:
        ``(coeffs, offset, final slopes, intermediate slopes over all rows)`` of the best iterate per row (the
        intermediate ones: of the last iterate).
    """
    iterations, lr, decay = schedule
    best, best_coeffs, best_offset = best_rows
    alphas = _intermediate_alphas(fixed, free, targets, warm, optimised)
    best_final = {j: a.detach().clone() for j, a in final.items()}
    params = {**{("final", j): a for j, a in final.items()}, **alphas}
    for p in params.values():
        p.requires_grad_(True)
    moments = {k: (torch.zeros_like(p), torch.zeros_like(p)) for k, p in params.items()}
    view = (*best.shape, *([1] * (best_coeffs.dim() - 2)))
    for step in range(iterations + 1):
        coeffs, offset = joint_bounds(layers, shapes, fixed, bounds, free, targets, alphas, final, spec, lower, upper)
        bound = concretize(coeffs, offset, lower, upper)
        with torch.no_grad():
            better = bound > best
            best = torch.where(better, bound, best)
            best_coeffs = torch.where(better.view(view), coeffs.expand_as(best_coeffs), best_coeffs)
            best_offset = torch.where(better, offset, best_offset)
            for j, alpha in final.items():
                best_final[j] = torch.where(better.view(*better.shape, *([1] * (alpha.dim() - 2))), alpha,
                                            best_final[j])
        if step == iterations:
            break
        grads = torch.autograd.grad(bound.sum(), list(params.values()), allow_unused=True)
        with torch.no_grad():
            for (key, p), grad in zip(params.items(), grads, strict=True):
                if grad is not None:
                    adam_ascent(p, grad, *moments[key], step, lr)
                    p.clamp_(min=free[key[1]][1], max=1.0)
        lr *= decay
    return best_coeffs, best_offset, best_final, _full_rows(alphas, targets, warm)


def optimise_jointly(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]], relaxations: Relaxations,
                     bounds: dict[int, tuple[Tensor, Tensor]], spec: Tensor, lower: Tensor, upper: Tensor,
                     options: AlphaOptions, warm: AlphaState | None) -> tuple[Tensor, Tensor, AlphaState]:
    """The best rows ``(coeffs, offset)`` of the joint optimisation of all slopes (detached), and the slopes.

    Args:
        layers: The chain of layers (:func:`bounds.crown._build`).
        shapes: Input shape of every layer.
        relaxations: CROWN's relaxations.
        bounds: CROWN's input bounds of every nonlinear layer (``_build``'s ``record``).
        spec: ``C (B, S, K)``.
        lower: The input box's lower ends.
        upper: Its upper ends.
        options: Steps and learning rate.
        warm: Slopes of an earlier box of the same examples.
    """
    with torch.inference_mode(False), torch.enable_grad():
        fixed = {i: detached(r) for i, r in relaxations.items()}
        record = {i: (low.detach().clone(), up.detach().clone()) for i, (low, up) in bounds.items()}
        free = {i: (unstable.clone(), slope) for i, (unstable, slope) in free_layers(layers, record).items()}
        box_l, box_u, spec = lower.detach().clone(), upper.detach().clone(), spec.detach().clone()
        zero = box_l.new_zeros(box_l.shape[0], spec.shape[1])
        coeffs, offset = back_substitute(layers, shapes, fixed, spec, zero, len(layers))
        coeffs = coeffs.expand(box_l.shape[0], *coeffs.shape[1:]).detach()
        best = concretize(coeffs, offset, box_l, box_u).detach()
        if not free:
            return coeffs, offset.detach(), AlphaState({}, {})
        targets = dense_targets(layers, shapes, fixed, record)
        final = initial_alphas(fixed, free, spec.shape[1], warm)
        # Examples per chunk: the largest dense coefficient tensor (rows x neurons of a layer) bounds the memory.
        rows = max((t.spec.shape[1] * max(math.prod(shape) for shape in shapes[:t.index + 1]) for t in targets),
                   default=1)
        chunk = max(1, _JOINT_ELEMENTS // rows)
        parts = []
        for begin in range(0, box_l.shape[0], chunk):
            end = min(box_l.shape[0], begin + chunk)
            part = slice(begin, end)
            parts.append(joint_optimise(
                layers, shapes, {i: r.rows(begin, end) for i, r in fixed.items()},
                {i: (low[part], up[part]) for i, (low, up) in record.items()},
                {i: (unstable[part], slope) for i, (unstable, slope) in free.items()},
                [t.rows_of(begin, end) for t in targets], {i: a[part] for i, a in final.items()}, spec[part],
                box_l[part], box_u[part], (best[part], coeffs[part], offset.detach()[part]),
                (options.iterations, options.lr, options.lr_decay),
                None if warm is None else {k: v[part] for k, v in warm.intermediate.items()},
                None if warm is None else {k: v[part] for k, v in warm.optimised.items()}))
    coeffs, offset = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    final = {i: torch.cat([p[2][i] for p in parts]) for i in parts[0][2]}
    inner = {k: torch.cat([p[3][k] for p in parts]) for k in parts[0][3]}
    optimised = {i: unstable for i, (unstable, _) in free.items()}
    return coeffs, offset, AlphaState(final, optimised, inner)
