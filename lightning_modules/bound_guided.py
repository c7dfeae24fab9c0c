r"""Asymmetric-bound-guided training: certified (IBP) training over boxes shaped by the model's Amoeba bound.

Amoeba Section 6 leaves as an idea "finding model parameters that maximize both eps1 and eps2 in each
dimension"; this mode makes it a training loss. For a batch ``(x, t)`` at training progress ``p`` (epochs,
fractional):

1. Schedule. With ``q = clamp((p - warmup_epochs) / ramp_epochs, 0, 1)`` (a step at ``warmup_epochs`` when
   ``ramp_epochs == 0``), the box size is ``s(p) = q * target_radius`` and the clean-loss weight
   ``kappa(p) = 1 - q * (1 - final_clean_weight)``: linear ramps as in IBP training (Gowal et al. 2018).
2. Shape (``shape="asymmetric"``). ``(a1, a2) = asymmetric_shape(model, x, t, s)``: ``shape_iterations``
   warm-started Adam steps of Amoeba Algorithm 1 (Problem 2's augmented Lagrangian, maximise
   ``sum_i log(eps1_i + eps2_i)`` subject to ``l[t] - u[j] >= delta``) from the uniform box of radius ``s``,
   normalised to unit geometric-mean half-width with per-pixel ratios clipped to ``shape_max_ratio``
   (:mod:`bounds.guided_training`). The shape is recomputed for every batch from the current weights and is
   a constant for the weight update. ``shape="uniform"`` uses ``a1 = a2 = 1`` (plain IBP training, the
   ablation).
3. Loss. With interval bounds ``(l, u)`` of the logits over ``B = [x - s a1, x + s a2]`` (Theorem 1) and the
   worst-case logits ``z_worst[j] = u[j]`` (``j != t``), ``z_worst[t] = l[t]``::

       loss = kappa * CE(f(x), t) + (1 - kappa) * CE(z_worst, t).

   ``CE(z_worst, t) >= max_{x' in B} CE(f(x'), t) >= CE(f(x), t)``, so the loss upper-bounds the clean loss
   and minimising it enlarges the region the bound certifies, in the directions the model's own asymmetric
   bound finds cheapest. Every box of size ``s`` has the volume of the uniform box of radius ``s``.

The shape optimisation and the bound pass run with the model in eval mode (:func:`bounds.modes.evaluation_mode`,
every submodule's mode restored), so models with BatchNorm or Dropout get the eval-mode bound. Input gradients
of the shape step are taken with ``torch.autograd.grad`` on the radii only.

Logged tags, besides those of :class:`~lightning_modules.classifier.ImageClassifier`: ``train/radius`` (``s``),
``train/clean_weight`` (``kappa``), ``train/robust_loss``, ``train/verified_acc`` (share of training boxes the
bound verifies), and ``val/verified_acc`` / ``test/verified_acc``: the share of examples whose *uniform* box of
radius ``eval_verify_radius`` the bound verifies (verified robust accuracy).
"""

from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torchmetrics import MeanMetric

from bounds.guided_training import asymmetric_shape, robust_cross_entropy, shaped_box
from bounds.modes import evaluation_mode
from lightning_modules.classifier import ImageClassifier

Shape = Literal["asymmetric", "uniform"]


def ramp_fraction(progress: float, warmup_epochs: float, ramp_epochs: float) -> float:
    """The schedule's ``q = clamp((progress - warmup_epochs) / ramp_epochs, 0, 1)`` (a step when ``ramp_epochs`` is 0).

    Args:
        progress: Training progress in (fractional) epochs.
        warmup_epochs: Epochs of clean training before the ramp.
        ramp_epochs: Length of the linear ramp in epochs.

    Returns:
        ``q`` in ``[0, 1]``.
    """
    if ramp_epochs <= 0:
        return 1.0 if progress >= warmup_epochs else 0.0
    return min(max((progress - warmup_epochs) / ramp_epochs, 0.0), 1.0)


class BoundGuidedClassifier(ImageClassifier):
    """Certified training on per-example asymmetric boxes shaped by Amoeba's eps1/eps2 (module docstring).

    Args:
        target_radius: Final box size ``s`` in input units (``[-1, 1]`` images: 0.1 to 0.2 on MNIST). A box of
            size ``s`` has the volume of the uniform box of radius ``s``.
        warmup_epochs: Epochs of clean training (``s = 0``, ``kappa = 1``) before the ramp starts.
        ramp_epochs: Epochs over which ``s`` grows linearly from 0 to ``target_radius`` and ``kappa`` falls
            linearly from 1 to ``final_clean_weight``.
        final_clean_weight: ``kappa`` after the ramp, in ``[0, 1]`` (1 is normal training, 0 pure bound loss).
        shape: ``"asymmetric"`` (boxes shaped by the model's Amoeba bound) or ``"uniform"`` (plain IBP).
        shape_iterations: Algorithm 1 steps per batch for the shape (0 keeps the uniform shape).
        shape_lr: Adam learning rate of those steps on ``log eps``.
        shape_max_ratio: Largest ratio between a pixel's half-width and the geometric mean (``>= 1``).
        clip_to_input_range: Intersect training boxes with ``input_range`` (off by default, like ``certify``).
        eval_verify_radius: Uniform radius of ``val/verified_acc`` and ``test/verified_acc``; ``None`` uses
            ``target_radius``, 0 disables them.
        **kwargs: The arguments of :class:`~lightning_modules.classifier.ImageClassifier` (architecture, data
            shape and range, optimiser, evaluation attack, weights); the CLI follows them into its signature.

    Raises:
        ValueError: For a non-positive ``target_radius`` or ``shape_lr``, negative epochs, a
            ``final_clean_weight`` outside ``[0, 1]``, an unknown ``shape``, negative ``shape_iterations``,
            ``shape_max_ratio < 1`` or a negative ``eval_verify_radius``.
    """

    def __init__(
        self,
        target_radius: float = 0.1,
        warmup_epochs: float = 1.0,
        ramp_epochs: float = 5.0,
        final_clean_weight: float = 0.5,
        shape: Shape = "asymmetric",
        shape_iterations: int = 5,
        shape_lr: float = 0.1,
        shape_max_ratio: float = 10.0,
        clip_to_input_range: bool = False,
        eval_verify_radius: float | None = None,
        **kwargs: Any,
    ) -> None:
        if not target_radius > 0:
            raise ValueError(f"target_radius must be positive, got {target_radius}")
        if warmup_epochs < 0 or ramp_epochs < 0:
            raise ValueError(f"warmup_epochs and ramp_epochs must be >= 0, got {warmup_epochs} and {ramp_epochs}")
        if not 0.0 <= final_clean_weight <= 1.0:
            raise ValueError(f"final_clean_weight must lie in [0, 1], got {final_clean_weight}")
        if shape not in ("asymmetric", "uniform"):
            raise ValueError(f"shape must be 'asymmetric' or 'uniform', got {shape!r}")
        if isinstance(shape_iterations, bool) or not isinstance(shape_iterations, int) or shape_iterations < 0:
            raise ValueError(f"shape_iterations must be an integer >= 0, got {shape_iterations!r}")
        if not shape_lr > 0:
            raise ValueError(f"shape_lr must be positive, got {shape_lr}")
        if not shape_max_ratio >= 1:
            raise ValueError(f"shape_max_ratio must be >= 1, got {shape_max_ratio}")
        if eval_verify_radius is not None and eval_verify_radius < 0:
            raise ValueError(f"eval_verify_radius must be >= 0 or None, got {eval_verify_radius}")
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.progress: float = 0.0
        """Training progress in fractional epochs; ``training_step`` sets it before each batch."""
        self.train_robust_loss = MeanMetric()
        self.train_verified = MeanMetric()
        self.val_verified = MeanMetric()
        self.test_verified = MeanMetric()

    @property
    def verify_radius(self) -> float:
        """The uniform radius of ``val/verified_acc`` and ``test/verified_acc``."""
        radius = self.hparams.eval_verify_radius
        return float(self.hparams.target_radius if radius is None else radius)

    def schedule(self, progress: float) -> tuple[float, float]:
        """Box size ``s`` and clean-loss weight ``kappa`` at ``progress`` epochs (module docstring, step 1)."""
        hp = self.hparams
        q = ramp_fraction(progress, hp.warmup_epochs, hp.ramp_epochs)
        return q * hp.target_radius, 1.0 - q * (1.0 - hp.final_clean_weight)

    def _box_range(self) -> tuple[float, float] | None:
        return tuple(self.hparams.input_range) if self.hparams.clip_to_input_range else None

    def training_box(self, x: torch.Tensor, y: torch.Tensor, size: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The box ``[x - s a1, x + s a2]`` the bound loss is taken over (shape from the current weights).

        Args:
            x: Inputs ``(B, ...)``.
            y: Labels ``(B,)``.
            size: Box size ``s > 0``.

        Returns:
            ``(lower, upper)``, detached.
        """
        hp = self.hparams
        x = x.detach()
        if hp.shape == "uniform" or hp.shape_iterations == 0:
            a1 = a2 = torch.ones_like(x)
        else:
            with evaluation_mode(self.model):
                a1, a2 = asymmetric_shape(self.model, x, y, size, iterations=hp.shape_iterations, lr=hp.shape_lr,
                                          max_ratio=hp.shape_max_ratio, input_range=self._box_range())
        return shaped_box(x, size, a1, a2, self._box_range())

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Set :attr:`progress` from the epoch and batch index, then train as the base class does."""
        batches = self.trainer.num_training_batches
        fraction = batch_idx / batches if batches not in (0, float("inf")) else 0.0
        self.progress = self.current_epoch + fraction
        return super().training_step(batch, batch_idx)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``kappa * CE(f(x)) + (1 - kappa) * CE(z_worst)`` at the scheduled size; accuracy on clean logits."""
        size, kappa = self.schedule(self.progress)
        logits = self(x)
        clean = F.cross_entropy(logits, y)
        if self._trainer is not None:
            self.log("train/radius", size, on_step=True, on_epoch=False)
            self.log("train/clean_weight", kappa, on_step=True, on_epoch=False)
        if size <= 0 or kappa >= 1.0:
            return clean, logits
        lower, upper = self.training_box(x, y, size)
        with evaluation_mode(self.model):
            robust, verified = robust_cross_entropy(self.model, lower, upper, y)
        if self._trainer is not None:
            self.train_robust_loss(robust.detach(), weight=x.shape[0])
            self.train_verified(verified.float())
            self.log("train/robust_loss", self.train_robust_loss, on_step=False, on_epoch=True)
            self.log("train/verified_acc", self.train_verified, on_step=False, on_epoch=True)
        return kappa * clean + (1.0 - kappa) * robust, logits

    def _log_verified(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        radius = self.verify_radius
        if radius <= 0:
            return
        x, y = batch
        metric = self.val_verified if stage == "val" else self.test_verified
        with torch.no_grad(), evaluation_mode(self.model):
            lower, upper = shaped_box(x, radius, torch.ones_like(x), torch.ones_like(x), self._box_range())
            _, verified = robust_cross_entropy(self.model, lower, upper, y)
        metric(verified.float())
        self.log(f"{stage}/verified_acc", metric, prog_bar=stage == "val")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """The base class's validation tags plus ``val/verified_acc``."""
        super().validation_step(batch, batch_idx)
        self._log_verified(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """The base class's test tags plus ``test/verified_acc``."""
        super().test_step(batch, batch_idx)
        self._log_verified(batch, "test")
