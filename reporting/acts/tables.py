"""The markdown tables of the ACTS protocol report (``acts.md``: ACTS Tables 1, 2, 3, 5, 6, 7).

Every table has one row per attack (FGSM, BIM, PGD, in the paper's order) and model, as in the paper; the numbers
come from :func:`reporting.acts.summary.summarise_acts`.
"""

import math
from collections.abc import Mapping
from typing import Any

from bounds.acts import DEFAULT_C
from reporting.acts.options import ATTACK_LABELS

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
        summary: The output of :func:`~reporting.acts.summary.summarise_acts` (with ``model``, and
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
