"""Gather per-example rows from every rank and keep each dataset example exactly once.

Shared by the certification, attack and ACTS reports of ``certify.py`` (:mod:`lightning_modules.certification`).
Distributed samplers pad the last batches by repeating examples, and a report may run only on a subset of each
batch, so ranks can hold different numbers of rows (none at all included). The rows are therefore exchanged as
CPU tensors with ``torch.distributed.all_gather_object`` (variable sizes, any backend), then de-duplicated by
their ``index`` (the dataset position) and sorted by it.
"""

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

Rows = dict[str, Tensor]
"""Per-example columns: ``index`` ``[N]`` (dataset positions) and any tensors whose first dimension is ``N``."""


def concatenate_rows(parts: Sequence[Rows]) -> Rows:
    """Concatenate row blocks that share their keys (an empty sequence gives an empty dict).

    Args:
        parts: Blocks of rows, each with an ``index`` column.

    Returns:
        One block, on the CPU.

    Raises:
        ValueError: If the blocks have different keys or a block lacks ``index``.
    """
    blocks = [part for part in parts if part]
    if not blocks:
        return {}
    keys = set(blocks[0])
    if "index" not in keys:
        raise ValueError("every block of rows needs an 'index' column")
    for block in blocks[1:]:
        if set(block) != keys:
            raise ValueError(f"row blocks have different columns: {sorted(keys)} vs {sorted(block)}")
    return {key: torch.cat([block[key].detach().cpu() for block in blocks]) for key in blocks[0]}


def unique_by_index(rows: Rows) -> Rows:
    """Sort rows by ``index`` and keep the first row of each index.

    Args:
        rows: Rows with an ``index`` column (may be empty).

    Returns:
        The sorted, de-duplicated rows.
    """
    if not rows:
        return {}
    order = torch.argsort(rows["index"], stable=True)
    ordered = {key: value[order] for key, value in rows.items()}
    keep = torch.ones_like(ordered["index"], dtype=torch.bool)
    keep[1:] = ordered["index"][1:] != ordered["index"][:-1]
    return {key: value[keep] for key, value in ordered.items()}


def gather_unique_rows(parts: Sequence[Rows], world_size: int) -> Rows:
    """Collect every rank's rows on every rank, de-duplicated by ``index`` and sorted by it.

    A collective when ``world_size > 1``: every rank must call it, in the same order.

    Args:
        parts: This rank's blocks of rows.
        world_size: Number of processes (``trainer.world_size``).

    Returns:
        All rows of all ranks, each dataset index once (an empty dict when no rank has rows).
    """
    local = concatenate_rows(parts)
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        gathered: list[Rows | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
        local = concatenate_rows([block for block in gathered if block])
    return unique_by_index(local)
