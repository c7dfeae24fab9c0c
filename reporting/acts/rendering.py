"""Rendering of the ACTS protocol report: ``acts.json``, ``acts.md``, ``acts.pt``, figures 3-6 and TensorBoard.

The numbers come from :func:`reporting.acts.summary.summarise_acts`, the tables from :mod:`reporting.acts.tables`.
"""

import json
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
from callbacks.gathering import Rows
from reporting.acts.options import ATTACK_LABELS, ACTSReportOptions
from reporting.acts.running import ACTSProtocol
from reporting.acts.summary import clever_metrics, score_range, summarise_acts
from reporting.acts.tables import METRIC_LABELS, acts_markdown


def _histogram_axes(fig: Figure, rows: int, cols: int) -> Any:
    return fig.subplots(rows, cols, squeeze=False)


def _bars(ax: Any, counts: Tensor, edges: Tensor, color: str, label: str, alpha: float = 0.6) -> None:
    widths = (edges[1:] - edges[:-1]).numpy()
    ax.bar(edges[:-1].numpy(), counts.numpy(), width=widths, align="edge", alpha=alpha, color=color, label=label)


def _scores(rows: Rows, attack: str, metric: str, level: int) -> Tensor:
    return rows[f"{attack}/acts"][:, level] if metric == "acts" else rows[metric]


def histogram_figure(rows: Rows, options: ACTSReportOptions, summary: Mapping[str, Any], metrics: list[str]) -> Figure:
    """Scores of attacked (orange) and surviving (light blue) examples: a row per (attack, metric), a column per level.

    With ``metrics=["acts"]`` this is the layout of ACTS Figs. 4-6 (one figure per model there, a row per attack
    and a column per noise level).

    Args:
        rows: Gathered rows.
        options: The options of the run that produced them.
        summary: The report's summary (for the Overlap% in the titles).
        metrics: Score columns to draw (``acts``, ``clever_l2``, ``clever_linf``).

    Returns:
        The figure.
    """
    pairs = [(attack, metric) for attack in options.attacks for metric in metrics]
    levels = options.level_names
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
                         f"{options.eps[c]:.3g}): Overlap {overlap:.1f}%", fontsize="small")
            ax.set_xlabel(f"{METRIC_LABELS[metric]} score" + (f" (C={DEFAULT_C:g} in the last bin)"
                                                              if metric == "acts" else ""), fontsize="small")
            if c == 0:
                ax.set_ylabel("examples")
                ax.legend(fontsize="small")
    fig.suptitle(f"{summary.get('model', 'model')}: score histograms, attacked vs. not attacked")
    return fig


def noise_effectiveness_figure(rows: Rows, options: ACTSReportOptions, summary: Mapping[str, Any]) -> Figure:
    """ACTS Fig. 3 for one model: a panel per attack; all scored examples and those attacked at each level.

    One ACTS per example and attack, as in the paper (which scores every example once, at an initial noise below
    N1, then attacks at N1, N2, N3): here the score from the attack's steps at N1. Blue: every scored (correctly
    classified) example; green, yellow, red, drawn over it: those the attack fooled at N1, N2, N3 (nested but for
    attack flips).

    Args:
        rows: Gathered rows.
        options: The options of the run that produced them.
        summary: The report's summary.

    Returns:
        The figure.
    """
    colours = ["tab:green", "gold", "tab:red", "tab:purple", "tab:brown"]
    fig = Figure(figsize=(4.5 * len(options.attacks), 3.4), layout="constrained")
    axes = _histogram_axes(fig, 1, len(options.attacks))
    bins = int(summary["bins"])
    for c, attack in enumerate(options.attacks):
        scores = rows[f"{attack}/acts"][:, 0]
        ax = axes[0, c]
        everyone = torch.zeros_like(scores, dtype=torch.bool)
        _, counts, edges = score_histograms(scores, everyone, bins, score_range("acts", scores))
        _bars(ax, counts, edges, "tab:blue", f"all scored ({scores.shape[0]})", alpha=0.45)
        for level in reversed(range(len(options.level_names))):
            hit = rows[f"{attack}/attacked"][:, level]
            attacked_counts, _, _ = score_histograms(scores, hit, edges)
            _bars(ax, attacked_counts, edges, colours[level % len(colours)],
                  f"attacked at {options.level_names[level]} ({int(hit.sum())})", alpha=1.0)
        ax.set_title(f"{ATTACK_LABELS[attack]}", fontsize="medium")
        ax.set_xlabel(f"ACTS at {options.level_names[0]} (C={DEFAULT_C:g} in the last bin)", fontsize="small")
        if c == 0:
            ax.set_ylabel("examples")
        ax.legend(fontsize="x-small")
    fig.suptitle(f"{summary.get('model', 'model')}: ACTS noise effectiveness (ACTS Fig. 3)")
    return fig


def save_acts_figures(rows: Rows, options: ACTSReportOptions, summary: Mapping[str, Any],
                      folder: Path) -> dict[str, Path]:
    """Write the report's PNG figures (each drawn once) and return their paths by TensorBoard image name.

    The figures of the paper (3-6) show ACTS only; CLEVER's histograms go to TensorBoard (and
    :func:`histogram_figure` draws them from Python).

    Args:
        rows: Gathered rows.
        options: The options of the run that produced them.
        summary: The report's summary.
        folder: Figures folder.

    Returns:
        ``{"histograms": ..., "noise_effectiveness": ...}``.
    """
    figures = {"histograms": lambda: histogram_figure(rows, options, summary, ["acts"]),
               "noise_effectiveness": lambda: noise_effectiveness_figure(rows, options, summary)}
    files = {"histograms": "acts_histograms.png", "noise_effectiveness": "acts_noise_effectiveness.png"}
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, build in figures.items():
        paths[name] = folder / files[name]
        build().savefig(paths[name], dpi=100)  # constrained layout; a "tight" bounding box would draw it twice
    return paths


def write_acts_tensorboard(writer: SummaryWriter, rows: Rows, options: ACTSReportOptions, summary: Mapping[str, Any],
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
        options: The options of the run that produced them.
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


def write_acts_report(
    rows: Rows,
    protocol: ACTSProtocol,
    output_dir: Path,
    writer: SummaryWriter | None,
    *,
    clean_accuracy: float | None = None,
    model_name: str = "model",
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``acts.json``, ``acts.md``, ``acts.pt`` (rows), the figures and the TensorBoard entries (rank 0).

    Figures (under ``figures/``): ``acts_histograms.png`` (ACTS Figs. 4-6: a row per attack, a column per level,
    attacked vs. surviving examples), ``acts_noise_effectiveness.png`` (Fig. 3: a panel per attack, all scored
    examples and those attacked at N1, N2, N3). Tags: see
    :func:`write_acts_tensorboard`.

    Args:
        rows: Gathered rows of :meth:`ACTSProtocol.run`.
        protocol: The protocol that produced them.
        output_dir: Report folder.
        writer: TensorBoard writer of the run, or ``None``.
        clean_accuracy: Clean accuracy for Table 1, if known.
        model_name: Model name for the tables.
        metadata: Extra top-level entries of ``acts.json`` (e.g. ``weights``, ``labels``).

    Returns:
        The summary written to ``acts.json``.

    Raises:
        ValueError: If ``rows`` is empty (no example was scored).
    """
    if not rows or int(rows["index"].numel()) == 0:
        raise ValueError("The ACTS report has no scored example")
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise_acts(rows, protocol, clean_accuracy, {"model": model_name, **dict(metadata or {})})
    (output_dir / "acts.json").write_text(json.dumps(summary, indent=2))
    (output_dir / "acts.md").write_text(acts_markdown(summary))
    torch.save(dict(rows), output_dir / "acts.pt")
    figures = save_acts_figures(rows, protocol.options, summary, output_dir / "figures")
    if writer is not None:
        write_acts_tensorboard(writer, rows, protocol.options, summary, figures)
    return summary
