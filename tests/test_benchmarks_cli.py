"""The benchmarks' command lines: ``--device`` parsing, the scaling table, and one benchmark run on ``--device cpu``.

The scripts run as ``python benchmarks/bench_x.py`` (``benchmarks/`` first on ``sys.path``, so they import their
shared helpers as ``common``); the in-process tests import them the same way.
"""

import argparse
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def bench_module(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module(name)


def run_script(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env, check=False)


def test_parse_device_accepts_cpu_and_refuses_bad_names(monkeypatch: pytest.MonkeyPatch) -> None:
    common = bench_module("common", monkeypatch)
    assert common.parse_device("cpu") == torch.device("cpu")
    for name, message in (("gpu0", "is not a torch device"), ("cuda:x", "is not a torch device"),
                          ("mps", "not supported by the benchmarks")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            common.parse_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_clean_usage_error(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bench_scaling = bench_module("bench_scaling", monkeypatch)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(SystemExit) as exit_info:
            bench_scaling.parse_args(["--device", name])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert "error: argument --device" in error and "CUDA is not available" in error
        assert "Traceback" not in error


def test_peak_memory_window_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    common = bench_module("common", monkeypatch)
    common.reset_peak_memory("cpu")
    baseline = common.memory_baseline_mib("cpu")
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert common.peak_memory_mib("cpu") - baseline >= 32
    del block
    seconds, value = common.timed(lambda a, b: a + b, 2, b=3, device="cpu")
    assert value == 5 and seconds >= 0
    assert common.best_seconds(lambda: None, 3) >= 0
    assert common.trainer_flags("cpu") == ["--trainer.accelerator=cpu", "--trainer.devices=1"]


def test_scaling_rows_skip_what_the_budget_rules_out(monkeypatch: pytest.MonkeyPatch) -> None:
    bench_scaling = bench_module("bench_scaling", monkeypatch)
    calls = []

    def fake_cell(args: argparse.Namespace, name: str, method: str, batch: int) -> dict[str, float]:
        calls.append(batch)
        return {"seconds": 0.5 * batch, "runs": 1, "peak_mib": 1.0 * batch, "params": 1000}

    monkeypatch.setattr(bench_scaling, "run_cell", fake_cell)
    args = bench_scaling.parse_args(["--batches", "1", "10", "100", "1000", "--budget-s", "20"])
    cells, params = bench_scaling.row(args, "fc100", "ibp")
    assert calls == [1, 10]  # batch 100 is estimated at 50 s > 20 s: neither it nor 1000 runs
    assert cells[0] == "500 ms/ex, 0.5 s, 1 MiB" and cells[1] == "500 ms/ex, 5 s, 10 MiB"
    assert cells[2:] == ["skipped (est. 50 s)", "skipped (est. 500 s)"]  # each from the last measured batch
    assert params == 1000
    calls.clear()
    args = bench_scaling.parse_args(["--batches", "1", "10", "--memory-mib", "5"])
    cells, _ = bench_scaling.row(args, "fc100", "ibp")
    assert calls == [1] and cells[1] == "skipped (est. 10 MiB)"


def test_scaling_one_tiny_cell_prints_a_table_row() -> None:
    done = run_script("bench_scaling.py", "--models", "fc100", "--batches", "1", "--methods", "ibp")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| fc100")]
    assert len(rows) == 1, done.stdout
    assert re.fullmatch(r"\| fc100 \(100k\) \| 1x28x28 \| 0\.01 \| ibp \| [0-9.e+-]+ ms/ex, [0-9.e+-]+ s, "
                        r"[0-9.]+ MiB \|", rows[0]), rows[0]
    assert "| batch 1 |" in done.stdout and "load average" in done.stdout


def test_acts_imagenet_benchmark_runs_on_device_cpu() -> None:
    done = run_script("bench_acts_imagenet.py", "--device", "cpu", "--threads", "1", "--image-size", "32",
                      "--examples", "1", "--batch-size", "1", "--steps", "1", "--repeats", "1",
                      "--clever-examples", "1", "--clever-batches", "1", "--clever-batch-size", "2",
                      "--clever-points-per-pass", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "device cpu" in done.stdout
    assert re.search(r"\| FGSM \| 1 \| [0-9.]+ \|", done.stdout), done.stdout
    assert re.search(r"peak memory: \d+ MiB \(process peak RSS, cpu\)", done.stdout), done.stdout


@pytest.mark.skipif(importlib.util.find_spec("auto_LiRPA") is not None, reason="auto_LiRPA is installed here")
@pytest.mark.parametrize("part", ["cnn7", "alpha"])
def test_auto_lirpa_benchmark_without_auto_lirpa_is_a_usage_error(part: str) -> None:
    done = run_script("bench_auto_lirpa.py", "--part", part, "--threads", "1")
    assert done.returncode == 2
    assert "auto_LiRPA is not installed" in done.stderr and "Traceback" not in done.stderr
