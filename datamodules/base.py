"""The interface every datamodule of the framework shares.

Every datamodule knows, right after ``__init__`` and without touching any data, the shape of one example
(``input_shape``), the number of classes (``num_classes``), the range its inputs lie in (``input_range``) and
the per-channel normalisation the model applies first (``normalization``, ``None`` for most sets), so that the
CLI can link them into the model, the attacks and the certification reports. After
``setup(stage)`` it holds ``train_set``, ``val_set`` and ``test_set`` (datasets of ``(x, y)`` pairs with a
float tensor ``x`` shaped ``input_shape`` and an integer label ``y``) and serves the four dataloaders.
"""

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Subset

logger = logging.getLogger("datamodules")


def check_positive_int(name: str, value: int) -> None:
    """Raise a ``ValueError`` unless ``value`` is an integer >= 1.

    Args:
        name: Argument name used in the message.
        value: The value to check.

    Raises:
        ValueError: If ``value`` is not a positive integer.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_optional_cap(name: str, value: int | None) -> None:
    """Raise a ``ValueError`` unless ``value`` is ``None`` or a positive integer.

    Args:
        name: Argument name used in the message.
        value: The value to check.

    Raises:
        ValueError: If ``value`` is neither ``None`` nor a positive integer.
    """
    if value is not None:
        check_positive_int(name, value)


def held_out_split(size: int, val_size: int, seed: int, where: str) -> tuple[list[int], list[int]]:
    """Split ``range(size)`` by a permutation seeded with ``seed``: ``(train indices, val_size held-out indices)``.

    Args:
        size: Number of training images in the file(s).
        val_size: Images to hold out for validation.
        seed: Seed of the permutation.
        where: Where the images come from, for the message (e.g. ``"in 'data/cifar-10-batches-py'"``).

    Raises:
        ValueError: If ``val_size`` leaves no training image.
    """
    if val_size >= size:
        raise ValueError(f"val_size={val_size} must be smaller than the {size} training images {where}")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[val_size:], order[:val_size]


def cap_dataset(dataset: Dataset, limit: int | None) -> Dataset:
    """Keep only the first ``limit`` examples of ``dataset`` (all of them when ``limit`` is ``None``).

    Args:
        dataset: A map-style dataset with ``__len__``.
        limit: Maximum number of examples, or ``None`` for no cap.

    Returns:
        ``dataset`` itself, or a ``Subset`` of its first ``limit`` examples.
    """
    if limit is None or limit >= len(dataset):  # type: ignore[arg-type]
        return dataset
    return Subset(dataset, range(limit))


class TransformedSubset(Dataset):
    """The examples ``indices`` of ``dataset`` with ``transform`` applied to each input.

    Lets two splits of one file set (e.g. an augmented training split and a plain validation split) share the
    loaded data.

    Args:
        dataset: A map-style dataset of ``(input, label)`` whose inputs ``transform`` accepts (e.g. PIL images).
        indices: Positions in ``dataset`` that form this split.
        transform: Applied to each input.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int], transform: Callable[[Any], Any]) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.transform = transform

    def __len__(self) -> int:
        """Number of examples in the split."""
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        """The transformed input and the label of the split's ``index``-th example."""
        x, y = self.dataset[self.indices[index]]
        return self.transform(x), y


class ClassificationDataModule(LightningDataModule):
    """Base class: argument checks, the four dataloaders and ``describe()``.

    Subclasses set ``input_shape``, ``num_classes`` and ``input_range`` in ``__init__`` and implement
    ``_build_sets()``, which returns the three datasets; ``setup`` calls it once and caches the result.

    Attributes:
        input_shape: Shape of one example without the batch dimension, e.g. ``(1, 28, 28)``.
        num_classes: Number of classes; labels are ``0 .. num_classes - 1``.
        input_range: ``(low, high)`` bounds of every input coordinate, e.g. ``(-1.0, 1.0)``.
        normalization: Per-channel ``(mean, std)`` that the model applies as its first layer
            (:class:`bounds.normalization.InputNormalization`), so that inputs and eps stay in pixel units;
            ``None`` (the default) for data already scaled for the model.
        train_set: Training dataset (``None`` before ``setup``).
        val_set: Validation dataset (``None`` before ``setup``).
        test_set: Test dataset (``None`` before ``setup``).
    """

    input_shape: tuple[int, ...]
    num_classes: int
    input_range: tuple[float, float]
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def __init__(self, data_dir: str = "data", batch_size: int = 100, num_workers: int = 0, seed: int = 0) -> None:
        """Check and store the arguments shared by every datamodule.

        Args:
            data_dir: Folder holding (or receiving) the data files.
            batch_size: Examples per batch in every dataloader.
            num_workers: Worker processes per dataloader (0 loads in the main process).
            seed: Seed of every random choice: data generation, held-out splits and the training shuffle.

        Raises:
            ValueError: On a non-positive ``batch_size``, a negative ``num_workers`` or a non-integer ``seed``.
        """
        super().__init__()
        check_positive_int("batch_size", batch_size)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.data_dir = str(data_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        # One generator for the whole run, so that re-created train loaders keep drawing new permutations.
        self._shuffle_generator = torch.Generator().manual_seed(seed)

    # ----------------------------------------------------------------------------------------------------------
    # To implement in subclasses
    # ----------------------------------------------------------------------------------------------------------
    def _build_sets(self) -> tuple[Dataset, Dataset, Dataset]:
        """Create ``(train_set, val_set, test_set)``; called once by ``setup``."""
        raise NotImplementedError

    def _source_description(self) -> str:
        """Say which data source is in use, for ``describe()``."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------------------
    # Lightning hooks
    # ----------------------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Build all three splits once (whatever the stage) and keep them.

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` or ``None``; every stage gets all splits.
        """
        if self.train_set is None:
            self.train_set, self.val_set, self.test_set = self._build_sets()
            logger.info(self.describe())

    def _require(self, dataset: Dataset | None, name: str) -> Dataset:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.{name} is not available before setup(); call setup() first")
        return dataset

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=self._shuffle_generator if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Training batches, shuffled with a generator seeded by ``seed``."""
        return self._loader(self._require(self.train_set, "train_set"), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order."""
        return self._loader(self._require(self.val_set, "val_set"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in a fixed order."""
        return self._loader(self._require(self.test_set, "test_set"), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test batches again, in a fixed order (certification runs through ``predict`` or ``test``)."""
        return self._loader(self._require(self.test_set, "test_set"), shuffle=False)

    # ----------------------------------------------------------------------------------------------------------
    # Reporting
    # ----------------------------------------------------------------------------------------------------------
    def describe(self) -> str:
        """One line naming the data source in use and the split sizes.

        Returns:
            E.g. ``"MNISTDataModule: torchvision MNIST files in data/MNIST/raw; train 55000 / val 5000 / test
            10000"``; before ``setup`` the sizes read ``not set up yet``.
        """
        if self.train_set is None or self.val_set is None or self.test_set is None:
            sizes = "splits not set up yet"
        else:
            sizes = f"train {len(self.train_set)} / val {len(self.val_set)} / test {len(self.test_set)}"  # type: ignore[arg-type]
        return f"{type(self).__name__}: {self._source_description()}; {sizes}"
