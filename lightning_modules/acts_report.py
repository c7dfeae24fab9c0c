"""The ACTS protocol report of ``certify.py`` (ACTS paper Section 4; Tables 1, 2, 3, 5, 6 and 7), with CLEVER beside it.

Per example (all correctly classified, or all scored against the model's own prediction, see ``certify.labels``):

1. every attack of ``attacks`` (the paper's FGSM, BIM and PGD, l_inf, untargeted) attacks it at three noise levels
   N1 < N2 < N3: FGSM one step of ``eps``; BIM ``steps`` steps of ``step_fraction * eps`` from ``x``; PGD the same
   from a random start drawn per example (:func:`bounds.attacks.per_example_pgd`). The report records at which
   levels the prediction changes ("attacked").
2. ACTS scores it at every (attack, level) from that attack's own step increments (Eqs. 6 and 7: the mean of the
   unit directions of the steps; one step for FGSM, so its sign-gradient direction; the random start of PGD left
   out), with per-class cross-entropy losses and ``C = 1000`` (see :mod:`bounds.acts`). The per-class losses and
   speeds come from one Jacobian-vector product per (attack, level); the scores for every ``k`` of
   ``top_k_values`` (Table 5) are read off them at no extra model cost. The time of an ACTS score is that of its
   attack plus the product; both parts are recorded.
3. CLEVER (:func:`bounds.clever_score`) scores it once per norm (l_2 and l_inf, attack and level independent).

This module runs the protocol and reduces the rows to the report's numbers; :mod:`lightning_modules.acts_tables`
renders them (markdown tables, figures, TensorBoard). Attacks, scores, Overlap% and AUROC live in :mod:`bounds`.
"""

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

from bounds.acts import DEFAULT_C, acts_from_speeds, loss_and_speeds, mean_unit_direction
from bounds.attacks import AttackResult, bim, fgsm, per_example_pgd
from bounds.clever import clever_score
from bounds.modes import evaluation_mode
from bounds.overlap import overlap_percent, score_auroc
from lightning_modules.gathering import Rows

CleverNorm = Literal["l2", "linf"]
ACTSAttack = Literal["fgsm", "bim", "pgd"]
ACTS_ATTACKS: tuple[str, ...] = ("fgsm", "bim", "pgd")
"""The attacks of the ACTS paper, in its tables' order."""
ATTACK_LABELS = {"fgsm": "FGSM", "bim": "BIM", "pgd": "PGD"}


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
    """Attack at three noise levels with each attack, score with ACTS and CLEVER, per batch (ACTS paper Section 4).

    Args:
        eps_levels: l_inf budgets N1, N2, N3 (increasing), in input units.
        attacks: Attacks to run, among ``fgsm``, ``bim`` and ``pgd`` (the paper runs all three).
        steps: BIM and PGD steps (the paper: 3); FGSM takes one step of ``eps``.
        step_fraction: BIM and PGD step size as a fraction of each level's ``eps`` (the paper: 1/2).
        top_k: Competing classes of ACTS in Tables 1-3, 6, 7 and the figures (the paper: 10).
        top_k_values: Competing classes of the rows of Table 5 (ACTS-k); ``top_k`` is added if missing.
        clever_norms: CLEVER norms to compute (Table 7 has both); empty for none.
        clever_radius_l2: CLEVER's sampling radius ``R`` for l_2 (and its largest score).
        clever_radius_linf: CLEVER's sampling radius ``R`` for l_inf.
        clever_num_batches: CLEVER's ``N_b`` (the paper: 500).
        clever_batch_size: CLEVER's ``N_s`` (the paper: 1024).
        clever_top_k: Competing classes of CLEVER (1: the runner-up, CLEVER's "top-2" target that the ACTS
            paper's Table 4 compares with; ``None``: all, untargeted).
        clever_max_points_per_pass: Samples per forward-backward pass of CLEVER (memory: an ImageNet model needs
            far fewer than the default; at least ``clever_batch_size`` are taken).
        input_range: ``(low, high)`` the attacks and CLEVER's samples are clipped to.
        seed: Seed of PGD's per-example random start and of CLEVER's samples.

    Raises:
        ValueError: On malformed levels, unknown attacks or bad sample sizes.
    """

    def __init__(
        self,
        *,
        eps_levels: Sequence[float],
        attacks: Sequence[ACTSAttack] = ("pgd",),
        steps: int = 3,
        step_fraction: float = 0.5,
        top_k: int = 10,
        top_k_values: Sequence[int] = (1, 5, 10),
        clever_norms: Sequence[CleverNorm] = ("l2", "linf"),
        clever_radius_l2: float = 2.0,
        clever_radius_linf: float = 0.3,
        clever_num_batches: int = 20,
        clever_batch_size: int = 64,
        clever_top_k: int | None = 1,
        clever_max_points_per_pass: int = 1024,
        input_range: tuple[float, float] = (-1.0, 1.0),
        seed: int = 0,
    ) -> None:
        levels = [float(eps) for eps in eps_levels]
        if not levels or any(eps <= 0 for eps in levels) or levels != sorted(levels):
            raise ValueError(f"eps_levels must be positive and increasing, got {list(eps_levels)}")
        unknown_attacks = [a for a in attacks if a not in ACTS_ATTACKS]
        if not attacks or unknown_attacks:
            raise ValueError(f"attacks must be a non-empty list of {', '.join(ACTS_ATTACKS)}; got {list(attacks)}")
        ks = sorted({int(k) for k in (*top_k_values, top_k)})
        if steps < 1 or step_fraction <= 0 or ks[0] < 1:
            raise ValueError(f"need steps >= 1, step_fraction > 0, top-k values >= 1; got {steps}, {step_fraction}, "
                             f"{top_k} and {list(top_k_values)}")
        if (clever_num_batches < 1 or clever_batch_size < 1 or clever_max_points_per_pass < 1
                or min(clever_radius_l2, clever_radius_linf) <= 0):
            raise ValueError("CLEVER needs num_batches, batch_size and max_points_per_pass >= 1 and positive radii")
        unknown = set(clever_norms) - {"l2", "linf"}
        if unknown:
            raise ValueError(f"clever_norms must be 'l2' and/or 'linf', got {sorted(unknown)}")
        self.eps_levels = levels
        self.attacks: list[str] = [a for a in ACTS_ATTACKS if a in attacks]
        self.steps = steps
        self.step_fraction = step_fraction
        self.top_k = int(top_k)
        self.top_k_values = ks
        self.clever_norms: list[CleverNorm] = list(dict.fromkeys(clever_norms))
        self.clever_radius = {"l2": float(clever_radius_l2), "linf": float(clever_radius_linf)}
        self.clever_num_batches = clever_num_batches
        self.clever_batch_size = clever_batch_size
        self.clever_top_k = clever_top_k
        self.clever_max_points_per_pass = clever_max_points_per_pass
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.seed = seed

    @property
    def level_names(self) -> list[str]:
        """``["N1", "N2", ...]``."""
        return [f"N{i + 1}" for i in range(len(self.eps_levels))]

    def attack_description(self, attack: str) -> str:
        """How ``attack`` runs at each level, in words."""
        if attack == "fgsm":
            return "FGSM l_inf: one step of eps (ACTS direction: its sign-gradient step)"
        start = "random start (per example), excluded from ACTS" if attack == "pgd" else "no random start"
        return (f"{ATTACK_LABELS[attack]} l_inf: {self.steps} steps of {self.step_fraction:g} * eps, {start} "
                f"(ACTS direction: mean unit direction of the {self.steps} steps)")

    def describe(self) -> dict[str, Any]:
        """The settings, for the report."""
        return {
            "attacks": {attack: self.attack_description(attack) for attack in self.attacks},
            "eps_levels": dict(zip(self.level_names, self.eps_levels, strict=True)),
            "input_range": list(self.input_range),
            "steps": self.steps,
            "step_size": f"{self.step_fraction:g} * eps",
            "top_k": self.top_k,
            "top_k_values": self.top_k_values,
            "acts": (f"per attack and level from that attack's steps (mean unit direction, Eq. 7), per-class "
                     f"cross-entropy, l_2 step norm, top_k={self.top_k}, C={DEFAULT_C:g}"),
            "clever": {"norms": self.clever_norms, "radius": {n: self.clever_radius[n] for n in self.clever_norms},
                       "num_batches": self.clever_num_batches, "batch_size": self.clever_batch_size,
                       "top_k": self.clever_top_k},
        }

    def _attack(self, attack: str, model: nn.Module, x: Tensor, y: Tensor, index: Tensor, eps: float) -> AttackResult:
        step = self.step_fraction * eps
        if attack == "fgsm":
            return fgsm(model, x, y, eps, input_range=self.input_range)
        if attack == "bim":
            return bim(model, x, y, eps=eps, step_size=step, steps=self.steps, input_range=self.input_range)
        return per_example_pgd(model, x, y, index, eps=eps, step_size=step, steps=self.steps, seed=self.seed,
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
        count, device = max(x.shape[0], 1), x.device
        main = self.top_k_values.index(self.top_k)
        rows: Rows = {"index": index.detach()}
        for attack in self.attacks:
            attacked, scores, attack_seconds, score_seconds = [], [], [], []
            for eps in self.eps_levels:
                _synchronize(device)
                start = time.perf_counter()
                result = self._attack(attack, model, x, y, index, eps)
                _synchronize(device)
                middle = time.perf_counter()
                scores.append(acts_scores(model, x, result, self.top_k_values))
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
        for norm in self.clever_norms:
            generator = torch.Generator(device=device).manual_seed(self.seed + int(index.min()))
            _synchronize(device)
            start = time.perf_counter()
            clever = clever_score(model, x, y, norm=norm, radius=self.clever_radius[norm],
                                  num_batches=self.clever_num_batches, batch_size=self.clever_batch_size,
                                  top_k=self.clever_top_k, input_range=self.input_range, generator=generator,
                                  max_points_per_pass=self.clever_max_points_per_pass)
            _synchronize(device)
            elapsed = (time.perf_counter() - start) / count
            rows[f"clever_{norm}"] = clever.detach()
            rows[f"clever_{norm}_seconds"] = torch.full((x.shape[0],), elapsed, device=device)
        return rows


def score_range(metric: str, scores: Tensor) -> tuple[float, float] | None:
    """Histogram range: ACTS's finite scores (``C`` would stretch the bins; it is clamped into the last bin)."""
    finite = scores[scores < DEFAULT_C] if metric.startswith("acts") else scores
    return (float(finite.min()), float(finite.max())) if finite.numel() else None


def clever_metrics(rows: Rows) -> list[str]:
    """The CLEVER columns present in ``rows``."""
    return [key for key in ("clever_l2", "clever_linf") if key in rows]


def _separation(scores: Tensor, hit: Tensor, metric: str, bins: int) -> dict[str, float | None]:
    auroc = score_auroc(scores, hit)
    return {"overlap_percent": overlap_percent(scores, hit, bins=bins, range=score_range(metric, scores)),
            "auroc": None if math.isnan(auroc) else auroc}


def _mean(values: Tensor) -> float:
    return float(values.double().mean()) if values.numel() else math.nan


def summarise_acts(rows: Rows, protocol: ACTSProtocol, bins: int, clean_accuracy: float | None,
                   metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The numbers of ACTS Tables 1, 2, 3, 5, 6 and 7 from the gathered rows, per attack.

    Args:
        rows: Gathered rows of :meth:`ACTSProtocol.run` (each example once, CPU).
        protocol: The protocol that produced them.
        bins: Histogram bins of Overlap%.
        clean_accuracy: Accuracy with respect to the scored labels on the test examples scanned to pick the
            scored ones, if known (Table 1's "Clean").
        metadata: Extra top-level entries (``model``, ``weights``, ``labels``, ``dataset_accuracy`` ...).

    Returns:
        JSON-serialisable summary: ``settings``, ``examples``, ``clean_accuracy``, ``bins``, the ``metadata``
        entries, ``seconds_per_image`` (CLEVER per norm) and ``attacks``: per attack ``levels`` (per level
        ``name``, ``eps``, ``attacked``, ``surviving_fraction``, ``adversarial_accuracy`` (clean accuracy times
        the surviving fraction, Table 1), per metric (``acts`` and the CLEVER norms) ``overlap_percent``,
        ``auroc``, ``mean``, ``median``, and ``top_k``: ``{k: {overlap_percent, auroc}}`` (Table 5)),
        ``attack_flips`` (Table 3: ``"N1->N2"`` ... counts) and ``seconds_per_image`` (per level ``acts`` =
        ``attack`` + ``score``, and ``acts_mean``).
    """
    examples = int(rows["index"].shape[0]) if rows else 0
    clevers = clever_metrics(rows)
    attacks: dict[str, Any] = {}
    for attack in protocol.attacks:
        attacked = rows[f"{attack}/attacked"]
        levels = []
        for level, (level_name, eps) in enumerate(zip(protocol.level_names, protocol.eps_levels, strict=True)):
            hit = attacked[:, level]
            surviving = _mean((~hit).double())
            entry: dict[str, Any] = {
                "name": level_name, "eps": eps, "attacked": int(hit.sum()), "surviving_fraction": surviving,
                "adversarial_accuracy": None if clean_accuracy is None else clean_accuracy * surviving,
            }
            for metric in ("acts", *clevers):
                scores = rows[f"{attack}/acts"][:, level] if metric == "acts" else rows[metric]
                entry[metric] = {**_separation(scores, hit, metric, bins), "mean": _mean(scores),
                                 "median": float(scores.double().median()) if examples else math.nan}
            entry["top_k"] = {str(k): _separation(rows[f"{attack}/acts_top_k"][:, level, i], hit, "acts", bins)
                              for i, k in enumerate(protocol.top_k_values)}
            levels.append(entry)
        flips = {}
        for low in range(len(levels)):
            for high in range(low + 1, len(levels)):
                flipped = attacked[:, low] & ~attacked[:, high]
                flips[f"{levels[low]['name']}->{levels[high]['name']}"] = int(flipped.sum())
        seconds: dict[str, Any] = {}
        for part in ("attack", "score"):
            seconds[part] = {n: _mean(rows[f"{attack}/{part}_seconds"][:, i])
                             for i, n in enumerate(protocol.level_names)}
        seconds["acts"] = {n: seconds["attack"][n] + seconds["score"][n] for n in protocol.level_names}
        seconds["acts_mean"] = sum(seconds["acts"].values()) / len(protocol.level_names)
        attacks[attack] = {"levels": levels, "attack_flips": flips, "seconds_per_image": seconds}
    return {
        "settings": protocol.describe(),
        **dict(metadata or {}),
        "examples": examples,
        "clean_accuracy": clean_accuracy,
        "bins": bins,
        "attacks": attacks,
        "seconds_per_image": {metric: _mean(rows[f"{metric}_seconds"]) for metric in clevers},
    }


def write_acts_report(
    rows: Rows,
    protocol: ACTSProtocol,
    output_dir: Path,
    writer: SummaryWriter | None,
    *,
    bins: int = 20,
    clean_accuracy: float | None = None,
    model_name: str = "model",
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``acts.json``, ``acts.md``, ``acts.pt`` (rows), the figures and the TensorBoard entries (rank 0).

    Figures (under ``figures/``): ``acts_histograms.png`` (ACTS Figs. 4-6: a row per attack, a column per level,
    attacked vs. surviving examples), ``acts_noise_effectiveness.png`` (Fig. 3: a panel per attack, all scored
    examples and those attacked at N1, N2, N3). Tags: see
    :func:`lightning_modules.acts_tables.write_acts_tensorboard`.

    Args:
        rows: Gathered rows of :meth:`ACTSProtocol.run`.
        protocol: The protocol that produced them.
        output_dir: Report folder.
        writer: TensorBoard writer of the run, or ``None``.
        bins: Histogram bins of Overlap% and of the figures.
        clean_accuracy: Clean accuracy for Table 1, if known.
        model_name: Model name for the tables.
        metadata: Extra top-level entries of ``acts.json`` (e.g. ``weights``, ``labels``).

    Returns:
        The summary written to ``acts.json``.

    Raises:
        ValueError: If ``rows`` is empty (no example was scored).
    """
    from lightning_modules.acts_tables import acts_markdown, save_acts_figures, write_acts_tensorboard

    if not rows or int(rows["index"].numel()) == 0:
        raise ValueError("The ACTS report has no scored example")
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise_acts(rows, protocol, bins, clean_accuracy, {"model": model_name, **dict(metadata or {})})
    (output_dir / "acts.json").write_text(json.dumps(summary, indent=2))
    (output_dir / "acts.md").write_text(acts_markdown(summary))
    torch.save(dict(rows), output_dir / "acts.pt")
    figures = save_acts_figures(rows, protocol, summary, output_dir / "figures")
    if writer is not None:
        write_acts_tensorboard(writer, rows, protocol, summary, figures)
    return summary
