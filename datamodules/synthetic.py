"""The 2-D synthetic dataset of the Amoeba paper (Section 4.1, following the non-uniform bound paper [22]).

Ten seed points are drawn uniformly in [-1, 1]^2 and labelled 0..9; then 10,000 further points drawn uniformly
in [-1, 1]^2 take the label of their nearest seed in l2 distance, a tie between several nearest seeds being
broken at random. The seeds define the true decision regions (a Voronoi diagram) and are not themselves part
of the dataset. 90% of the points, chosen at random, are the training set and the rest the test set
(Section 4.2.1). The paper has no validation set: here ``val_set`` is the test set (the same object), so
validation metrics during training are test metrics. Everything is drawn from one ``numpy`` Generator seeded
with ``seed``.
"""

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from datamodules.base import ClassificationDataModule, check_positive_int


def nearest_seed_labels(points: np.ndarray, seeds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Label every point with the index of its nearest seed in l2 distance, breaking ties at random.

    Args:
        points: ``(N, D)`` array of points.
        seeds: ``(S, D)`` array of seed points; seed ``s`` has label ``s``.
        rng: Generator used to pick uniformly among equally near seeds.

    Returns:
        ``(N,)`` int64 array of labels in ``0 .. S - 1``.

    Raises:
        ValueError: If the arrays are not 2-D with the same number of columns, or there is no seed.
    """
    points, seeds = np.asarray(points, dtype=np.float64), np.asarray(seeds, dtype=np.float64)
    if points.ndim != 2 or seeds.ndim != 2 or points.shape[1] != seeds.shape[1] or len(seeds) == 0:
        raise ValueError(f"need points (N, D) and seeds (S>=1, D), got shapes {points.shape} and {seeds.shape}")
    squared = ((points[:, None, :] - seeds[None, :, :]) ** 2).sum(axis=-1)
    nearest = squared == squared.min(axis=1, keepdims=True)
    # Among the nearest seeds, take the one with the largest uniform random key: a uniform choice among ties.
    keys = np.where(nearest, rng.random(nearest.shape), -1.0)
    return keys.argmax(axis=1).astype(np.int64)


def make_synthetic_2d(
    num_points: int, num_seeds: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw the seeds and the labelled points of the 2-D synthetic dataset.

    Args:
        num_points: Number of labelled points (10,000 in the paper).
        num_seeds: Number of seeds, i.e. classes (10 in the paper).
        rng: Source of all randomness.

    Returns:
        ``(seeds, points, labels)``: ``(num_seeds, 2)`` and ``(num_points, 2)`` float64 arrays in [-1, 1] and the
        ``(num_points,)`` int64 nearest-seed labels.
    """
    seeds = rng.uniform(-1.0, 1.0, size=(num_seeds, 2))
    points = rng.uniform(-1.0, 1.0, size=(num_points, 2))
    return seeds, points, nearest_seed_labels(points, seeds, rng)


class Synthetic2DDataModule(ClassificationDataModule):
    """Points of [-1, 1]^2 labelled by their nearest of ``num_seeds`` random seeds (Amoeba Section 4.1).

    ``val_set`` is the test set: the paper splits the data 90/10 into train and test only.

    Attributes:
        seeds: ``(num_seeds, 2)`` float tensor of the seed points (seed ``s`` has label ``s``), for plotting the
            true decision regions. Available right after ``__init__``.
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 100,
        num_workers: int = 0,
        seed: int = 0,
        num_points: int = 10000,
        num_seeds: int = 10,
        train_fraction: float = 0.9,
    ) -> None:
        """Generate the dataset (cheap: it lives in memory).

        Args:
            data_dir: Unused (the data is generated); kept for a uniform interface.
            batch_size: Examples per batch.
            num_workers: Dataloader worker processes.
            seed: Seed of the seeds, the points, the tie-breaks, the split and the training shuffle.
            num_points: Number of labelled points (the seeds are not among them).
            num_seeds: Number of seeds, which is the number of classes.
            train_fraction: Share of the points in the training set; the rest is the test (and val) set.

        Raises:
            ValueError: On fewer than 2 seeds or points, or a ``train_fraction`` leaving a split empty.
        """
        super().__init__(data_dir=data_dir, batch_size=batch_size, num_workers=num_workers, seed=seed)
        check_positive_int("num_points", num_points)
        check_positive_int("num_seeds", num_seeds)
        if num_seeds < 2:
            raise ValueError(f"num_seeds must be at least 2 (it is the number of classes), got {num_seeds}")
        num_train = round(train_fraction * num_points)
        if not 0.0 < train_fraction < 1.0 or not 0 < num_train < num_points:
            raise ValueError(
                f"train_fraction={train_fraction} must be in (0, 1) and leave both splits of the {num_points} points "
                f"non-empty (it gives {num_train} training points)"
            )
        self.num_points = num_points
        self.num_seeds = num_seeds
        self.train_fraction = train_fraction
        self.input_shape = (2,)
        self.num_classes = num_seeds
        self.input_range = (-1.0, 1.0)
        self.save_hyperparameters()

        rng = np.random.default_rng(seed)
        seeds, points, labels = make_synthetic_2d(num_points, num_seeds, rng)
        order = rng.permutation(num_points)
        self.seeds = torch.as_tensor(seeds, dtype=torch.float32)
        self._points = torch.as_tensor(points, dtype=torch.float32)
        self._labels = torch.as_tensor(labels, dtype=torch.long)
        self._train_index = torch.as_tensor(order[:num_train])
        self._test_index = torch.as_tensor(order[num_train:])

    def _build_sets(self) -> tuple[Dataset, Dataset, Dataset]:
        train = TensorDataset(self._points[self._train_index], self._labels[self._train_index])
        test = TensorDataset(self._points[self._test_index], self._labels[self._test_index])
        return train, test, test

    def _source_description(self) -> str:
        return (
            f"2-D synthetic data generated with seed={self.seed}: {self.num_points} points of [-1, 1]^2 labelled "
            f"by the nearest of {self.num_seeds} seeds (val = test, as in the paper)"
        )
