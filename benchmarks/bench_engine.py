"""Benchmark: the bound engine's cost per example on LeNet and FC100 (IBP, CROWN, asymmetric certification).

Prints, per model, milliseconds per example of one ``interval_bounds`` call, one ``crown_margin_bounds`` call (boxes
of radius ``--radius`` around correctly classified test digits), of ``certify(kind="asymmetric")`` with interval
bounds, and of the bound part of one bound-guided training step (``robust_cross_entropy`` on those boxes and its
parameter gradients, what ``BoundGuidedClassifier`` adds to a clean step). The models are the normal LeNet and
FC100 trained by ``train.py`` (``bench_certify.trained_model``, reused from ``--log-dir``), so two checkouts
measured one after the other with the same ``--log-dir`` time the same weights. Each timing is the best of
``--repeats`` runs. Uses only the public API, so it runs on any commit since the CROWN engine landed:

    python benchmarks/bench_engine.py --threads 1 --log-dir /tmp/bench_engine_logs
"""

import argparse
import json
from pathlib import Path

import torch
from bench_certify import correctly_classified, trained_model
from common import add_device_argument, best_seconds, memory_line

from bounds import certify, crown_margin_bounds, interval_bounds
from bounds.guided_training import robust_cross_entropy


def main() -> None:
    """Run the benchmark and print the table (and a JSON line per model)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=100, help="correctly classified test digits per model")
    parser.add_argument("--radius", type=float, default=0.01, help="box radius of the IBP and CROWN timings")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the models (when not cached)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (the best is kept)")
    parser.add_argument("--threads", type=int, default=1)
    add_device_argument(parser)
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/bench_engine_logs"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    print(f"| model | IBP ms/ex | CROWN ms/ex | asymmetric IBP certify ms/ex | bound-guided step ms/ex "
          f"| (examples {args.examples}, radius {args.radius}, {args.threads} thread(s), {device}) |")
    print("|---|---|---|---|---|---|")
    for architecture in ("lenet", "fc100"):
        model, datamodule = trained_model(architecture, "normal", args.epochs, args.log_dir)
        x, y, _ = correctly_classified(model, datamodule, args.examples)
        ibp, crown, certify_seconds, step = measure(model.to(device), x.to(device), y.to(device), args.radius,
                                                    args.repeats)
        print(f"| {architecture} | {1e3 * ibp:.4f} | {1e3 * crown:.3f} | {1e3 * certify_seconds:.3f} "
              f"| {1e3 * step:.4f} | |")
        print(json.dumps({"model": architecture, "ibp_ms": 1e3 * ibp, "crown_ms": 1e3 * crown,
                          "certify_asymmetric_ms": 1e3 * certify_seconds, "guided_step_ms": 1e3 * step,
                          "examples": x.shape[0]}))
    print(memory_line(device))


def guided_step(model: torch.nn.Module, lower: torch.Tensor, upper: torch.Tensor, y: torch.Tensor) -> None:
    """The bound part of one bound-guided training step: the robust loss on the box and its parameter gradients."""
    model.zero_grad(set_to_none=True)
    loss, _ = robust_cross_entropy(model, lower, upper, y)
    loss.backward()


def measure(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, radius: float, repeats: int
            ) -> tuple[float, float, float, float]:
    """Seconds per example of one IBP bound, one CROWN bound, asymmetric IBP certification and a guided step."""
    count = x.shape[0]
    lower, upper = x - radius, x + radius
    with torch.no_grad():
        interval_bounds(model, lower, upper)  # warm-up (and the first trace)
        ibp = best_seconds(lambda: interval_bounds(model, lower, upper), repeats, x.device) / count
        few = max(1, repeats // 2)
        crown = best_seconds(lambda: crown_margin_bounds(model, lower, upper, y), few, x.device) / count
    certify_seconds = best_seconds(lambda: certify(model, x, y, kind="asymmetric"), max(1, repeats // 2),
                                   x.device) / count
    step = best_seconds(lambda: guided_step(model, lower, upper, y), repeats, x.device) / count
    model.zero_grad(set_to_none=True)
    return ibp, crown, certify_seconds, step

if __name__ == "__main__":
    main()
