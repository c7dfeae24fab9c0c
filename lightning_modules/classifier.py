"""The normal (clean-loss) image classifier, base of every training mode."""

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from bounds.attacks.pgd import pgd
from lightning_modules.zoo import Architecture, build_model


class ImageClassifier(LightningModule):
    """A zoo classifier trained on the clean cross-entropy loss (Amoeba Table 5, "Normal Training").

    Every training mode derives from this class, so all of them log the same tags:
    ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``val/adv_acc`` (accuracy under the
    evaluation PGD attack), and the same under ``test/``.

    Args:
        architecture: Zoo architecture (``fc100``, ``fc300``, ``fc500``, ``lenet``, ``fcnn2d``, ``and_gate``).
        input_shape: Shape of one example; linked from the datamodule by the CLI.
        num_classes: Number of classes; linked from the datamodule by the CLI.
        input_range: ``(low, high)`` of valid inputs; linked from the datamodule by the CLI.
        learning_rate: Adam learning rate (the paper uses 1e-4 for 100 epochs).
        weight_decay: Adam weight decay.
        eval_attack_eps: l_inf radius of the PGD attack that measures ``val/adv_acc`` and
            ``test/adv_acc``; 0 disables the adversarial evaluation.
        eval_attack_step_size: Step size of that attack.
        eval_attack_steps: Number of steps of that attack (random start).
    """

    def __init__(
        self,
        architecture: Architecture = "lenet",
        input_shape: tuple[int, ...] = (1, 28, 28),
        num_classes: int = 10,
        input_range: tuple[float, float] = (-1.0, 1.0),
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        eval_attack_eps: float = 0.1,
        eval_attack_step_size: float = 0.01,
        eval_attack_steps: int = 20,
    ) -> None:
        super().__init__()
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate}")
        if eval_attack_eps < 0 or eval_attack_step_size < 0 or eval_attack_steps < 0:
            raise ValueError("eval_attack_eps, eval_attack_step_size and eval_attack_steps must be >= 0")
        if input_range[0] >= input_range[1]:
            raise ValueError(f"input_range must be (low, high) with low < high, got {input_range}")
        self.save_hyperparameters()
        self.model: nn.Module = build_model(architecture, tuple(input_shape), num_classes)
        self.example_input_array = torch.zeros(2, *input_shape)
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_adv_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_adv_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch of inputs to logits."""
        return self.model(x)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss minimised in ``training_step`` and the logits its accuracy is measured on.

        Subclasses override this one method to change the training mode.

        Args:
            x: Input batch.
            y: Labels.

        Returns:
            ``(loss, logits)``.
        """
        logits = self(x)
        return F.cross_entropy(logits, y), logits

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Minimise :meth:`training_loss` and log ``train/loss`` and ``train/acc``."""
        x, y = batch
        loss, logits = self.training_loss(x, y)
        self.train_loss(loss.detach(), weight=x.shape[0])
        self.train_acc(logits.detach(), y)
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def adversarial_accuracy_input(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The evaluation attack: l_inf PGD with random start at ``eval_attack_eps`` (model in eval mode)."""
        hp = self.hparams
        return pgd(
            self.model,
            x,
            y,
            norm="linf",
            eps=hp.eval_attack_eps,
            step_size=hp.eval_attack_step_size,
            steps=hp.eval_attack_steps,
            random_start=True,
            input_range=tuple(hp.input_range),
            record_steps=False,
        ).adversarial

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        logits = self(x)
        loss_metric, acc_metric, adv_metric = (
            (self.val_loss, self.val_acc, self.val_adv_acc)
            if stage == "val"
            else (self.test_loss, self.test_acc, self.test_adv_acc)
        )
        loss_metric(F.cross_entropy(logits, y), weight=x.shape[0])
        acc_metric(logits, y)
        self.log(f"{stage}/loss", loss_metric, prog_bar=stage == "val")
        self.log(f"{stage}/acc", acc_metric, prog_bar=stage == "val")
        if self.hparams.eval_attack_eps > 0 and self.hparams.eval_attack_steps > 0:
            x_adv = self.adversarial_accuracy_input(x, y)
            with torch.no_grad():
                adv_metric(self(x_adv), y)
            self.log(f"{stage}/adv_acc", adv_metric, prog_bar=stage == "val")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Log ``val/loss``, ``val/acc`` and ``val/adv_acc``."""
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Log ``test/loss``, ``test/acc`` and ``test/adv_acc``."""
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> Any:
        """Adam with the configured learning rate and weight decay (Amoeba Table 5)."""
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay
        )
