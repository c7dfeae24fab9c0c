"""Helpers every benchmark shares: the ``--device`` option, timers that wait for the GPU, and peak memory.

Not a benchmark itself. The scripts in ``benchmarks/`` import it as ``common`` (they run as
``python benchmarks/bench_x.py``, so ``benchmarks/`` is on ``sys.path``):

    parser = argparse.ArgumentParser()
    add_device_argument(parser)                       # --device cpu (default), cuda, cuda:0, ...
    args = parser.parse_args()                        # a bad or missing device: a clean usage error, exit code 2
    seconds, result = timed(work, x, y, device=args.device)                 # synchronised on CUDA
    fastest = best_seconds(lambda: work(x, y), repeats=3, device=args.device)
    reset_peak_memory(args.device)
    ...
    print(memory_line(args.device))                   # "peak memory: ... MiB (CUDA max_memory_allocated)"

Timing on CUDA: kernels run asynchronously, so :func:`timed` and :func:`best_seconds` call
``torch.cuda.synchronize`` before starting and before stopping the clock. Peak memory: on CUDA the allocator's
``torch.cuda.max_memory_allocated`` since the last :func:`reset_peak_memory`; on the CPU the process's peak resident
set size (``resource.getrusage(...).ru_maxrss``) since :func:`reset_peak_memory`, which resets it through
``/proc/self/clear_refs`` on Linux (elsewhere it is the process-lifetime high-water mark). Memory freed earlier but
kept by the allocator still counts in the RSS, so per-configuration peaks are cleanest in a fresh process (as
``bench_scaling.py`` measures them).
"""

import argparse
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")

DEVICE_HELP = "torch device: cpu (default), cuda or cuda:N (the benchmark's models and data are moved there)"


def parse_device(name: str) -> torch.device:
    """``--device`` string -> ``torch.device``, refusing what cannot run here with a one-line reason.

    Args:
        name: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        The device; ``"cuda"`` becomes ``cuda:<current device>``, so that every tensor of a run lands on one GPU.

    Raises:
        argparse.ArgumentTypeError: For a string torch cannot parse, a device type other than CPU and CUDA, CUDA
            on a machine without a usable CUDA device, or a GPU index that does not exist. Used as an argparse
            ``type=``, it becomes ``error: argument --device: ...`` and exit code 2, without a traceback.
    """
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise argparse.ArgumentTypeError(f"{name!r} is not a torch device ({error}); use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise argparse.ArgumentTypeError(f"device type {device.type!r} is not supported by the benchmarks; use cpu, "
                                         "cuda or cuda:N")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{name!r} requested, but CUDA is not available here (torch "
                                         f"{torch.__version__}, built with CUDA {torch.version.cuda}); use --device "
                                         "cpu")
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= count:
        raise argparse.ArgumentTypeError(f"{name!r} requested, but this machine has {count} CUDA device(s) "
                                         f"(cuda:0 to cuda:{count - 1})")
    return torch.device("cuda", index)


def add_device_argument(parser: argparse.ArgumentParser, default: str = "cpu") -> None:
    """Add the shared ``--device`` option (parsed and checked by :func:`parse_device`) to ``parser``."""
    parser.add_argument("--device", type=parse_device, default=default, help=DEVICE_HELP)


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[..., T], *args: Any, device: torch.device | str = "cpu", **kwargs: Any
          ) -> tuple[float, T]:
    """``(seconds, result)`` of one call ``function(*args, **kwargs)``, GPU work included (synchronised on CUDA)."""
    synchronize(device)
    start = time.perf_counter()
    result = function(*args, **kwargs)
    synchronize(device)
    return time.perf_counter() - start, result


def best_seconds(function: Callable[[], object], repeats: int, device: torch.device | str = "cpu") -> float:
    """The fastest of ``repeats`` runs of ``function`` in seconds, each timed by :func:`timed`."""
    return min(timed(function, device=device)[0] for _ in range(max(1, repeats)))


def reset_peak_memory(device: torch.device | str) -> bool:
    """Start a new peak-memory window: CUDA's peak statistics, or the CPU process's peak RSS where Linux allows it.

    On the CPU, writing ``5`` to ``/proc/self/clear_refs`` (Linux 4.0 and later) resets the resident-set high-water
    mark that ``ru_maxrss`` reports; elsewhere the CPU peak stays the process-lifetime one.

    Returns:
        Whether the window was reset (always on CUDA).
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def memory_baseline_mib(device: torch.device | str) -> float:
    """The reading a later :func:`peak_memory_mib` is compared against to get what a measured region added (MiB).

    On CUDA the memory allocated on ``device`` now; on the CPU the process's peak RSS so far, which right after a
    successful :func:`reset_peak_memory` is its current RSS.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return peak_rss_mib()


def peak_memory_mib(device: torch.device | str) -> float:
    """Peak memory (MiB): ``torch.cuda.max_memory_allocated`` on CUDA, the process's peak RSS on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def memory_kind(device: torch.device | str) -> str:
    """What :func:`peak_memory_mib` measures on ``device``, for table headers."""
    return "CUDA max_memory_allocated" if torch.device(device).type == "cuda" else "process peak RSS"


def memory_line(device: torch.device | str) -> str:
    """One printable line: the peak memory of this run on ``device`` and what it measures."""
    return f"peak memory: {peak_memory_mib(device):.0f} MiB ({memory_kind(device)}, {torch.device(device)})"


def lightning_accelerator(device: torch.device | str) -> tuple[str, int | list[int]]:
    """``(accelerator, devices)`` for ``lightning.Trainer`` (or ``--trainer.*`` flags) that run on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        return "gpu", [device.index if device.index is not None else torch.cuda.current_device()]
    return "cpu", 1


def trainer_flags(device: torch.device | str) -> list[str]:
    """``train.py`` / ``certify.py`` arguments that put the Trainer on ``device``."""
    accelerator, devices = lightning_accelerator(device)
    return [f"--trainer.accelerator={accelerator}", f"--trainer.devices={devices}"]
