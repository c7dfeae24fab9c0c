"""alpha-CROWN slopes carried through a certification search (:mod:`bounds.linear_certify`), example by example.

The searches rebuild the relaxation of the same examples around growing or shrinking boxes, one round after another
and often on a subset of the examples; :class:`AlphaWarmStart` keeps, for every example of the search, the slopes
(:class:`~bounds.alpha_crown.AlphaState`, indexed over full layers so that their shapes do not depend on the box)
it ended its last round with, so that a later round starts from them and runs only a few Adam steps
(``AlphaOptions.warm_iterations``) instead of the full optimisation (Xu et al. 2021's alpha-CROWN, warm-started).
"""

from dataclasses import replace

import torch
from torch import Tensor, nn

from bounds.alpha_crown import AlphaOptions, AlphaState, alpha_linear_margin_bounds
from bounds.crown import Intermediate, LinearMarginBound


class AlphaWarmStart:
    """The slopes of every example of one certification search, carried from round to round.

    The searches of :mod:`bounds.linear_certify` rebuild the relaxation of the same examples around growing or
    shrinking boxes, each round on a subset of them; the slopes an example ended with seed its next round, which
    then runs only ``options.warm_iterations`` steps (the first round of an example runs ``options.iterations``).

    Args:
        batch: Examples of the search.
        options: Optimisation settings.
    """

    def __init__(self, batch: int, options: AlphaOptions | None = None) -> None:
        self.options = options or AlphaOptions()
        self.seen = torch.zeros(batch, dtype=torch.bool)
        self.alphas: dict[int, Tensor] = {}
        self.optimised: dict[int, Tensor] = {}
        self.intermediate: dict[tuple[int, int], Tensor] = {}

    def linear_bound(self, model: nn.Module, lower: Tensor, upper: Tensor, y: Tensor, index: Tensor | None = None,
                     intermediate: Intermediate = "crown") -> LinearMarginBound:
        """:func:`alpha_linear_margin_bounds` of the examples ``index`` (all if ``None``), warm-started."""
        batch = self.seen.shape[0]
        index = torch.arange(batch) if index is None else index.cpu()
        seen = self.seen[index]
        warm = None
        if bool(seen.any()):
            warm = AlphaState({i: a[index.to(a.device)] for i, a in self.alphas.items()},
                              {i: m[index.to(m.device)] & seen.to(m.device).view(-1, *([1] * (m.dim() - 1)))
                               for i, m in self.optimised.items()},
                              {k: a[index.to(a.device)] for k, a in self.intermediate.items()})
        steps = self.options.warm_iterations if bool(seen.all()) else self.options.iterations
        options = replace(self.options, iterations=steps)
        bound, state = alpha_linear_margin_bounds(model, lower, upper, y, intermediate=intermediate, options=options,
                                                  warm=warm)
        for i, alpha in state.alphas.items():
            if i not in self.alphas:
                self.alphas[i] = alpha.new_zeros(batch, *alpha.shape[1:])
                self.optimised[i] = torch.zeros(batch, *alpha.shape[2:], dtype=torch.bool, device=alpha.device)
            rows = index.to(alpha.device)
            self.alphas[i][rows] = alpha.detach()
            self.optimised[i][rows] = state.optimised[i] | self.optimised[i][rows]
        for key, alpha in state.intermediate.items():
            if key not in self.intermediate or self.intermediate[key].shape[1:] != alpha.shape[1:]:
                self.intermediate[key] = alpha.new_zeros(batch, *alpha.shape[1:])
            self.intermediate[key][index.to(alpha.device)] = alpha
        for mask in state.optimised.values():  # examples with an unstable neuron have slopes to start from
            self.seen[index] |= mask.flatten(1).any(1).cpu()
        return bound

    def select(self, index: Tensor) -> "AlphaWarmStart":
        """The slopes of the examples ``index`` only (a search that goes on with part of the batch)."""
        part = AlphaWarmStart(index.numel(), self.options)
        index = index.cpu()
        part.seen = self.seen[index].clone()
        part.alphas = {k: v[index.to(v.device)] for k, v in self.alphas.items()}
        part.optimised = {k: v[index.to(v.device)] for k, v in self.optimised.items()}
        part.intermediate = {k: v[index.to(v.device)] for k, v in self.intermediate.items()}
        return part
