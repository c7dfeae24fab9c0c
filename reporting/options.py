"""The ``certify:`` group of every config: the options of ``certify.py``, each declared once (train.py ignores them).

The CLI builds :class:`CertifyOptions` from its own signature; its two report fields are dataclasses too, so
jsonargparse makes them nested groups: ``certify.attacks.*`` (:class:`~reporting.attacks.options.
AttackReportOptions`) and ``certify.acts.*`` with ``certify.acts.clever.*`` (:class:`~reporting.acts.options.
ACTSReportOptions`). A new option of a report is one field (type, default, docstring) of that report's options
class; ``python certify.py --help`` lists it, and the report reads it from there.
"""

from dataclasses import dataclass, field
from typing import Literal

from bounds.certificate import Kind
from bounds.margins import Method
from reporting.acts.options import ACTSReportOptions
from reporting.attacks.options import AttackReportOptions


@dataclass
class CertifyOptions:
    """Options of ``certify.py``: which examples, how they are certified, and the two reports.

    Args:
        num_examples: Number of correctly classified test examples to certify (the paper uses 2,000).
        kinds: Certification kinds to run and compare (possibly none: ``[]``).
        batch_size: Examples certified together in one batched call.
        delta: Margin the certificate proves: ``lower[y] - upper[j] >= delta``.
        clip_to_input_range: Certify the box intersected with the input range (the widths are then those of the
            clipped box); off by default, as in the paper.
        output_dir: Folder for the report; default ``<checkpoint folder>/../certify``.
        num_figure_examples: Examples drawn in the heatmap and Explorer figures.
        seed: Seed of the reports' random draws: PGD's random starts (attacks and ACTS reports) and CLEVER's samples.
            The certification itself draws no random numbers.
        labels: Labels the reports score and certify against: ``dataset`` (the first ``num_examples`` test
            examples the model classifies correctly) or ``predicted`` (the first ``num_examples`` test examples,
            labelled with the model's own predictions, e.g. for a model whose weights cannot reach the dataset's
            accuracy, such as random weights); the reports record which.
        allow_no_checkpoint: Without ``--ckpt_path``, run on the model as built (random initialisation unless the
            model loads its own weights, e.g. ``model.weights``); off: ``--ckpt_path`` or ``model.weights`` is needed.
        method: Bound method of the certification and of its final check: ``ibp`` (interval propagation, Amoeba
            Theorem 1), ``crown`` (CROWN linear relaxation, never looser than ibp; much wider boxes, slower) or
            ``alpha-crown`` (CROWN with optimised ReLU slopes, never looser than crown; chain models only).
        crown_rounds: CROWN relaxations per example with ``method: crown`` (fewer: faster, narrower boxes).
        attacks: The attacks report (Amoeba Table 4): ``certify.attacks.enabled``, ``certify.attacks.num_examples``
            and the attacks' budgets.
        acts: The ACTS protocol report (ACTS Section 4, with CLEVER): ``certify.acts.enabled``,
            ``certify.acts.num_examples``, the attacks, noise levels and top-k values, and ``certify.acts.clever``.

    Raises:
        ValueError: On ``num_examples`` or ``batch_size`` below 1, a negative ``num_figure_examples`` or
            ``crown_rounds`` below 1.
    """

    num_examples: int = 2000
    kinds: list[Kind] = field(default_factory=lambda: ["uniform", "nonuniform", "asymmetric"])
    batch_size: int = 200
    delta: float = 1e-4
    clip_to_input_range: bool = False
    output_dir: str | None = None
    num_figure_examples: int = 16
    seed: int = 0
    labels: Literal["dataset", "predicted"] = "dataset"
    allow_no_checkpoint: bool = False
    method: Method = "ibp"
    crown_rounds: int = 4
    attacks: AttackReportOptions = field(default_factory=AttackReportOptions)
    acts: ACTSReportOptions = field(default_factory=ACTSReportOptions)

    def __post_init__(self) -> None:
        """Check the options."""
        if self.num_examples < 1 or self.batch_size < 1 or self.num_figure_examples < 0:
            raise ValueError("num_examples and batch_size must be >= 1 and num_figure_examples >= 0")
        if self.crown_rounds < 1:
            raise ValueError(f"certify.crown_rounds must be >= 1, got {self.crown_rounds}")
        self.kinds = list(self.kinds)
