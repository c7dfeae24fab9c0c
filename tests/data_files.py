"""Writers of tiny data files in the real on-disk formats that torchvision reads, for offline tests.

- ``write_mnist_idx``: the four uncompressed IDX files torchvision's ``MNIST`` / ``FashionMNIST`` look for in
  ``<root>/<kind>/raw`` (torchvision only checks that the uncompressed files exist; it would try to download
  when only the ``.gz`` files were there).
- ``write_svhn_mat``: ``train_32x32.mat`` / ``test_32x32.mat`` in SVHN's layout. torchvision's ``SVHN`` checks
  the MD5 sum of these files against the official ones, so wrap the loading in ``svhn_checksums(md5s)``, which
  registers the MD5 sums of the tiny files for the duration of the block.
- ``write_cifar10_batches``: ``cifar-10-batches-py/data_batch_1..5``, ``test_batch`` and ``batches.meta``, the
  pickled dictionaries of the official CIFAR-10 "python version". torchvision's ``CIFAR10`` checks their MD5 sums
  too: wrap the loading in ``cifar10_checksums(md5s)``.
- ``write_image_folder``: an ``ImageFolder`` / ImageNet-validation layout ``<root>/<class>/*.JPEG`` of real JPEGs.

The images carry a label-dependent pattern (a bright square whose position depends on the class, plus noise),
so that a small model can learn them in a smoke test.
"""

import contextlib
import gzip
import hashlib
import os
import pickle
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


CIFAR10_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10_batches(root: str | os.PathLike, per_batch: int = 10, n_test: int = 20,
                          seed: int = 0) -> dict[str, str]:
    """Write a tiny CIFAR-10 "python version" into ``<root>/cifar-10-batches-py``.

    Each batch is a pickled dict with ``data`` (uint8 ``(N, 3072)``: the red, green and blue 32x32 planes of each
    image, row-major), ``labels`` (a list of ints), ``batch_label`` and ``filenames``; ``batches.meta`` holds
    ``label_names``, as in the official files.

    Args:
        root: The ``data_dir`` / torchvision ``root``.
        per_batch: Images in each of the five training batches.
        n_test: Images in ``test_batch``.
        seed: Seed of the labels and pixels.

    Returns:
        ``{file name: md5}`` of the seven files, for ``cifar10_checksums``.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    md5s: dict[str, str] = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        count = n_test if name == "test_batch" else per_batch
        labels = balanced_labels(count, 10, rng)
        images = patterned_images(labels, 32, 32, 3, rng).transpose(0, 3, 1, 2).reshape(count, 3072)
        entry = {"batch_label": f"tiny {name}", "labels": [int(v) for v in labels], "data": images,
                 "filenames": [f"{name}_{i}.png" for i in range(count)]}
        (folder / name).write_bytes(pickle.dumps(entry))
    meta = {"num_cases_per_batch": per_batch, "label_names": CIFAR10_LABEL_NAMES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    for name in [*names, "batches.meta"]:
        md5s[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    return md5s


def read_cifar10_batch(root: str | os.PathLike, name: str) -> dict:
    """One pickled batch of ``write_cifar10_batches``, read back directly."""
    return pickle.loads((Path(root) / "cifar-10-batches-py" / name).read_bytes())


@contextlib.contextmanager
def cifar10_checksums(md5s: dict[str, str]) -> Iterator[None]:
    """Make torchvision's ``CIFAR10`` accept the tiny files by registering their MD5 sums for the block.

    Args:
        md5s: ``{file name: md5}`` as returned by ``write_cifar10_batches``.
    """
    from torchvision.datasets import CIFAR10

    saved = ([list(e) for e in CIFAR10.train_list], [list(e) for e in CIFAR10.test_list], dict(CIFAR10.meta))
    try:
        CIFAR10.train_list = [[name, md5s.get(name, md5)] for name, md5 in saved[0]]
        CIFAR10.test_list = [[name, md5s.get(name, md5)] for name, md5 in saved[1]]
        CIFAR10.meta = {**saved[2], "md5": md5s.get(saved[2]["filename"], saved[2]["md5"])}
        yield
    finally:
        CIFAR10.train_list, CIFAR10.test_list, CIFAR10.meta = saved


def write_image_folder(root: str | os.PathLike, classes: list[str], per_class: int, seed: int = 0,
                       sizes: tuple[tuple[int, int], ...] = ((60, 80), (90, 70), (64, 64))) -> dict[str, list[Path]]:
    """Write real JPEGs in an ``ImageFolder`` layout: ``<root>/<class>/<class>_<i>.JPEG``.

    Each image is noise plus a bright square whose position depends on the class index; sizes cycle through
    ``sizes`` (height, width), so resizing and cropping are exercised.

    Args:
        root: The folder that receives one sub-folder per class.
        classes: Class folder names (e.g. wnids such as ``n01440764``); a class with ``per_class == 0`` images is
            still created, empty.
        per_class: Images per class.
        seed: Seed of the pixels.
        sizes: Image sizes to cycle through.

    Returns:
        ``{class: [paths]}``.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    written: dict[str, list[Path]] = {}
    for index, name in enumerate(classes):
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        written[name] = []
        for i in range(per_class):
            height, width = sizes[(index + i) % len(sizes)]
            pixels = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
            row, col = (index * 7) % (height - 16), (index * 11) % (width - 16)
            pixels[row : row + 16, col : col + 16] = 255
            path = folder / f"{name}_{i}.JPEG"
            Image.fromarray(pixels).save(path, format="JPEG", quality=95)
            written[name].append(path)
    return written
