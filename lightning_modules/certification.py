"""Certification as a Lightning test loop, so ``certify.py`` uses devices, strategies and nodes like training."""

from collections.abc import Sequence

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torch.utils.data import Dataset

from bounds.certify import certify


class IndexedDataset(Dataset):
    """Wrap a dataset so each item carries its position: ``(index, x, y)``.

    Distributed samplers pad the last batches by repeating examples; the index lets the gathered results
    be de-duplicated so that every example is counted exactly once.

    Args:
        dataset: A dataset of ``(x, y)`` pairs.
        indices: The positions in ``dataset`` to expose, in order.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor, int]:
        index = self.indices[position]
        x, y = self.dataset[index]
        return index, x, int(y)


class CertificationTask(LightningModule):
    """Certify every test batch with each requested kind; gather per-example results across ranks.

    After ``trainer.test(task, dataloaders=...)`` the attribute ``results`` (the same on every rank) maps each
    kind to a dict of CPU tensors sorted by dataset index: ``index``, ``eps_lower``, ``eps_upper``,
    ``certified``, ``seconds`` (per example: the batch's wall time divided by its size).

    Args:
        model: The classifier to certify (an ``nn.Module`` mapping inputs to logits).
        kinds: Certification kinds, e.g. ``["uniform", "nonuniform", "asymmetric"]``.
        delta: Margin the certificates prove.
        clip_to_input_range: Certify boxes intersected with ``input_range``.
        input_range: ``(low, high)`` of valid inputs.
        seed: Seed of the certification optimiser.
    """

    def __init__(
        self,
        model: nn.Module,
        kinds: Sequence[str],
        delta: float = 1e-4,
        clip_to_input_range: bool = False,
        input_range: tuple[float, float] = (-1.0, 1.0),
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.kinds = list(kinds)
        self.delta = delta
        self.clip_to_input_range = clip_to_input_range
        self.input_range = tuple(input_range)
        self.seed = seed
        self._parts: dict[str, list[dict[str, torch.Tensor]]] = {}
        self.results: dict[str, dict[str, torch.Tensor]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the wrapped model."""
        return self.model(x)

    def on_test_epoch_start(self) -> None:
        """Forget the results of an earlier run."""
        self._parts = {kind: [] for kind in self.kinds}
        self.results = {}

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Certify one batch with every kind and keep the per-example results."""
        index, x, y = batch
        for kind in self.kinds:
            cert = certify(
                self.model,
                x,
                y,
                kind=kind,
                delta=self.delta,
                clip_to_input_range=self.clip_to_input_range,
                input_range=self.input_range,
                seed=self.seed + batch_idx,
            )
            self._parts[kind].append(
                {
                    "index": index.detach(),
                    "eps_lower": cert.eps_lower.detach(),
                    "eps_upper": cert.eps_upper.detach(),
                    "certified": cert.certified.detach(),
                    "seconds": torch.full_like(index, cert.seconds_per_example, dtype=torch.float64),
                }
            )

    def on_test_epoch_end(self) -> None:
        """Gather every rank's results (all ranks take part), de-duplicate by index and sort."""
        for kind, parts in self._parts.items():
            local = {key: torch.cat([part[key] for part in parts]) for key in parts[0]} if parts else {}
            gathered = {key: self._gather(value) for key, value in local.items()}
            order = torch.argsort(gathered["index"], stable=True)
            sorted_parts = {key: value[order] for key, value in gathered.items()}
            keep = torch.ones_like(sorted_parts["index"], dtype=torch.bool)
            keep[1:] = sorted_parts["index"][1:] != sorted_parts["index"][:-1]
            self.results[kind] = {key: value[keep].cpu() for key, value in sorted_parts.items()}

    def _gather(self, value: torch.Tensor) -> torch.Tensor:
        if self.trainer.world_size == 1:
            return value
        gathered = self.all_gather(value.to(torch.float64) if value.dtype == torch.bool else value)
        gathered = gathered.reshape(-1, *value.shape[1:])
        return gathered.to(torch.bool) if value.dtype == torch.bool else gathered
