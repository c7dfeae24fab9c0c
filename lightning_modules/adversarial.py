"""PGD-adversarial training (Madry et al. 2018; Amoeba Table 5, "Adversarial Training")."""

from typing import Any

import torch
import torch.nn.functional as F

from bounds.attacks.pgd import pgd
from lightning_modules.classifier import ImageClassifier


class AdversarialClassifier(ImageClassifier):
    """Train on l_inf PGD examples generated inside ``training_step``.

    The attack runs with the model in eval mode (every submodule's mode is restored afterwards) and takes
    gradients with ``torch.autograd.grad`` on the input only, so DDP's parameter-gradient hooks never
    fire during the attack. The loss is the cross-entropy on the adversarial batch, mixed with the clean
    loss by ``clean_loss_weight`` (0 gives Madry et al.'s pure adversarial loss, the paper's setting).

    Args:
        attack_eps: l_inf radius of the training attack (Table 5: 0.1 on [-1, 1] inputs).
        attack_step_size: PGD step size (Table 5: 0.005).
        attack_steps: PGD steps (Table 5: 20).
        attack_random_start: Start PGD from a uniform point of the ball.
        clean_loss_weight: Weight of the clean loss in ``(1 - w) * adv + w * clean``.
        **kwargs: The arguments of :class:`~lightning_modules.classifier.ImageClassifier` (architecture, data
            shape and range, optimiser, evaluation attack, weights); the CLI follows them into its signature.
    """

    def __init__(
        self,
        attack_eps: float = 0.1,
        attack_step_size: float = 0.005,
        attack_steps: int = 20,
        attack_random_start: bool = True,
        clean_loss_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if attack_eps <= 0 or attack_step_size <= 0 or attack_steps < 1:
            raise ValueError("attack_eps and attack_step_size must be positive and attack_steps >= 1")
        if not 0.0 <= clean_loss_weight <= 1.0:
            raise ValueError(f"clean_loss_weight must lie in [0, 1], got {clean_loss_weight}")
        super().__init__(**kwargs)
        self.save_hyperparameters()

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy on PGD examples (optionally mixed with the clean loss); accuracy on the PGD batch."""
        hp = self.hparams
        x_adv = pgd(
            self.model,
            x,
            y,
            norm="linf",
            eps=hp.attack_eps,
            step_size=hp.attack_step_size,
            steps=hp.attack_steps,
            random_start=hp.attack_random_start,
            input_range=tuple(hp.input_range),
            record_steps=False,
        ).adversarial.detach()
        logits_adv = self(x_adv)
        loss = F.cross_entropy(logits_adv, y)
        if hp.clean_loss_weight > 0:
            loss = (1 - hp.clean_loss_weight) * loss + hp.clean_loss_weight * F.cross_entropy(self(x), y)
        return loss, logits_adv
