"""Rendering of the ACTS protocol report: markdown tables (ACTS Tables 1, 2, 3, 5, 6, 7), figures 3-6, TensorBoard.

Every table has one row per attack (FGSM, BIM, PGD, in the paper's order) and model, as in the paper; the numbers
come from :func:`lightning_modules.acts_report.summarise_acts`.
"""

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from bounds.acts import DEFAULT_C
from bounds.overlap import score_histograms
from lightning_modules.acts_report import ATTACK_LABELS, ACTSProtocol, clever_metrics, score_range
from lightning_modules.gathering import Rows

METRIC_LABELS = {"acts": "ACTS", "clever_l2": "L_2 CLEVER", "clever_linf": "L_inf CLEVER"}


def _percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def _number(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4g}"


def _cell(entry: Mapping[str, Any]) -> str:
    return f"{entry['overlap_percent']:.2f}% ({_number(entry['auroc'])})"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def acts_markdown(summary: Mapping[str, Any]) -> str:
    """Markdown tables in the layouts of ACTS Tables 1, 2 (with AUROC), 3, 5, 6 and 7, one row per attack.

    Args:
        summary: The output of :func:`~lightning_modules.acts_report.summarise_acts` (with ``model``, and
            optionally ``weights`` and ``labels``, among its entries).

    Returns:
        The markdown text.
    """
    model = str(summary.get("model", "model"))
    settings = summary["settings"]
    attacks: dict[str, Any] = summary["attacks"]
    first = next(iter(attacks.values()))["levels"]
    pixels = settings.get("input_range") == [0.0, 1.0]  # [0, 1] pixels: eps also in 1/255 units, as the paper
    levels = [f"{lv['name']} (eps {lv['eps']:.4g}" + (f" = {255 * lv['eps']:.3g}/255)" if pixels else ")")
              for lv in first]
    labels = summary.get("labels", "dataset")
    scored = ("test examples scored against the model's own predictions (`certify.labels: predicted`)"
              if labels == "predicted" else "correctly classified test examples")
    lines = [f"Model: {model}; weights: {summary.get('weights', 'not recorded')}.", "",
             f"Examples: {summary['examples']} {scored}; accuracy on the dataset labels of the scanned test "
             f"examples: {_percent(summary.get('dataset_accuracy', summary['clean_accuracy']))}.", "",
             "Attacks (l_inf, untargeted): " + "; ".join(settings["attacks"].values()) + ".", ""]
    names = {attack: ATTACK_LABELS[attack] for attack in attacks}

    lines += ["Table 1: clean and adversarial accuracy (attacked / scored examples in brackets).", ""]
    def accuracy(level: Mapping[str, Any]) -> str:
        value = level["adversarial_accuracy"]
        return f"{_percent(level['surviving_fraction'] if value is None else value)} ({level['attacked']}/{count})"

    count = summary["examples"]
    lines += _table(["Attack", "Model", "Clean", *levels],
                    [[names[a], model, _percent(summary["clean_accuracy"]), *(accuracy(lv) for lv in e["levels"])]
                     for a, e in attacks.items()])

    lines += ["Table 2: ACTS Overlap% (AUROC in brackets).", ""]
    lines += _table(["Attack", "Model", *levels],
                    [[names[a], model, *(_cell(lv["acts"]) for lv in e["levels"])] for a, e in attacks.items()])

    flips = list(next(iter(attacks.values()))["attack_flips"])
    lines += ["Table 3: attack flips (examples fooled at the lower level, not at the higher one).", ""]
    lines += _table(["Attack", "Model", *flips],
                    [[names[a], model, *(str(e["attack_flips"][f]) for f in flips)] for a, e in attacks.items()])

    ks = [str(k) for k in settings["top_k_values"]]
    lines += ["Table 5: top-k class ACTS Overlap% (AUROC in brackets).", ""]
    lines += _table(["Attack", "Model", "Metric", *levels],
                    [[names[a], model, f"ACTS-{k}", *(_cell(lv["top_k"][k]) for lv in e["levels"])]
                     for a, e in attacks.items() for k in ks])

    clevers = [m for m in ("clever_l2", "clever_linf") if m in first[0]]
    clever_seconds = summary["seconds_per_image"]
    reference = clever_seconds.get(clevers[0]) if clevers else None
    rows6 = [[model, f"{METRIC_LABELS[m]}", _seconds(clever_seconds[m]), "-", "-", "-"] for m in clevers]
    for a, e in attacks.items():
        seconds = e["seconds_per_image"]
        mean = seconds["acts_mean"]
        attack_mean = sum(seconds["attack"].values()) / len(seconds["attack"])
        score_mean = sum(seconds["score"].values()) / len(seconds["score"])
        kind = "one-step" if a == "fgsm" else f"{settings['steps']}-step"
        speed_up = f"{reference / mean:.3g}x" if reference is not None and mean > 0 else "-"
        rows6.append([model, f"ACTS ({names[a]}, {kind})", _seconds(mean), _seconds(attack_mean),
                      _seconds(score_mean), speed_up])
    lines += ["Table 6: seconds per image (ACTS: its attack plus the score, mean over the levels; speed-up: "
              f"{METRIC_LABELS[clevers[0]] if clevers else 'CLEVER'} time over ACTS time).", ""]
    lines += _table(["Model", "Metric", "s/image", "attack s/image", "score s/image", "speed-up"], rows6)

    lines += ["Table 7: ACTS vs CLEVER Overlap% (AUROC in brackets; lower Overlap%, higher AUROC is better).", ""]
    lines += _table(["Attack", "Model", "Metric", *levels],
                    [[names[a], model, METRIC_LABELS[m], *(_cell(lv[m]) for lv in e["levels"])]
                     for a, e in attacks.items() for m in (*clevers, "acts")])
    clever = settings["clever"]
    lines += [f"Overlap%: share of examples in the overlap of the attacked and surviving score histograms "
              f"({summary['bins']} shared bins; ACTS bins span its finite scores, C={DEFAULT_C:g} goes to the last "
              "bin). AUROC: probability that an attacked example scores lower than a surviving one. Adversarial "
              "accuracy: clean accuracy times the share of scored examples the attack did not fool. ACTS: "
              f"{settings['acts']}. CLEVER: {clever['num_batches']} x {clever['batch_size']} samples, top_k="
              f"{clever['top_k']}, radii {clever['radius']}."]
    return "\n".join(lines) + "\n"


def _histogram_axes(fig: Figure, rows: int, cols: int) -> Any:
    return fig.subplots(rows, cols, squeeze=False)


def _bars(ax: Any, counts: Tensor, edges: Tensor, color: str, label: str, alpha: float = 0.6) -> None:
    widths = (edges[1:] - edges[:-1]).numpy()
    ax.bar(edges[:-1].numpy(), counts.numpy(), width=widths, align="edge", alpha=alpha, color=color, label=label)


def _scores(rows: Rows, attack: str, metric: str, level: int) -> Tensor:
    return rows[f"{attack}/acts"][:, level] if metric == "acts" else rows[metric]


def histogram_figure(rows: Rows, protocol: ACTSProtocol, summary: Mapping[str, Any], metrics: list[str]) -> Figure:
    """Scores of attacked (orange) and surviving (light blue) examples: a row per (attack, metric), a column per level.

    With ``metrics=["acts"]`` this is the layout of ACTS Figs. 4-6 (one figure per model there, a row per attack
    and a column per noise level).

    Args:
        rows: Gathered rows.
        protocol: The protocol that produced them.
        summary: The report's summary (for the Overlap% in the titles).
        metrics: Score columns to draw (``acts``, ``clever_l2``, ``clever_linf``).

    Returns:
        The figure.
    """
    pairs = [(attack, metric) for attack in protocol.attacks for metric in metrics]
    levels = protocol.level_names
    fig = Figure(figsize=(4 * len(levels), 2.8 * len(pairs)), layout="constrained")
    axes = _histogram_axes(fig, len(pairs), len(levels))
    bins = int(summary["bins"])
    for r, (attack, metric) in enumerate(pairs):
        for c, level_name in enumerate(levels):
            scores, hit = _scores(rows, attack, metric, c), rows[f"{attack}/attacked"][:, c]
            attacked_counts, survived_counts, edges = score_histograms(scores, hit, bins, score_range(metric, scores))
            ax = axes[r, c]
            _bars(ax, survived_counts, edges, "lightskyblue", "not attacked")
            _bars(ax, attacked_counts, edges, "tab:orange", "attacked")
            overlap = summary["attacks"][attack]["levels"][c][metric]["overlap_percent"]
            ax.set_title(f"{ATTACK_LABELS[attack]} {METRIC_LABELS[metric]}, {level_name} (eps "
                         f"{protocol.eps_levels[c]:.3g}): Overlap {overlap:.1f}%", fontsize="small")
            ax.set_xlabel(f"{METRIC_LABELS[metric]} score" + (f" (C={DEFAULT_C:g} in the last bin)"
                                                              if metric == "acts" else ""), fontsize="small")
            if c == 0:
                ax.set_ylabel("examples")
                ax.legend(fontsize="small")
    fig.suptitle(f"{summary.get('model', 'model')}: score histograms, attacked vs. not attacked")
    return fig


def noise_effectiveness_figure(rows: Rows, protocol: ACTSProtocol, summary: Mapping[str, Any]) -> Figure:
    """ACTS Fig. 3 for one model: a panel per attack; all scored examples and those attacked at each level.

    One ACTS per example and attack, as in the paper (which scores every example once, at an initial noise below
    N1, then attacks at N1, N2, N3): here the score from the attack's steps at N1. Blue: every scored (correctly
    classified) example; green, yellow, red, drawn over it: those the attack fooled at N1, N2, N3 (nested but for
    attack flips).

    Args:
        rows: Gathered rows.
        protocol: The protocol that produced them.
        summary: The report's summary.

    Returns:
        The figure.
    """
    colours = ["tab:green", "gold", "tab:red", "tab:purple", "tab:brown"]
    fig = Figure(figsize=(4.5 * len(protocol.attacks), 3.4), layout="constrained")
    axes = _histogram_axes(fig, 1, len(protocol.attacks))
    bins = int(summary["bins"])
    for c, attack in enumerate(protocol.attacks):
        scores = rows[f"{attack}/acts"][:, 0]
        ax = axes[0, c]
        everyone = torch.zeros_like(scores, dtype=torch.bool)
        _, counts, edges = score_histograms(scores, everyone, bins, score_range("acts", scores))
        _bars(ax, counts, edges, "tab:blue", f"all scored ({scores.shape[0]})", alpha=0.45)
        for level in reversed(range(len(protocol.level_names))):
            hit = rows[f"{attack}/attacked"][:, level]
            attacked_counts, _, _ = score_histograms(scores, hit, edges)
            _bars(ax, attacked_counts, edges, colours[level % len(colours)],
                  f"attacked at {protocol.level_names[level]} ({int(hit.sum())})", alpha=1.0)
        ax.set_title(f"{ATTACK_LABELS[attack]}", fontsize="medium")
        ax.set_xlabel(f"ACTS at {protocol.level_names[0]} (C={DEFAULT_C:g} in the last bin)", fontsize="small")
        if c == 0:
            ax.set_ylabel("examples")
        ax.legend(fontsize="x-small")
    fig.suptitle(f"{summary.get('model', 'model')}: ACTS noise effectiveness (ACTS Fig. 3)")
    return fig


def save_acts_figures(rows: Rows, protocol: ACTSProtocol, summary: Mapping[str, Any], folder: Path) -> dict[str, Path]:
    """Write the report's PNG figures (each drawn once) and return their paths by TensorBoard image name.

    The figures of the paper (3-6) show ACTS only; CLEVER's histograms go to TensorBoard (and
    :func:`histogram_figure` draws them from Python).

    Args:
        rows: Gathered rows.
        protocol: The protocol that produced them.
        summary: The report's summary.
        folder: Figures folder.

    Returns:
        ``{"histograms": ..., "noise_effectiveness": ...}``.
    """
    figures = {"histograms": lambda: histogram_figure(rows, protocol, summary, ["acts"]),
               "noise_effectiveness": lambda: noise_effectiveness_figure(rows, protocol, summary)}
    files = {"histograms": "acts_histograms.png", "noise_effectiveness": "acts_noise_effectiveness.png"}
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, build in figures.items():
        paths[name] = folder / files[name]
        build().savefig(paths[name], dpi=100)  # constrained layout; a "tight" bounding box would draw it twice
    return paths


def write_acts_tensorboard(writer: SummaryWriter, rows: Rows, protocol: ACTSProtocol, summary: Mapping[str, Any],
                           figures: Mapping[str, Path]) -> None:
    """Write the report's scalars, histograms and images (rank 0).

    Tags, per attack ``a`` and level ``N``: scalars ``certify/acts/<a>/<N>/{adversarial_accuracy, surviving_fraction,
    attacked}``, ``certify/acts/<a>/<N>/<acts|clever_l2|clever_linf>/{overlap_percent, auroc}``,
    ``certify/acts/<a>/<N>/acts_top<k>/overlap_percent``, ``certify/acts/<a>/attack_flips/<N1_N2 ...>``,
    ``certify/acts/<a>/seconds_per_image``; ``certify/acts/seconds_per_image/<clever_l2|clever_linf>``; histograms
    ``certify/acts/<a>/<N>/<metric>/<attacked|not_attacked>``; images ``certify/acts/<figure name>``.

    Args:
        writer: The run's TensorBoard writer.
        rows: Gathered rows.
        protocol: The protocol that produced them.
        summary: The report's summary.
        figures: PNG files of the figures by image name (written as images, not drawn again).
    """
    for attack, entry in summary["attacks"].items():
        for level, values in enumerate(entry["levels"]):
            prefix = f"certify/acts/{attack}/{values['name']}"
            for name in ("adversarial_accuracy", "surviving_fraction", "attacked"):
                if values[name] is not None:
                    writer.add_scalar(f"{prefix}/{name}", values[name], 0)
            hit = rows[f"{attack}/attacked"][:, level]
            for metric in ("acts", *clever_metrics(rows)):
                writer.add_scalar(f"{prefix}/{metric}/overlap_percent", values[metric]["overlap_percent"], 0)
                if values[metric]["auroc"] is not None:
                    writer.add_scalar(f"{prefix}/{metric}/auroc", values[metric]["auroc"], 0)
                scores = _scores(rows, attack, metric, level)
                shown = scores < DEFAULT_C if metric == "acts" else torch.ones_like(hit)
                for group, selected in (("attacked", hit), ("not_attacked", ~hit)):
                    if bool((selected & shown).any()):
                        writer.add_histogram(f"{prefix}/{metric}/{group}", scores[selected & shown].float(), 0)
            for k, separation in values["top_k"].items():
                writer.add_scalar(f"{prefix}/acts_top{k}/overlap_percent", separation["overlap_percent"], 0)
        for flip, count in entry["attack_flips"].items():
            writer.add_scalar(f"certify/acts/{attack}/attack_flips/{flip.replace('->', '_')}", count, 0)
        writer.add_scalar(f"certify/acts/{attack}/seconds_per_image", entry["seconds_per_image"]["acts_mean"], 0)
    for metric, seconds in summary["seconds_per_image"].items():
        writer.add_scalar(f"certify/acts/seconds_per_image/{metric}", seconds, 0)
    for name, path in figures.items():
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        writer.add_image(f"certify/acts/{name}", pixels, 0, dataformats="HWC")
    writer.flush()
