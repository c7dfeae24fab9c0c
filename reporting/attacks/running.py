"""Running the attacks report of ``certify.py``: plain and bound-guided attacks per batch (Amoeba Table 4).

For each attack of Amoeba Table 8 (:class:`~reporting.attacks.options.AttackReportOptions`) three variants run on
the same correctly classified examples:

- ``plain``: the attack itself;
- ``s``: ``A^s``, Algorithm 2 guided by the non-uniform (symmetric) certificate;
- ``a``: ``A^a``, Algorithm 2 guided by the asymmetric (Amoeba) certificate.

The guided variants reuse the certificates that the certification pass of
:class:`~reporting.running.CertificationTask` computed for the same batch. Per example the report keeps whether the
model still classifies the adversarial input correctly and the l_inf, l_0, l_2 and l_1 distances of Table 4
(:func:`bounds.perturbation_distances`). This module is orchestration only; the attacks, Algorithm 2 and the
distances live in :mod:`bounds`; :mod:`reporting.attacks.rendering` turns the rows into the report.
"""

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from bounds.attacks import AttackResult, carlini_wagner_l2, fgsm, pgd
from bounds.certificate import Certificate
from bounds.guided_attack import guided_attack, perturbation_distances
from callbacks.gathering import Rows
from reporting.attacks.options import AttackReportOptions

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


def with_restarts(attack: Callable[..., AttackResult], restarts: int) -> Callable[..., AttackResult]:
    """Run ``attack`` ``restarts`` times; each example keeps the first run that fools the model, else the last.

    Every run draws its own random start from the same ``generator`` (passed through), so the first run is the
    attack without restarts and more restarts never fool fewer examples.

    Args:
        attack: ``attack(model, x, y, **kwargs) -> AttackResult`` with a random start.
        restarts: Number of runs (1: ``attack`` itself).

    Returns:
        An attack with the same signature; its result records no steps.
    """
    if restarts == 1:
        return attack

    def restarted(model: nn.Module, x: Tensor, y: Tensor, **kwargs: Any) -> AttackResult:
        best = attack(model, x, y, **kwargs)
        adversarial, success = best.adversarial.clone(), best.success.clone()
        for _ in range(restarts - 1):
            if bool(success.all()):
                break
            result = attack(model, x, y, **kwargs)
            update = ~success
            adversarial[update] = result.adversarial[update]
            success = success | result.success
        return AttackResult(adversarial=adversarial, steps=x.new_zeros((0, *x.shape)), success=success)

    return restarted


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
        options: The report's options (``certify.attacks``).
        input_range: ``(low, high)`` every attack clamps to.
        seed: Seed of PGD's random start (per batch: ``seed`` plus the batch's smallest dataset index).
    """

    def __init__(self, options: AttackReportOptions, input_range: tuple[float, float] = (-1.0, 1.0),
                 seed: int = 0) -> None:
        self.options = options
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.seed = seed

    def specs(self, generator: torch.Generator | None = None) -> list[AttackSpec]:
        """The attacks of the report, in Table 4's order.

        Args:
            generator: Random generator of PGD's start.

        Returns:
            One :class:`AttackSpec` per attack setting.
        """
        o, bound = self.options, {"input_range": self.input_range}
        specs = [AttackSpec(f"fgsm_linf_eps{eps:g}", "FGSM", f"(l_inf), eps = {eps:g}", eps,
                            partial(fgsm, eps=eps, **bound)) for eps in o.fgsm_eps]
        restarts = f", {o.pgd_restarts} restarts" if o.pgd_restarts > 1 else ""  # e.g. "(l_inf, 5 restarts)"
        for norm, eps, step, steps in (("linf", o.pgd_linf_eps, o.pgd_linf_step_size, o.pgd_linf_steps),
                                       ("l2", o.pgd_l2_eps, o.pgd_l2_step_size, o.pgd_l2_steps)):
            run = partial(pgd, norm=norm, eps=eps, step_size=step, steps=steps, generator=generator,
                          record_steps=False, **bound)
            specs.append(AttackSpec(f"pgd_{norm}_eps{eps:g}", "PGD", f"(l_{norm[1:]}{restarts}), eps = {eps:g}",
                                    eps if norm == "linf" else None, with_restarts(run, o.pgd_restarts)))
        specs.append(AttackSpec(f"cw_l2_kappa{o.cw_kappa:g}", "C&W", f"(l_2), kappa = {o.cw_kappa:g}", None,
                                partial(carlini_wagner_l2, kappa=o.cw_kappa, search_steps=o.cw_search_steps,
                                        max_iterations=o.cw_max_iterations, c_init=o.cw_c_init, lr=o.cw_lr, **bound)))
        return specs

    def keys(self) -> list[str]:
        """Every ``"<attack key>/<variant>"`` of the report, in Table 4's order (the same on every rank)."""
        return [f"{spec.key}/{variant}" for spec in self.specs() for variant in VARIANTS]

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
        o = self.options
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
                                                   p_start=o.p_start, p_step=o.p_step, p_max=o.p_max)
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
