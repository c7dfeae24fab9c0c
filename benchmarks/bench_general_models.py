"""Benchmark: interval bounds of torchvision classifiers (random weights) through the traced-graph engine.

For ``resnet18`` and ``vgg11_bn`` (``num_classes=10``) at 3x32x32 and 3x224x224, one ``interval_bounds`` call on a
batch of boxes of radius ``1/255`` is timed (best of ``--repeats``, after a warm-up that includes the trace), and the
peak resident memory of a fresh process doing only that is reported (each configuration runs in its own spawned
process, so the peaks do not mix), and one CROWN evaluation of resnet18 at 3x32x32 (a branching graph:
:mod:`bounds.crown_graph`, interval intermediate bounds). ``--crown`` adds one CROWN evaluation of vgg11_bn at
3x32x32 (a chain: full CROWN with dense intermediate bounds of its 4096-wide layers, very slow on a CPU).
``--device cuda`` runs the configurations one after the other on the GPU (timings synchronised), with the peak of
``torch.cuda.max_memory_allocated`` per configuration instead of the peak RSS.

    python benchmarks/bench_general_models.py --threads 1
"""

import argparse
import multiprocessing

import torch
import torchvision
from common import add_device_argument, best_seconds, memory_baseline_mib, peak_memory_mib, reset_peak_memory, timed

from bounds import crown_margin_bounds, interval_bounds


def measure(architecture: str, size: int, batch: int, repeats: int, threads: int, method: str,
            device: torch.device | str = "cpu") -> dict[str, float]:
    """Seconds per example and peak memory (MiB) of one bound evaluation.

    On the CPU this runs in a fresh process and the peak is the process's peak RSS (everything included, as before);
    on CUDA it is ``torch.cuda.max_memory_allocated`` over the bound evaluations (the model and inputs included).
    """
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    reset_peak_memory(device)
    model = getattr(torchvision.models, architecture)(num_classes=10).eval().to(device)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    lower, upper = (x - 1 / 255).clamp(0, 1), (x + 1 / 255).clamp(0, 1)
    with torch.no_grad():
        y = model(x).argmax(1)

        def run() -> object:
            if method == "crown":
                return crown_margin_bounds(model, lower, upper, y)
            return interval_bounds(model, lower, upper)

        if repeats > 1:  # with one repeat the single timed run includes the trace (negligible for slow runs)
            run()
            seconds = best_seconds(run, repeats, device)
        else:
            seconds = timed(run, device=device)[0]
    return {"seconds_per_example": seconds / batch, "peak_mib": peak_memory_mib(device)}


def main() -> None:
    """Run every configuration in its own process (CPU) or one after the other (CUDA) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--crown", action="store_true", help="also one CROWN evaluation of vgg11_bn at 3x32x32 (slow)")
    parser.add_argument("--only", default=None, help="run one configuration, e.g. vgg11_bn:32:crown")
    add_device_argument(parser)
    args = parser.parse_args()
    configs = [(arch, size, batch, "ibp") for arch in ("resnet18", "vgg11_bn") for size, batch in ((32, 8), (224, 1))]
    configs.append(("resnet18", 32, 2, "crown"))
    if args.crown:
        configs.append(("vgg11_bn", 32, 1, "crown"))
    if args.only is not None:
        architecture, size, method = args.only.split(":")
        configs = [(architecture, int(size), 1 if method == "crown" else 8, method)]
    memory = "CUDA max_memory_allocated MiB" if args.device.type == "cuda" else "peak RSS MiB"
    print(f"| model | input | method | batch | ms per example | {memory} | ({args.threads} thread(s), {args.device}) |")
    print("|---|---|---|---|---|---|---|")

    def report(architecture: str, size: int, batch: int, method: str, result: dict[str, float]) -> None:
        print(f"| {architecture} | 3x{size}x{size} | {method} | {batch} | "
              f"{1e3 * result['seconds_per_example']:.1f} | {result['peak_mib']:.0f} | |", flush=True)

    if args.device.type == "cuda":  # the allocator's peak is reset per configuration: no process per configuration
        for architecture, size, batch, method in configs:
            baseline = memory_baseline_mib(args.device)
            result = measure(architecture, size, batch, args.repeats, args.threads, method, args.device)
            report(architecture, size, batch, method, {**result, "peak_mib": result["peak_mib"] - baseline})
            torch.cuda.empty_cache()
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, maxtasksperchild=1) as pool:
        for architecture, size, batch, method in configs:
            result = pool.apply(measure, (architecture, size, batch, args.repeats, args.threads, method))
            report(architecture, size, batch, method, result)


if __name__ == "__main__":
    main()
