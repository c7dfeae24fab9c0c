"""alpha-CROWN: CROWN with the lower slopes of unstable ReLUs optimised on the bound itself.

CROWN (Zhang et al. 2018, Theorem 3.2) bounds every unstable ReLU ``l < z < u`` below by a line through the origin,
``relu(z) >= alpha z``, and any ``alpha`` in ``[0, 1]`` is sound (``[a, 1]`` for ``LeakyReLU(a)``); CROWN picks
``alpha = 1 if u >= -l else 0``. The concretised margin bound ``min_{x in box} A(alpha) x + b(alpha)`` is therefore a
valid lower bound for *every* feasible ``alpha``, and Xu et al. (ICLR 2021, "Fast and Complete: Enabling Complete
Neural Network Verification with Rapid and Massively Parallel Incomplete Verifiers", optimised CROWN, "alpha-CROWN")
maximise it over ``alpha`` by projected gradient ascent, with one ``alpha`` per neuron *and per specification row*
(each margin ``f_y - f_j`` gets its own slopes):

    max_{alpha in [a, 1]}  min_{x in box}  A_j(alpha_j) x + b_j(alpha_j)      for every j != y.

All slopes are optimised by Adam (learning rate ``lr`` decayed by ``lr_decay`` per step, as auto_LiRPA) on ``-sum``
of the final bounds and projected onto ``[a, 1]`` after every step. By default (``AlphaOptions.optimise_intermediate``),
as auto_LiRPA's ``compute_bounds(method="CROWN-Optimized")``, each step also recomputes the intermediate bounds that
CROWN computed by dense back-substitution, with their own slopes per bounded neuron (:mod:`bounds.alpha_intermediate`);
without it only the final specification's slopes move, on CROWN's intermediate bounds (:func:`bounds.crown._build`,
computed once; cheaper, and the result stays differentiable). Iteration 0 is CROWN itself and every iterate is a sound
bound, so the best bound per example and per specification over the iterations is kept: never looser than CROWN.
The slopes are stored over the full layer (``(B, K - 1, *layer shape)``, not compacted to the unstable neurons), so
that a search that rebuilds the relaxation around a grown or shrunk box of the same examples can warm-start from them
(:class:`AlphaState`, :class:`bounds.alpha_search.AlphaWarmStart`) and run only a few steps.

Chain models only (the ones :func:`bounds.engine.chain.crown_chain` accepts); branching graphs (residual blocks)
raise :class:`~bounds.errors.UnsupportedLayerError` (use ``method="crown"`` for them).
"""

import torch
from torch import Tensor, nn

from bounds.alpha_core import AlphaOptions, AlphaState, adam_ascent, detached, free_layers, initial_alphas, with_alphas
from bounds.alpha_intermediate import optimise_jointly
from bounds.crown import Intermediate, LinearMarginBound, _build, _margin_bound, chain_margin_spec
from bounds.crown_backward import back_substitute, concretize
from bounds.engine.chain import NotAChainError
from bounds.errors import UnsupportedLayerError
from bounds.layer_relaxations import Relaxations
from bounds.margins import margins_from_bounds


def optimise_alphas(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]], relaxations: Relaxations,
                    bounds: dict[int, tuple[Tensor, Tensor]], spec: Tensor, lower: Tensor, upper: Tensor,
                    options: AlphaOptions, warm: AlphaState | None = None) -> tuple[Relaxations, AlphaState]:
    """Projected gradient ascent on the concretised bound of ``spec``: the relaxations with the best alphas.

    Args:
        layers: The chain of layers (:func:`bounds.crown._build`).
        shapes: Input shape of every layer.
        relaxations: CROWN's relaxations (their intermediate bounds stay fixed).
        bounds: Input bounds of every nonlinear layer (``_build``'s ``record``).
        spec: ``C (B, S, K)``, the specification rows bounded below.
        lower: The input box's lower ends.
        upper: Its upper ends.
        options: Steps and learning rate.
        warm: Slopes of an earlier box of the same examples to start from.

    Returns:
        ``(relaxations, state)``: CROWN's relaxations with per-specification slopes that, row by row, give the
        largest concretised bound of all iterates (CROWN's slopes included, so the bound of every row is at least
        CROWN's), and those slopes for a later warm start.
    """
    free = free_layers(layers, bounds)
    batch, specs = lower.shape[0], spec.shape[1]
    if not free or options.iterations == 0:
        return relaxations, AlphaState({}, {})
    with torch.inference_mode(False), torch.enable_grad():
        fixed = {i: detached(r) for i, r in relaxations.items()}
        free = {i: (unstable.clone(), slope) for i, (unstable, slope) in free.items()}
        box_l, box_u = lower.detach().clone(), upper.detach().clone()
        spec = spec.detach().clone()
        zero = box_l.new_zeros(batch, specs)
        best_alphas = initial_alphas(fixed, free, specs, None)  # CROWN's: iteration 0
        coeffs, offset = back_substitute(layers, shapes, fixed, spec, zero, len(layers))
        best = concretize(coeffs, offset, box_l, box_u).detach()
        alphas = initial_alphas(fixed, free, specs, warm)
        params = [a.requires_grad_(True) for a in alphas.values()]
        lr = options.lr
        moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
        for step in range(options.iterations + 1):
            coeffs, offset = back_substitute(layers, shapes, with_alphas(fixed, free, alphas), spec, zero, len(layers))
            bound = concretize(coeffs, offset, box_l, box_u)
            better = bound.detach() > best
            best = torch.where(better, bound.detach(), best)
            for i, alpha in alphas.items():
                view = better.view(batch, specs, *([1] * (alpha.dim() - 2)))
                best_alphas[i] = torch.where(view, alpha.detach(), best_alphas[i])
            if step == options.iterations:
                break
            grads = torch.autograd.grad(bound.sum(), params)
            with torch.no_grad():
                for (i, alpha), grad, (first, second) in zip(alphas.items(), grads, moments, strict=True):
                    adam_ascent(alpha, grad, first, second, step, lr)
                    alpha.clamp_(min=free[i][1], max=1.0)
            lr *= options.lr_decay
    final = {i: a.to(lower.dtype) for i, a in best_alphas.items()}
    state = AlphaState(final, {i: unstable for i, (unstable, _) in free.items()})
    return with_alphas(relaxations, free, final), state


def _alpha_build(model: nn.Module, lower: Tensor, upper: Tensor, y: Tensor, intermediate: Intermediate,
                 options: AlphaOptions, warm: AlphaState | None
                 ) -> tuple[LinearMarginBound, AlphaState, Tensor, Tensor]:
    """CROWN's build, the optimised slopes, and the final back-substitution with them (in the caller's grad mode)."""
    record: dict[int, tuple[Tensor, Tensor]] = {}
    try:
        layers, shapes, relaxations, out_l, out_u = _build(model, lower, upper, intermediate, record)
    except NotAChainError as error:
        raise UnsupportedLayerError(type(model).__name__, "", "alpha-CROWN (method='alpha-crown') is implemented "
                                    "for models that trace into a chain of layers; this graph branches (residual "
                                    "additions, concatenations): use method='crown'") from error
    y, spec, others, zero = chain_margin_spec(shapes, lower, y)
    if options.optimise_intermediate and options.iterations > 0:
        coeffs, offset, state = optimise_jointly(layers, shapes, relaxations, record, spec, lower, upper, options,
                                                 warm)
    else:
        relaxed, state = optimise_alphas(layers, shapes, relaxations, record, spec, lower, upper, options, warm)
        coeffs, offset = back_substitute(layers, shapes, relaxed, spec, zero, len(layers))
        if relaxed is relaxations:
            return _margin_bound(coeffs, offset, others, lower, upper), state, out_l, out_u
    # Never looser than CROWN, to the last bit: the rows where CROWN's own bound (computed as crown.py does) is larger.
    plain_coeffs, plain_offset = back_substitute(layers, shapes, relaxations, spec, zero, len(layers))
    plain = _margin_bound(plain_coeffs, plain_offset, others, lower, upper)
    found = _margin_bound(coeffs, offset, others, lower, upper)
    keep = plain.margins(lower, upper) > found.margins(lower, upper)
    view = (*keep.shape, *([1] * (found.coefficients.dim() - 2)))
    best = LinearMarginBound(torch.where(keep.view(view), plain.coefficients, found.coefficients),
                             torch.where(keep, plain.offset, found.offset), lower, upper)
    return best, state, out_l, out_u


def alpha_linear_margin_bounds(model: nn.Module, lower: Tensor, upper: Tensor, y: Tensor, *,
                               intermediate: Intermediate = "crown", options: AlphaOptions | None = None,
                               warm: AlphaState | None = None) -> tuple[LinearMarginBound, AlphaState]:
    """The alpha-CROWN linear lower bound of the margins on the box, and its slopes for a warm start.

    Like :func:`~bounds.crown.linear_margin_bounds` (``f_y(x') - f_j(x') >= A_j . x' + b_j`` on the whole box),
    with each row's ReLU lower slopes optimised for that row's concretised bound on this box.

    Args:
        model: A chain model (see the module docstring) in eval mode, mapping inputs to logits ``(B, K)``.
        lower: Lower ends of the box ``(B, ...)``.
        upper: Upper ends, same shape.
        y: Labels ``(B,)``.
        intermediate: ``"crown"`` or ``"ibp"`` intermediate bounds (fixed during the optimisation).
        options: Optimisation settings (default :class:`AlphaOptions`).
        warm: The state returned for an earlier box of the same examples (same labels and order).

    Returns:
        ``(bound, state)``; every row's bound on this box is at least CROWN's.

    Raises:
        UnsupportedLayerError: For an unsupported layer or a branching graph.
        ValueError: For bad boxes or labels.
    """
    bound, state, _, _ = _alpha_build(model, lower, upper, y, intermediate, options or AlphaOptions(), warm)
    return bound, state


def alpha_crown_margin_bounds(model: nn.Module, lower: Tensor, upper: Tensor, y: Tensor, *,
                              intermediate: Intermediate = "crown", iterations: int = AlphaOptions.iterations,
                              lr: float = AlphaOptions.lr,
                              optimise_intermediate: bool = AlphaOptions.optimise_intermediate) -> Tensor:
    """Lower bounds of ``f(x)[y] - f(x)[j]`` over the box by alpha-CROWN, never looser than CROWN or IBP.

    Same convention as :func:`~bounds.margins.margin_lower_bounds`: ``(B, K)`` with ``+inf`` at ``j == y``.

    Args:
        model: A chain model in eval mode mapping inputs to logits (see the module docstring).
        lower: Lower ends of the box ``(B, ...)``.
        upper: Upper ends, same shape.
        y: Labels ``(B,)``.
        intermediate: ``"crown"`` (full CROWN) or ``"ibp"`` (CROWN-IBP) intermediate bounds.
        iterations: Adam steps on the slopes (``0``: CROWN).
        lr: Adam's learning rate.
        optimise_intermediate: Also optimise the slopes of the dense layers' intermediate bounds
            (:mod:`bounds.alpha_intermediate`); ``False``: only the final specification's, on CROWN's
            intermediate bounds.

    Returns:
        ``(B, K)`` margin lower bounds (differentiable in ``lower``/``upper`` at the optimised slopes only with
        ``optimise_intermediate=False``).

    Raises:
        UnsupportedLayerError: For an unsupported layer or a branching graph.
        ValueError: For bad boxes, labels or options.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> box = torch.zeros(1, 2), torch.ones(1, 2)
        >>> bool((alpha_crown_margin_bounds(net, *box, torch.tensor([0])) >= -1e9).all())
        True
    """
    options = AlphaOptions(iterations=iterations, lr=lr, optimise_intermediate=optimise_intermediate)
    linear, _, out_l, out_u = _alpha_build(model, lower, upper, y, intermediate, options, None)
    return torch.maximum(linear.margins(lower, upper), margins_from_bounds(out_l, out_u, y.to(lower.device)))
