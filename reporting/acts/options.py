"""The options of the ACTS protocol report (the ``certify.acts`` group, CLEVER in ``certify.acts.clever``).

An option is declared once, here: its type, its default and its docstring (which ``python certify.py --help``
shows). The CLI builds these dataclasses from their own signatures (nested groups of
:class:`~reporting.options.CertifyOptions`); :class:`~reporting.acts.running.ACTSProtocol` runs them and the
rendering modules read the same objects.
"""

from dataclasses import dataclass, field
from typing import Any, Literal

from bounds.acts import DEFAULT_C

CleverNorm = Literal["l2", "linf"]
ACTSAttack = Literal["fgsm", "bim", "pgd"]
ACTS_ATTACKS: tuple[str, ...] = ("fgsm", "bim", "pgd")
"""The attacks of the ACTS paper, in its tables' order."""
ATTACK_LABELS = {"fgsm": "FGSM", "bim": "BIM", "pgd": "PGD"}

DEFAULT_ACTS_EPS = (0.175, 0.225, 0.275)
"""Default noise levels N1-N3 (``certify.acts.eps``): measured with benchmarks/bench_acts_protocol.py, 3-step PGD
fools 12%, ~19%, ~29% of the quickstart robust LeNet's and 24%, ~35%, ~49% of the normal LeNet's correctly classified
test digits at these levels."""


@dataclass
class CleverOptions:
    """CLEVER, scored beside ACTS once per example and norm (ACTS Table 7; ``certify.acts.clever``).

    Args:
        norms: CLEVER norms scored beside ACTS (ACTS Table 7 has both); empty for no CLEVER.
        radius_l2: CLEVER's l_2 sampling radius (and largest score).
        radius_linf: CLEVER's l_inf sampling radius (and largest score).
        num_batches: CLEVER's number of batches ``N_b`` (small by default for speed; the paper: 500).
        batch_size: CLEVER's samples per batch ``N_s`` (small by default for speed; the paper: 1024).
        paper_sizes: Use the CLEVER paper's 500 x 1024 samples instead of ``num_batches`` x ``batch_size``.
        top_k: CLEVER's competing classes (1: the runner-up, CLEVER's "top-2" target that ACTS Table 4 compares
            with; ``null``: all classes, untargeted).
        max_points_per_pass: CLEVER samples per forward-backward pass (memory; at least ``batch_size``): 1024 suits
            MNIST-sized inputs; an ImageNet ResNet50 holds the activations of every sample of a pass, so use far
            fewer there.

    Raises:
        ValueError: On sample sizes below 1 or non-positive radii.
    """

    norms: list[CleverNorm] = field(default_factory=lambda: ["l2", "linf"])
    radius_l2: float = 2.0
    radius_linf: float = 0.3
    num_batches: int = 20
    batch_size: int = 64
    paper_sizes: bool = False
    top_k: int | None = 1
    max_points_per_pass: int = 1024

    def __post_init__(self) -> None:
        """Check the options; ``paper_sizes`` sets the paper's sample sizes."""
        unknown = set(self.norms) - {"l2", "linf"}
        if unknown:
            raise ValueError(f"certify.acts.clever.norms must be 'l2' and/or 'linf', got {sorted(unknown)}")
        self.norms = list(dict.fromkeys(self.norms))
        if self.paper_sizes:
            self.num_batches, self.batch_size = 500, 1024
        if (self.num_batches < 1 or self.batch_size < 1 or self.max_points_per_pass < 1
                or min(self.radius_l2, self.radius_linf) <= 0):
            raise ValueError("CLEVER needs num_batches, batch_size and max_points_per_pass >= 1 and positive radii")

    @property
    def radius(self) -> dict[str, float]:
        """The sampling radius per norm."""
        return {"l2": float(self.radius_l2), "linf": float(self.radius_linf)}


@dataclass
class ACTSReportOptions:
    """The ACTS protocol report (ACTS Section 4, Tables 1, 2, 3, 5, 6, 7 and Figs. 3-6; ``certify.acts``).

    Args:
        enabled: Write the ACTS protocol report (``acts.json``, ``acts.md``, ``acts.pt``, ``figures/acts_*.png``
            and the ``certify/acts/<attack>/...`` tags).
        num_examples: Cap on the examples of the protocol (the first ones of the certified examples).
        attacks: Attacks of the protocol, each at every level and scored from its own steps: ``fgsm`` (one step of
            eps), ``bim`` (``steps`` steps, no random start), ``pgd`` (the same from a random start drawn per
            example); the ACTS paper runs all three. They run and are reported in the paper's order.
        eps: l_inf noise levels N1 < N2 < N3 of the attacks, in input units; the defaults (on [-1, 1] inputs) make
            PGD fool about 10% to 50% of the quickstart LeNets' examples (the ACTS paper's ImageNet levels on
            [0, 1] pixels: 0.1/255, 0.2/255, 0.3/255).
        steps: BIM and PGD steps at every level (the ACTS paper: 3).
        step_fraction: BIM and PGD step size as a fraction of the level's eps (the ACTS paper: 0.5).
        top_k: Competing classes of ACTS in every table but Table 5 and in the figures (the ACTS paper: 10).
        top_k_values: Competing classes of Table 5's rows ACTS-k (the ACTS paper: 10, 20, 50; ``top_k`` is added
            if missing); the scores for all of them come from the same attack and Jacobian-vector product, so extra
            values cost nothing; a value above the number of classes minus one counts every other class.
        bins: Histogram bins of Overlap% and of the figures.
        clever: CLEVER beside ACTS.

    Raises:
        ValueError: On a non-positive ``num_examples`` or ``bins``, levels that are not positive and increasing,
            no attack, ``steps < 1``, ``step_fraction <= 0`` or top-k values below 1.
    """

    enabled: bool = True
    num_examples: int = 500
    attacks: list[ACTSAttack] = field(default_factory=lambda: list(ACTS_ATTACKS))
    eps: list[float] = field(default_factory=lambda: list(DEFAULT_ACTS_EPS))
    steps: int = 3
    step_fraction: float = 0.5
    top_k: int = 10
    top_k_values: list[int] = field(default_factory=lambda: [1, 5, 10])
    bins: int = 20
    clever: CleverOptions = field(default_factory=CleverOptions)

    def __post_init__(self) -> None:
        """Check the options; order the attacks as the paper and add ``top_k`` to ``top_k_values``."""
        if self.num_examples < 1 or self.bins < 1:
            raise ValueError(f"certify.acts.num_examples and certify.acts.bins must be >= 1, got {self.num_examples} "
                             f"and {self.bins}")
        self.eps = [float(eps) for eps in self.eps]
        if not self.eps or any(eps <= 0 for eps in self.eps) or self.eps != sorted(self.eps):
            raise ValueError(f"certify.acts.eps must be positive and increasing, got {self.eps}")
        unknown = [attack for attack in self.attacks if attack not in ACTS_ATTACKS]
        if not self.attacks or unknown:
            raise ValueError(f"certify.acts.attacks must be a non-empty list of {', '.join(ACTS_ATTACKS)}; "
                             f"got {list(self.attacks)}")
        self.attacks = [attack for attack in ACTS_ATTACKS if attack in self.attacks]
        values = sorted({int(k) for k in self.top_k_values})
        if self.steps < 1 or self.step_fraction <= 0 or self.top_k < 1 or not values or values[0] < 1:
            raise ValueError(f"need certify.acts.steps >= 1, step_fraction > 0, top_k and top_k_values >= 1; got "
                             f"{self.steps}, {self.step_fraction}, {self.top_k} and {values}")
        self.top_k_values = sorted({*values, int(self.top_k)})

    @property
    def level_names(self) -> list[str]:
        """``["N1", "N2", ...]``."""
        return [f"N{i + 1}" for i in range(len(self.eps))]

    def attack_description(self, attack: str) -> str:
        """How ``attack`` runs at each level, in words."""
        if attack == "fgsm":
            return "FGSM l_inf: one step of eps (ACTS direction: its sign-gradient step)"
        start = "random start (per example), excluded from ACTS" if attack == "pgd" else "no random start"
        return (f"{ATTACK_LABELS[attack]} l_inf: {self.steps} steps of {self.step_fraction:g} * eps, {start} "
                f"(ACTS direction: mean unit direction of the {self.steps} steps)")

    def describe(self, input_range: tuple[float, float]) -> dict[str, Any]:
        """The settings, for the report (``settings`` of ``acts.json``).

        Args:
            input_range: ``(low, high)`` the attacks and CLEVER's samples are clipped to.

        Returns:
            A JSON-serialisable description.
        """
        clever = self.clever
        return {
            "attacks": {attack: self.attack_description(attack) for attack in self.attacks},
            "eps_levels": dict(zip(self.level_names, self.eps, strict=True)),
            "input_range": [float(input_range[0]), float(input_range[1])],
            "steps": self.steps,
            "step_size": f"{self.step_fraction:g} * eps",
            "top_k": self.top_k,
            "top_k_values": self.top_k_values,
            "acts": (f"per attack and level from that attack's steps (mean unit direction, Eq. 7), per-class "
                     f"cross-entropy, l_2 step norm, top_k={self.top_k}, C={DEFAULT_C:g}"),
            "clever": {"norms": clever.norms, "radius": {n: clever.radius[n] for n in clever.norms},
                       "num_batches": clever.num_batches, "batch_size": clever.batch_size, "top_k": clever.top_k},
        }
