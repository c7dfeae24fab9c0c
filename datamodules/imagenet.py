"""ImageNet (ILSVRC 2012) validation images from a folder, for evaluating pretrained torchvision classifiers.

Two layouts of ``data_dir`` are read:

- an ``ImageFolder`` layout: ``<data_dir>/<wnid>/*.JPEG``, one folder per class (e.g. the validation set sorted
  into class folders), read by ``torchvision.datasets.ImageFolder``;
- a ``torchvision.datasets.ImageNet`` root that torchvision has already prepared: ``<data_dir>/meta.bin`` and
  ``<data_dir>/val/<wnid>/*.JPEG`` (its ``split="val"``; the archives are not needed once these exist).

The class index of an image is the position of its folder name in the sorted list of folder names, the index
order of torchvision's ImageNet weights when the folders are the 1,000 wnids. Empty class folders are allowed,
so a subset of the images keeps the standard indices as long as all 1,000 folders exist; with fewer folders the
indices are positions among those folders (a warning says so), which pretrained 1,000-class models do not share.

Preprocessing is the standard evaluation one (as torchvision's weights' transforms): resize the shorter side to
``resize_size`` (default ``round(image_size / 0.875)``: 256 for 224, 342 for InceptionV3's 299), centre-crop
``image_size``, ``ToTensor``. Pixels stay in [0, 1]; the ImageNet mean (0.485, 0.456, 0.406) and std
(0.229, 0.224, 0.225) are ``normalization``, applied inside the model as in the ACTS paper.

This datamodule is for evaluation: the test and validation sets are the folder, in an order shuffled once with
``seed`` (an ImageFolder lists the images class by class; shuffled, the first N examples certify.py takes cover
the classes). There is no separate training split: ``train_set`` is the same images (in the same evaluation
preprocessing), so that ``train.py`` runs, e.g. for fine-tuning experiments; do not report accuracy after
training on it.
"""

import logging
import os

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms

from datamodules.base import ClassificationDataModule, cap_dataset, check_optional_cap, check_positive_int

logger = logging.getLogger("datamodules")

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class ImageNetDataModule(ClassificationDataModule):
    """ImageNet-style folder of images as ``3 x image_size x image_size`` tensors in [0, 1] (module docstring).

    Attributes:
        layout: ``"imagefolder"`` or ``"torchvision_imagenet"`` once ``setup`` has read the folder, else ``None``.
        classes: The class folder names in index order, after ``setup``.
    """

    def __init__(
        self,
        data_dir: str = "data/imagenet/val",
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        image_size: int = 224,
        resize_size: int | None = None,
        num_classes: int = 1000,
        max_train_examples: int | None = None,
        max_eval_examples: int | None = None,
    ) -> None:
        """Configure the datamodule; no image is read until ``setup``.

        Args:
            data_dir: The class folders' parent (or a prepared ``torchvision.datasets.ImageNet`` root).
            batch_size: Examples per batch.
            num_workers: Dataloader worker processes (decoding JPEGs is the cost: use several).
            seed: Seed of the fixed example order (and of the training shuffle).
            image_size: Side of the centre crop: 224 for ResNet50 and VGG16, 299 for InceptionV3.
            resize_size: Shorter side after resizing, before the crop; ``None``: ``round(image_size / 0.875)``.
            num_classes: Classes of the model (1,000 for ImageNet); more class folders than this is an error.
            max_train_examples: Keep only the first N training examples.
            max_eval_examples: Keep only the first N validation and the first N test examples.

        Raises:
            ValueError: On a non-positive size or a ``resize_size`` smaller than ``image_size``.
        """
        super().__init__(data_dir=data_dir, batch_size=batch_size, num_workers=num_workers, seed=seed)
        check_positive_int("image_size", image_size)
        check_positive_int("num_classes", num_classes)
        check_optional_cap("resize_size", resize_size)
        check_optional_cap("max_train_examples", max_train_examples)
        check_optional_cap("max_eval_examples", max_eval_examples)
        self.image_size = image_size
        self.resize_size = round(image_size / 0.875) if resize_size is None else resize_size
        if self.resize_size < image_size:
            raise ValueError(f"resize_size={self.resize_size} must be at least image_size={image_size}")
        self.max_train_examples = max_train_examples
        self.max_eval_examples = max_eval_examples
        self.input_shape = (3, image_size, image_size)
        self.num_classes = num_classes
        self.input_range = (0.0, 1.0)
        self.normalization = (IMAGENET_MEAN, IMAGENET_STD)
        self.layout: str | None = None
        self.classes: list[str] = []
        self.save_hyperparameters()

    def transform(self) -> transforms.Compose:
        """Resize the shorter side to ``resize_size``, centre-crop ``image_size``, ``ToTensor`` (pixels in [0, 1])."""
        return transforms.Compose([
            transforms.Resize(self.resize_size, interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
            transforms.CenterCrop(self.image_size),
            transforms.ToTensor(),
        ])

    def _is_torchvision_root(self) -> bool:
        return os.path.isfile(os.path.join(self.data_dir, "meta.bin")) and os.path.isdir(
            os.path.join(self.data_dir, "val"))

    def _load_folder(self) -> datasets.ImageFolder:
        if not os.path.isdir(self.data_dir):
            raise FileNotFoundError(
                f"ImageNet folder not found: data_dir='{self.data_dir}' does not exist; it must hold one folder per "
                "class (<data_dir>/<wnid>/*.JPEG, e.g. the validation set sorted into the 1,000 wnid folders) or be "
                "a prepared torchvision ImageNet root (meta.bin and val/)"
            )
        if self._is_torchvision_root():
            self.layout = "torchvision_imagenet"
            dataset: datasets.ImageFolder = datasets.ImageNet(self.data_dir, split="val", transform=self.transform(),
                                                              allow_empty=True)
            folder = os.path.join(self.data_dir, "val")
        else:
            self.layout, folder = "imagefolder", self.data_dir
            try:
                dataset = datasets.ImageFolder(folder, transform=self.transform(), allow_empty=True)
            except FileNotFoundError as err:  # torchvision: "Couldn't find any class folder in ..."
                raise FileNotFoundError(
                    f"No class folders in data_dir='{self.data_dir}': expected <data_dir>/<wnid>/*.JPEG ({err})"
                ) from err
        folders = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
        if len(folders) > self.num_classes:
            raise ValueError(
                f"'{folder}' has {len(folders)} class folders but num_classes={self.num_classes}: class indices "
                f"would exceed the model's outputs (first folders: {', '.join(folders[:5])})"
            )
        if len(dataset) == 0:
            raise FileNotFoundError(f"No images in the class folders of '{folder}' ({len(folders)} folders, none with "
                                    "a .jpg/.jpeg/.png/... file)")
        if len(folders) < self.num_classes:
            logger.warning("ImageNetDataModule: %d class folders in %s for num_classes=%d; class index = position "
                           "among these folders, not the standard ImageNet index unless all %d folders exist",
                           len(folders), folder, self.num_classes, self.num_classes)
        self.classes = list(dataset.classes) if self.layout == "imagefolder" else list(dataset.wnids)
        return dataset

    def _build_sets(self) -> tuple[Dataset, Dataset, Dataset]:
        dataset = self._load_folder()
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.seed)).tolist()
        shuffled = Subset(dataset, order)
        return (
            cap_dataset(shuffled, self.max_train_examples),
            cap_dataset(shuffled, self.max_eval_examples),
            cap_dataset(shuffled, self.max_eval_examples),
        )

    def _source_description(self) -> str:
        layout = self.layout or "layout not read yet"
        return (f"ImageNet images in {self.data_dir} ({layout}; resize {self.resize_size}, centre crop "
                f"{self.image_size}; train = val = test, the same images)")
