"""Benchmark: interval propagation vs. CROWN certification, widths and seconds per example side by side.

Uses the same models as ``bench_certify.py``: MNIST zoo models trained through ``train.main`` with the
framework's own configs (``normal_lenet.yaml`` / ``robust_lenet.yaml`` with the architecture switched, 12 epochs
by default, kept under ``--log-dir`` and reused). It certifies the first ``--examples`` correctly classified test
digits with ``certify(..., method="ibp")`` and ``certify(..., method="crown")`` for each kind, one after the other
in one run, and prints mean geometric-mean widths, certified fractions, seconds per example and the CROWN/IBP
ratios. ``--device cuda`` certifies on the GPU (the models are trained where ``train.py`` puts them, then moved;
timings synchronised); the last line is the run's peak memory.

    python benchmarks/bench_crown.py                                  # LeNet and FC100, normal and PGD
    python benchmarks/bench_crown.py --models lenet --training normal --examples 50 --threads 2

Timings on a shared, loaded machine are inflated; the ratios side by side are more stable.
"""

import argparse
import json
from pathlib import Path

import torch
from bench_certify import CONFIGS, correctly_classified, trained_model
from common import add_device_argument, memory_line, timed

from bounds.analysis import mean_certified_width
from bounds.certify import certify


def main() -> None:
    """Run the benchmark and print the table (and a JSON line per row)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet", "fc100"])
    parser.add_argument("--training", nargs="+", default=["normal", "pgd"], choices=sorted(CONFIGS))
    parser.add_argument("--kinds", nargs="+", default=["uniform", "asymmetric"])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--crown-rounds", type=int, default=4)
    parser.add_argument("--log-dir", type=Path, default=Path("logs/bench_certify"))
    add_device_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for architecture in args.models:
        for training in args.training:
            model, datamodule = trained_model(architecture, training, args.epochs, args.log_dir)
            x, y, accuracy = correctly_classified(model, datamodule, args.examples)
            model, x, y = model.to(args.device), x.to(args.device), y.to(args.device)
            for kind in args.kinds:
                row = {"model": architecture, "training": training, "clean_acc": float(accuracy), "kind": kind,
                       "examples": len(y)}
                for method in ("ibp", "crown"):
                    seconds, cert = timed(certify, model, x, y, kind, method=method, batch_size=args.batch_size,
                                          crown_rounds=args.crown_rounds, device=args.device)
                    seconds /= len(y)
                    row[method] = {"width": mean_certified_width(cert), "s_per_example": seconds,
                                   "certified": float(cert.certified.float().mean())}
                row["width_ratio"] = row["crown"]["width"] / max(row["ibp"]["width"], 1e-12)
                row["time_ratio"] = row["crown"]["s_per_example"] / max(row["ibp"]["s_per_example"], 1e-12)
                rows.append(row)
                print(json.dumps(row), flush=True)
    header = (f"{'model':<7}{'train':<7}{'kind':<11}{'n':>5} | {'IBP w':>9}{'cert':>6}{'s/ex':>8} | "
              f"{'CROWN w':>9}{'cert':>6}{'s/ex':>8} | {'w ratio':>8}{'t ratio':>8}")
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        cells = "".join(f" | {r[m]['width']:>9.5f}{r[m]['certified']:>6.2f}{r[m]['s_per_example']:>8.3f}"
                        for m in ("ibp", "crown"))
        print(f"{r['model']:<7}{r['training']:<7}{r['kind']:<11}{r['examples']:>5}{cells} | "
              f"{r['width_ratio']:>7.1f}x{r['time_ratio']:>7.0f}x")
    print(f"\nthreads={args.threads}, batch={args.batch_size}, epochs={args.epochs}, crown_rounds={args.crown_rounds}, "
          f"device={args.device}")
    print(memory_line(args.device))


if __name__ == "__main__":
    main()
