"""Benchmark: one CROWN evaluation of LeNet with windowed back-substitution vs. the dense one, side by side.

Times ``crown_margin_bounds`` on boxes ``[x - r, x + r]`` around correctly classified test digits of the normal
LeNet of ``bench_certify.py`` (trained through ``train.main``, reused from ``--log-dir``), twice per radius: as
shipped (convolutional intermediate bounds in windows, activation fused into the following max-pool) and with
both switched off (every intermediate neuron carried densely over the whole feature map, the reference the tests
compare against). Prints milliseconds per example, the speed-up and the largest difference of the two bounds.
``--device cuda`` evaluates on the GPU (timings synchronised); the last line is the run's peak memory.

    python benchmarks/bench_crown_windows.py --examples 50 --threads 1
"""

import argparse
import contextlib
from pathlib import Path
from unittest import mock

import torch
from bench_certify import correctly_classified, trained_model
from common import add_device_argument, memory_line, timed

import bounds.crown_backward
import bounds.crown_intermediate
from bounds.crown import crown_margin_bounds


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, radius: float, dense: bool
             ) -> tuple[torch.Tensor, float]:
    """CROWN margins on the boxes and seconds per example (``dense``: windows and pool fusion switched off)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        if dense:
            stack.enter_context(mock.patch.object(bounds.crown_intermediate, "patches_apply", lambda *args: False))
            stack.enter_context(mock.patch.object(bounds.crown_backward, "activation_below_pool", lambda *args: None))
        seconds, margins = timed(crown_margin_bounds, model, x - radius, x + radius, y, device=x.device)
    return margins, seconds / x.shape[0]


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=50)
    parser.add_argument("--radii", type=float, nargs="+", default=[0.01, 0.03, 0.06])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--log-dir", type=Path, default=Path("logs/bench_certify"))
    add_device_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, datamodule = trained_model("lenet", "normal", args.epochs, args.log_dir)
    x, y, _ = correctly_classified(model, datamodule, args.examples)
    model, x, y = model.to(args.device), x.to(args.device), y.to(args.device)
    print(f"\n{'radius':>7} | {'windows ms/ex':>13} | {'dense ms/ex':>11} | {'speed-up':>8} | {'max |diff|':>10}")
    for radius in args.radii:
        fast, fast_seconds = evaluate(model, x, y, radius, dense=False)
        slow, slow_seconds = evaluate(model, x, y, radius, dense=True)
        finite = torch.isfinite(slow)
        difference = float((fast[finite] - slow[finite]).abs().max())
        print(f"{radius:>7.3f} | {1000 * fast_seconds:>13.1f} | {1000 * slow_seconds:>11.1f} | "
              f"{slow_seconds / fast_seconds:>7.1f}x | {difference:>10.2e}", flush=True)
    print(f"\nnormal LeNet, {len(y)} test digits, threads={args.threads}, device={args.device}")
    print(memory_line(args.device))


if __name__ == "__main__":
    main()
