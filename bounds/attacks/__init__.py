"""Stateless, batched adversarial attacks returning the adversarial input and its per-step increments.

One attack per module: :func:`~bounds.attacks.fgsm.fgsm`, :func:`~bounds.attacks.bim.bim`,
:func:`~bounds.attacks.pgd.pgd` (l_inf and l_2; :func:`~bounds.attacks.pgd.per_example_pgd` with a random start that
depends only on each example's dataset index) and :func:`~bounds.attacks.carlini_wagner.carlini_wagner_l2`.
"""

from bounds.attacks.bim import bim
from bounds.attacks.carlini_wagner import carlini_wagner_l2
from bounds.attacks.common import AttackResult, Box, LossFn, Mask
from bounds.attacks.fgsm import fgsm
from bounds.attacks.pgd import per_example_pgd, pgd

__all__ = ["AttackResult", "Box", "LossFn", "Mask", "bim", "carlini_wagner_l2", "fgsm", "per_example_pgd", "pgd"]
