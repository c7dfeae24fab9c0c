"""An input normalisation layer that interval propagation understands."""

from collections.abc import Sequence

import torch
from torch import nn


class InputNormalization(nn.Module):
    """Per-channel affine normalisation ``(x - mean) / std`` as the first layer of a model.

    Args:
        mean: One value per channel (or a single value for all channels).
        std: One positive value per channel (or a single value).

    Raises:
        ValueError: If ``mean`` and ``std`` differ in length or ``std`` has a non-positive entry.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std need the same length, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape ``(B, C, H, W)``; flat inputs ``(B, C)`` are normalised per feature."""
        mean, std = self.mean, self.std
        if x.dim() == 2:
            mean, std = mean.view(1, -1), std.view(1, -1)
        return (x - mean) / std
