"""Benchmark: our CROWN and alpha-CROWN against auto_LiRPA's, side by side in one process.

``--part cnn7`` (the default): the certified-training ``cnn_7layer`` with ``bench_scaling.py``'s model and box
(seeded random weights and BatchNorm statistics, one seeded 3x32x32 input in [0, 1], eps 2/255, clipped to [0, 1],
labelled by the model). Both compute the lower bounds of the nine margins ``f_y - f_j`` by full CROWN (auto_LiRPA:
``compute_bounds(method="CROWN")``, its default patches mode for convolutions; ours: ``margin_lower_bounds(...,
"crown")``), one after the other, and the script prints the seconds, the process's peak RSS after each and the mean
margin bound of each, then the time ratio.

``--part alpha``: CROWN and alpha-CROWN on the normal FC100 (trained through ``train.py`` like ``bench_certify.py``'s
models, ``--epochs`` 3, kept under ``--log-dir``; the first ``--examples`` correctly classified test digits, radii
0.03 and 0.08) and on ``bench_alpha_crown.py``'s random-weight CIFAR ``cnn_4layer`` (seeded inputs, radii 0.005 and
0.02). auto_LiRPA: ``CROWN`` and ``CROWN-Optimized`` (its default 20 iterations, ``sparse_features_alpha`` off:
0.3 fails with a shape error otherwise); ours: ``crown_margin_bounds``, ``alpha_crown_margin_bounds`` (default
options) and the same with ``optimise_intermediate=False``. One JSON line per model and radius: the mean margin
bounds, the largest CROWN difference, the share of auto_LiRPA's alpha-CROWN gain over CROWN that ours reaches, and
milliseconds per example of each. (auto_LiRPA 0.3's alpha-CROWN crashes on LeNet's max-pools, so LeNet is not in it.)

auto_LiRPA is not a dependency of this project: run the script with a Python that has it and this project's
requirements (the README, Results, "Against auto_LiRPA", says how the 0.3 of the package index runs on torch 2.14):

    /path/to/lirpa_venv/bin/python benchmarks/bench_auto_lirpa.py --threads 1
    /path/to/lirpa_venv/bin/python benchmarks/bench_auto_lirpa.py --part alpha --threads 1 --examples 10

Without auto_LiRPA the script stops with a usage error (exit code 2).
"""

import argparse
import json
import time
from pathlib import Path

import torch
from bench_scaling import boxes, random_model  # also puts the repository root on sys.path
from common import add_device_argument, peak_memory_mib, synchronize, timed

from bounds.alpha_crown import alpha_crown_margin_bounds
from bounds.crown import _margin_spec, crown_margin_bounds
from bounds.margins import margin_lower_bounds


def ours(model: torch.nn.Module, lower: torch.Tensor, upper: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Our CROWN margin lower bounds ``(B, K - 1)`` (the label's own column dropped)."""
    with torch.no_grad():
        margins = margin_lower_bounds(model, lower, upper, y, "crown")
    return margins[torch.isfinite(margins)].view(margins.shape[0], -1)


def auto_lirpa(model: torch.nn.Module, lower: torch.Tensor, upper: torch.Tensor, y: torch.Tensor,
               classes: int, method: str = "CROWN") -> tuple[torch.Tensor, float]:
    """auto_LiRPA's margin lower bounds ``(B, K - 1)`` by ``method`` and the seconds of ``compute_bounds`` alone.

    ``method="CROWN-Optimized"`` is its alpha-CROWN (gradients on, as it needs them).
    """
    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm

    options = {"sparse_features_alpha": False} if method == "CROWN-Optimized" else {}
    bounded = BoundedModule(model, torch.zeros_like(lower[:1]), verbose=False, device=lower.device,
                            bound_opts=options)
    spec, _ = _margin_spec(y, classes, lower.dtype)
    box = BoundedTensor((lower + upper) / 2, PerturbationLpNorm(norm=float("inf"), x_L=lower, x_U=upper))
    synchronize(lower.device)
    start = time.perf_counter()
    with torch.set_grad_enabled(method == "CROWN-Optimized"):
        bound, _ = bounded.compute_bounds(x=(box,), C=spec.to(lower.device), method=method, bound_upper=False)
    synchronize(lower.device)
    return bound.detach(), time.perf_counter() - start


def alpha_part(args: argparse.Namespace) -> None:
    """``--part alpha``: CROWN and alpha-CROWN margins, ours and auto_LiRPA's, one JSON line per model and radius."""
    # Imported here, after bench_scaling put the repository root on sys.path (they import train.py).
    from bench_alpha_crown import cnn_4layer
    from bench_certify import correctly_classified, trained_model

    model, datamodule = trained_model("fc100", "normal", args.epochs, args.log_dir)
    x, y, _ = correctly_classified(model, datamodule, args.examples)
    cases = [("fc100", model.eval(), x, y, (0.03, 0.08))]
    cnn = cnn_4layer()
    x = torch.rand(args.examples, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cases.append(("cnn_4layer", cnn, x, cnn(x).argmax(1), (0.005, 0.02)))
    for name, net, x, y, radii in cases:
        net, x, y = net.to(args.device), x.to(args.device), y.to(args.device)
        count = len(y)
        for radius in radii:
            lower, upper = x - radius, x + radius
            with torch.no_grad():
                seconds_crown, crown = timed(crown_margin_bounds, net, lower, upper, y, device=args.device)
                seconds_alpha, alpha = timed(alpha_crown_margin_bounds, net, lower, upper, y, device=args.device)
                final_only = alpha_crown_margin_bounds(net, lower, upper, y, optimise_intermediate=False)
            finite = torch.isfinite(crown)
            crown, alpha, final_only = (m[finite].view(count, -1) for m in (crown, alpha, final_only))
            lirpa_crown, seconds_lirpa_crown = auto_lirpa(net, lower, upper, y, 10)
            lirpa_alpha, seconds_lirpa_alpha = auto_lirpa(net, lower, upper, y, 10, "CROWN-Optimized")
            print(json.dumps({
                "model": name, "radius": radius, "examples": count, "crown_ours": crown.mean().item(),
                "crown_auto_lirpa": lirpa_crown.mean().item(),
                "crown_max_difference": (crown - lirpa_crown).abs().max().item(),
                "alpha_auto_lirpa": lirpa_alpha.mean().item(), "alpha_ours": alpha.mean().item(),
                "alpha_ours_final_slopes_only": final_only.mean().item(),
                "share_of_auto_lirpa_gain": ((alpha - crown).mean() / (lirpa_alpha - lirpa_crown).mean()).item(),
                "ms_per_example": {"auto_lirpa_crown": 1e3 * seconds_lirpa_crown / count,
                                   "auto_lirpa_alpha": 1e3 * seconds_lirpa_alpha / count,
                                   "ours_crown": 1e3 * seconds_crown / count,
                                   "ours_alpha": 1e3 * seconds_alpha / count},
            }), flush=True)


def main() -> None:
    """Run both bounds and print one JSON line each and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["cnn7", "alpha"], default="cnn7")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--order", nargs="+", default=["ours", "auto_lirpa"], choices=["ours", "auto_lirpa"],
                        help="--part cnn7: which bound runs first")
    parser.add_argument("--examples", type=int, default=10, help="--part alpha: inputs per model")
    parser.add_argument("--epochs", type=int, default=3, help="--part alpha: FC100's training epochs")
    parser.add_argument("--log-dir", type=Path, default=Path("logs/bench_certify"), help="--part alpha: FC100's logs")
    add_device_argument(parser)
    args = parser.parse_args()
    try:
        import auto_LiRPA  # noqa: F401
    except ImportError:
        parser.error("auto_LiRPA is not installed in this Python (it is not a dependency of the project; see the "
                     "docstring for how to run this benchmark)")
    torch.set_num_threads(args.threads)
    if args.part == "alpha":
        alpha_part(args)
        return
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
