"""CIFAR-10 from torchvision, as 3x32x32 images in [0, 1] with the per-channel normalisation inside the model.

``torchvision.datasets.CIFAR10`` reads the pickled batches ``data_batch_1`` .. ``data_batch_5``, ``test_batch``
and ``batches.meta`` in ``<data_dir>/cifar-10-batches-py`` and checks their MD5 sums against the official files.

Input convention (README, Data): pixels stay in [0, 1] (``ToTensor``), so boxes and eps read in the pixel units of
the certified-training and adversarial-training papers (2/255, 8/255). The usual CIFAR-10 normalisation
(mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616)) is the datamodule's ``normalization``, which the
CLI links into the model as its first layer (:class:`bounds.normalization.InputNormalization`, which the bound
engine supports), instead of being applied to the data.

``val_size`` images are held out of the 50,000 training images with ``seed``; the 10,000 test images are the
test set. With ``augment`` the training split (only) gets the usual augmentation: a random 32x32 crop of the
image padded by 4 pixels (zeros) and a random horizontal flip.
"""

import logging
import os

from torch.utils.data import Dataset
from torchvision import datasets, transforms

from datamodules.base import (
    ClassificationDataModule,
    TransformedSubset,
    cap_dataset,
    check_optional_cap,
    check_positive_int,
    held_out_split,
)

logger = logging.getLogger("datamodules")

CIFAR10_FOLDER = "cifar-10-batches-py"
"""The folder of ``data_dir`` where torchvision expects the batches."""
CIFAR10_FILES: tuple[str, ...] = tuple(
    [name for name, _ in datasets.CIFAR10.train_list + datasets.CIFAR10.test_list]
    + [datasets.CIFAR10.meta["filename"]]
)
"""The files torchvision's CIFAR10 reads: ``data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta``."""
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)


class CIFAR10DataModule(ClassificationDataModule):
    """CIFAR-10 as 3x32x32 images in [0, 1]; ``normalization`` holds the CIFAR-10 mean and std (module docstring)."""

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        download: bool = False,
        val_size: int = 5000,
        max_train_examples: int | None = None,
        max_eval_examples: int | None = None,
        augment: bool = True,
    ) -> None:
        """Configure the datamodule; no data is read until ``prepare_data``/``setup``.

        Args:
            data_dir: Folder holding ``cifar-10-batches-py/`` (torchvision's ``root``).
            batch_size: Examples per batch.
            num_workers: Dataloader worker processes.
            seed: Seed of the held-out validation split and of the training shuffle.
            download: Let torchvision download and extract the archive into ``data_dir`` when files are missing.
            val_size: Images held out of the 50,000 training images for validation.
            max_train_examples: Keep only the first N training examples (after the split), for quick runs.
            max_eval_examples: Keep only the first N validation and the first N test examples.
            augment: Random crop (padding 4) and horizontal flip on the training split; validation and test
                images are never augmented.

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
        self.augment = bool(augment)
        self.input_shape = (3, 32, 32)
        self.num_classes = 10
        self.input_range = (0.0, 1.0)
        self.normalization = (CIFAR10_MEAN, CIFAR10_STD)
        self.save_hyperparameters()

    @property
    def folder(self) -> str:
        """``<data_dir>/cifar-10-batches-py``."""
        return os.path.join(self.data_dir, CIFAR10_FOLDER)

    def expected_files(self) -> list[str]:
        """Paths of the seven files torchvision reads."""
        return [os.path.join(self.folder, name) for name in CIFAR10_FILES]

    def train_transform(self) -> transforms.Compose:
        """The training split's transform: augmentation (when ``augment``) then ``ToTensor``."""
        steps: list = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if self.augment else []
        return transforms.Compose([*steps, transforms.ToTensor()])

    def prepare_data(self) -> None:
        """Download and extract the archive when ``download`` is true and files are missing (one process per node)."""
        if self.download and not all(os.path.isfile(path) for path in self.expected_files()):
            os.makedirs(self.data_dir, exist_ok=True)
            logger.info("CIFAR10DataModule: downloading CIFAR-10 into %s", self.folder)
            datasets.CIFAR10(root=self.data_dir, train=True, download=True)

    def _load(self, train: bool) -> datasets.CIFAR10:
        try:
            return datasets.CIFAR10(root=self.data_dir, train=train, transform=None, download=False)
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted" / "metadata file ..."
            raise RuntimeError(
                f"The CIFAR-10 files in '{self.folder}' exist but torchvision rejected them ({err}); they must be "
                "the official batches (torchvision checks their MD5 sums): delete the folder and pass `download: true`"
            ) from err

    def _build_sets(self) -> tuple[Dataset, Dataset, Dataset]:
        if self.download:
            self.prepare_data()  # No-op when the files are there (e.g. after Lightning ran prepare_data).
        missing = [path for path in self.expected_files() if not os.path.isfile(path)]
        if missing:
            raise FileNotFoundError(
                f"CIFAR-10 files not found in data_dir='{self.data_dir}': missing {', '.join(missing)} (expected "
                f"{', '.join(CIFAR10_FILES)} in '{self.folder}'); pass `download: true` to let torchvision "
                "download them."
            )
        full_train, test = self._load(train=True), self._load(train=False)
        train_index, val_index = held_out_split(len(full_train), self.val_size, self.seed, f"in '{self.folder}'")
        plain = transforms.ToTensor()
        train = TransformedSubset(full_train, train_index, self.train_transform())
        val = TransformedSubset(full_train, val_index, plain)
        return (
            cap_dataset(train, self.max_train_examples),
            cap_dataset(val, self.max_eval_examples),
            cap_dataset(TransformedSubset(test, range(len(test)), plain), self.max_eval_examples),
        )

    def _source_description(self) -> str:
        return f"torchvision CIFAR-10 batches in {self.folder} (augment={self.augment})"
