"""The attacks report of ``certify.py``: plain and bound-guided attacks in the layout of Amoeba Table 4.

For each attack of Amoeba Table 8 (MNIST hyperparameters by default) three variants run on the same
correctly classified examples:

- ``plain``: the attack itself;
- ``s``: ``A^s``, Algorithm 2 guided by the non-uniform (symmetric) certificate;
- ``a``: ``A^a``, Algorithm 2 guided by the asymmetric (Amoeba) certificate.

The guided variants reuse the certificates that the certification pass of :class:`CertificationTask` computed
for the same batch. Per example the report keeps whether the model still classifies the adversarial input
correctly and the l_inf, l_0, l_2 and l_1 distances of Table 4 (:func:`bounds.perturbation_distances`).
This module is orchestration only; the attacks, Algorithm 2 and the distances live in :mod:`bounds`.
"""

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

from bounds.attacks import AttackResult, carlini_wagner_l2, fgsm, pgd
from bounds.certificate import Certificate
from bounds.guided_attack import guided_attack, perturbation_distances
from lightning_modules.gathering import Rows

VARIANTS: dict[str, str | None] = {"plain": None, "s": "nonuniform", "a": "asymmetric"}
"""Variant -> the certificate kind that guides it (Amoeba Section 5.1: ``A^s`` non-uniform, ``A^a`` Amoeba)."""

DISTANCES = ("l_inf", "l_0", "l_2", "l_1")
"""The distance columns of Amoeba Table 4."""


@dataclass(frozen=True)
class AttackSpec:
    """One row group of Table 4.

    Attributes:
        key: Identifier used in files and TensorBoard tags, e.g. ``"pgd_linf_eps0.2"``.
        name: Attack name for the table (``FGSM``, ``PGD``, ``C&W``).
        setting: Norm and hyperparameter text for the table, e.g. ``"(l_inf), eps = 0.2"``.
        linf_eps: The l_inf budget of an l_inf attack (checked by the tests), ``None`` for l_2 attacks.
        attack: ``attack(model, x, y, *, mask=None) -> AttackResult`` with every other option bound.
    """

    key: str
    name: str
    setting: str
    linf_eps: float | None
    attack: Callable[..., AttackResult]


def select_certificate(certificate: Certificate, rows: Tensor) -> Certificate:
    """The certificate of a subset of the batch's examples.

    Args:
        certificate: Certificate of a whole batch.
        rows: Positions in the batch (a long tensor).

    Returns:
        A certificate of ``rows`` only (same kind, delta and timing).
    """
    return replace(certificate, eps_lower=certificate.eps_lower[rows], eps_upper=certificate.eps_upper[rows],
                   certified=certificate.certified[rows], labels=certificate.labels[rows])


class AttackReport:
    """Run the plain, ``^s`` and ``^a`` variants of every configured attack on a batch (Amoeba Table 4).

    Args:
        fgsm_eps: l_inf budgets of FGSM (Table 8: 0.2 and 0.3 for MNIST/FMNIST).
        pgd_linf_eps: l_inf budget of PGD (Table 8: 0.2).
        pgd_linf_step_size: PGD l_inf step ``alpha`` (Table 8: 0.015).
        pgd_linf_steps: PGD l_inf steps ``n`` (Table 8: 20).
        pgd_l2_eps: l_2 budget of PGD (Table 8: 5.0 for MNIST/FMNIST, 10.0 for SVHN).
        pgd_l2_step_size: PGD l_2 step (Table 8: 0.5).
        pgd_l2_steps: PGD l_2 steps (Table 8: 20).
        cw_kappa: C&W confidence ``kappa`` (Table 8: 0).
        cw_search_steps: Binary-search steps over C&W's constant ``c``.
        cw_max_iterations: Adam iterations per C&W search step.
        cw_c_init: C&W's initial trade-off constant ``c``.
        cw_lr: C&W's Adam learning rate.
        p_start: First proportion of pixels of Algorithm 2.
        p_step: Increase of the proportion per round of Algorithm 2.
        p_max: Last proportion of Algorithm 2.
        input_range: ``(low, high)`` every attack clamps to.
        seed: Seed of PGD's random start (per batch: ``seed`` plus the batch's smallest dataset index).

    Raises:
        ValueError: On negative budgets or steps.
    """

    def __init__(
        self,
        *,
        fgsm_eps: Sequence[float] = (0.2, 0.3),
        pgd_linf_eps: float = 0.2,
        pgd_linf_step_size: float = 0.015,
        pgd_linf_steps: int = 20,
        pgd_l2_eps: float = 5.0,
        pgd_l2_step_size: float = 0.5,
        pgd_l2_steps: int = 20,
        cw_kappa: float = 0.0,
        cw_search_steps: int = 6,
        cw_max_iterations: int = 200,
        cw_c_init: float = 1e-2,
        cw_lr: float = 5e-2,
        p_start: float = 0.1,
        p_step: float = 0.1,
        p_max: float = 1.0,
        input_range: tuple[float, float] = (-1.0, 1.0),
        seed: int = 0,
    ) -> None:
        budgets = [*fgsm_eps, pgd_linf_eps, pgd_linf_step_size, pgd_l2_eps, pgd_l2_step_size, cw_kappa]
        if any(value < 0 for value in budgets):
            raise ValueError(f"attack budgets, step sizes and kappa must be >= 0, got {budgets}")
        if min(pgd_linf_steps, pgd_l2_steps, cw_search_steps, cw_max_iterations) < 1:
            raise ValueError("attack step counts must be >= 1")
        if not (0.0 <= p_start <= p_max <= 1.0) or p_step <= 0:
            raise ValueError(f"need 0 <= p_start <= p_max <= 1 and p_step > 0, got {p_start}, {p_max}, {p_step}")
        self.fgsm_eps = [float(eps) for eps in fgsm_eps]
        self.pgd_linf = (float(pgd_linf_eps), float(pgd_linf_step_size), int(pgd_linf_steps))
        self.pgd_l2 = (float(pgd_l2_eps), float(pgd_l2_step_size), int(pgd_l2_steps))
        if cw_c_init <= 0 or cw_lr <= 0:
            raise ValueError(f"cw_c_init and cw_lr must be > 0, got {cw_c_init}, {cw_lr}")
        self.cw = (float(cw_kappa), int(cw_search_steps), int(cw_max_iterations), float(cw_c_init), float(cw_lr))
        self.p_start, self.p_step, self.p_max = p_start, p_step, p_max
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.seed = seed

    def specs(self, generator: torch.Generator | None = None) -> list[AttackSpec]:
        """The attacks of the report, in Table 4's order.

        Args:
            generator: Random generator of PGD's start.

        Returns:
            One :class:`AttackSpec` per attack setting.
        """
        bound = {"input_range": self.input_range}
        specs = [AttackSpec(f"fgsm_linf_eps{eps:g}", "FGSM", f"(l_inf), eps = {eps:g}", eps,
                            partial(fgsm, eps=eps, **bound)) for eps in self.fgsm_eps]
        eps, step, steps = self.pgd_linf
        specs.append(AttackSpec(f"pgd_linf_eps{eps:g}", "PGD", f"(l_inf), eps = {eps:g}", eps,
                                partial(pgd, norm="linf", eps=eps, step_size=step, steps=steps, generator=generator,
                                        record_steps=False, **bound)))
        eps, step, steps = self.pgd_l2
        specs.append(AttackSpec(f"pgd_l2_eps{eps:g}", "PGD", f"(l_2), eps = {eps:g}", None,
                                partial(pgd, norm="l2", eps=eps, step_size=step, steps=steps, generator=generator,
                                        record_steps=False, **bound)))
        kappa, search_steps, iterations, c_init, lr = self.cw
        specs.append(AttackSpec(f"cw_l2_kappa{kappa:g}", "C&W", f"(l_2), kappa = {kappa:g}", None,
                                partial(carlini_wagner_l2, kappa=kappa, search_steps=search_steps,
                                        max_iterations=iterations, c_init=c_init, lr=lr, **bound)))
        return specs

    def run(
        self, model: nn.Module, index: Tensor, x: Tensor, y: Tensor, certificates: Mapping[str, Certificate]
    ) -> dict[str, Rows]:
        """Attack one batch with every attack and variant.

        Args:
            model: Classifier mapping inputs to logits.
            index: Dataset positions ``[B]``.
            x: Inputs ``[B, ...]`` (correctly classified).
            y: Labels ``[B]``.
            certificates: At least the ``"nonuniform"`` and ``"asymmetric"`` certificates of exactly these
                examples (the guides of ``A^s`` and ``A^a``).

        Returns:
            ``"<attack key>/<variant>"`` -> rows with ``index``, ``correct`` (the model still predicts ``y`` at
            the adversarial input), ``l_inf``, ``l_0``, ``l_2``, ``l_1``, ``p`` (Algorithm 2's final proportion,
            NaN for plain attacks) and ``seconds`` (the variant's batch time divided by its size).

        Raises:
            ValueError: If a guiding certificate is missing or does not match ``x``.
        """
        for kind in ("nonuniform", "asymmetric"):
            if kind not in certificates:
                raise ValueError(f"the attacks report needs the '{kind}' certificate of the batch")
            if certificates[kind].eps_lower.shape != x.shape:
                raise ValueError(f"the '{kind}' certificate does not match the batch {tuple(x.shape)}")
        results: dict[str, Rows] = {}
        for spec in self.specs():
            for variant, kind in VARIANTS.items():
                generator = torch.Generator(device=x.device).manual_seed(self.seed + int(index.min()))
                attack = replace(spec, attack=partial(spec.attack, generator=generator)) if "pgd" in spec.key else spec
                start = time.perf_counter()
                if kind is None:
                    result = attack.attack(model, x, y)
                    p_used = torch.full((x.shape[0],), math.nan, dtype=torch.float64)
                else:
                    result, p_used = guided_attack(model, x, y, certificates[kind], attack.attack,
                                                   p_start=self.p_start, p_step=self.p_step, p_max=self.p_max)
                seconds = (time.perf_counter() - start) / max(x.shape[0], 1)
                distances = perturbation_distances(x, result.adversarial)
                results[f"{spec.key}/{variant}"] = {
                    "index": index.detach().cpu(),
                    "correct": (~result.success).detach().cpu(),
                    **{name: distances[name].detach().double().cpu() for name in DISTANCES},
                    "p": p_used.detach().double().cpu(),
                    "seconds": torch.full((x.shape[0],), seconds, dtype=torch.float64),
                }
        return results


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
