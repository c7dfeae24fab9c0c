"""Compare training modes on LeNet / embedded MNIST: accuracy, PGD accuracy, certified widths and verified accuracy.

Trains (through ``train.main``, logs in a temporary folder) or loads the normal, PGD-adversarial and
asymmetric-bound-guided LeNets of ``configs/normal_lenet.yaml``, ``configs/robust_lenet.yaml`` and
``configs/bound_guided_lenet.yaml`` with the same epoch budget, and prints one table over the 500 embedded
MNIST test digits:

- ``clean``: test accuracy; ``pgd@0.1``: accuracy under l_inf PGD (eps 0.1, step 0.01, 20 steps, random start);
- ``asym w`` / ``unif w``: mean geometric-mean width (``bounds.analysis.mean_certified_width``) of the
  ``certify(kind="asymmetric")`` and ``certify(kind="uniform")`` boxes of the first ``--examples`` correctly
  classified test digits;
- ``cert@r``: the share of ALL test digits whose certified uniform radius is ``>= r`` (verified robust
  accuracy; misclassified digits count as not certified).

The models each config's checkpoint callback selects are used (best ``val/acc`` for normal and PGD, the last
epoch for bound-guided, whose ramp makes the early clean-only epochs the best by ``val/acc``). Optional modes:
``guided_uniform`` (the bound-guided config with ``shape: uniform``, i.e. plain IBP training: the ablation of
the asymmetric shape).

Training (``--trainer.accelerator``/``--trainer.devices``) and evaluation run on ``--device``; the last line is the
peak memory of this process (``torch.cuda.max_memory_allocated`` on CUDA, peak RSS on the CPU).

    python benchmarks/bench_training_modes.py --threads 1
    python benchmarks/bench_training_modes.py --ckpt normal=PATH --ckpt pgd=PATH --modes normal pgd guided
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import add_device_argument, memory_line, timed, trainer_flags

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bounds.analysis import mean_certified_width  # noqa: E402
from bounds.attacks.pgd import pgd  # noqa: E402
from bounds.certify import certify  # noqa: E402
from datamodules.mnist import embedded_mnist_splits  # noqa: E402
from lightning_modules.adversarial import AdversarialClassifier  # noqa: E402
from lightning_modules.bound_guided import BoundGuidedClassifier  # noqa: E402
from lightning_modules.classifier import ImageClassifier  # noqa: E402

MODES: dict[str, tuple[str, type[ImageClassifier], list[str]]] = {
    "normal": ("normal_lenet.yaml", ImageClassifier, []),
    "pgd": ("robust_lenet.yaml", AdversarialClassifier, []),
    "guided": ("bound_guided_lenet.yaml", BoundGuidedClassifier, []),
    "guided_uniform": ("bound_guided_lenet.yaml", BoundGuidedClassifier, ["--model.init_args.shape=uniform"]),
}
RADII = (0.05, 0.1)


def train_mode(mode: str, epochs: int, log_dir: Path, extra: list[str], device: torch.device | str = "cpu"
               ) -> tuple[ImageClassifier, str, float]:
    """Train one mode through ``train.main`` on ``device``; return the tested model, its checkpoint and fit seconds."""
    import train

    config, _, overrides = MODES[mode]
    args = ["--config", config, f"--trainer.max_epochs={epochs}", f"--trainer.logger.init_args.save_dir={log_dir}",
            f"--trainer.logger.init_args.name={mode}", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", *trainer_flags(device), *overrides, *extra]
    start = time.perf_counter()
    cli = train.main(args)
    seconds = time.perf_counter() - start
    ckpt = cli.trainer.checkpoint_callback.best_model_path if cli.trainer.checkpoint_callback else ""
    return cli.model, ckpt, seconds


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, examples: int, batch_size: int
             ) -> dict[str, float]:
    """The table's columns for one model (see the module docstring)."""
    model.eval()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x_adv = pgd(model, x, y, norm="linf", eps=0.1, step_size=0.01, steps=20, random_start=True,
                input_range=(-1.0, 1.0)).adversarial
    with torch.no_grad():
        pgd_acc = float((model(x_adv).argmax(1) == y).float().mean())
    uniform = certify(model, x, y, kind="uniform", batch_size=batch_size)
    radius = uniform.eps_lower.flatten(1)[:, 0]
    chosen = correct.nonzero().squeeze(1)[:examples]
    asym_seconds, asym = timed(certify, model, x[chosen], y[chosen], kind="asymmetric", batch_size=batch_size,
                               device=x.device)
    unif_chosen = certify(model, x[chosen], y[chosen], kind="uniform", batch_size=batch_size)
    row = {
        "clean": float(correct.float().mean()),
        "pgd@0.1": pgd_acc,
        "asym w": mean_certified_width(asym),
        "unif w": mean_certified_width(unif_chosen),
        "asym/unif": mean_certified_width(asym) / max(mean_certified_width(unif_chosen), 1e-12),
        "n cert": float(asym.certified.sum()),
        "asym s": asym_seconds,
    }
    for r in RADII:
        row[f"cert@{r}"] = float(((radius >= r) & uniform.certified).float().mean())
    return row


def main() -> None:
    """Train or load every mode, evaluate it and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["normal", "pgd", "guided"],
                        help=f"Modes to train (or load with --ckpt): {', '.join(MODES)}.")
    parser.add_argument("--epochs", type=int, default=12, help="Epoch budget of every mode.")
    parser.add_argument("--examples", type=int, default=300, help="Correct test digits whose widths are averaged.")
    parser.add_argument("--batch-size", type=int, default=100, help="Certification batch size.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded box).")
    parser.add_argument("--ckpt", action="append", default=[], metavar="MODE=PATH",
                        help="Load this checkpoint instead of training MODE (repeatable); MODE:NAME adds a row NAME "
                        "evaluated with MODE's class (e.g. guided:ratio3=PATH).")
    parser.add_argument("--log-dir", default=None, help="Training logs folder (default: a temporary folder).")
    parser.add_argument("--guided-arg", action="append", default=[], metavar="ARG",
                        help="Extra train.py argument for the guided modes, e.g. --guided-arg=--model.init_args.x=1.")
    add_device_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoints = dict(item.split("=", 1) for item in args.ckpt)
    labels = list(dict.fromkeys([*args.modes, *checkpoints]))
    for label in labels:
        if label.split(":")[0] not in MODES:
            parser.error(f"unknown mode in {label!r}; choose from {', '.join(MODES)}")
    _, _, test = embedded_mnist_splits(0)
    x, y = (tensor.to(args.device) for tensor in test.tensors)
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(args.log_dir or tmp)
        for label in labels:
            mode = label.split(":")[0]
            _, cls, _ = MODES[mode]
            if label in checkpoints:
                ckpt, seconds = checkpoints[label], float("nan")
                model = cls.load_from_checkpoint(ckpt, map_location=args.device)
            else:
                extra = args.guided_arg if mode.startswith("guided") else []
                model, ckpt, seconds = train_mode(mode, args.epochs, log_dir, extra, args.device)
            print(f"[{label}] checkpoint {ckpt} (fit {seconds:.0f} s)", flush=True)
            rows[label] = evaluate(model.model.to(args.device), x, y, args.examples, args.batch_size)
            rows[label]["fit s"] = seconds
            print(f"[{label}] {rows[label]}", flush=True)
    columns = ["clean", "pgd@0.1", "asym w", "unif w", "asym/unif", *[f"cert@{r}" for r in RADII], "n cert",
               "asym s", "fit s"]
    print(f"\nLeNet, embedded MNIST ({x.shape[0]} test digits), {args.epochs} epochs, widths over up to "
          f"{args.examples} correct digits, torch threads {args.threads}")
    print(f"{'mode':<22}" + "".join(f"{c:>11}" for c in columns))
    for mode, row in rows.items():
        cells = []
        for c in columns:
            value = row[c]
            cells.append(f"{value:>11.0f}" if c in ("n cert", "asym s", "fit s") else f"{value:>11.4f}")
        print(f"{mode:<22}" + "".join(cells))
    print(memory_line(args.device))


if __name__ == "__main__":
    main()
