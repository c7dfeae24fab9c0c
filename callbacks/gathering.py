"""Per-example rows gathered from every rank, each dataset example kept exactly once.

One functional core, as torchmetrics keeps ``_update``/``_compute`` functions under thin classes: pure functions
that concatenate blocks of rows, de-duplicate them by dataset index and exchange them across ranks, and
:class:`ExampleStore`, the torchmetrics ``Metric`` the callbacks accumulate into (its ``compute`` is
:func:`unique_by_index` over the ``"cat"``-synchronised states). ``certify.py``'s reports use the functions
directly.

Distributed samplers pad the last batches by repeating examples, and a report or callback may run only on a
subset of each batch, so ranks can hold different numbers of rows (none at all included). Counts are therefore
taken after de-duplication by ``index`` (the dataset position), never from ``"sum"`` states.
"""

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

Rows = dict[str, Tensor]
"""Per-example columns: ``index`` ``[N]`` (dataset positions) and any tensors whose first dimension is ``N``."""


def concatenate_rows(parts: Sequence[Rows]) -> Rows:
    """Concatenate row blocks that share their keys (an empty sequence gives an empty dict).

    Args:
        parts: Blocks of rows, each with an ``index`` column.

    Returns:
        One block, on the CPU.

    Raises:
        ValueError: If the blocks have different keys or a block lacks ``index``.

    Example:
        >>> rows = concatenate_rows([{"index": torch.tensor([2])}, {"index": torch.tensor([0, 1])}])
        >>> rows["index"].tolist()
        [2, 0, 1]
    """
    blocks = [part for part in parts if part]
    if not blocks:
        return {}
    keys = set(blocks[0])
    if "index" not in keys:
        raise ValueError("every block of rows needs an 'index' column")
    for block in blocks[1:]:
        if set(block) != keys:
            raise ValueError(f"row blocks have different columns: {sorted(keys)} vs {sorted(block)}")
    return {key: torch.cat([block[key].detach().cpu() for block in blocks]) for key in blocks[0]}


def unique_by_index(rows: Rows) -> Rows:
    """Sort rows by ``index`` and keep the first row of each index (stable: the earliest block wins).

    Args:
        rows: Rows with an ``index`` column (may be empty, or have zero rows).

    Returns:
        The sorted, de-duplicated rows, on the device they came on.

    Example:
        >>> rows = unique_by_index({"index": torch.tensor([1, 0, 1]), "x": torch.tensor([10.0, 20.0, 30.0])})
        >>> rows["index"].tolist(), rows["x"].tolist()
        ([0, 1], [20.0, 10.0])
    """
    if not rows:
        return {}
    order = torch.argsort(rows["index"], stable=True)
    ordered = {key: value[order] for key, value in rows.items()}
    keep = torch.ones_like(ordered["index"], dtype=torch.bool)
    keep[1:] = ordered["index"][1:] != ordered["index"][:-1]
    return {key: value[keep] for key, value in ordered.items()}


def all_gather_rows(local: Rows, world_size: int) -> Rows:
    """Every rank's block of rows, concatenated in rank order, on every rank (this rank's block when alone).

    A collective when ``world_size > 1`` and a process group is initialised: every rank must call it, in the
    same order. Blocks may have different numbers of rows (``torch.distributed.all_gather_object``, any backend).

    Args:
        local: This rank's rows (CPU tensors; may be empty).
        world_size: Number of processes (``trainer.world_size``).

    Returns:
        All ranks' rows, on the CPU (an empty dict when no rank has rows).
    """
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        gathered: list[Rows | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
        return concatenate_rows([block for block in gathered if block])
    return local


def gather_unique_rows(parts: Sequence[Rows], world_size: int) -> Rows:
    """Collect every rank's rows on every rank, de-duplicated by ``index`` and sorted by it.

    A collective when ``world_size > 1``: every rank must call it, in the same order.

    Args:
        parts: This rank's blocks of rows.
        world_size: Number of processes (``trainer.world_size``).

    Returns:
        All rows of all ranks, each dataset index once (an empty dict when no rank has rows).

    Example:
        >>> parts = [{"index": torch.tensor([3, 0])}, {"index": torch.tensor([0])}]
        >>> gather_unique_rows(parts, world_size=1)["index"].tolist()
        [0, 3]
    """
    return unique_by_index(all_gather_rows(concatenate_rows(parts), world_size))


class ExampleStore(Metric):
    """Per-example results of one validation epoch, gathered from every rank (``dist_reduce_fx="cat"``).

    Each update appends ``index`` (dataset indices) and one row per example for every field. ``compute()``
    (a collective: call it on every rank) returns the rows sorted by index with duplicates dropped
    (:func:`unique_by_index`). ``failures`` (``"sum"``) counts ranks whose computation raised, so that every rank
    agrees to skip logging.

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
        rows = {"index": index}
        for name in self.fields:
            values = dim_zero_cat(getattr(self, name))
            rows[name] = values.reshape(count, -1) if count else values.reshape(0, 0)
        return {**unique_by_index(rows), "failures": self.failures.clone()}
