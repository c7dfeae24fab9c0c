"""Rendering of the attacks report: Table 4 numbers, ``attacks.md``, ``attacks.json``, ``attacks.pt``, TensorBoard.

The numbers come from the gathered rows of :meth:`reporting.attacks.running.AttackReport.run`.
"""

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from callbacks.gathering import Rows
from reporting.attacks.running import DISTANCES, VARIANTS, AttackSpec


def _mean_std(values: Tensor) -> dict[str, float]:
    if values.numel() == 0:
        return {"mean": math.nan, "std": math.nan}
    values = values.double()
    return {"mean": float(values.mean()), "std": float(values.std(unbiased=False))}


def summarise_attacks(results: Mapping[str, Rows], specs: Sequence[AttackSpec]) -> dict[str, Any]:
    """Table 4 numbers from the gathered per-example rows.

    Args:
        results: ``"<attack key>/<variant>"`` -> gathered rows (each example once).
        specs: The attack specs, for names and order.

    Returns:
        JSON-serialisable ``{"attacks": [{"key", "name", "setting", "variants": {variant: {...}}}]}``; each
        variant has ``examples``, ``accuracy`` (fraction still classified correctly), ``mean``/``std`` of every
        distance over all examples (Table 4's convention), the mean distances over the successful examples
        only (``successful``), the mean Algorithm 2 proportion ``p`` (guided variants) and
        ``seconds_per_example``.
    """
    attacks = []
    for spec in specs:
        variants: dict[str, Any] = {}
        for variant in VARIANTS:
            rows = results.get(f"{spec.key}/{variant}")
            if not rows:
                continue
            correct = rows["correct"]
            fooled = ~correct
            entry: dict[str, Any] = {
                "examples": int(correct.numel()),
                "accuracy": float(correct.double().mean()),
                "distances": {name: _mean_std(rows[name]) for name in DISTANCES},
                "successful": {name: _mean_std(rows[name][fooled])["mean"] for name in DISTANCES},
                "seconds_per_example": float(rows["seconds"].mean()),
            }
            if variant != "plain":
                entry["mean_p"] = float(rows["p"].mean())
            variants[variant] = entry
        attacks.append({"key": spec.key, "name": spec.name, "setting": spec.setting, "variants": variants})
    return {"attacks": attacks}


def _cell(stats: dict[str, float], digits: int) -> str:
    return f"{stats['mean']:.{digits}f} ({stats['std']:.{digits}f})"


def attacks_markdown(summary: Mapping[str, Any]) -> str:
    """A markdown table in the layout of Amoeba Table 4 (mean with the standard deviation in brackets).

    Args:
        summary: The output of :func:`summarise_attacks`.

    Returns:
        The markdown text.
    """
    lines = [
        "| Attack | Accuracy | l_inf | l_0 | l_2 | l_1 | l_1 of successful | mean p | s/example |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for attack in summary["attacks"]:
        for variant, entry in attack["variants"].items():
            mark = "" if variant == "plain" else f"^{variant}"
            d = entry["distances"]
            mean_p = f"{entry['mean_p']:.2f}" if "mean_p" in entry else "-"
            lines.append(
                f"| {attack['name']}{mark} {attack['setting']} | {100 * entry['accuracy']:.2f}% | "
                f"{_cell(d['l_inf'], 2)} | {_cell(d['l_0'], 1)} | {_cell(d['l_2'], 2)} | {_cell(d['l_1'], 2)} | "
                f"{entry['successful']['l_1']:.2f} | {mean_p} | {entry['seconds_per_example']:.4f} |"
            )
    examples = {entry["examples"] for attack in summary["attacks"] for entry in attack["variants"].values()}
    lines += [
        "",
        f"Examples: {', '.join(str(n) for n in sorted(examples))} correctly classified test examples. Accuracy: "
        "share still classified correctly under attack. Distances: mean (std) over all examples, as in Amoeba "
        "Table 4 (an example the attack cannot fool keeps its last candidate, e.g. C&W keeps the clean input). "
        "^s: guided by the non-uniform certificate, ^a: by the asymmetric (Amoeba) certificate (Algorithm 2).",
    ]
    return "\n".join(lines) + "\n"


def write_attacks_report(
    results: Mapping[str, Rows], specs: Sequence[AttackSpec], output_dir: Path, writer: SummaryWriter | None
) -> dict[str, Any]:
    """Write ``attacks.json``, ``attacks.md``, ``attacks.pt`` (the per-example rows) and TensorBoard scalars (rank 0).

    Tags: ``certify/attacks/<attack key>/<variant>/<accuracy|l_inf|l_0|l_2|l_1>`` (distance means).

    Args:
        results: Gathered rows per ``"<attack key>/<variant>"``.
        specs: The attack specs.
        output_dir: Report folder.
        writer: TensorBoard writer of the run, or ``None``.

    Returns:
        The summary written to ``attacks.json``.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise_attacks(results, specs)
    (output_dir / "attacks.json").write_text(json.dumps(summary, indent=2))
    (output_dir / "attacks.md").write_text(attacks_markdown(summary))
    torch.save(dict(results), output_dir / "attacks.pt")
    if writer is not None:
        for attack in summary["attacks"]:
            for variant, entry in attack["variants"].items():
                prefix = f"certify/attacks/{attack['key']}/{variant}"
                writer.add_scalar(f"{prefix}/accuracy", entry["accuracy"], 0)
                for name in DISTANCES:
                    writer.add_scalar(f"{prefix}/{name}", entry["distances"][name]["mean"], 0)
        writer.flush()
    return summary
