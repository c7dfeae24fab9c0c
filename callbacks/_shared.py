"""Plumbing shared by :class:`~callbacks.AmoebaBoundCallback` and :class:`~callbacks.ACTSCallback`.

Nothing here computes a robustness quantity (that is :mod:`bounds`' job): it picks the network and the fixed
example subset, isolates the callbacks' work from training (RNG, modes, ``requires_grad``, inference mode),
collects per-example results across ranks, and finds the TensorBoard writer.
"""

import random
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DistributedSampler, SequentialSampler
from torch.utils.tensorboard import SummaryWriter
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from bounds.modes import evaluation_mode


def check_model_attribute(model_attribute: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Validate ``model_attribute`` and normalise it to a tuple of dotted attribute paths (or ``None``)."""
    if model_attribute is None:
        return None
    names = (model_attribute,) if isinstance(model_attribute, str) else tuple(model_attribute)
    if not names or any(not isinstance(name, str) or not name or name.startswith(".") for name in names):
        raise ValueError(f"model_attribute must be a dotted attribute name or a non-empty list of them, got "
                         f"{model_attribute!r}")
    return names


def check_input_range(input_range: Sequence[float] | None) -> tuple[float, float] | None:
    """Validate an optional ``(low, high)`` input range."""
    if input_range is None:
        return None
    if len(input_range) != 2 or not float(input_range[0]) < float(input_range[1]):
        raise ValueError(f"input_range must be (low, high) with low < high, got {input_range!r}")
    return float(input_range[0]), float(input_range[1])


def check_positive(name: str, value: int, minimum: int = 1) -> None:
    """Raise a ``ValueError`` unless ``value`` is an ``int`` (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def resolve_network(pl_module: LightningModule, names: tuple[str, ...] | None, prefer_inner: bool) -> tuple[
        nn.Module, str]:
    """The network a callback evaluates, and a human-readable name of where it came from.

    Args:
        pl_module: The LightningModule being trained or validated.
        names: Dotted attribute paths of ``pl_module``; one gives that module, several are chained in this order
            into an ``nn.Sequential`` that shares their parameters (e.g. ``["normalize", "net"]``).
        prefer_inner: Without ``names``, use ``pl_module.model`` when it is an ``nn.Module`` (this project's
            convention: the bare ``nn.Sequential`` zoo network) instead of ``pl_module`` itself.

    Returns:
        ``(network, where)``.

    Raises:
        ValueError: If an attribute is missing or is not an ``nn.Module``.
    """
    if names is None:
        inner = getattr(pl_module, "model", None)
        if prefer_inner and isinstance(inner, nn.Module):
            return inner, "pl_module.model"
        return pl_module, "pl_module"
    modules = []
    for name in names:
        value: Any = pl_module
        for part in name.split("."):
            if not hasattr(value, part):
                raise ValueError(f"model_attribute {name!r}: {type(pl_module).__name__} has no attribute path {name!r}")
            value = getattr(value, part)
        if not isinstance(value, nn.Module):
            raise ValueError(f"model_attribute {name!r} is a {type(value).__name__}, not an nn.Module")
        modules.append(value)
    if len(modules) == 1:
        return modules[0], f"pl_module.{names[0]}"
    return nn.Sequential(*modules), "nn.Sequential(" + ", ".join(f"pl_module.{n}" for n in names) + ")"


def resolve_input_range(explicit: tuple[float, float] | None, trainer: Trainer,
                        pl_module: LightningModule) -> tuple[float, float] | None:
    """``explicit`` if given, else the datamodule's ``input_range``, else the module's ``hparams.input_range``."""
    if explicit is not None:
        return explicit
    for source in (getattr(trainer, "datamodule", None), getattr(pl_module, "hparams", None)):
        value = getattr(source, "input_range", None)
        if value is None and isinstance(source, dict):
            value = source.get("input_range")
        if value is not None:
            return check_input_range(tuple(value))
    return None


def scheduled_to_run(trainer: Trainer, every_n_epochs: int, last_run_step: int) -> bool:
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


class ValidationSubsetCallback(Callback):
    """What both robustness callbacks share: the run schedule and the resume state of a fixed validation subset.

    Subclasses set ``num_examples``, ``every_n_epochs``, ``seed``, ``_disabled`` and ``_network`` in their
    constructor (and ``setup``), call :meth:`_mark_run` after each completed run, and may add entries to the
    checkpointed state with :meth:`_extra_state`.
    """

    num_examples: int
    every_n_epochs: int
    seed: int
    _disabled: bool
    _network: nn.Module | None

    def __init__(self) -> None:
        super().__init__()
        self.last_run_step: int | None = None
        self.last_run_epoch: int | None = None
        self.runs = 0

    def _extra_state(self) -> dict[str, Any]:
        """Entries a subclass adds to its checkpointed state (e.g. the certification kinds)."""
        return {}

    def _should_run(self, trainer: Trainer) -> bool:
        if self._disabled or self._network is None:
            return False
        return scheduled_to_run(trainer, self.every_n_epochs, self.last_run_step)

    def _mark_run(self, trainer: Trainer) -> None:
        self.last_run_step, self.last_run_epoch = trainer.global_step, trainer.current_epoch
        self.runs += 1

    def state_dict(self) -> dict[str, Any]:
        """The subset definition and the last run (epoch and global step), for resuming."""
        return {"num_examples": self.num_examples, **self._extra_state(), "seed": self.seed,
                "last_run_step": self.last_run_step, "last_run_epoch": self.last_run_epoch, "runs": self.runs}

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


def split_batch(batch: Any) -> tuple[Tensor, Tensor] | None:
    """``(x, y)`` from a ``(x, y, ...)`` sequence or a dict (keys ``x``/``input``/``image``, ``y``/``label``)."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        x, y = batch[0], batch[1]
    elif isinstance(batch, dict):
        x = next((batch[k] for k in ("x", "input", "inputs", "image", "images") if k in batch), None)
        y = next((batch[k] for k in ("y", "label", "labels", "target", "targets") if k in batch), None)
    else:
        return None
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.dim() < 2 or y.shape != (x.shape[0],):
        return None
    return x, y


class ExampleIndexer:
    """Maps the examples of validation batches to their indices in the validation dataset, on every rank.

    Under DDP, Lightning gives each rank a ``DistributedSampler`` (rank ``r`` sees dataset indices
    ``r, r + W, ...`` and the first ones again as padding); iterating that sampler gives this rank's exact
    dataset indices, so the subset ``index < num_examples`` is the same examples whatever the world size.
    A plain ``SequentialSampler`` maps position to index. Other samplers fall back to the position (with a
    warning), which is correct only for sequential data.
    """

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._indices: Tensor | None = None
        self._position = 0
        self._warned = False

    def start_epoch(self, trainer: Trainer) -> None:
        """Read the sampler of the first validation dataloader and reset the running position."""
        self._position = 0
        self._indices = None
        loaders = trainer.val_dataloaders
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        elif isinstance(loaders, dict):
            loaders = next(iter(loaders.values()), None)
        sampler = getattr(loaders, "sampler", None)
        if isinstance(sampler, SequentialSampler):
            return
        if isinstance(sampler, DistributedSampler):
            self._indices = torch.as_tensor(list(iter(sampler)), dtype=torch.long)
            return
        if not self._warned and trainer.world_size > 1:
            self._warned = True
            rank_zero_warn(f"{self._owner}: the validation sampler is {type(sampler).__name__}, not a "
                           "SequentialSampler or DistributedSampler; examples are identified by their position in "
                           "each rank's stream, so the subset may differ between ranks and world sizes.")

    def next_batch(self, size: int) -> Tensor:
        """Dataset indices ``[size]`` (CPU, long) of the next batch of the first validation dataloader."""
        begin, self._position = self._position, self._position + size
        if self._indices is None:
            return torch.arange(begin, begin + size)
        return self._indices[begin:begin + size]


@contextmanager
def isolated(network: nn.Module) -> Iterator[None]:
    """Run a callback's computation without side effects on training.

    Inside: gradients enabled even under ``no_grad`` / ``inference_mode``, every submodule in eval mode, and the
    parameters frozen (no ``.grad`` is ever written). On exit the modes, the ``requires_grad`` flags and the
    global random states of ``torch`` (CPU and initialised CUDA devices), ``numpy`` and ``random`` are restored.
    """
    rng_torch = torch.get_rng_state()
    rng_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    rng_numpy = np.random.get_state()
    rng_python = random.getstate()
    flags = [(p, p.requires_grad) for p in network.parameters()]
    try:
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
            stack.enter_context(evaluation_mode(network))
            for parameter, _ in flags:
                parameter.requires_grad_(False)
            yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        torch.set_rng_state(rng_torch)
        if rng_cuda is not None:
            torch.cuda.set_rng_state_all(rng_cuda)
        np.random.set_state(rng_numpy)
        random.setstate(rng_python)


class ExampleStore(Metric):
    """Per-example results of one validation epoch, gathered from every rank (``dist_reduce_fx="cat"``).

    Each update appends ``index`` (dataset indices) and one row per example for every field. ``compute()``
    (a collective: call it on every rank) returns the rows sorted by index with duplicates dropped: the
    ``DistributedSampler`` pads ranks with copies of the first examples, so counts are taken after
    de-duplication rather than from ``"sum"`` states. ``failures`` (``"sum"``) counts ranks whose computation
    raised, so that every rank agrees to skip logging.

    Args:
        fields: Names of the per-example fields; each row is flattened to float32.
    """

    full_state_update = False

    def __init__(self, fields: Sequence[str]) -> None:
        super().__init__(sync_on_compute=True)
        self.fields = tuple(fields)
        self.add_state("index", default=[], dist_reduce_fx="cat")
        for name in self.fields:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.add_state("failures", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def start(self) -> None:
        """Reset and append typed empty rows, so every rank has well-formed states even without examples."""
        self.reset()
        self.update(torch.zeros(0, dtype=torch.long), **{name: torch.zeros(0) for name in self.fields})

    def update(self, index: Tensor, **values: Tensor) -> None:
        """Append the results of ``len(index)`` examples (``values[name]`` is ``[n, ...]``)."""
        self.index.append(index.detach().to(device=self.device, dtype=torch.long).reshape(-1))
        for name in self.fields:
            getattr(self, name).append(values[name].detach().to(device=self.device, dtype=torch.float32).reshape(-1))

    def fail(self) -> None:
        """Record that this rank's computation failed."""
        self.failures += 1

    def compute(self) -> dict[str, Tensor]:
        """``{"index": [M], name: [M, d], "failures": []}``, sorted by index, duplicates dropped."""
        index = dim_zero_cat(self.index)
        count = index.numel()
        order = torch.argsort(index, stable=True)
        index = index[order]
        keep = torch.ones(count, dtype=torch.bool, device=index.device)
        keep[1:] = index[1:] != index[:-1]
        out = {"index": index[keep], "failures": self.failures.clone()}
        for name in self.fields:
            values = dim_zero_cat(getattr(self, name))
            rows = values.reshape(count, -1) if count else values.reshape(0, 0)
            out[name] = rows[order][keep]
        return out


def tensorboard_writer(trainer: Trainer) -> SummaryWriter | None:
    """The ``SummaryWriter`` of the first ``TensorBoardLogger`` in ``trainer.loggers`` (call on rank 0 only)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def log_scalars(pl_module: LightningModule, values: dict[str, float]) -> None:
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
