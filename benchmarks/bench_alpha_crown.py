"""Benchmark: alpha-CROWN against CROWN, margin tightness and cost side by side, then certification with both.

Models: the normal LeNet and FC100 trained by ``train.py`` (``bench_certify.trained_model``, reused from
``--log-dir`` as ``bench_engine.py`` does) on correctly classified test digits, and a CIFAR-shaped 4-layer CNN
(auto_LiRPA's ``cnn_4layer``: Conv(3,16,4,2,1)-ReLU-Conv(16,32,4,2,1)-ReLU-FC(100)-ReLU-FC(10), seeded random
weights) on seeded uniform inputs in ``[0, 1]`` labelled by the network. For each model and radius the first table
prints the mean margin lower bound (over all ``j != y``) of ``crown_margin_bounds``, of
``alpha_crown_margin_bounds(optimise_intermediate=False)`` (final specification's slopes only) and of
``alpha_crown_margin_bounds`` (the default: dense intermediate bounds optimised jointly), their gains over CROWN
relative to ``|CROWN mean|``, and milliseconds per example of each (best of ``--repeats``) with the
cost ratio to CROWN. The second table certifies ``--certify-examples``
examples per model with ``certify(kind, method=...)`` for ``crown`` and ``alpha-crown`` and prints the mean
geometric-mean width of the certified boxes (the same examples certified by both), the certified fraction and
seconds per example. ``--device cuda`` runs every model and box on the GPU (timings synchronised); the last line
is the run's peak memory (``torch.cuda.max_memory_allocated`` on CUDA, the process's peak RSS on the CPU):

    python benchmarks/bench_alpha_crown.py --threads 1 --log-dir /tmp/bench_engine_logs
"""

import argparse
import json
from pathlib import Path

import torch
from bench_certify import correctly_classified, trained_model
from common import add_device_argument, best_seconds, memory_line, timed
from torch import nn

from bounds import alpha_crown_margin_bounds, certify, crown_margin_bounds
from bounds.analysis import geometric_mean_width


def cnn_4layer(seed: int = 0) -> nn.Sequential:
    """auto_LiRPA's CIFAR ``cnn_4layer`` with seeded random weights."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 8 * 8, 100), nn.ReLU(), nn.Linear(100, 10)).eval()


def models(args: argparse.Namespace) -> list[tuple[str, nn.Module, torch.Tensor, torch.Tensor, tuple[float, ...]]]:
    """``(name, model, x, y, radii)`` of the three models."""
    out = []
    for architecture in ("lenet", "fc100"):
        model, datamodule = trained_model(architecture, "normal", args.epochs, args.log_dir)
        x, y, _ = correctly_classified(model, datamodule, args.examples)
        out.append((architecture, model, x, y, (0.03, 0.05) if architecture == "lenet" else (0.03, 0.08)))
    model = cnn_4layer()
    x = torch.rand(args.examples, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    out.append(("cnn_4layer", model, x, y, (0.002, 0.005)))
    return out


def bound_row(model: nn.Module, x: torch.Tensor, y: torch.Tensor, radius: float, repeats: int) -> dict[str, float]:
    """Mean margins and ms per example of CROWN and both alpha-CROWN modes on ``[x - radius, x + radius]``."""
    lower, upper = x - radius, x + radius
    methods = {"crown": lambda: crown_margin_bounds(model, lower, upper, y),
               "final": lambda: alpha_crown_margin_bounds(model, lower, upper, y, optimise_intermediate=False),
               "joint": lambda: alpha_crown_margin_bounds(model, lower, upper, y)}
    row: dict[str, float] = {}
    with torch.no_grad():
        margins = {name: function() for name, function in methods.items()}
        finite = torch.isfinite(margins["crown"])
        for name, function in methods.items():
            row[f"{name}_margin"] = float(margins[name][finite].mean())
            row[f"{name}_ms"] = 1e3 * best_seconds(function, repeats, x.device) / x.shape[0]
    for name in ("final", "joint"):
        row[f"{name}_min_gain"] = float((margins[name] - margins["crown"])[finite].min())
    return row


def gain(value: float, crown: float) -> str:
    """``(value - crown) / |crown|`` in percent."""
    return f"{100 * (value - crown) / abs(crown):+.2f}%"


def certify_row(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str) -> dict[str, float]:
    """Widths (examples certified by both), certified fractions and seconds per example of both methods."""
    seconds, certs = {}, {}
    for method in ("crown", "alpha-crown"):
        seconds[method], certs[method] = timed(certify, model, x, y, kind, method=method, device=x.device)
    both = certs["crown"].certified & certs["alpha-crown"].certified
    row: dict[str, float] = {"both": int(both.sum())}
    for method, cert in certs.items():
        width = geometric_mean_width(cert)
        row[f"{method}_width"] = float(width[both].mean()) if bool(both.any()) else float("nan")
        row[f"{method}_certified"] = float(cert.certified.float().mean())
        row[f"{method}_s"] = seconds[method] / x.shape[0]
    return row


def main() -> None:
    """Run the benchmark and print both tables (and a JSON line per row)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=50, help="examples per model in the bound table")
    parser.add_argument("--certify-examples", type=int, default=10, help="examples per model certified")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the models (when not cached)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (the best is kept)")
    parser.add_argument("--threads", type=int, default=1)
    add_device_argument(parser)
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/bench_engine_logs"))
    parser.add_argument("--skip-certify", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    zoo = [(name, model.to(device), x.to(device), y.to(device), radii) for name, model, x, y, radii in models(args)]
    print(f"| model | radius | CROWN mean margin | alpha final-only | alpha default (joint) | gain final / joint "
          f"| CROWN ms/ex | final-only ms/ex (x CROWN) | default ms/ex (x CROWN) | ({args.examples} examples, "
          f"{args.threads} thread(s), {device}) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, model, x, y, radii in zoo:
        for radius in radii:
            row = bound_row(model, x, y, radius, args.repeats)
            crown = row["crown_margin"]
            print(f"| {name} | {radius} | {crown:.4f} | {row['final_margin']:.4f} | {row['joint_margin']:.4f} | "
                  f"{gain(row['final_margin'], crown)} / {gain(row['joint_margin'], crown)} | {row['crown_ms']:.2f} | "
                  f"{row['final_ms']:.2f} ({row['final_ms'] / row['crown_ms']:.1f}x) | {row['joint_ms']:.2f} "
                  f"({row['joint_ms'] / row['crown_ms']:.1f}x) | |")
            print(json.dumps({"model": name, "radius": radius, **row}))
    if args.skip_certify:
        print(memory_line(device))
        return
    print(f"\n| model | kind | CROWN width | alpha-CROWN width | width ratio | certified CROWN / alpha | CROWN s/ex | "
          f"alpha-CROWN s/ex | ({args.certify_examples} examples; widths over the examples both certify) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, model, x, y, _ in zoo:
        count = args.certify_examples
        for kind in ("uniform", "asymmetric"):
            row = certify_row(model, x[:count], y[:count], kind)
            print(f"| {name} | {kind} | {row['crown_width']:.5f} | {row['alpha-crown_width']:.5f} | "
                  f"{row['alpha-crown_width'] / row['crown_width']:.3f} | {row['crown_certified']:.2f} / "
                  f"{row['alpha-crown_certified']:.2f} | {row['crown_s']:.3f} | {row['alpha-crown_s']:.3f} | |")
            print(json.dumps({"model": name, "kind": kind, **row}))
    print(memory_line(device))


if __name__ == "__main__":
    main()
