"""The AND-gate toy of the ACTS paper (Section 3.2).

Inputs ``x = (x1, x2)`` lie in [0, 1]^2 and the label is ``x1 AND x2``: 1 when ``x1 >= 0.5`` and ``x2 >= 0.5``,
0 otherwise. The paper trains a two-layer feed-forward network on it (99.7% test accuracy) and computes ACTS
with FGSM at ``eps = 0.1`` for the inputs of class 1 only. It does not say how the inputs were sampled; here
they are uniform in [0, 1]^2 (so about a quarter of them have label 1) and split 80/10/10 at random, all from
``seed``.
"""

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from datamodules.base import ClassificationDataModule, check_positive_int

AND_THRESHOLD = 0.5
"""Each coordinate counts as logical 1 from this value on (ACTS Section 3.2)."""


def and_gate_labels(x: torch.Tensor) -> torch.Tensor:
    """Label points of [0, 1]^2 with ``x1 AND x2`` (1 iff ``x1 >= 0.5`` and ``x2 >= 0.5``).

    Args:
        x: ``(N, 2)`` tensor of inputs.

    Returns:
        ``(N,)`` int64 labels in {0, 1}.

    Raises:
        ValueError: If ``x`` is not of shape ``(N, 2)``.
    """
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"and_gate_labels needs inputs of shape (N, 2), got {tuple(x.shape)}")
    return ((x[:, 0] >= AND_THRESHOLD) & (x[:, 1] >= AND_THRESHOLD)).long()


class ANDGateDataModule(ClassificationDataModule):
    """Uniform points of [0, 1]^2 labelled ``x1 >= 0.5 and x2 >= 0.5`` (ACTS Section 3.2), split 80/10/10."""

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 100,
        num_workers: int = 0,
        seed: int = 0,
        num_points: int = 4000,
    ) -> None:
        """Generate the dataset (cheap: it lives in memory).

        Args:
            data_dir: Unused (the data is generated); kept for a uniform interface.
            batch_size: Examples per batch.
            num_workers: Dataloader worker processes.
            seed: Seed of the points, the split and the training shuffle.
            num_points: Total number of points, split 80/10/10 into train/val/test.

        Raises:
            ValueError: If ``num_points`` is below 10 (a split would be empty).
        """
        super().__init__(data_dir=data_dir, batch_size=batch_size, num_workers=num_workers, seed=seed)
        check_positive_int("num_points", num_points)
        if num_points < 10:
            raise ValueError(
                f"num_points must be at least 10 so that the 80/10/10 split is non-empty, got {num_points}"
            )
        self.num_points = num_points
        self.input_shape = (2,)
        self.num_classes = 2
        self.input_range = (0.0, 1.0)
        self.save_hyperparameters()

        rng = np.random.default_rng(seed)
        self._points = torch.as_tensor(rng.uniform(0.0, 1.0, size=(num_points, 2)), dtype=torch.float32)
        self._labels = and_gate_labels(self._points)
        num_val = num_test = num_points // 10
        self._split_sizes = (num_points - num_val - num_test, num_val, num_test)

    def _build_sets(self) -> tuple[Dataset, Dataset, Dataset]:
        bounds = np.cumsum((0, *self._split_sizes))
        return tuple(  # type: ignore[return-value]
            TensorDataset(self._points[start:stop], self._labels[start:stop])
            for start, stop in zip(bounds[:-1], bounds[1:], strict=True)
        )

    def _source_description(self) -> str:
        return f"AND-gate toy generated with seed={self.seed}: {self.num_points} uniform points of [0, 1]^2"
