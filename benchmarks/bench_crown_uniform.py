"""Benchmark: the uniform CROWN radius searched three ways; the asymmetric CROWN box against a longer search.

Per model (the normal LeNet and FC100 trained by ``train.py`` through ``bench_certify.trained_model``, cached in
``--log-dir``; and a random-weight CIFAR-shaped 4-layer CNN), on ``--examples`` correctly classified inputs and
a margin of ``--target``, side by side in one run:

- ``bisection``: 20 halvings of ``[0, 2]``, one CROWN evaluation each (the reference);
- ``previous``: the search before this change (each round jumps to the geometric mean of the relaxation's own
  radius and the relaxation radius, keeping no bracket), kept here only for the comparison, at its 6 rounds;
- ``search``: :func:`bounds.crown_radius.crown_uniform_radius` as ``certify`` calls it (10 rounds at most).

Each prints the mean radius, its mean and smallest ratio to the bisection, and the seconds per example. Then
``certify(kind="asymmetric", method="crown")`` at the default ``crown_rounds=4`` against ``crown_rounds=16``:
the ratio of the geometric-mean widths (a longer search on the same bound) and the seconds per example.
``--device cuda`` runs every model and search on the GPU (timings synchronised); the last line is the run's peak
memory.

    python benchmarks/bench_crown_uniform.py --threads 1
"""

import argparse
from pathlib import Path

import torch
from bench_certify import correctly_classified, trained_model
from common import add_device_argument, memory_line, timed
from torch import Tensor, nn

from bounds import certify
from bounds.analysis import geometric_mean_width
from bounds.crown_radius import _uniform_on_relaxation, crown_uniform_radius
from bounds.linear_certify import radius_caps, relaxation_parts
from bounds.uniform import clipped_box, min_margin


def bisection(model: nn.Module, x: Tensor, y: Tensor, target: float, input_range: tuple[float, float] | None,
              cap: float = 2.0, steps: int = 20) -> Tensor:
    """The largest radius CROWN certifies, to ``cap / 2**steps``."""
    low = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    high = torch.full((x.shape[0],), cap, dtype=x.dtype, device=x.device)
    view = (x.shape[0], *([1] * (x.dim() - 1)))
    for _ in range(steps):
        middle = (low + high) / 2
        lower, upper = clipped_box(x, middle.view(view), middle.view(view), input_range)
        certified = min_margin(model, lower, upper, y, "crown") >= target
        low, high = torch.where(certified, middle, low), torch.where(certified, high, middle)
    return low


def previous_search(model: nn.Module, x: Tensor, y: Tensor, target: float, input_range: tuple[float, float] | None,
                    rounds: int = 6, cap: float = 2.0) -> Tensor:
    """The uniform CROWN search before the bracketing one (for the comparison only)."""
    batch = x.shape[0]
    view = (batch, *([1] * (x.dim() - 1)))
    zero = torch.zeros(view, dtype=x.dtype, device=x.device)
    p, q, d, _, _ = relaxation_parts(model, x, y, zero, zero, input_range, "crown", target)
    inf = torch.full_like(x, cap)
    c1, c2 = radius_caps(x, inf, inf, input_range)
    radius_cap = torch.full((batch,), cap, dtype=x.dtype, device=x.device)
    relax_radius = _uniform_on_relaxation(p, q, d, c1, c2, radius_cap).clamp(min=1e-6)
    best = torch.zeros(batch, dtype=x.dtype, device=x.device)
    for _ in range(rounds):
        r_view = relax_radius.view(view)
        p, q, d, c1, c2 = relaxation_parts(model, x, y, r_view, r_view, input_range, "crown", target)
        r = _uniform_on_relaxation(p, q, d, c1, c2, relax_radius)
        best = torch.maximum(best, r)
        reached = r >= relax_radius
        relax_radius = torch.where(reached, (2 * relax_radius).clamp(max=cap),
                                   (r.clamp(min=1e-3 * relax_radius) * relax_radius).sqrt())
    return best


def cifar_cnn() -> nn.Sequential:
    """A random-weight 4-layer CNN for 3x32x32 inputs (conv 16, conv 32 stride 2, FC 100, FC 10)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 8 * 8, 100), nn.ReLU(), nn.Linear(100, 10)).eval()


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=40)
    parser.add_argument("--target", type=float, default=1e-3, help="the margin certified")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the models (when not cached)")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/bench_engine_logs"))
    add_device_argument(parser)
    args = parser.parse_args()
    device = args.device
    torch.set_num_threads(args.threads)
    rows = []
    for name in ("lenet", "fc100", "cnn4_cifar"):
        if name == "cnn4_cifar":
            model, input_range = cifar_cnn(), (0.0, 1.0)
            x = torch.rand(args.examples, 3, 32, 32, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                y = model(x).argmax(1)
        else:
            model, datamodule = trained_model(name, "normal", args.epochs, args.log_dir)
            x, y, _ = correctly_classified(model, datamodule, args.examples)
            input_range = (-1.0, 1.0)
        model, x, y = model.to(device), x.to(device), y.to(device)
        count = x.shape[0]
        with torch.no_grad():
            t_ref, reference = timed(bisection, model, x, y, args.target, input_range, device=device)
            t_prev, previous = timed(previous_search, model, x, y, args.target, input_range, device=device)
            t_new, search = timed(crown_uniform_radius, model, x, y, target=args.target, input_range=input_range,
                                  rounds=10, device=device)
        options = {"kind": "asymmetric", "method": "crown", "delta": args.target, "input_range": input_range}
        t_short, short = timed(certify, model, x, y, **options, device=device)
        t_long, long = timed(certify, model, x, y, crown_rounds=16, **options, device=device)
        both = short.certified & long.certified
        width_ratio = (geometric_mean_width(short.eps_lower[both], short.eps_upper[both])
                       / geometric_mean_width(long.eps_lower[both], long.eps_upper[both]).clamp(min=1e-12))
        rows.append((name, reference, previous, search, t_ref / count, t_prev / count, t_new / count,
                     float(width_ratio.mean()), float(width_ratio.min()), t_short / count, t_long / count))
    print("\n| model | bisection radius | previous radius (mean / min ratio) | search radius (mean / min ratio) "
          "| s/ex bisection | s/ex previous | s/ex search | asym. width rounds 4 / 16 (mean, min) "
          "| s/ex asym. 4 | s/ex asym. 16 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (name, ref, prev, new, t_ref, t_prev, t_new, w_mean, w_min, t_short, t_long) in rows:
        print(f"| {name} | {ref.mean():.4f} | {prev.mean():.4f} ({(prev / ref).mean():.3f} / {(prev / ref).min():.3f}) "
              f"| {new.mean():.4f} ({(new / ref).mean():.4f} / {(new / ref).min():.4f}) | {t_ref:.3f} | {t_prev:.3f} "
              f"| {t_new:.3f} | {w_mean:.3f}, {w_min:.3f} | {t_short:.3f} | {t_long:.3f} |")
    print(f"\n{args.threads} thread(s), device {device}; {memory_line(device)}")


if __name__ == "__main__":
    main()
