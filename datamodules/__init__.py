"""LightningDataModules: MNIST, Fashion-MNIST, SVHN, CIFAR-10, ImageNet folders, embedded MNIST, 2-D, AND gate.

Every datamodule exposes ``input_shape``, ``num_classes``, ``input_range`` and ``normalization`` right after
``__init__``, ``train_set`` / ``val_set`` / ``test_set`` after ``setup``, the four dataloaders and ``describe()``.
"""

from datamodules.and_gate import ANDGateDataModule, and_gate_labels
from datamodules.base import ClassificationDataModule
from datamodules.cifar10 import CIFAR10DataModule
from datamodules.embedded_mnist import embedded_mnist_splits
from datamodules.imagenet import ImageNetDataModule
from datamodules.mnist import FashionMNISTDataModule, MNISTDataModule, MNISTLikeDataModule
from datamodules.svhn import SVHNDataModule
from datamodules.synthetic import Synthetic2DDataModule, make_synthetic_2d, nearest_seed_labels

__all__ = [
    "ANDGateDataModule",
    "CIFAR10DataModule",
    "ClassificationDataModule",
    "FashionMNISTDataModule",
    "ImageNetDataModule",
    "MNISTDataModule",
    "MNISTLikeDataModule",
    "SVHNDataModule",
    "Synthetic2DDataModule",
    "and_gate_labels",
    "embedded_mnist_splits",
    "make_synthetic_2d",
    "nearest_seed_labels",
]
