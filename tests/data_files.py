"""Writers of tiny data files in the real on-disk formats that torchvision reads, for offline tests.

- ``write_mnist_idx``: the four uncompressed IDX files torchvision's ``MNIST`` / ``FashionMNIST`` look for in
  ``<root>/<kind>/raw`` (torchvision only checks that the uncompressed files exist; it would try to download
  when only the ``.gz`` files were there).
- ``write_svhn_mat``: ``train_32x32.mat`` / ``test_32x32.mat`` in SVHN's layout. torchvision's ``SVHN`` checks
  the MD5 sum of these files against the official ones, so wrap the loading in ``svhn_checksums(md5s)``, which
  registers the MD5 sums of the tiny files for the duration of the block.

The images carry a label-dependent pattern (a bright square whose position depends on the class, plus noise),
so that a small model can learn them in a smoke test.
"""

import contextlib
import gzip
import hashlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

IDX_UBYTE = 0x08


def balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels with every class as equally often as possible, in random order."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.uint8)


def patterned_images(
    labels: np.ndarray, height: int, width: int, channels: int, rng: np.random.Generator
) -> np.ndarray:
    """uint8 images ``(N, H, W, C)``: low noise plus a bright 6x6 square placed according to the label."""
    images = rng.integers(0, 60, size=(len(labels), height, width, channels), dtype=np.uint8)
    for index, label in enumerate(labels):
        row, col = 2 + 8 * (int(label) // 3), 2 + 8 * (int(label) % 3)
        images[index, row : row + 6, col : col + 6, :] = 255
    return images


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool = False) -> None:
    """Write a uint8 array in IDX format (big-endian magic ``0x0000 08 <ndim>`` then one uint32 per dimension)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", (IDX_UBYTE << 8) | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    if compress:
        with gzip.open(f"{path}.gz", "wb") as handle:
            handle.write(payload)
    else:
        Path(path).write_bytes(payload)


def write_mnist_idx(
    root: str | os.PathLike,
    num_train: int = 60,
    num_test: int = 20,
    kind: Literal["MNIST", "FashionMNIST"] = "MNIST",
    seed: int = 0,
    compress: bool = False,
) -> dict[str, np.ndarray]:
    """Write a tiny MNIST-format dataset where torchvision expects it: ``<root>/<kind>/raw/*-idx?-ubyte``.

    Args:
        root: The ``data_dir`` / torchvision ``root``.
        num_train: Number of training images (``train-images-idx3-ubyte``).
        num_test: Number of test images (``t10k-images-idx3-ubyte``).
        kind: ``"MNIST"`` or ``"FashionMNIST"`` (the folder name torchvision uses).
        seed: Seed of the labels and pixels.
        compress: Also write ``.gz`` copies (torchvision itself only reads the uncompressed files).

    Returns:
        ``{"train_images", "train_labels", "test_images", "test_labels"}``: the uint8 arrays written
        (images ``(N, 28, 28)``).
    """
    rng = np.random.default_rng(seed)
    raw = Path(root) / kind / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    written: dict[str, np.ndarray] = {}
    for split, prefix, count in (("train", "train", num_train), ("test", "t10k", num_test)):
        labels = balanced_labels(count, 10, rng)
        images = patterned_images(labels, 28, 28, 1, rng)[..., 0]
        for name, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            write_idx(raw / name, array)
            if compress:
                write_idx(raw / name, array, compress=True)
        written[f"{split}_images"], written[f"{split}_labels"] = images, labels
    return written


def write_svhn_mat(root: str | os.PathLike, n_train: int = 60, n_test: int = 20, seed: int = 0) -> dict[str, str]:
    """Write tiny ``train_32x32.mat`` and ``test_32x32.mat`` in SVHN's layout into ``root``.

    Layout: ``X`` uint8 of shape ``(32, 32, 3, N)``, ``y`` uint8 of shape ``(N, 1)`` with labels 1..10, where 10
    stands for the digit 0 (torchvision maps it back to 0).

    Args:
        root: The ``data_dir`` / torchvision ``root``.
        n_train: Number of training images.
        n_test: Number of test images.
        seed: Seed of the labels and pixels.

    Returns:
        ``{"train": md5, "test": md5}`` of the files, for ``svhn_checksums``.
    """
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    Path(root).mkdir(parents=True, exist_ok=True)
    md5s: dict[str, str] = {}
    for split, count in (("train", n_train), ("test", n_test)):
        digits = balanced_labels(count, 10, rng)
        images = patterned_images(digits, 32, 32, 3, rng)  # (N, H, W, C)
        mat_labels = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
        path = Path(root) / f"{split}_32x32.mat"
        savemat(str(path), {"X": np.ascontiguousarray(images.transpose(1, 2, 3, 0)), "y": mat_labels})
        md5s[split] = hashlib.md5(path.read_bytes()).hexdigest()
    return md5s


def read_svhn_digits(root: str | os.PathLike, split: Literal["train", "test"]) -> np.ndarray:
    """The digits (0..9) stored in ``<root>/<split>_32x32.mat``, read back directly with scipy."""
    from scipy.io import loadmat

    labels = loadmat(str(Path(root) / f"{split}_32x32.mat"))["y"].astype(np.int64).ravel()
    return np.where(labels == 10, 0, labels)


@contextlib.contextmanager
def svhn_checksums(md5s: dict[str, str]) -> Iterator[None]:
    """Make torchvision's ``SVHN`` accept the tiny files by registering their MD5 sums for the block.

    Args:
        md5s: ``{"train": md5, "test": md5}`` as returned by ``write_svhn_mat``.
    """
    from torchvision.datasets import SVHN

    saved = {split: list(entry) for split, entry in SVHN.split_list.items()}
    try:
        for split, md5 in md5s.items():
            url, filename, _ = SVHN.split_list[split]
            SVHN.split_list[split] = [url, filename, md5]
        yield
    finally:
        SVHN.split_list.clear()
        SVHN.split_list.update(saved)
