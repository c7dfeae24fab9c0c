"""Benchmark: how the cost and peak memory of IBP and CROWN margin bounds grow with batch size and model size.

Prints ONE markdown table: a row per model and bound method, a column per batch size, and in each cell the
milliseconds per example, the seconds of the whole batch and the peak memory of one evaluation of
``bounds.margins.margin_lower_bounds(model, lower, upper, y, method)`` (``method="ibp"``: interval propagation;
``"crown"``: CROWN, never looser than IBP).

- Models (``lightning_modules.zoo.build_model``, 10 classes, seeded random weights, eval mode; every BatchNorm gets
  random affine parameters and running statistics): ``fc100``, ``fc500`` and ``lenet`` on MNIST-shaped 1x28x28
  inputs, ``cnn_7layer`` (the certified-training CNN7) and ``resnet_small`` on CIFAR-shaped 3x32x32 inputs.
- Boxes: seeded uniform inputs ``x`` in [0, 1], labelled by the model's own prediction; the box is
  ``[x - r, x + r]`` clipped to [0, 1], with ``r = 0.01`` for the MNIST-shaped inputs and ``r = 2/255`` for the
  CIFAR-shaped ones.
- Timing: one untimed IBP evaluation of one example first (tracing and first-call costs), then the evaluation of
  the whole batch; when that is short (under a twentieth of ``--budget-s``) it is repeated ``--repeats`` times in
  all and the fastest run is kept. On CUDA the clock waits for the GPU (``torch.cuda.synchronize``).
- Peak memory: on the CPU each cell runs in a fresh process (forked from this one, so that it does not pay the
  10-25 s of importing torch again; ``--isolation subprocess`` starts ``python bench_scaling.py --cell ...``
  instead) that reports its peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) above its own
  baseline, taken after the model, the data and the untimed warm-up (the high-water mark is reset there through
  ``/proc/self/clear_refs`` on Linux: ``common.reset_peak_memory``). The process may map at most ``--memory-mib``
  more address space; a cell that runs out of it reads "out of memory". On CUDA the cells run in this process and
  the peak is ``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats``, above what the
  model and the data hold; a CUDA out-of-memory error reads "out of memory".
- Budget: batch sizes run in increasing order. Before each, its time and memory are extrapolated linearly in the
  number of examples from the last measured batch of the row (from small batches usually an overestimate: their
  per-call overhead does not grow); when the time exceeds ``--budget-s`` (or the memory ``--memory-mib``) the cell
  is not run and reads "skipped (est. N s)" (or "skipped (est. N MiB)"), and so do the larger batches, each with
  its own estimate. A cell still running after ``--cell-timeout-s`` is stopped and reads "timed out (> N s)"; one
  that runs out of memory or fails reads so, and the larger batches of its row read "not run (...)". No cell ever
  shows a number that was not measured.

    python benchmarks/bench_scaling.py                                   # every model, IBP and CROWN, 1 to 1000
    python benchmarks/bench_scaling.py --models lenet cnn_7layer --methods crown --batches 1 10 --budget-s 300
    python benchmarks/bench_scaling.py --device cuda --threads 2

This file is one concept (one benchmark script: its cells, their isolation and the table), hence its length.
"""

import argparse
import json
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

import torch
from common import add_device_argument, best_seconds, memory_baseline_mib, peak_memory_mib, reset_peak_memory, timed
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bounds.interval import interval_bounds  # noqa: E402
from bounds.margins import margin_lower_bounds  # noqa: E402
from lightning_modules.zoo import build_model  # noqa: E402

MNIST_SHAPE, CIFAR_SHAPE = (1, 28, 28), (3, 32, 32)
MODELS: dict[str, tuple[int, int, int]] = {
    "fc100": MNIST_SHAPE, "fc500": MNIST_SHAPE, "lenet": MNIST_SHAPE, "cnn_7layer": CIFAR_SHAPE,
    "resnet_small": CIFAR_SHAPE,
}
"""The models of the table and the input shape each gets."""
RADII = {MNIST_SHAPE: 0.01, CIFAR_SHAPE: 2 / 255}
"""Box radius per input shape."""
METHODS = ("ibp", "crown")
NUM_CLASSES = 10


def random_model(name: str, seed: int = 0) -> nn.Module:
    """The zoo model ``name`` with seeded random weights, in eval mode, every BatchNorm with random statistics."""
    torch.manual_seed(seed)
    model = build_model(name, MODELS[name], NUM_CLASSES)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(size, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(size, generator=generator))
                module.weight.copy_(0.5 + torch.rand(size, generator=generator))
                module.bias.copy_(0.1 * torch.randn(size, generator=generator))
    return model.eval()


def boxes(model: nn.Module, name: str, batch: int, device: torch.device, seed: int = 0
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(lower, upper, y)``: boxes of the model's radius around seeded inputs in [0, 1], labelled by the model."""
    shape = MODELS[name]
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(seed)).to(device)
    radius = RADII[shape]
    with torch.no_grad():
        y = torch.cat([model(chunk).argmax(1) for chunk in x.split(256)])
    return (x - radius).clamp(0, 1), (x + radius).clamp(0, 1), y


def limit_address_space(extra_mib: float) -> None:
    """Let this process map at most ``extra_mib`` MiB more than now (Linux; elsewhere a no-op)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return
    size_kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmSize:")), None)
    if size_kib is not None:
        limit = int((size_kib / 1024 + extra_mib) * 2**20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure (CPU allocator, address-space limit or CUDA)."""
    if isinstance(error, MemoryError | torch.cuda.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "not enough memory" in text
                                                or "can't allocate memory" in text)


def measure_cell(name: str, method: str, batch: int, device: torch.device, repeats: int, budget_s: float
                 ) -> dict[str, float | int | str]:
    """One cell in this process: seconds of the fastest evaluation and the peak memory (MiB) above the baseline."""
    try:
        model = random_model(name).to(device)
        lower, upper, y = boxes(model, name, batch, device)
        with torch.no_grad():
            interval_bounds(model, lower[:1], upper[:1])  # tracing and first-call costs, untimed, not in the peak
            reset_peak_memory(device)
            baseline = memory_baseline_mib(device)

            def evaluate() -> torch.Tensor:
                return margin_lower_bounds(model, lower, upper, y, method)

            seconds, margins = timed(evaluate, device=device)
            runs = 1
            if repeats > 1 and seconds < budget_s / 20:
                seconds = min(seconds, best_seconds(evaluate, repeats - 1, device))
                runs = repeats
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        return {"error": "out of memory"}
    if bool(torch.isnan(margins).any()):
        return {"error": "NaN margins"}
    return {"seconds": seconds, "runs": runs, "peak_mib": max(0.0, peak_memory_mib(device) - baseline),
            "params": sum(p.numel() for p in model.parameters())}


def _cell_child(connection: Connection, args: argparse.Namespace, name: str, method: str, batch: int) -> None:
    """Body of a forked cell process: limit its memory, measure, send the result back."""
    try:
        limit_address_space(args.memory_mib)
        torch.set_num_threads(args.threads)
        result = measure_cell(name, method, batch, args.device, args.repeats, args.budget_s)
    except Exception as error:  # reported in the table, not raised in a forked child
        result = {"error": f"failed ({type(error).__name__}: {str(error).splitlines()[0][:80] if str(error) else ''})"}
    connection.send(result)
    connection.close()


def run_cell(args: argparse.Namespace, name: str, method: str, batch: int) -> dict[str, float | int | str]:
    """One cell: on the CPU in a fresh process (its own peak RSS), on CUDA in this process."""
    if args.device.type == "cuda":
        try:
            return measure_cell(name, method, batch, args.device, args.repeats, args.budget_s)
        finally:
            torch.cuda.empty_cache()
    timeout = f"timed out (> {args.cell_timeout_s:.0f} s)"
    if args.isolation == "fork":  # a forked child shares the imports: no 10-25 s interpreter start per cell
        receiver, sender = multiprocessing.Pipe(duplex=False)
        process = multiprocessing.get_context("fork").Process(target=_cell_child,
                                                              args=(sender, args, name, method, batch))
        process.start()
        sender.close()
        try:
            if not receiver.poll(args.cell_timeout_s):
                return {"error": timeout}
            try:
                return receiver.recv()
            except EOFError:  # the child died without a word (killed, e.g. by the OOM killer)
                return {"error": f"failed (cell process exit code {process.exitcode})"}
        finally:
            if process.is_alive():
                process.kill()
            process.join()
    command = [sys.executable, __file__, "--cell", name, method, str(batch), "--threads", str(args.threads),
               "--repeats", str(args.repeats), "--budget-s", str(args.budget_s), "--memory-mib", str(args.memory_mib),
               "--device", str(args.device)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.cell_timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"error": timeout}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"failed ({tail[:80]})"}
    return json.loads(lines[-1])


def cell_text(result: dict[str, float | int | str], batch: int) -> str:
    """The table cell of one measured (or skipped) configuration."""
    if "error" in result:
        return str(result["error"])
    if "skipped" in result:
        return str(result["skipped"])
    seconds, mib = float(result["seconds"]), float(result["peak_mib"])
    return f"{significant(1e3 * seconds / batch)} ms/ex, {significant(seconds)} s, {rounded(mib)} MiB"


def rounded(value: float) -> str:
    """A short printable number: no decimals from 10 on, two significant digits below."""
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def significant(value: float) -> str:
    """Three significant digits, without an exponent (no decimals from 100 on)."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def row(args: argparse.Namespace, name: str, method: str) -> tuple[list[str], int | None]:
    """The cells of one model and method over ``args.batches`` (skipping what the budget rules out) and params."""
    cells: list[str] = []
    previous: tuple[int, float, float] | None = None  # (batch, seconds, peak MiB) of the last measured cell
    failed: str | None = None
    params: int | None = None
    for batch in args.batches:
        if failed is not None:
            cells.append(failed)
            continue
        if previous is not None:  # each skipped cell gets its own estimate from the last measured one
            scale = batch / previous[0]
            estimate_s, estimate_mib = previous[1] * scale, previous[2] * scale
            if estimate_s > args.budget_s:
                cells.append(f"skipped (est. {rounded(estimate_s)} s)")
                continue
            if estimate_mib > args.memory_mib:
                cells.append(f"skipped (est. {rounded(estimate_mib)} MiB)")
                continue
        result = run_cell(args, name, method, batch)
        print(f"  {name} {method} batch {batch}: {json.dumps(result)}", file=sys.stderr, flush=True)
        cells.append(cell_text(result, batch))
        if "seconds" in result:
            previous = (batch, float(result["seconds"]), float(result["peak_mib"]))
            params = int(result["params"])
        else:  # out of memory, timed out or failed: larger batches would fare no better
            failed = f"not run ({result['error']} at batch {batch})"
    return cells, params


def machine() -> str:
    """One line naming the machine the table was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        model_lines = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line]
        cpu = model_lines[0].split(":", 1)[1].strip() if model_lines else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def positive_int(text: str) -> int:
    """An argparse ``type`` for batch sizes."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"a batch size must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=positive_int, default=[1, 10, 100, 1000])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--budget-s", type=float, default=60.0,
                        help="largest extrapolated seconds of one evaluation for a cell to be run")
    parser.add_argument("--cell-timeout-s", type=float, default=240.0, help="stop a cell (CPU) after this long")
    parser.add_argument("--memory-mib", type=float, default=8192.0,
                        help="most memory a cell may add (CPU: address-space limit of its process; extrapolation)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of a short cell (the fastest is kept)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--isolation", choices=("fork", "subprocess"), default="fork" if hasattr(os, "fork") else
                        "subprocess", help="CPU cells: a forked child (default) or a new interpreter (--cell)")
    add_device_argument(parser)
    parser.add_argument("--cell", nargs=3, metavar=("MODEL", "METHOD", "BATCH"), default=None,
                        help="internal: measure one cell in this process and print it as JSON")
    args = parser.parse_args(argv)
    args.batches = sorted(set(args.batches))
    if args.cell is not None:
        name, method, batch = args.cell
        if name not in MODELS or method not in METHODS:
            parser.error(f"--cell: unknown model or method {name!r} {method!r}")
        args.cell = (name, method, positive_int(batch))
    return args


def main(argv: list[str] | None = None) -> None:
    """Print the table (or, with ``--cell``, one cell as a JSON line)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.cell is not None:
        if args.device.type == "cpu":
            limit_address_space(args.memory_mib)
        print(json.dumps(measure_cell(*args.cell, args.device, args.repeats, args.budget_s)), flush=True)
        return
    start, load_start = time.perf_counter(), os.getloadavg()
    memory = "CUDA max_memory_allocated" if args.device.type == "cuda" else "peak RSS of a fresh process"
    print(f"| model (params) | input | radius | method | {' | '.join(f'batch {b}' for b in args.batches)} |")
    print(f"|---|---|---|---|{'---|' * len(args.batches)}")
    for name in args.models:
        shape = MODELS[name]
        for method in args.methods:
            cells, params = row(args, name, method)
            size = f"{params / 1e3:.0f}k" if params is not None else "?"
            radius = "0.01" if RADII[shape] == 0.01 else "2/255"
            print(f"| {name} ({size}) | {'x'.join(map(str, shape))} | {radius} | {method} | {' | '.join(cells)} |",
                  flush=True)
    load_end = os.getloadavg()
    print(f"\nEach cell: ms per example, seconds for the whole batch, peak memory above the baseline ({memory}); "
          f"budget {args.budget_s:.0f} s per cell, {args.threads} thread(s), {args.device}; {machine()}; load average "
          f"{load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end; {time.perf_counter() - start:.0f} s in "
          "all.")


if __name__ == "__main__":
    main()
