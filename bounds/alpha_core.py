"""The slopes of alpha-CROWN (:mod:`bounds.alpha_crown`): options, state, and the pieces both optimisers share.

Every unstable ReLU/LeakyReLU neuron gets one lower slope per specification row, kept in ``[a, 1]``
(``a = 0`` for ReLU, the negative slope for ``LeakyReLU(a)``): every such line through the origin is a sound lower
bound of the activation on ``[l, u]`` with ``l < 0 < u`` (Xu et al. 2021).
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from bounds.layer_relaxations import PoolRelaxation, Relaxation, Relaxations


@dataclass(frozen=True)
class AlphaOptions:
    """Settings of the alpha optimisation.

    Attributes:
        iterations: Adam steps on the alphas (``0``: plain CROWN). auto_LiRPA's default is 20.
        lr: Adam's learning rate (auto_LiRPA: 0.5).
        lr_decay: Learning rate factor per step (auto_LiRPA: 0.98).
        warm_iterations: Steps of a later round of a search (:class:`~bounds.alpha_search.AlphaWarmStart`), from
            the slopes before.
        optimise_intermediate: Also re-optimise the dense layers' intermediate bounds with their own slopes, jointly
            for the final bound (:mod:`bounds.alpha_intermediate`; costlier; the result is not differentiable).
    """

    iterations: int = 10
    lr: float = 0.5
    lr_decay: float = 0.98
    warm_iterations: int = 3
    optimise_intermediate: bool = True

    def __post_init__(self) -> None:
        """Validate the options."""
        if min(self.iterations, self.warm_iterations) < 0 or not self.lr > 0 or not 0 < self.lr_decay <= 1:
            raise ValueError(f"alpha-CROWN needs iterations >= 0, lr > 0 and 0 < lr_decay <= 1, got {self}")


@dataclass
class AlphaState:
    """Optimised lower slopes of one batch of examples, for a warm start on another box of the same examples.

    Attributes:
        alphas: Per activation layer index, ``(B, K - 1, *layer input shape)`` slopes of the final specification.
        optimised: Per layer index, ``(B, *layer input shape)``: neurons that were unstable (so optimised).
        intermediate: With ``optimise_intermediate``: per ``(target layer i, layer j)`` the slopes
            ``(B, 2 N_i + 1, *shape_j)`` of the bounds of the ``N_i`` inputs of layer ``i`` (lower side, upper side,
            one padding row), indexed over the full layer.
    """

    alphas: dict[int, Tensor]
    optimised: dict[int, Tensor]
    intermediate: dict[tuple[int, int], Tensor] = field(default_factory=dict)

    def rows(self, index: Tensor) -> "AlphaState":
        """The state of the examples ``index`` (a subset of the batch, in that order)."""
        return AlphaState({k: v[index] for k, v in self.alphas.items()},
                          {k: v[index] for k, v in self.optimised.items()},
                          {k: v[index] for k, v in self.intermediate.items()})


def free_layers(layers: list[tuple[str, nn.Module]], bounds: dict[int, tuple[Tensor, Tensor]]
                 ) -> dict[int, tuple[Tensor, float]]:
    """ReLU/LeakyReLU layers with an unstable neuron: index -> (unstable mask ``(B, ...)``, smallest slope)."""
    free = {}
    for i, (low, up) in bounds.items():
        layer = layers[i][1]
        if type(layer) not in (nn.ReLU, nn.LeakyReLU):
            continue
        unstable = (low < 0) & (up > 0)
        if bool(unstable.any()):
            free[i] = (unstable, float(layer.negative_slope) if type(layer) is nn.LeakyReLU else 0.0)
    return free


def detached(relax: Relaxation | PoolRelaxation) -> Relaxation | PoolRelaxation:
    """A copy outside any autograd graph (and outside inference mode), so only the alphas get gradients."""
    if isinstance(relax, PoolRelaxation):
        return PoolRelaxation(relax.index.clone(), relax.exact.clone(), relax.top.detach().clone(), relax.in_shape)
    return Relaxation(relax.slope_l.detach().clone(), relax.icpt_l.detach().clone(), relax.slope_u.detach().clone(),
                      relax.icpt_u.detach().clone(), relax.has_icpt_l)


def with_alphas(relaxations: Relaxations, free: dict[int, tuple[Tensor, float]], alphas: dict[int, Tensor]
                 ) -> Relaxations:
    """The relaxations with the per-specification lower slopes ``alphas`` on the unstable neurons."""
    out = dict(relaxations)
    for i, (unstable, _) in free.items():
        relax = relaxations[i]
        assert isinstance(relax, Relaxation)
        slope = torch.where(unstable.unsqueeze(1), alphas[i], relax.slope_l.unsqueeze(1))
        out[i] = Relaxation(slope, relax.icpt_l, relax.slope_u, relax.icpt_u, relax.has_icpt_l, per_spec=True)
    return out


def initial_alphas(relaxations: Relaxations, free: dict[int, tuple[Tensor, float]], specs: int,
                    warm: AlphaState | None) -> dict[int, Tensor]:
    """CROWN's adaptive slopes, or the warm state's where it optimised the neuron (CROWN's elsewhere)."""
    alphas = {}
    for i in free:
        relax = relaxations[i]
        assert isinstance(relax, Relaxation)
        start = relax.slope_l.detach().unsqueeze(1).expand(-1, specs, *relax.slope_l.shape[1:])
        if warm is not None and i in warm.alphas and warm.alphas[i].shape == start.shape:
            start = torch.where(warm.optimised[i].unsqueeze(1), warm.alphas[i].to(start.dtype), start)
        alphas[i] = start.clone()
    return alphas


def adam_ascent(param: Tensor, grad: Tensor, first: Tensor, second: Tensor, step: int, lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
    """One Adam step of gradient *ascent* on ``param`` in place (Kingma & Ba 2015, Algorithm 1)."""
    first.mul_(betas[0]).add_(grad, alpha=1 - betas[0])
    second.mul_(betas[1]).addcmul_(grad, grad, value=1 - betas[1])
    denominator = (second / (1 - betas[1] ** (step + 1))).sqrt_().add_(eps)
    param.addcdiv_(first, denominator, value=lr / (1 - betas[0] ** (step + 1)))
