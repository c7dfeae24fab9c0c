"""Benchmark: our CROWN against auto_LiRPA's on the certified-training ``cnn_7layer``, side by side in one process.

The model and the box are ``bench_scaling.py``'s (``cnn_7layer`` with seeded random weights and BatchNorm statistics,
one seeded 3x32x32 input in [0, 1], eps 2/255, clipped to [0, 1], labelled by the model). Both compute the lower
bounds of the nine margins ``f_y - f_j`` by full CROWN (auto_LiRPA: ``compute_bounds(method="CROWN")``, its default
patches mode for convolutions; ours: ``margin_lower_bounds(..., "crown")``), one after the other, and the script
prints the seconds, the process's peak RSS after each and the mean margin bound of each, then the time ratio.

auto_LiRPA is not a dependency of this project: run the script with a Python that has it and this project's
requirements (the README, Results, "Against auto_LiRPA", says how the 0.3 of the package index runs on torch 2.14):

    /path/to/lirpa_venv/bin/python benchmarks/bench_auto_lirpa.py --threads 1

Without auto_LiRPA the script stops with a usage error (exit code 2).
"""

import argparse
import json
import time

import torch
from bench_scaling import boxes, random_model  # also puts the repository root on sys.path
from common import add_device_argument, peak_memory_mib, synchronize, timed

from bounds.crown import _margin_spec
from bounds.margins import margin_lower_bounds


def ours(model: torch.nn.Module, lower: torch.Tensor, upper: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Our CROWN margin lower bounds ``(B, K - 1)`` (the label's own column dropped)."""
    with torch.no_grad():
        margins = margin_lower_bounds(model, lower, upper, y, "crown")
    return margins[torch.isfinite(margins)].view(margins.shape[0], -1)


def auto_lirpa(model: torch.nn.Module, lower: torch.Tensor, upper: torch.Tensor, y: torch.Tensor,
               classes: int) -> tuple[torch.Tensor, float]:
    """auto_LiRPA's CROWN margin lower bounds ``(B, K - 1)`` and the seconds of ``compute_bounds`` alone."""
    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm

    bounded = BoundedModule(model, torch.zeros_like(lower[:1]), verbose=False, device=lower.device)
    spec, _ = _margin_spec(y, classes, lower.dtype)
    box = BoundedTensor((lower + upper) / 2, PerturbationLpNorm(norm=float("inf"), x_L=lower, x_U=upper))
    synchronize(lower.device)
    start = time.perf_counter()
    with torch.no_grad():
        bound, _ = bounded.compute_bounds(x=(box,), C=spec.to(lower.device), method="CROWN", bound_upper=False)
    synchronize(lower.device)
    return bound, time.perf_counter() - start


def main() -> None:
    """Run both bounds and print one JSON line each and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--order", nargs="+", default=["ours", "auto_lirpa"], choices=["ours", "auto_lirpa"])
    add_device_argument(parser)
    args = parser.parse_args()
    try:
        import auto_LiRPA  # noqa: F401
    except ImportError:
        parser.error("auto_LiRPA is not installed in this Python (it is not a dependency of the project; see the "
                     "docstring for how to run this benchmark)")
    torch.set_num_threads(args.threads)
    model = random_model("cnn_7layer").to(args.device)
    lower, upper, y = boxes(model, "cnn_7layer", 1, args.device)
    results = {}
    for who in args.order:
        if who == "ours":
            seconds, bound = timed(ours, model, lower, upper, y, device=args.device)
        else:
            bound, seconds = auto_lirpa(model, lower, upper, y, classes=10)
        results[who] = bound
        print(json.dumps({"bound": who, "seconds": round(seconds, 2), "mean_margin_bound": bound.mean().item(),
                          "peak_memory_mib_so_far": round(peak_memory_mib(args.device))}), flush=True)
        results[f"{who}_seconds"] = seconds
    if len(set(args.order)) == 2:
        ratio = results["ours_seconds"] / results["auto_lirpa_seconds"]
        difference = (results["ours"] - results["auto_lirpa"]).abs().max().item()
        print(f"ours / auto_LiRPA time: {ratio:.3f}; largest margin difference: {difference:.2e}; "
              f"threads={args.threads}, device={args.device}")


if __name__ == "__main__":
    main()
