"""Which dataset example each row of a batch is: the one home of example indexing.

Distributed samplers pad the last batches by repeating examples, so every per-example result carries its dataset
index and is de-duplicated by it (:mod:`callbacks.gathering`). There are two ways to know the index:

- :class:`IndexedDataset`: a loader you build yourself (``certify.py``) yields ``(index, x, y)`` items;
- :class:`ExampleIndexer`: a callback cannot change the user's loader, so it reads the indices back from the
  validation sampler (Lightning's ``DistributedSampler`` under DDP), batch after batch.

:func:`split_batch` reads ``(x, y)`` out of the batch formats Lightning projects commonly use.
"""

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler, SequentialSampler


class IndexedDataset(Dataset):
    """Wrap a dataset so each item carries its position: ``(index, x, y)``.

    Distributed samplers pad the last batches by repeating examples; the index lets the gathered results
    be de-duplicated so that every example is counted exactly once.

    Args:
        dataset: A dataset of ``(x, y)`` pairs.
        indices: The positions in ``dataset`` to expose, in order.
        labels: Labels replacing the dataset's, one per position (e.g. the model's own predictions), or ``None``.

    Raises:
        ValueError: If ``labels`` and ``indices`` differ in length.

    Example:
        >>> data = IndexedDataset([(torch.zeros(2), 1), (torch.ones(2), 0)], indices=[1], labels=[7])
        >>> index, x, y = data[0]
        >>> index, x.tolist(), y
        (1, [1.0, 1.0], 7)
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int], labels: Sequence[int] | None = None) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.labels = None if labels is None else [int(label) for label in labels]
        if self.labels is not None and len(self.labels) != len(self.indices):
            raise ValueError(f"{len(self.labels)} labels for {len(self.indices)} indices")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor, int]:
        index = self.indices[position]
        x, y = self.dataset[index]
        return index, x, int(y) if self.labels is None else self.labels[position]


def split_batch(batch: Any) -> tuple[Tensor, Tensor] | None:
    """``(x, y)`` from a ``(x, y, ...)`` sequence or a dict (keys ``x``/``input``/``image``, ``y``/``label``).

    Returns ``None`` unless ``x`` is a tensor with a batch dimension and ``y`` a tensor ``(batch,)``.
    """
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

    Args:
        owner: Name used in the warning (the callback's class name).
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
