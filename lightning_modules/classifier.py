"""The normal (clean-loss) image classifier, base of every training mode, and the loading of local weight files."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from bounds.attacks.pgd import pgd
from bounds.normalization import InputNormalization
from lightning_modules.torchvision_models import AUX_HEADS, is_weights_file
from lightning_modules.zoo import Architecture, build_model

Normalization = tuple[tuple[float, ...], tuple[float, ...]]
"""Per-channel ``(mean, std)`` of an input normalisation layer."""
Optimizer = Literal["adam", "sgd"]


def load_weights_file(network: nn.Module, path: str) -> nn.Module:
    """Load a local weights file into ``network``, strictly (every weight, with its shape).

    The file is a plain state dict of the network, or a Lightning checkpoint (``state_dict``) of an
    :class:`ImageClassifier`, whose keys carry the network under ``model.`` (``model.1.`` after an input
    normalisation layer), or a ``module.``-prefixed (DataParallel) state dict. Weights of auxiliary classifiers
    the network lacks (inception_v3's ``AuxLogits.``, googlenet's ``aux1.``/``aux2.``) are skipped.

    Args:
        network: The freshly built network.
        path: The file.

    Returns:
        ``network``, with the weights loaded.

    Raises:
        FileNotFoundError: If the file does not exist (the message names it).
        ValueError: If it holds no state dict or its weights do not fit the network.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"weights file not found: '{file}' (weights must be a local state-dict file or, for "
                                "a torchvision architecture, a weights name such as IMAGENET1K_V1)")
    loaded: Any = torch.load(file, map_location="cpu", weights_only=False)
    state = loaded.get("state_dict", loaded) if isinstance(loaded, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"'{file}' holds no state dict (a mapping of names to tensors, or a checkpoint with one)")
    expected = set(network.state_dict())
    best: dict[str, torch.Tensor] = {}
    for prefix in ("", "model.1.", "model.", "module.", "1."):
        candidate = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        candidate = {k: v for k, v in candidate.items() if k in expected or k.split(".", 1)[0] not in AUX_HEADS}
        if set(candidate) == expected:
            try:
                network.load_state_dict(candidate)
            except RuntimeError as err:
                raise ValueError(f"weights in '{file}' do not fit the network: {err}") from err
            return network
        if len(set(candidate) & expected) > len(set(best) & expected):
            best = candidate
    missing, unexpected = sorted(expected - set(best)), sorted(set(best) - expected)
    raise ValueError(f"weights in '{file}' do not fit the network: missing {missing[:6]}"
                     f"{' ...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}"
                     f"{' ...' if len(unexpected) > 6 else ''}")


class ImageClassifier(LightningModule):
    """A zoo classifier trained on the clean cross-entropy loss (Amoeba Table 5, "Normal Training").

    Every training mode derives from this class, so all of them log the same tags:
    ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``val/adv_acc`` (accuracy under the
    evaluation PGD attack), and the same under ``test/``.

    With ``normalization`` (linked from the datamodule: CIFAR-10 and ImageNet), ``model`` is
    ``Sequential(InputNormalization(mean, std), network)``, so inputs, boxes and eps stay in pixel units ([0, 1]);
    without it ``model`` is the network itself (the state-dict keys of older checkpoints are unchanged).

    Args:
        architecture: Zoo architecture (``fc100``, ``fc300``, ``fc500``, ``lenet``, ``fcnn2d``, ``and_gate``,
            ``resnet_small``, ``cnn_7layer``) or a torchvision classifier (``resnet50``, ``vgg16``,
            ``inception_v3``, ...); see :data:`lightning_modules.zoo.ARCHITECTURES`.
        input_shape: Shape of one example; linked from the datamodule by the CLI.
        num_classes: Number of classes; linked from the datamodule by the CLI.
        input_range: ``(low, high)`` of valid inputs; linked from the datamodule by the CLI.
        learning_rate: Learning rate (the Amoeba paper: Adam 1e-4 for 100 epochs).
        weight_decay: Weight decay of the optimiser.
        eval_attack_eps: l_inf radius of the PGD attack that measures ``val/adv_acc`` and
            ``test/adv_acc``; 0 disables the adversarial evaluation.
        eval_attack_step_size: Step size of that attack.
        eval_attack_steps: Number of steps of that attack (random start).
        normalization: Per-channel ``(mean, std)`` applied inside the model; linked from the datamodule by the
            CLI (``None`` for the [-1, 1] datasets).
        weights: Initial weights of the network: ``None`` (fresh), a local file (a state dict of the network or
            a Lightning checkpoint of this class) or, for torchvision architectures, a torchvision weights name
            (``IMAGENET1K_V1``, ``ResNet50_Weights.IMAGENET1K_V1``) read from the torch hub cache, never downloaded.
            Loaded at construction: ``load_from_checkpoint(path, weights=None)`` skips it.
        optimizer: ``adam`` (Adam) or ``sgd`` (SGD with ``momentum``).
        momentum: SGD momentum.
        lr_milestones: Epochs after which the learning rate is multiplied by ``lr_gamma`` (``MultiStepLR``);
            ``None`` keeps it constant.
        lr_gamma: Factor of each learning-rate decay.
        architecture_options: Arguments of the zoo architecture (:data:`lightning_modules.zoo.ARCHITECTURE_OPTIONS`),
            e.g. ``{width: 16, linear_size: 128}`` for a narrower ``cnn_7layer``; ``None``: the paper's sizes.
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
        normalization: Normalization | None = None,
        weights: str | None = None,
        optimizer: Optimizer = "adam",
        momentum: float = 0.9,
        lr_milestones: list[int] | None = None,
        lr_gamma: float = 0.1,
        architecture_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if not 0.0 <= momentum < 1.0 or not 0.0 < lr_gamma <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1) and lr_gamma in (0, 1], got {momentum} and {lr_gamma}")
        if lr_milestones is not None and list(lr_milestones) != sorted(set(lr_milestones)):
            raise ValueError(f"lr_milestones must be increasing epochs, got {lr_milestones}")
        if eval_attack_eps < 0 or eval_attack_step_size < 0 or eval_attack_steps < 0:
            raise ValueError("eval_attack_eps, eval_attack_step_size and eval_attack_steps must be >= 0")
        if input_range[0] >= input_range[1]:
            raise ValueError(f"input_range must be (low, high) with low < high, got {input_range}")
        self.save_hyperparameters()
        file = weights is not None and is_weights_file(weights)
        network = build_model(architecture, tuple(input_shape), num_classes, weights=None if file else weights,
                              options=architecture_options)
        if file:
            load_weights_file(network, str(weights))
        self.model: nn.Module = network
        if normalization is not None:
            mean, std = normalization
            if len(input_shape) != 3 or len(mean) not in (1, input_shape[0]):
                raise ValueError(f"normalization needs image inputs with one (mean, std) per channel, got "
                                 f"{normalization} for input_shape={tuple(input_shape)}")
            self.model = nn.Sequential(InputNormalization(mean, std), network)
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
        """Adam (Amoeba Table 5) or SGD with momentum, optionally with step decays at ``lr_milestones`` epochs."""
        hp = self.hparams
        if hp.get("optimizer", "adam") == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(
                self.parameters(), lr=hp.learning_rate, momentum=hp.momentum, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.Adam(self.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
        if not hp.get("lr_milestones"):
            return optimizer
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(hp.lr_milestones),
                                                         gamma=hp.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
