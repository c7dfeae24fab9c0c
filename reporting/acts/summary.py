"""The numbers of the ACTS protocol report (ACTS Tables 1, 2, 3, 5, 6 and 7) from the gathered per-example rows.

The rows come from :meth:`reporting.acts.running.ACTSProtocol.run`; :mod:`reporting.acts.tables` and
:mod:`reporting.acts.rendering` render the summary.
"""

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from bounds.acts import DEFAULT_C
from bounds.overlap import overlap_percent, score_auroc
from callbacks.gathering import Rows
from reporting.acts.running import ACTSProtocol


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


def summarise_acts(rows: Rows, protocol: ACTSProtocol, clean_accuracy: float | None,
                   metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The numbers of ACTS Tables 1, 2, 3, 5, 6 and 7 from the gathered rows, per attack.

    Args:
        rows: Gathered rows of :meth:`ACTSProtocol.run` (each example once, CPU).
        protocol: The protocol that produced them (its options give the attacks, levels, top-k values and
            Overlap%'s histogram bins).
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
    options, bins = protocol.options, protocol.options.bins
    examples = int(rows["index"].shape[0]) if rows else 0
    clevers = clever_metrics(rows)
    attacks: dict[str, Any] = {}
    for attack in options.attacks:
        attacked = rows[f"{attack}/attacked"]
        levels = []
        for level, (level_name, eps) in enumerate(zip(options.level_names, options.eps, strict=True)):
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
                              for i, k in enumerate(options.top_k_values)}
            levels.append(entry)
        flips = {}
        for low in range(len(levels)):
            for high in range(low + 1, len(levels)):
                flipped = attacked[:, low] & ~attacked[:, high]
                flips[f"{levels[low]['name']}->{levels[high]['name']}"] = int(flipped.sum())
        seconds: dict[str, Any] = {}
        for part in ("attack", "score"):
            seconds[part] = {n: _mean(rows[f"{attack}/{part}_seconds"][:, i])
                             for i, n in enumerate(options.level_names)}
        seconds["acts"] = {n: seconds["attack"][n] + seconds["score"][n] for n in options.level_names}
        seconds["acts_mean"] = sum(seconds["acts"].values()) / len(options.level_names)
        attacks[attack] = {"levels": levels, "attack_flips": flips, "seconds_per_image": seconds}
    return {
        "settings": options.describe(protocol.input_range),
        **dict(metadata or {}),
        "examples": examples,
        "clean_accuracy": clean_accuracy,
        "bins": bins,
        "attacks": attacks,
        "seconds_per_image": {metric: _mean(rows[f"{metric}_seconds"]) for metric in clevers},
    }
