"""The life cycle both robustness callbacks share: a fixed validation subset, computed, gathered and logged.

:class:`ValidationSubsetCallback` owns everything but the robustness quantity: the schedule, the checkpointed
state and its key, picking the network, the hooks (reset at epoch start, compute the subset's rows at each batch
end, gather and log at epoch end), isolation from training, failure recording and the consensus of all ranks
to stop, scalar logging and the TensorBoard writer. A subclass says what it computes, in three methods:

- :meth:`~ValidationSubsetCallback.compute_rows`: the per-example rows of the subset's examples of one batch;
- :meth:`~ValidationSubsetCallback.summarise`: the scalars of the gathered rows;
- :meth:`~ValidationSubsetCallback.write_tensorboard`: images and histograms of the gathered rows (rank 0).
"""

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from typing_extensions import override

from callbacks.arguments import check_input_range, check_model_attribute, check_positive
from callbacks.gathering import ExampleStore, Rows
from callbacks.indexing import ExampleIndexer, split_batch
from callbacks.isolation import isolated
from callbacks.network import resolve_input_range, resolve_network
from callbacks.tensorboard import tensorboard_writer, warn_without_tensorboard


def scheduled_to_run(trainer: Trainer, every_n_epochs: int, last_run_step: int | None) -> bool:
    """Whether a callback computes on this validation run; the answer is the same on every rank.

    Never in the sanity check or ``fast_dev_run``; always under ``trainer.validate``; during ``fit`` on epochs
    divisible by ``every_n_epochs`` (epoch 0 included), and never twice at one global step (after a resume).

    Args:
        trainer: The running trainer.
        every_n_epochs: The callback's period in epochs.
        last_run_step: Global step of the callback's last run (restored from its ``state_dict`` on resume).

    Returns:
        True when the callback should compute.
    """
    if trainer.sanity_checking or trainer.fast_dev_run:
        return False
    if trainer.state.fn == TrainerFn.VALIDATING:
        return True
    if trainer.state.fn != TrainerFn.FITTING:
        return False
    return trainer.current_epoch % every_n_epochs == 0 and last_run_step != trainer.global_step


def log_scalars(pl_module: LightningModule, values: Mapping[str, float]) -> None:
    """Log scalars that every rank computed identically from gathered data.

    ``sync_dist=True`` with ``reduce_fx="max"`` keeps Lightning's epoch-level DDP check quiet and returns the
    value unchanged (the maximum of equal numbers); every rank logs the same keys in the same order.
    """
    for name, value in values.items():
        pl_module.log(name, float(value), on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")


def warn_failure(owner: str, error: BaseException) -> None:
    """A rank-local warning for a computation that raised (the callback then stops logging)."""
    warnings.warn(f"{owner} failed on this rank ({type(error).__name__}: {error}); it stops computing and logging "
                  "for the rest of this run.", RuntimeWarning, stacklevel=3)


class ValidationSubsetCallback(Callback):
    """Compute per-example rows on the validation examples with dataset index ``< num_examples``, log summaries.

    Args:
        stores: Store name -> field names of the rows :meth:`compute_rows` returns for it (every field is
            flattened to float32 per example; :class:`~callbacks.gathering.ExampleStore`).
        num_examples: Size of the fixed subset.
        every_n_epochs: Run on epochs divisible by this during ``fit``.
        seed: The subclass's seed (part of the checkpointed subset definition).
        model_attribute: Dotted attribute path(s) of the network (:func:`~callbacks.network.resolve_network`).
        input_range: Explicit ``(low, high)``, or ``None`` (:func:`~callbacks.network.resolve_input_range`).

    Raises:
        ValueError: On invalid arguments.
    """

    work: ClassVar[str] = "the computation"
    """What failed, in the warning that disables the callback (e.g. ``"certification"``)."""
    prefers_inner_model: ClassVar[bool] = False
    """Without ``model_attribute``, evaluate ``pl_module.model`` when it is an ``nn.Module``."""

    def __init__(self, stores: Mapping[str, Sequence[str]], num_examples: int, every_n_epochs: int, seed: int,
                 model_attribute: str | Sequence[str] | None, input_range: tuple[float, float] | None) -> None:
        super().__init__()
        check_positive("num_examples", num_examples)
        check_positive("every_n_epochs", every_n_epochs)
        check_positive("seed", seed, minimum=0)
        self.num_examples = num_examples
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self.model_attribute = check_model_attribute(model_attribute)
        self.input_range = check_input_range(input_range)
        self.last_run_step: int | None = None
        self.last_run_epoch: int | None = None
        self.runs = 0
        self._stores = {name: ExampleStore(fields) for name, fields in stores.items()}
        self._indexer = ExampleIndexer(type(self).__name__)
        self._network: nn.Module | None = None
        self._range: tuple[float, float] | None = None
        self._input_shape: tuple[int, ...] | None = None
        self._disabled = False
        self._active = False
        self._failed_here = False
        self._warned_no_tensorboard = False

    # ------------------------------------------------------------------------------ what a subclass says

    def compute_rows(self, network: nn.Module, x: Tensor, y: Tensor | None, index: Tensor) -> dict[str, Rows]:
        """Per-example rows of examples ``x`` (labels ``y``, dataset indices ``index``) of the fixed subset.

        Runs isolated (:func:`~callbacks.isolation.isolated`) on clones of the inputs.

        Returns:
            Store name -> rows (``index`` and that store's fields); a store may be left out.
        """
        raise NotImplementedError

    def summarise(self, results: dict[str, dict[str, Tensor]]) -> dict[str, float] | None:
        """Scalars to log from every store's gathered rows (the same on every rank), or ``None`` to skip the run.

        Args:
            results: Store name -> ``ExampleStore.compute()`` (``index``, the fields as ``[M, d]``, sorted by index).
        """
        raise NotImplementedError

    def write_tensorboard(self, writer: SummaryWriter, results: dict[str, dict[str, Tensor]], step: int) -> None:
        """Write images and histograms of the gathered rows (rank 0 only; no collectives here). Default: none."""

    def check_network(self, network: nn.Module, where: str) -> bool:
        """Whether the callback can evaluate ``network`` (found at ``where``); on ``False`` it stays idle."""
        return True

    def complete_input_range(self, found: tuple[float, float] | None) -> tuple[float, float] | None:
        """The input range to use, given the explicit or discovered one (``None``: none known). Default: as found."""
        return found

    def _state_key_fields(self) -> dict[str, Any]:
        """Configuration entries, besides the subset's, that tell two instances apart in a checkpoint."""
        return {}

    def _extra_state(self) -> dict[str, Any]:
        """Entries a subclass adds to its checkpointed state (e.g. the certification kinds)."""
        return {}

    # ------------------------------------------------------------------------------ state

    @property
    @override
    def state_key(self) -> str:
        """Distinct per configuration, so several instances can be checkpointed side by side."""
        return self._generate_state_key(**self._state_key_fields(), num_examples=self.num_examples,
                                        model_attribute=self.model_attribute)

    @override
    def state_dict(self) -> dict[str, Any]:
        """The subset definition and the last run (epoch and global step), for resuming."""
        return {"num_examples": self.num_examples, **self._extra_state(), "seed": self.seed,
                "last_run_step": self.last_run_step, "last_run_epoch": self.last_run_epoch, "runs": self.runs}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the last run; warn if the subset changed (curves before and after the resume then differ)."""
        if state_dict.get("num_examples") != self.num_examples or state_dict.get("seed") != self.seed:
            rank_zero_warn(f"{type(self).__name__}: the checkpoint used num_examples="
                           f"{state_dict.get('num_examples')}, seed={state_dict.get('seed')}; this run uses "
                           f"num_examples={self.num_examples}, seed={self.seed}, so its curves do not continue the "
                           "checkpoint's.")
        self.last_run_step = state_dict.get("last_run_step")
        self.last_run_epoch = state_dict.get("last_run_epoch")
        self.runs = int(state_dict.get("runs", 0))

    # ------------------------------------------------------------------------------ hooks

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Pick the network (the callback stays idle if :meth:`check_network` refuses it) and the input range."""
        network, where = resolve_network(pl_module, self.model_attribute, prefer_inner=self.prefers_inner_model)
        self._network = None
        if not self.check_network(network, where):
            return
        self._network = network
        self._range = self.complete_input_range(resolve_input_range(self.input_range, trainer, pl_module))

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Decide (identically on every rank) whether this validation run computes, and reset the stores."""
        self._active = (not self._disabled and self._network is not None
                        and scheduled_to_run(trainer, self.every_n_epochs, self.last_run_step))
        if not self._active:
            return
        self._failed_here = False
        self._indexer.start_epoch(trainer)
        for store in self._stores.values():
            store.to(pl_module.device)
            store.start()

    @override
    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        """Compute the rows of the batch's examples that belong to the fixed subset."""
        if not self._active or dataloader_idx != 0:
            return
        pair = split_batch(batch)
        if pair is None:
            self._record_failure(ValueError("validation batches must be (x, y, ...) or a dict with x and y"))
            return
        x, y = pair
        self._input_shape = tuple(x.shape[1:])
        index = self._indexer.next_batch(x.shape[0])
        if self._failed_here:
            return
        selected = index < self.num_examples
        if not bool(selected.any()):
            return
        try:
            self.process_batch(x[selected.to(x.device)], y[selected.to(y.device)], index[selected])
        except Exception as error:  # noqa: BLE001 - a monitoring callback must never stop training
            self._record_failure(error)

    def process_batch(self, x: Tensor, y: Tensor | None, index: Tensor) -> None:
        """Compute the rows of examples ``x`` (labels ``y``, dataset indices ``index``) and store them."""
        assert self._network is not None
        with isolated(self._network):
            labels = None if y is None else y.detach().clone()
            rows = self.compute_rows(self._network, x.detach().clone(), labels, index)
        for name, block in rows.items():
            self._stores[name].update(**block)

    def _record_failure(self, error: BaseException) -> None:
        if not self._failed_here:
            self._failed_here = True
            warn_failure(type(self).__name__, error)
            next(iter(self._stores.values())).fail()

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Gather the rows on every rank, log the scalars, and write images and histograms on rank 0."""
        if not self._active:
            return
        self._active = False
        results = {name: store.compute() for name, store in self._stores.items()}  # collectives: every rank
        for store in self._stores.values():
            store.reset()
        if int(next(iter(results.values()))["failures"]) > 0:
            self._disabled = True
            rank_zero_warn(f"{type(self).__name__}: {self.work} failed on a rank (see its warning); the callback is "
                           "disabled for the rest of this run.")
            return
        scalars = self.summarise(results)
        if scalars is None:
            return
        log_scalars(pl_module, scalars)
        self.last_run_step, self.last_run_epoch = trainer.global_step, trainer.current_epoch
        self.runs += 1
        if trainer.is_global_zero:
            writer = tensorboard_writer(trainer)
            if writer is not None:
                self.write_tensorboard(writer, results, trainer.global_step)
            elif not self._warned_no_tensorboard:
                self._warned_no_tensorboard = warn_without_tensorboard(type(self).__name__, trainer)
