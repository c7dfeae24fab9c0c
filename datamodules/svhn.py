"""SVHN (cropped digits) from torchvision, as 3x32x32 images in [-1, 1] (Amoeba Section 4.1).

``torchvision.datasets.SVHN`` reads ``<data_dir>/train_32x32.mat`` and ``<data_dir>/test_32x32.mat`` and
checks their MD5 sums against the official files; it maps SVHN's label 10 to digit 0. ``val_size`` images are
held out of the 73,257 training images with ``seed``; the 26,032 test images are the test set.
"""

import logging
import os

from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms

from datamodules.base import (
    ClassificationDataModule,
    cap_dataset,
    check_optional_cap,
    check_positive_int,
    held_out_split,
)

logger = logging.getLogger("datamodules")

SVHN_FILES: tuple[str, str] = ("train_32x32.mat", "test_32x32.mat")
"""The files torchvision's SVHN reads from ``data_dir`` (splits ``train`` and ``test``)."""


class SVHNDataModule(ClassificationDataModule):
    """SVHN digits as 3x32x32 images in [-1, 1] (``ToTensor`` then ``Normalize((0.5,) * 3, (0.5,) * 3)``)."""

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 100,
        num_workers: int = 0,
        seed: int = 0,
        download: bool = False,
        val_size: int = 5000,
        max_train_examples: int | None = None,
        max_eval_examples: int | None = None,
    ) -> None:
        """Configure the datamodule; no data is read until ``prepare_data``/``setup``.

        Args:
            data_dir: Folder holding ``train_32x32.mat`` and ``test_32x32.mat``.
            batch_size: Examples per batch.
            num_workers: Dataloader worker processes.
            seed: Seed of the held-out validation split and of the training shuffle.
            download: Let torchvision download missing files (into ``data_dir``).
            val_size: Images held out of the training file for validation.
            max_train_examples: Keep only the first N training examples (after the split), for quick runs.
            max_eval_examples: Keep only the first N validation and the first N test examples.

        Raises:
            ValueError: On a non-positive size.
        """
        super().__init__(data_dir=data_dir, batch_size=batch_size, num_workers=num_workers, seed=seed)
        check_positive_int("val_size", val_size)
        check_optional_cap("max_train_examples", max_train_examples)
        check_optional_cap("max_eval_examples", max_eval_examples)
        self.download = bool(download)
        self.val_size = val_size
        self.max_train_examples = max_train_examples
        self.max_eval_examples = max_eval_examples
        self.input_shape = (3, 32, 32)
        self.num_classes = 10
        self.input_range = (-1.0, 1.0)
        self.save_hyperparameters()

    def expected_files(self) -> list[str]:
        """Paths of the two ``.mat`` files torchvision reads."""
        return [os.path.join(self.data_dir, name) for name in SVHN_FILES]

    def prepare_data(self) -> None:
        """Download the missing ``.mat`` files when ``download`` is true (one process per node)."""
        if self.download:
            for split in ("train", "test"):
                if not os.path.isfile(os.path.join(self.data_dir, f"{split}_32x32.mat")):
                    os.makedirs(self.data_dir, exist_ok=True)
                    logger.info("SVHNDataModule: downloading the SVHN %s split into %s", split, self.data_dir)
                    datasets.SVHN(root=self.data_dir, split=split, download=True)

    def _load(self, split: str, transform: transforms.Compose) -> datasets.SVHN:
        try:
            return datasets.SVHN(root=self.data_dir, split=split, transform=transform, download=False)
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
            raise RuntimeError(
                f"'{os.path.join(self.data_dir, f'{split}_32x32.mat')}' exists but torchvision rejected it ({err}); "
                "it must be the official SVHN file (torchvision checks its MD5 sum): delete it and pass "
                "`download: true`"
            ) from err

    def _build_sets(self) -> tuple[Dataset, Dataset, Dataset]:
        if self.download:
            self.prepare_data()  # No-op when the files are there (e.g. after Lightning ran prepare_data).
        missing = [path for path in self.expected_files() if not os.path.isfile(path)]
        if missing:
            raise FileNotFoundError(
                f"SVHN files not found in data_dir='{self.data_dir}': missing {', '.join(missing)} "
                f"(expected {' and '.join(SVHN_FILES)}); pass `download: true` to let torchvision download them."
            )
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
        full_train = self._load("train", transform)
        test = self._load("test", transform)
        train_index, val_index = held_out_split(len(full_train), self.val_size, self.seed,
                                                f"in '{self.expected_files()[0]}'")
        train, val = Subset(full_train, train_index), Subset(full_train, val_index)
        return (
            cap_dataset(train, self.max_train_examples),
            cap_dataset(val, self.max_eval_examples),
            cap_dataset(test, self.max_eval_examples),
        )

    def _source_description(self) -> str:
        return f"torchvision SVHN files {' and '.join(self.expected_files())}"
