"""The result type of :func:`bounds.certify`."""

from dataclasses import dataclass
from typing import Literal

import torch

Kind = Literal["uniform", "nonuniform", "asymmetric"]
"""The certification kinds (Amoeba Section 4): a scalar radius, symmetric per-pixel radii, per-pixel ``eps1, eps2``."""
KINDS: tuple[str, ...] = ("uniform", "nonuniform", "asymmetric")


@dataclass(frozen=True)
class Certificate:
    """Certified per-pixel radii of a batch of examples.

    Guarantee: for every example with ``certified[b]`` true, the bound method the certificate was computed
    with (interval propagation for ``method="ibp"``; CROWN, or CROWN with optimised slopes, for the linear
    methods, each evaluated on exactly this box) proves that the lower bound of ``f_y - f_j`` over the box
    ``[x - eps_lower, x + eps_upper]`` (intersected with the input range when ``clip_to_input_range`` was asked
    for) is at least ``delta`` for every class ``j != y``, so every input in the box keeps the label ``y``.

    Attributes:
        kind: ``"asymmetric"`` (Amoeba), ``"nonuniform"`` (Liu et al. 2019, ``eps_lower == eps_upper``
            per pixel) or ``"uniform"`` (one scalar radius per example).
        eps_lower: Left radii ``eps1``, shaped like the input batch, ``>= 0``.
        eps_upper: Right radii ``eps2``, shaped like the input batch, ``>= 0``.
        certified: Bool tensor ``[B]``; false for misclassified examples (zero radii) and for
            examples whose final bound check failed (zero radii too).
        labels: The labels ``y`` the certificate protects, ``[B]``.
        delta: The margin the final check proved.
        seconds: Wall-clock seconds the whole batch took.
    """

    kind: Kind
    eps_lower: torch.Tensor
    eps_upper: torch.Tensor
    certified: torch.Tensor
    labels: torch.Tensor
    delta: float
    seconds: float

    @property
    def batch_size(self) -> int:
        """Number of examples in the certificate."""
        return int(self.certified.shape[0])

    @property
    def seconds_per_example(self) -> float:
        """Wall-clock seconds per example."""
        return self.seconds / max(self.batch_size, 1)

    @property
    def width(self) -> torch.Tensor:
        """Per-pixel box widths ``eps_lower + eps_upper``."""
        return self.eps_lower + self.eps_upper
