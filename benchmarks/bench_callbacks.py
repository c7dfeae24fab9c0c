"""Overhead of AmoebaBoundCallback and ACTSCallback at their defaults on the quickstart robust_lenet training epoch.

Trains the ``configs/robust_lenet.yaml`` model and data (PGD-20 adversarial LeNet, embedded MNIST, 4,000
training and 500 validation digits) from the same seed twice per round, without and with both callbacks at
their constructor defaults, and times every epoch (training and validation; the sanity check is excluded).
Epochs are averaged over a multiple of the callbacks' ``every_n_epochs`` (defaults: bounds every 4th epoch,
ACTS every epoch), so a round of 4 epochs holds exactly one certification run and four ACTS runs.

The defaults were chosen to stay within 20% of an epoch on average: AmoebaBoundCallback certifies 16 examples
(uniform and asymmetric, 100 Lagrangian iterations) every 4th epoch, ACTSCallback scores 100 examples (PGD, 3
steps) every epoch. Measured on the shared 2-core box (load average about 3): certifying 16 digits takes 0.5 s
(uniform) + 2.6 s (asymmetric), ACTS of 200 digits 0.5 s, against a quiet epoch of 6.8 s, i.e. about
(3.1 / 4 + 0.26) / 6.8 = 15% per epoch at the defaults. Timings on a shared machine are noisy; the script also
prints the in-run share (seconds inside the callbacks' hooks over the epoch's seconds), which both parts of an
epoch measure under the same load.

``--device cuda`` trains on the GPU (``Trainer(accelerator="gpu", devices=[index])``; both timers synchronise the
GPU, ``torch.cuda.synchronize``, at their clock readings); the last line is the peak memory of this process
(``torch.cuda.max_memory_allocated`` on CUDA, peak RSS on the CPU).

    python benchmarks/bench_callbacks.py --epochs 4 --rounds 1 --threads 2
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from common import add_device_argument, lightning_accelerator, memory_line, synchronize
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from callbacks import ACTSCallback, AmoebaBoundCallback  # noqa: E402
from datamodules import MNISTDataModule  # noqa: E402
from lightning_modules import AdversarialClassifier  # noqa: E402


class EpochTimer(Callback):
    """Wall-clock seconds of every training epoch (its validation included)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the clock."""
        synchronize(pl_module.device)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Record the epoch's seconds (Lightning runs the epoch's validation before this hook)."""
        synchronize(pl_module.device)
        self.seconds.append(time.perf_counter() - self._start)


class HookTimer:
    """Accumulates the wall-clock seconds spent inside the callbacks' validation hooks, per training epoch.

    This in-run share is robust to the load of a shared machine (both parts of an epoch see the same load),
    unlike the comparison of two separate runs.
    """

    HOOKS = ("on_validation_epoch_start", "on_validation_batch_end", "on_validation_epoch_end")

    def __init__(self, callbacks: list[Callback], epoch_timer: EpochTimer) -> None:
        self.seconds: dict[int, float] = {}
        self._epochs = epoch_timer
        for callback in callbacks:
            for hook in self.HOOKS:
                setattr(callback, hook, self._wrap(getattr(callback, hook)))

    def _wrap(self, method: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            device = getattr(args[1], "device", "cpu") if len(args) > 1 else "cpu"  # (trainer, pl_module, ...)
            synchronize(device)
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                synchronize(device)
                epoch = len(self._epochs.seconds)
                self.seconds[epoch] = self.seconds.get(epoch, 0.0) + time.perf_counter() - start

        return timed


def quickstart() -> tuple[dict[str, Any], dict[str, Any]]:
    """The model and data arguments of ``configs/robust_lenet.yaml``."""
    config = yaml.safe_load((ROOT / "configs" / "robust_lenet.yaml").read_text())
    return config["model"]["init_args"], config["data"]["init_args"]


def run(epochs: int, with_callbacks: bool, max_train_examples: int | None, log_dir: Path,
        device: torch.device | str = "cpu") -> tuple[list[float], list[float]]:
    """Seconds of every epoch of one training run on ``device``, and the seconds inside the callbacks' hooks."""
    model_args, data_args = quickstart()
    seed_everything(0, verbose=False)
    model = AdversarialClassifier(**model_args)
    data = MNISTDataModule(**{**data_args, "max_train_examples": max_train_examples})
    timer = EpochTimer()
    callbacks: list[Callback] = [timer]
    hooks = None
    if with_callbacks:
        ours: list[Callback] = [AmoebaBoundCallback(), ACTSCallback()]
        hooks = HookTimer(ours, timer)
        callbacks += ours
    accelerator, devices = lightning_accelerator(device)
    trainer = Trainer(accelerator=accelerator, devices=devices, max_epochs=epochs, callbacks=callbacks,
                      logger=TensorBoardLogger(log_dir, name="with" if with_callbacks else "without"),
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    inside = [hooks.seconds.get(epoch, 0.0) if hooks else 0.0 for epoch in range(len(timer.seconds))]
    return timer.seconds, inside


def main() -> None:
    """Alternate runs without and with the callbacks and print the epoch times."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (a multiple of every_n_epochs)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating without/with rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-train-examples", type=int, default=None, help="shrink the epoch (default: all 4,000)")
    add_device_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    times: dict[str, list[float]] = {"without": [], "with": []}
    inside: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        for round_index in range(args.rounds):
            for name in ("without", "with"):
                seconds, hook_seconds = run(args.epochs, name == "with", args.max_train_examples, Path(folder),
                                            args.device)
                times[name] += seconds
                print(f"round {round_index} {name:>7} callbacks: epochs " + " ".join(f"{s:.2f}" for s in seconds)
                      + f" s (mean {statistics.mean(seconds):.2f} s)", flush=True)
                if name == "with":
                    inside += hook_seconds
                    print("                 inside the callbacks: " + " ".join(f"{s:.2f}" for s in hook_seconds)
                          + " s", flush=True)
    without, with_ = statistics.mean(times["without"]), statistics.mean(times["with"])
    print(f"\nmean epoch without callbacks: {without:.2f} s")
    print(f"mean epoch with both callbacks: {with_:.2f} s")
    print(f"ratio with/without (separate runs): {with_ / without:.3f}  (added {100 * (with_ / without - 1):.1f}%)")
    spent, total = sum(inside), sum(times["with"])
    print(f"in-run: {spent / len(inside):.2f} s of {total / len(inside):.2f} s per epoch inside the callbacks; "
          f"ratio epoch/(epoch - callbacks): {total / (total - spent):.3f}  "
          f"(added {100 * spent / (total - spent):.1f}%)")
    print(memory_line(args.device))


if __name__ == "__main__":
    main()
