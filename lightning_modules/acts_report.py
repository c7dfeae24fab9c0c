"""The ACTS protocol report of ``certify.py`` (ACTS paper Section 4; Tables 1, 2, 3 and 7), with CLEVER beside it.

Per example (all correctly classified):

1. PGD l_inf attacks it at three noise levels N1 < N2 < N3 (the paper's protocol: 3 steps, step ``eps / 2``,
   random start); the report records at which levels the prediction changes ("attacked").
2. ACTS scores it at every level from that level's own PGD steps (:func:`bounds.acts_score` with the
   :class:`~bounds.attacks.AttackResult`: the mean unit direction of the 3 gradient steps, the random start
   left out; per-class cross-entropy losses, top-10 competing classes, ``C = 1000``; see :mod:`bounds.acts`).
   The time of an ACTS score is that of its attack plus the one Jacobian-vector product.
3. CLEVER (:func:`bounds.clever_score`) scores it once per norm (l_2 and l_inf, level independent), with
   smaller sample sizes than the paper's 500 x 1024 by default, for speed.

Per level the report gives the attacked count and the accuracy under attack (Table 1), the Overlap% and the
AUROC of ACTS (Table 2) and of CLEVER beside it (Table 7) with the seconds per image of each (Table 6), and
the "attack flips" of Table 3: examples fooled at a lower level but not at a higher one.
This module is orchestration only; the attack, the scores, Overlap% and AUROC live in :mod:`bounds`.
"""

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

from bounds.acts import DEFAULT_C, acts_score
from bounds.clever import clever_score
from bounds.overlap import overlap_percent, score_auroc, score_histograms
from callbacks.acts import per_example_pgd
from callbacks.figures import save_figure
from lightning_modules.gathering import Rows

CleverNorm = Literal["l2", "linf"]


class ACTSProtocol:
    """Attack at three noise levels, score with ACTS and CLEVER, per batch (ACTS paper Section 4).

    Args:
        eps_levels: l_inf budgets N1, N2, N3 of PGD (increasing), in input units.
        steps: PGD steps (the paper: 3).
        step_fraction: PGD step size as a fraction of each level's ``eps`` (the paper: 1/2).
        top_k: Competing classes of ACTS (the paper: 10).
        clever_norms: CLEVER norms to compute (Table 7 has both); empty for none.
        clever_radius_l2: CLEVER's sampling radius ``R`` for l_2 (and its largest score).
        clever_radius_linf: CLEVER's sampling radius ``R`` for l_inf.
        clever_num_batches: CLEVER's ``N_b`` (the paper: 500).
        clever_batch_size: CLEVER's ``N_s`` (the paper: 1024).
        clever_top_k: Competing classes of CLEVER (1: the runner-up, CLEVER's "top-2" target that the ACTS
            paper's Table 4 compares with; ``None``: all, untargeted).
        input_range: ``(low, high)`` the attacks and CLEVER's samples are clipped to.
        seed: Seed of PGD's per-example random start and of CLEVER's samples.

    Raises:
        ValueError: On malformed levels or sample sizes.
    """

    def __init__(
        self,
        *,
        eps_levels: Sequence[float],
        steps: int = 3,
        step_fraction: float = 0.5,
        top_k: int = 10,
        clever_norms: Sequence[CleverNorm] = ("l2", "linf"),
        clever_radius_l2: float = 2.0,
        clever_radius_linf: float = 0.3,
        clever_num_batches: int = 20,
        clever_batch_size: int = 64,
        clever_top_k: int | None = 1,
        input_range: tuple[float, float] = (-1.0, 1.0),
        seed: int = 0,
    ) -> None:
        levels = [float(eps) for eps in eps_levels]
        if not levels or any(eps <= 0 for eps in levels) or levels != sorted(levels):
            raise ValueError(f"eps_levels must be positive and increasing, got {list(eps_levels)}")
        if steps < 1 or step_fraction <= 0 or top_k < 1:
            raise ValueError(f"need steps >= 1, step_fraction > 0, top_k >= 1; got {steps}, {step_fraction}, {top_k}")
        if clever_num_batches < 1 or clever_batch_size < 1 or min(clever_radius_l2, clever_radius_linf) <= 0:
            raise ValueError("CLEVER needs num_batches >= 1, batch_size >= 1 and positive radii")
        unknown = set(clever_norms) - {"l2", "linf"}
        if unknown:
            raise ValueError(f"clever_norms must be 'l2' and/or 'linf', got {sorted(unknown)}")
        self.eps_levels = levels
        self.steps = steps
        self.step_fraction = step_fraction
        self.top_k = top_k
        self.clever_norms: list[CleverNorm] = list(dict.fromkeys(clever_norms))
        self.clever_radius = {"l2": float(clever_radius_l2), "linf": float(clever_radius_linf)}
        self.clever_num_batches = clever_num_batches
        self.clever_batch_size = clever_batch_size
        self.clever_top_k = clever_top_k
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.seed = seed

    @property
    def level_names(self) -> list[str]:
        """``["N1", "N2", ...]``."""
        return [f"N{i + 1}" for i in range(len(self.eps_levels))]

    def describe(self) -> dict[str, Any]:
        """The settings, for the report."""
        return {
            "attack": "PGD l_inf, random start",
            "eps_levels": dict(zip(self.level_names, self.eps_levels, strict=True)),
            "steps": self.steps,
            "step_size": f"{self.step_fraction:g} * eps",
            "acts": (f"per level from that level's PGD steps (mean unit direction of the {self.steps} gradient "
                     f"steps, random start excluded), per-class cross-entropy, l_2 step norm, top_k={self.top_k}, "
                     f"C={DEFAULT_C:g}"),
            "clever": {"norms": self.clever_norms, "radius": {n: self.clever_radius[n] for n in self.clever_norms},
                       "num_batches": self.clever_num_batches, "batch_size": self.clever_batch_size,
                       "top_k": self.clever_top_k},
        }

    def run(self, model: nn.Module, index: Tensor, x: Tensor, y: Tensor) -> Rows:
        """Attack, score and time one batch.

        Args:
            model: Classifier mapping inputs to logits.
            index: Dataset positions ``[B]`` (they seed each example's PGD start, so results do not depend on
                the batching or the number of ranks).
            x: Inputs ``[B, ...]`` (correctly classified).
            y: Labels ``[B]``.

        Returns:
            Rows: ``index``; ``attacked`` ``[B, L]`` bool and ``acts`` ``[B, L]`` per level; ``acts_seconds``
            ``[B, L]`` (attack plus score, the batch time divided by its size); per CLEVER norm ``n``:
            ``clever_<n>`` ``[B]`` and ``clever_<n>_seconds`` ``[B]``.
        """
        count = max(x.shape[0], 1)
        attacked, scores, seconds = [], [], []
        for eps in self.eps_levels:
            start = time.perf_counter()
            result = per_example_pgd(model, x, y, index, eps=eps, step_size=self.step_fraction * eps,
                                     steps=self.steps, seed=self.seed, input_range=self.input_range)
            score = acts_score(model, x, y, attack=result, top_k=self.top_k)
            seconds.append((time.perf_counter() - start) / count)
            attacked.append(result.success.detach().cpu())
            scores.append(score.detach().double().cpu())
        rows: Rows = {
            "index": index.detach().cpu(),
            "attacked": torch.stack(attacked, dim=1),
            "acts": torch.stack(scores, dim=1),
            "acts_seconds": torch.tensor(seconds, dtype=torch.float64).expand(x.shape[0], -1).clone(),
        }
        for norm in self.clever_norms:
            generator = torch.Generator(device=x.device).manual_seed(self.seed + int(index.min()))
            start = time.perf_counter()
            clever = clever_score(model, x, y, norm=norm, radius=self.clever_radius[norm],
                                  num_batches=self.clever_num_batches, batch_size=self.clever_batch_size,
                                  top_k=self.clever_top_k, input_range=self.input_range, generator=generator)
            elapsed = (time.perf_counter() - start) / count
            rows[f"clever_{norm}"] = clever.detach().double().cpu()
            rows[f"clever_{norm}_seconds"] = torch.full((x.shape[0],), elapsed, dtype=torch.float64)
        return rows


def _score_range(name: str, scores: Tensor) -> tuple[float, float] | None:
    """Histogram range: ACTS's finite scores (``C`` would stretch the bins; it is clamped into the last bin)."""
    finite = scores[scores < DEFAULT_C] if name == "acts" else scores
    return (float(finite.min()), float(finite.max())) if finite.numel() else None


def _metric_names(rows: Rows) -> list[str]:
    return ["acts"] + [key for key in ("clever_l2", "clever_linf") if key in rows]


def _level_scores(rows: Rows, name: str, level: int) -> Tensor:
    return rows["acts"][:, level] if name == "acts" else rows[name]


def summarise_acts(rows: Rows, protocol: ACTSProtocol, bins: int, clean_accuracy: float | None) -> dict[str, Any]:
    """The numbers of ACTS Tables 1, 2, 3, 6 and 7 from the gathered rows.

    Args:
        rows: Gathered rows of :meth:`ACTSProtocol.run` (each example once).
        protocol: The protocol that produced them.
        bins: Histogram bins of Overlap%.
        clean_accuracy: Accuracy of the model on the test examples scanned to pick the correct ones, if known.

    Returns:
        JSON-serialisable summary: ``settings``, ``examples``, ``clean_accuracy``, ``levels`` (per level
        ``eps``, ``attacked``, ``adversarial_accuracy`` and per metric ``overlap_percent``, ``auroc``,
        ``mean``, ``median``), ``attack_flips`` (Table 3: ``"N1->N2"`` ... counts) and ``seconds_per_image``.
    """
    attacked = rows["attacked"]
    examples = int(attacked.shape[0])
    names = _metric_names(rows)
    levels = []
    for level, (level_name, eps) in enumerate(zip(protocol.level_names, protocol.eps_levels, strict=True)):
        hit = attacked[:, level]
        entry: dict[str, Any] = {
            "name": level_name,
            "eps": eps,
            "attacked": int(hit.sum()),
            "adversarial_accuracy": float((~hit).double().mean()) if examples else math.nan,
        }
        for name in names:
            scores = _level_scores(rows, name, level)
            auroc = score_auroc(scores, hit)
            entry[name] = {
                "overlap_percent": overlap_percent(scores, hit, bins=bins, range=_score_range(name, scores)),
                "auroc": None if math.isnan(auroc) else auroc,
                "mean": float(scores.mean()),
                "median": float(scores.median()),
            }
        levels.append(entry)
    flips = {}
    for low in range(len(levels)):
        for high in range(low + 1, len(levels)):
            flipped = attacked[:, low] & ~attacked[:, high]
            flips[f"{levels[low]['name']}->{levels[high]['name']}"] = int(flipped.sum())
    seconds = {"acts": {n: float(rows["acts_seconds"][:, i].mean()) for i, n in enumerate(protocol.level_names)}}
    for name in names[1:]:
        seconds[name] = float(rows[f"{name}_seconds"].mean())
    return {
        "settings": protocol.describe(),
        "examples": examples,
        "clean_accuracy": clean_accuracy,
        "levels": levels,
        "attack_flips": flips,
        "seconds_per_image": seconds,
        "bins": bins,
    }


def _percent(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


_LABELS = {"acts": "ACTS", "clever_l2": "L_2 CLEVER", "clever_linf": "L_inf CLEVER"}


def acts_markdown(summary: Mapping[str, Any], model_name: str = "model") -> str:
    """Markdown tables in the layouts of ACTS Tables 1, 2 (with AUROC), 3 and 7 (with seconds per image).

    Args:
        summary: The output of :func:`summarise_acts`.
        model_name: Name of the model for the ``Model`` column.

    Returns:
        The markdown text.
    """
    levels = summary["levels"]
    names = [n for n in _LABELS if n in levels[0]]
    head = " | ".join(f"{lv['name']} (eps {lv['eps']:g})" for lv in levels)
    rule = "|---" * (len(levels) + 3) + "|"
    lines = [f"Examples: {summary['examples']} correctly classified test examples; attack PGD l_inf, "
             f"{summary['settings']['steps']} steps, step {summary['settings']['step_size']}.", ""]
    lines += ["Table 1: clean and adversarial accuracy (attacked count in brackets).", "",
              f"| Attack | Model | Clean | {head} |", rule]
    cells = " | ".join(f"{_percent(lv['adversarial_accuracy'])} ({lv['attacked']})" for lv in levels)
    lines += [f"| PGD | {model_name} | {_percent(summary['clean_accuracy'])} | {cells} |", ""]
    lines += ["Table 2: ACTS Overlap% (AUROC in brackets).", "", f"| Attack | Model | Metric | {head} |",
              "|---" * (len(levels) + 3) + "|"]
    cells = " | ".join(f"{lv['acts']['overlap_percent']:.2f}% ({_number(lv['acts']['auroc'])})" for lv in levels)
    lines += [f"| PGD | {model_name} | ACTS | {cells} |", ""]
    flips = summary["attack_flips"]
    lines += ["Table 3: attack flips (fooled at the lower level, not at the higher one).", "",
              "| Attack | Model | " + " | ".join(flips) + " |", "|---" * (len(flips) + 2) + "|",
              f"| PGD | {model_name} | " + " | ".join(str(v) for v in flips.values()) + " |", ""]
    lines += ["Table 7: ACTS vs CLEVER Overlap% (AUROC in brackets; lower Overlap%, higher AUROC is better) and "
              "seconds per image.", "", f"| Attack | Model | Metric | {head} | s/image |",
              "|---" * (len(levels) + 4) + "|"]
    seconds = summary["seconds_per_image"]
    for name in names:
        cells = " | ".join(f"{lv[name]['overlap_percent']:.2f}% ({_number(lv[name]['auroc'])})" for lv in levels)
        per_image = (" / ".join(f"{s:.4f}" for s in seconds["acts"].values()) if name == "acts"
                     else f"{seconds[name]:.4f}")
        lines.append(f"| PGD | {model_name} | {_LABELS[name]} | {cells} | {per_image} |")
    lines += ["", f"Overlap%: share of examples in the overlap of the attacked and surviving score histograms "
              f"({summary['bins']} shared bins; ACTS bins span its finite scores, C={DEFAULT_C:g} goes to the "
              "last bin). AUROC: probability that an attacked example scores lower than a surviving one. "
              "ACTS s/image per level includes its PGD attack. ACTS: " + summary["settings"]["acts"] + "."]
    return "\n".join(lines) + "\n"


def histogram_figure(rows: Rows, protocol: ACTSProtocol, bins: int) -> Figure:
    """Histograms of each score, attacked vs surviving examples, one column per level (ACTS Figs. 4-6).

    Args:
        rows: Gathered rows.
        protocol: The protocol that produced them.
        bins: Shared bins (as for Overlap%).

    Returns:
        The figure.
    """
    names = _metric_names(rows)
    levels = protocol.level_names
    fig = Figure(figsize=(4 * len(levels), 3 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), len(levels), squeeze=False)
    for r, name in enumerate(names):
        for c, level_name in enumerate(levels):
            scores, hit = _level_scores(rows, name, c), rows["attacked"][:, c]
            attacked_counts, survived_counts, edges = score_histograms(scores, hit, bins, _score_range(name, scores))
            widths = (edges[1:] - edges[:-1]).numpy()
            ax = axes[r, c]
            ax.bar(edges[:-1].numpy(), survived_counts.numpy(), width=widths, align="edge", alpha=0.6,
                   color="tab:blue", label="not attacked")
            ax.bar(edges[:-1].numpy(), attacked_counts.numpy(), width=widths, align="edge", alpha=0.6,
                   color="tab:orange", label="attacked")
            ax.set_title(f"{_LABELS[name]}, {level_name} (eps {protocol.eps_levels[c]:g})")
            ax.set_xlabel("score")
            if c == 0:
                ax.set_ylabel("examples")
                ax.legend(fontsize="small")
    return fig


def write_acts_report(
    rows: Rows,
    protocol: ACTSProtocol,
    output_dir: Path,
    writer: SummaryWriter | None,
    *,
    bins: int = 20,
    clean_accuracy: float | None = None,
    model_name: str = "model",
) -> dict[str, Any]:
    """Write ``acts.json``, ``acts.md``, ``acts.pt`` (rows), ``figures/acts_histograms.png`` and tags (rank 0).

    Tags: scalars ``certify/acts/<level>/<adversarial_accuracy|attacked>`` and
    ``certify/acts/<level>/<acts|clever_l2|clever_linf>/<overlap_percent|auroc>``, ``certify/acts/seconds_per_image/
    <metric>``; histograms ``certify/acts/<level>/<metric>/<attacked|not_attacked>``; image
    ``certify/acts/histograms``.

    Args:
        rows: Gathered rows of :meth:`ACTSProtocol.run`.
        protocol: The protocol that produced them.
        output_dir: Report folder.
        writer: TensorBoard writer of the run, or ``None``.
        bins: Histogram bins of Overlap% and of the figure.
        clean_accuracy: Clean accuracy for Table 1, if known.
        model_name: Model name for the tables.

    Returns:
        The summary written to ``acts.json``.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise_acts(rows, protocol, bins, clean_accuracy)
    (output_dir / "acts.json").write_text(json.dumps(summary, indent=2))
    (output_dir / "acts.md").write_text(acts_markdown(summary, model_name))
    torch.save(dict(rows), output_dir / "acts.pt")
    figure = histogram_figure(rows, protocol, bins)
    save_figure(figure, output_dir / "figures" / "acts_histograms.png")
    if writer is not None:
        names = _metric_names(rows)
        for level, entry in enumerate(summary["levels"]):
            prefix = f"certify/acts/{entry['name']}"
            writer.add_scalar(f"{prefix}/adversarial_accuracy", entry["adversarial_accuracy"], 0)
            writer.add_scalar(f"{prefix}/attacked", entry["attacked"], 0)
            hit = rows["attacked"][:, level]
            for name in names:
                writer.add_scalar(f"{prefix}/{name}/overlap_percent", entry[name]["overlap_percent"], 0)
                if entry[name]["auroc"] is not None:
                    writer.add_scalar(f"{prefix}/{name}/auroc", entry[name]["auroc"], 0)
                scores = _level_scores(rows, name, level)
                shown = scores < DEFAULT_C if name == "acts" else torch.ones_like(hit)
                for group, selected in (("attacked", hit), ("not_attacked", ~hit)):
                    values = scores[selected & shown]
                    if values.numel():
                        writer.add_histogram(f"{prefix}/{name}/{group}", values.float(), 0)
        seconds = summary["seconds_per_image"]
        mean_acts_seconds = sum(seconds["acts"].values()) / len(seconds["acts"])
        writer.add_scalar("certify/acts/seconds_per_image/acts", mean_acts_seconds, 0)
        for name in names[1:]:
            writer.add_scalar(f"certify/acts/seconds_per_image/{name}", seconds[name], 0)
        writer.add_figure("certify/acts/histograms", histogram_figure(rows, protocol, bins), 0)
        writer.flush()
    return summary
