"""Running the ACTS protocol report of ``certify.py`` per batch (ACTS paper Section 4), with CLEVER beside it.

Per example (all correctly classified, or all scored against the model's own prediction, see ``certify.labels``):

1. every attack of ``certify.acts.attacks`` (the paper's FGSM, BIM and PGD, l_inf, untargeted) attacks it at the
   noise levels N1 < N2 < N3: FGSM one step of ``eps``; BIM ``steps`` steps of ``step_fraction * eps`` from ``x``;
   PGD the same from a random start drawn per example (:func:`bounds.attacks.per_example_pgd`). The report records
   at which levels the prediction changes ("attacked").
2. ACTS scores it at every (attack, level) from that attack's own step increments (Eqs. 6 and 7: the mean of the
   unit directions of the steps; one step for FGSM, so its sign-gradient direction; the random start of PGD left
   out), with per-class cross-entropy losses and ``C = 1000`` (see :mod:`bounds.acts`). The per-class losses and
   speeds come from one Jacobian-vector product per (attack, level); the scores for every ``k`` of
   ``top_k_values`` (Table 5) are read off them at no extra model cost. The time of an ACTS score is that of its
   attack plus the product; both parts are recorded.
3. CLEVER (:func:`bounds.clever_score`) scores it once per norm (l_2 and l_inf, attack and level independent).

The options live in :mod:`reporting.acts.options`; :mod:`reporting.acts.summary` reduces the rows to the report's
numbers, :mod:`reporting.acts.tables` and :mod:`reporting.acts.rendering` render them. Attacks, scores, Overlap% and
AUROC live in :mod:`bounds`.
"""

import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bounds.acts import acts_from_speeds, loss_and_speeds, mean_unit_direction
from bounds.attacks import AttackResult, bim, fgsm, per_example_pgd
from bounds.clever import clever_score
from bounds.modes import evaluation_mode
from callbacks.gathering import Rows
from reporting.acts.options import ACTSReportOptions


def acts_scores(model: nn.Module, x: Tensor, attack: AttackResult, top_ks: Sequence[int]) -> Tensor:
    """ACTS of each example for several ``top_k`` from one Jacobian-vector product (Eq. 2 with Eq. 7).

    Equal to :func:`bounds.acts_score` ``(model, x, attack=attack, top_k=k)`` for each ``k``, but the losses and
    speeds are computed once.

    Args:
        model: Classifier mapping ``x`` to logits (run in eval mode, modes restored).
        x: ``[B, ...]`` clean inputs the attack ran on.
        attack: The attack's result; its steps after ``num_init_steps`` give the direction.
        top_ks: Numbers of competing classes.

    Returns:
        ``[B, len(top_ks)]`` scores.

    Raises:
        ValueError: If the attack steps, the losses or the speeds are not finite (they would score ``C``).
    """
    with evaluation_mode(model), torch.inference_mode(False):
        x = x.detach().clone()
        increments = attack.steps[attack.num_init_steps :].detach().to(x.dtype)
        direction = mean_unit_direction(increments).clone()
        losses, speeds = loss_and_speeds(model, x, direction)
    for name, values in (("attack steps", increments), ("per-class losses", losses), ("speeds", speeds)):
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"ACTS: the {name} must be finite (found NaN or inf)")
    losses, speeds = losses.detach(), speeds.detach()
    return torch.stack([acts_from_speeds(losses, speeds, top_k=k) for k in top_ks], dim=1)


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ACTSProtocol:
    """Attack at every noise level with each attack, score with ACTS and CLEVER, per batch (ACTS paper Section 4).

    Args:
        options: The report's options (``certify.acts``).
        input_range: ``(low, high)`` the attacks and CLEVER's samples are clipped to.
        seed: Seed of PGD's per-example random start and of CLEVER's samples.
    """

    def __init__(self, options: ACTSReportOptions, input_range: tuple[float, float] = (-1.0, 1.0),
                 seed: int = 0) -> None:
        self.options = options
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.seed = seed

    def _attack(self, attack: str, model: nn.Module, x: Tensor, y: Tensor, index: Tensor, eps: float) -> AttackResult:
        o = self.options
        step = o.step_fraction * eps
        if attack == "fgsm":
            return fgsm(model, x, y, eps, input_range=self.input_range)
        if attack == "bim":
            return bim(model, x, y, eps=eps, step_size=step, steps=o.steps, input_range=self.input_range)
        return per_example_pgd(model, x, y, index, eps=eps, step_size=step, steps=o.steps, seed=self.seed,
                               input_range=self.input_range)

    def run(self, model: nn.Module, index: Tensor, x: Tensor, y: Tensor) -> Rows:
        """Attack, score and time one batch.

        Args:
            model: Classifier mapping inputs to logits.
            index: Dataset positions ``[B]`` (they seed each example's PGD start, so results do not depend on
                the batching or the number of ranks).
            x: Inputs ``[B, ...]`` (correctly classified with respect to ``y``).
            y: Labels ``[B]`` the attacks move away from.

        Returns:
            Rows, on ``x``'s device: ``index``; per attack ``a``: ``a/attacked`` ``[B, L]`` bool, ``a/acts``
            ``[B, L]`` (``top_k``), ``a/acts_top_k`` ``[B, L, len(top_k_values)]``, ``a/attack_seconds`` and
            ``a/score_seconds`` ``[B, L]`` (the batch times divided by its size); per CLEVER norm ``n``:
            ``clever_<n>`` ``[B]`` and ``clever_<n>_seconds`` ``[B]``.
        """
        o, clever = self.options, self.options.clever
        count, device = max(x.shape[0], 1), x.device
        main = o.top_k_values.index(o.top_k)
        rows: Rows = {"index": index.detach()}
        for attack in o.attacks:
            attacked, scores, attack_seconds, score_seconds = [], [], [], []
            for eps in o.eps:
                _synchronize(device)
                start = time.perf_counter()
                result = self._attack(attack, model, x, y, index, eps)
                _synchronize(device)
                middle = time.perf_counter()
                scores.append(acts_scores(model, x, result, o.top_k_values))
                _synchronize(device)
                attack_seconds.append((middle - start) / count)
                score_seconds.append((time.perf_counter() - middle) / count)
                attacked.append(result.success.detach())
            per_level = torch.stack(scores, dim=1)  # [B, L, K]
            rows[f"{attack}/attacked"] = torch.stack(attacked, dim=1)
            rows[f"{attack}/acts"] = per_level[:, :, main]
            rows[f"{attack}/acts_top_k"] = per_level
            for name, values in (("attack_seconds", attack_seconds), ("score_seconds", score_seconds)):
                rows[f"{attack}/{name}"] = torch.tensor(values, device=device).expand(x.shape[0], -1).clone()
        for norm in clever.norms:
            generator = torch.Generator(device=device).manual_seed(self.seed + int(index.min()))
            _synchronize(device)
            start = time.perf_counter()
            norm_scores = clever_score(model, x, y, norm=norm, radius=clever.radius[norm],
                                    num_batches=clever.num_batches, batch_size=clever.batch_size,
                                    top_k=clever.top_k, input_range=self.input_range, generator=generator,
                                    max_points_per_pass=clever.max_points_per_pass)
            _synchronize(device)
            elapsed = (time.perf_counter() - start) / count
            rows[f"clever_{norm}"] = norm_scores.detach()
            rows[f"clever_{norm}_seconds"] = torch.full((x.shape[0],), elapsed, device=device)
        return rows
