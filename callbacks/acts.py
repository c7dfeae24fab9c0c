"""Lightning callback that logs ACTS scores (adversarial converging time) of a fixed validation subset."""

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from bounds.acts import DEFAULT_C, acts_score
from bounds.attacks import bim, fgsm, per_example_pgd
from bounds.overlap import overlap_percent, score_auroc
from callbacks._shared import (
    ExampleIndexer,
    ExampleStore,
    ValidationSubsetCallback,
    check_input_range,
    check_model_attribute,
    check_positive,
    isolated,
    log_scalars,
    resolve_input_range,
    resolve_network,
    split_batch,
    tensorboard_writer,
    warn_failure,
)

_FIELDS = ("score", "success")


class ACTSCallback(ValidationSubsetCallback):
    """Log Adversarial Converging Time Scores (ACTS, :func:`bounds.acts.acts_score`) of a fixed validation subset.

    On the examples of the fixed subset the callback runs the attack (FGSM, BIM or l_inf PGD) away from the
    model's own prediction, computes each example's ACTS from the attack's steps, gathers the scores from every
    rank and logs, in ``on_validation_epoch_end``:

    - ``val/acts/mean`` and ``val/acts/median``: of all scores (an example no competing class can reach scores
      ``C = bounds.acts.DEFAULT_C``);
    - ``val/acts/unreachable_fraction``: share of examples scored ``C``;
    - ``val/acts/attack_success_rate``: share of examples whose prediction the attack changed;
    - ``val/acts/overlap_percent``: Overlap% (ACTS paper Section 4.2, :func:`bounds.overlap.overlap_percent`)
      of the scores of attacked and surviving examples, on ``bins`` bins spanning the scores below ``C``;
    - ``val/acts/auroc``: AUROC of the score as a predictor of attack success (:func:`bounds.overlap.score_auroc`),
      only when both attacked and surviving examples occur;
    - TensorBoard histogram ``val/acts/scores`` of the scores below ``C``.

    **Labels**: ACTS is defined around the predicted class (Eq. 1), so the attack moves away from the model's
    prediction and "success" means the prediction changed (misclassified examples are not counted as attacked).

    **Subset, schedule, side effects**: as :class:`~callbacks.AmoebaBoundCallback`: the validation examples with
    dataset index below ``num_examples`` (the same for every world size), epochs ``epoch % every_n_epochs == 0``
    during ``fit``, always under ``trainer.validate``, never in the sanity check or a ``fast_dev_run``; RNG
    states, modes and ``requires_grad`` flags are restored. PGD's random start is drawn per example from
    ``(seed, index)``, so scores do not depend on batching or on the number of ranks, and are the same on every
    epoch for the same weights.

    **Network**: ``model_attribute`` if given, else the LightningModule itself (its ``forward`` must map inputs
    to logits); any architecture works, no interval propagation is involved (``torch.func.jvp`` must support
    its layers). An error raised while scoring is turned into a warning and the callback stops.

    Args:
        attack: ``"fgsm"``, ``"bim"`` or ``"pgd"`` (l_inf).
        eps: l_inf radius of the attack.
        step_size: Step of BIM/PGD (default ``eps / 2``, the paper's setting).
        steps: Steps of BIM/PGD (3 in the paper).
        top_k: Number of most probable competing classes in ACTS's minimum (10 in the paper).
        num_examples: Size of the fixed subset: validation examples with dataset index ``< num_examples``.
        every_n_epochs: Run on epochs divisible by this during ``fit``.
        bins: Bins of the Overlap% histograms and of the TensorBoard histogram.
        seed: Seed of PGD's per-example random starts.
        model_attribute: Dotted attribute path of the classifier inside the LightningModule, or a list of them
            chained in order; default the LightningModule itself.
        input_range: ``(low, high)`` the attack clamps to; default the datamodule's ``input_range``, else the
            module's ``hparams.input_range``, else unbounded.

    Raises:
        ValueError: On invalid arguments.
    """

    def __init__(
        self,
        attack: Literal["fgsm", "bim", "pgd"] = "pgd",
        eps: float = 0.1,
        step_size: float | None = None,
        steps: int = 3,
        top_k: int = 10,
        num_examples: int = 100,
        every_n_epochs: int = 1,
        bins: int = 20,
        seed: int = 0,
        model_attribute: str | Sequence[str] | None = None,
        input_range: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        if attack not in ("fgsm", "bim", "pgd"):
            raise ValueError(f"attack must be 'fgsm', 'bim' or 'pgd', got {attack!r}")
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a positive number, got {eps!r}")
        if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be positive or None, got {step_size!r}")
        check_positive("steps", steps)
        check_positive("top_k", top_k)
        check_positive("num_examples", num_examples)
        check_positive("every_n_epochs", every_n_epochs)
        check_positive("bins", bins)
        check_positive("seed", seed, minimum=0)
        self.attack = attack
        self.eps = float(eps)
        self.step_size = float(step_size) if step_size is not None else self.eps / 2
        self.steps = steps
        self.top_k = top_k
        self.num_examples = num_examples
        self.every_n_epochs = every_n_epochs
        self.bins = bins
        self.seed = seed
        self.model_attribute = check_model_attribute(model_attribute)
        self.input_range = check_input_range(input_range)
        self._store = ExampleStore(_FIELDS)
        self._indexer = ExampleIndexer(type(self).__name__)
        self._network: nn.Module | None = None
        self._range: tuple[float, float] | None = None
        self._disabled = False
        self._active = False
        self._failed_here = False

    # ----------------------------------------------------------------------------------------- state

    @property
    @override
    def state_key(self) -> str:
        """Distinct per configuration, so several instances can be checkpointed side by side."""
        return self._generate_state_key(attack=self.attack, eps=self.eps, num_examples=self.num_examples,
                                        model_attribute=self.model_attribute)


    # ----------------------------------------------------------------------------------------- hooks

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Pick the classifier and the input range."""
        self._network, _ = resolve_network(pl_module, self.model_attribute, prefer_inner=False)
        self._range = resolve_input_range(self.input_range, trainer, pl_module)


    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Decide (identically on every rank) whether this validation run scores, and reset the store."""
        self._active = self._should_run(trainer)
        if not self._active:
            return
        self._failed_here = False
        self._indexer.start_epoch(trainer)
        self._store.to(pl_module.device)
        self._store.start()

    @override
    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        """Score the batch's examples that belong to the fixed subset."""
        if not self._active or dataloader_idx != 0:
            return
        pair = split_batch(batch)
        if pair is None:
            self._record_failure(ValueError("validation batches must be (x, y, ...) or a dict with x and y"))
            return
        x, _ = pair
        index = self._indexer.next_batch(x.shape[0])
        if self._failed_here:
            return
        selected = index < self.num_examples
        if not bool(selected.any()):
            return
        try:
            self.score_batch(x[selected.to(x.device)], index[selected])
        except Exception as error:  # noqa: BLE001 - a monitoring callback must never stop training
            self._record_failure(error)

    def score_batch(self, x: Tensor, index: Tensor) -> None:
        """Attack examples ``x`` (dataset indices ``index``), score them and store scores and attack outcomes.

        Override point for subclasses that want another attack or score.
        """
        assert self._network is not None
        network = self._network
        with isolated(network):
            x = x.detach().clone()
            with torch.no_grad():
                predicted = network(x).argmax(dim=1)
            if self.attack == "pgd":
                result = per_example_pgd(network, x, predicted, index, eps=self.eps, step_size=self.step_size,
                                         steps=self.steps, seed=self.seed, input_range=self._range)
            elif self.attack == "bim":
                result = bim(network, x, predicted, eps=self.eps, step_size=self.step_size, steps=self.steps,
                             input_range=self._range)
            else:
                result = fgsm(network, x, predicted, self.eps, input_range=self._range)
            scores = acts_score(network, x, predicted, attack=result, top_k=self.top_k)
        self._store.update(index, score=scores, success=result.success)

    def _record_failure(self, error: BaseException) -> None:
        if not self._failed_here:
            self._failed_here = True
            warn_failure(type(self).__name__, error)
            self._store.fail()

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Gather the scores on every rank, log the scalars, and write the histogram on rank 0."""
        if not self._active:
            return
        self._active = False
        result = self._store.compute()  # collective: every rank
        self._store.reset()
        if int(result["failures"]) > 0:
            self._disabled = True
            rank_zero_warn(f"{type(self).__name__}: scoring failed on a rank (see its warning); the callback is "
                           "disabled for the rest of this run.")
            return
        if result["index"].numel() == 0:
            return
        scores = result["score"][:, 0].double().cpu()
        attacked = result["success"][:, 0].cpu() > 0.5
        reachable = scores < DEFAULT_C
        scalars = {
            "val/acts/mean": float(scores.mean()),
            "val/acts/median": float(scores.median()),
            "val/acts/unreachable_fraction": float((~reachable).double().mean()),
            "val/acts/attack_success_rate": float(attacked.double().mean()),
        }
        finite = scores[reachable]
        score_range = (float(finite.min()), float(finite.max())) if finite.numel() else None
        scalars["val/acts/overlap_percent"] = overlap_percent(scores, attacked, bins=self.bins, range=score_range)
        auroc = score_auroc(scores, attacked)
        if not math.isnan(auroc):
            scalars["val/acts/auroc"] = auroc
        log_scalars(pl_module, scalars)
        self._mark_run(trainer)
        if trainer.is_global_zero and finite.numel():
            writer = tensorboard_writer(trainer)
            if writer is not None:
                writer.add_histogram("val/acts/scores", finite.float(), trainer.global_step, bins="auto")
