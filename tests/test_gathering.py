"""The gathering core (callbacks.gathering): de-duplication by dataset index, in one process and across 2 ranks."""

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from callbacks.gathering import ExampleStore, all_gather_rows, concatenate_rows, gather_unique_rows, unique_by_index
from callbacks.indexing import IndexedDataset, split_batch


def test_unique_by_index_sorts_and_keeps_the_first_row_of_each_index() -> None:
    rows = {"index": torch.tensor([4, 1, 4, 0, 1]), "value": torch.tensor([[40.0], [10.0], [41.0], [0.0], [11.0]])}
    unique = unique_by_index(rows)
    assert unique["index"].tolist() == [0, 1, 4]
    assert unique["value"][:, 0].tolist() == [0.0, 10.0, 40.0]
    assert unique_by_index({}) == {}
    empty = unique_by_index({"index": torch.zeros(0, dtype=torch.long), "value": torch.zeros(0, 0)})
    assert empty["index"].shape == (0,) and empty["value"].shape == (0, 0)


def test_concatenate_rows_checks_columns_and_skips_empty_blocks() -> None:
    rows = concatenate_rows([{}, {"index": torch.tensor([2]), "x": torch.tensor([1.0])},
                             {"index": torch.tensor([0]), "x": torch.tensor([3.0])}])
    assert rows["index"].tolist() == [2, 0] and rows["x"].tolist() == [1.0, 3.0]
    assert concatenate_rows([]) == {}
    with pytest.raises(ValueError, match="index"):
        concatenate_rows([{"x": torch.tensor([1.0])}])
    with pytest.raises(ValueError, match="different columns"):
        concatenate_rows([{"index": torch.tensor([0])}, {"index": torch.tensor([1]), "x": torch.tensor([1.0])}])


def test_one_process_gathers_its_own_rows() -> None:
    parts = [{"index": torch.tensor([3, 0])}, {"index": torch.tensor([0, 5])}]
    assert gather_unique_rows(parts, world_size=1)["index"].tolist() == [0, 3, 5]
    local = {"index": torch.tensor([1])}
    assert all_gather_rows(local, world_size=1) is local


def test_example_store_dedups_padding_and_counts_failures() -> None:
    store = ExampleStore(("score", "radii"))
    store.start()
    empty = store.compute()
    assert empty["index"].shape == (0,) and empty["score"].shape == (0, 0) and int(empty["failures"]) == 0
    store.start()
    store.update(torch.tensor([2, 0]), score=torch.tensor([0.25, 0.0]), radii=torch.tensor([[2.0, 2.5], [0.0, 0.5]]))
    store.update(torch.tensor([0]), score=torch.tensor([9.0]), radii=torch.tensor([[9.0, 9.0]]))  # padding copy
    store.fail()
    result = store.compute()
    assert result["index"].tolist() == [0, 2]
    assert result["score"].tolist() == [[0.0], [0.25]]
    assert result["radii"].tolist() == [[0.0, 0.5], [2.0, 2.5]]
    assert int(result["failures"]) == 1


def test_indexed_dataset_and_split_batch() -> None:
    data = IndexedDataset([(torch.zeros(2), 1), (torch.ones(2), 0)], indices=[1, 0])
    assert [(index, y) for index, _, y in (data[0], data[1])] == [(1, 0), (0, 1)]
    with pytest.raises(ValueError, match="labels"):
        IndexedDataset([(torch.zeros(2), 1)], indices=[0], labels=[1, 2])
    x, y = torch.zeros(3, 2), torch.tensor([0, 1, 2])
    assert split_batch((x, y, "extra")) == (x, y)
    assert split_batch({"image": x, "label": y}) == (x, y)
    assert split_batch((x, y[:2])) is None and split_batch(x) is None


def _rank(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        # Rank 1 holds a padding copy of index 0 and a block of another size; rank 0 holds an empty block too.
        parts = [{"index": torch.tensor([0, 2]), "x": torch.tensor([0.0, 2.0])}, {}] if rank == 0 else \
            [{"index": torch.tensor([1, 3, 0]), "x": torch.tensor([1.0, 3.0, 9.0])}]
        rows = gather_unique_rows(parts, world_size=2)
        store = ExampleStore(("x",))
        store.start()
        block = parts[0]
        store.update(block["index"], x=block["x"])
        if rank == 1:
            store.fail()
        stored = store.compute()
        torch.save({"rows": rows, "stored": stored}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_gather_each_index_once(tmp_path: Path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.start_processes(_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in (0, 1):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        assert saved["rows"]["index"].tolist() == [0, 1, 2, 3]
        assert saved["rows"]["x"].tolist() == [0.0, 1.0, 2.0, 3.0]  # rank 0's row of index 0, not the padding copy
        assert saved["stored"]["index"].tolist() == [0, 1, 2, 3]
        assert saved["stored"]["x"][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
        assert int(saved["stored"]["failures"]) == 1
