"""Rendering of the certification report of ``certify.py``: ``summary.json``, ``radii.pt``, figures, TensorBoard.

The numbers come from the gathered per-example rows of :class:`~reporting.running.CertificationTask` (per kind:
``index``, ``eps_lower``, ``eps_upper``, ``certified``, ``seconds``); the summary statistics are those of
:mod:`bounds.analysis`, the figures those of :mod:`callbacks.figures`.
"""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import Dataset

from bounds.analysis import (
    certified_fraction,
    geometric_mean_width,
    mean_width_over_certified,
    pairwise_cosine_similarity,
    pairwise_wasserstein_distance,
    width_ratios,
)
from callbacks.figures import colormap_grid, map_rows_figure, save_figure
from reporting.options import CertifyOptions

SHAPE_STATISTICS_EXAMPLES = 200  # Table 3 of the Amoeba paper uses 200 examples.


def summarise(results: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Build the ``summary.json`` content from the gathered per-example results.

    Args:
        results: Kind -> ``index``, ``eps_lower``, ``eps_upper``, ``certified``, ``seconds`` tensors.

    Returns:
        A JSON-serialisable dictionary.
    """
    summary: dict[str, Any] = {"kinds": {}, "ratios": {}, "shape_statistics": {}}
    for kind, result in results.items():
        certified = result["certified"]
        widths = geometric_mean_width(result["eps_lower"], result["eps_upper"])
        summary["kinds"][kind] = {
            "examples": int(certified.numel()),
            "certified_fraction": certified_fraction(certified),
            "mean_geometric_width": mean_width_over_certified(widths, certified),
            "seconds_per_example": float(result["seconds"].double().mean()) if certified.numel() else 0.0,
        }
    ratios = width_ratios({kind: values["mean_geometric_width"] for kind, values in summary["kinds"].items()})
    summary["ratios"] = {f"asymmetric/{other}": ratio for other, ratio in ratios.items()}
    for kind, result in results.items():
        mask = result["certified"]
        if int(mask.sum()) < 2:
            continue
        eps_lower = result["eps_lower"][mask][:SHAPE_STATISTICS_EXAMPLES]
        eps_upper = result["eps_upper"][mask][:SHAPE_STATISTICS_EXAMPLES]
        widths, explorer = eps_lower + eps_upper, eps_upper - eps_lower
        stats = {
            "examples": int(widths.shape[0]),
            "cosine_width": pairwise_cosine_similarity(widths),
            "wasserstein_width": pairwise_wasserstein_distance(widths),
        }
        if kind == "asymmetric":
            stats["wasserstein_explorer"] = pairwise_wasserstein_distance(explorer)
        summary["shape_statistics"][kind] = stats
    return summary


def write_report(
    results: dict[str, dict[str, torch.Tensor]],
    dataset: Dataset,
    options: CertifyOptions,
    output_dir: Path,
    input_range: tuple[float, float],
    logger: TensorBoardLogger | None,
    facts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``summary.json``, ``radii.pt``, the PNG figures and the TensorBoard entries (rank 0 only).

    Args:
        results: Gathered per-example results per kind.
        dataset: The test dataset the indices refer to (for the figures' inputs).
        options: The ``certify`` options.
        output_dir: Report folder.
        input_range: Range of valid inputs.
        logger: TensorBoard logger of the run, or ``None``.
        facts: Extra top-level entries of ``summary.json`` (e.g. ``weights``, ``labels``).

    Returns:
        The summary dictionary.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(results)
    summary.update(facts or {})
    summary["options"] = asdict(options)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    torch.save(results, output_dir / "radii.pt")

    first = next(iter(results.values()), None)
    count = 0 if first is None else min(options.num_figure_examples, int(first["index"].numel()))
    is_image = first is not None and first["eps_lower"].dim() == 4
    if count > 0 and is_image:
        images = torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in first["index"][:count]])
        heatmaps = {k: 1 - (r["eps_lower"][:count] + r["eps_upper"][:count]) for k, r in results.items()}
        save_figure(map_rows_figure(images, {f"1-(e1+e2) {k}": v for k, v in heatmaps.items()}, input_range),
                    output_dir / "figures" / "heatmaps.png")
        if "asymmetric" in results:
            explorer = results["asymmetric"]["eps_upper"][:count] - results["asymmetric"]["eps_lower"][:count]
            save_figure(map_rows_figure(images, {"e2-e1": explorer}, input_range, diverging=("e2-e1",)),
                        output_dir / "figures" / "explorer.png")

    if logger is not None:
        writer = logger.experiment
        for kind, values in summary["kinds"].items():
            for name in ("mean_geometric_width", "certified_fraction", "seconds_per_example"):
                writer.add_scalar(f"certify/{kind}/{name}", values[name], 0)
        for name, value in summary["ratios"].items():
            writer.add_scalar(f"certify/ratio/{name.replace('/', '_over_')}", value, 0)
        for kind, stats in summary["shape_statistics"].items():
            for name, value in stats.items():
                if name != "examples":
                    writer.add_scalar(f"certify/{kind}/{name}", value, 0)
        for kind, result in results.items():
            mask = result["certified"]
            if mask.any():
                writer.add_histogram(f"certify/{kind}/eps_lower", result["eps_lower"][mask].flatten(), 0)
                writer.add_histogram(f"certify/{kind}/eps_upper", result["eps_upper"][mask].flatten(), 0)
                writer.add_histogram(f"certify/{kind}/width",
                                     geometric_mean_width(result["eps_lower"], result["eps_upper"])[mask], 0)
            if count > 0 and is_image:
                width = result["eps_lower"][:count] + result["eps_upper"][:count]
                writer.add_image(f"certify/{kind}/heatmap", colormap_grid(1 - width), 0)
                if kind == "asymmetric":
                    writer.add_image("certify/asymmetric/explorer", colormap_grid(
                        result["eps_upper"][:count] - result["eps_lower"][:count], cmap="coolwarm", symmetric=True), 0)
        writer.flush()
    return summary
