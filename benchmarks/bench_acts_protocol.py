"""ACTS protocol (ACTS paper Section 4) on the quickstart LeNets: ACTS vs CLEVER Overlap% and AUROC per noise level.

For the PGD-trained (``robust_lenet.yaml``) and the normal (``normal_lenet.yaml``) LeNet, trained here through
``train.main`` (or loaded with ``--robust-ckpt`` / ``--normal-ckpt``):

1. calibration: the share of correctly classified test digits that PGD l_inf (3 steps, step eps/2, the paper's
   protocol) fools on a grid of eps, and three levels N1-N3 interpolated to fool about ``--targets`` (10%, 30%,
   50% by default) of them; the default levels of ``certify.acts.eps`` are measured too;
2. the ACTS protocol report of ``certify.py`` (``--certify.acts.eps`` = those levels, attacks report off, one
   cheap certification kind) on ``--examples`` digits: attacked counts, ACTS Overlap% (< 10% wanted at every
   level) and AUROC, CLEVER's (l_2 and l_inf) beside them, seconds per image.

Training, calibration and ``certify.py`` run on ``--device`` (``--trainer.accelerator``/``--trainer.devices`` for
the scripts); the last line is the peak memory of this process (``torch.cuda.max_memory_allocated`` on CUDA).

Run: ``python benchmarks/bench_acts_protocol.py`` (training both models takes tens of minutes on a busy CPU;
pass checkpoints to skip it). Timings on a shared, loaded machine are inflated; compare them side by side only.
"""

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from common import add_device_argument, memory_line, trainer_flags
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import certify  # noqa: E402
import train  # noqa: E402
from bounds.attacks import per_example_pgd  # noqa: E402
from cli import make_cli  # noqa: E402
from reporting.acts.options import DEFAULT_ACTS_EPS  # noqa: E402
from reporting.selection import select_correct  # noqa: E402

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
GRID = (0.02, 0.04, 0.06, 0.08, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.35, 0.4)


def trained_checkpoint(config: str, log_dir: Path, epochs: int | None, device: torch.device | str = "cpu") -> Path:
    """Train ``config`` with ``train.main`` (its own epochs unless ``epochs``) on ``device``; the last checkpoint."""
    extra = [*trainer_flags(device), *([] if epochs is None else [f"--trainer.max_epochs={epochs}"])]
    start = time.perf_counter()
    cli = train.main(["--config", config, f"--trainer.logger.init_args.save_dir={log_dir}", *extra, *QUIET])
    callback = cli.trainer.checkpoint_callback
    path = Path(callback.last_model_path or callback.best_model_path)
    print(f"trained {config} in {time.perf_counter() - start:.0f}s -> {path}")
    return path


def load_examples(config: str, ckpt: Path, count: int, device: torch.device | str = "cpu"
                  ) -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    """The classifier of ``ckpt`` on ``device`` and its first ``count`` correctly classified test digits there."""
    cli = make_cli(["--config", config, "--trainer.logger=false", *QUIET])
    cli.model.load_state_dict(torch.load(ckpt, map_location=device, weights_only=False)["state_dict"])
    network = certify.classifier_of(cli.model).eval().to(device)
    cli.datamodule.setup("test")
    dataset = cli.datamodule.test_set
    indices = select_correct(network, dataset, count)[0]
    x = torch.stack([torch.as_tensor(dataset[i][0]) for i in indices]).to(device)
    y = torch.tensor([int(dataset[i][1]) for i in indices], device=device)
    return network, x, y, torch.tensor(indices, device=device)


def attacked_fraction(network: nn.Module, x: Tensor, y: Tensor, index: Tensor, eps: float, seed: int = 0) -> float:
    """Share of examples that the report's PGD (3 steps, step eps/2, per-example seeded start) fools."""
    fooled = [per_example_pgd(network, xb, yb, ib, eps=eps, step_size=eps / 2, steps=3, seed=seed,
                              input_range=(-1.0, 1.0)).success
              for xb, yb, ib in zip(x.split(250), y.split(250), index.split(250), strict=True)]
    return float(torch.cat(fooled).double().mean())


def calibrate(rates: dict[float, float], targets: Sequence[float]) -> list[float]:
    """Levels at which the attacked share reaches each target, linearly interpolated on the measured grid."""
    grid = sorted(rates)
    levels = []
    for target in targets:
        level = grid[-1]
        for low, high in zip(grid, grid[1:], strict=False):
            if rates[low] <= target <= rates[high]:
                share = (target - rates[low]) / max(rates[high] - rates[low], 1e-9)
                level = low + share * (high - low)
                break
        levels.append(round(level, 4))
    for i in range(1, len(levels)):  # strictly increasing levels
        levels[i] = max(levels[i], round(levels[i - 1] + 1e-3, 4))
    return levels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robust-ckpt", type=Path, help="checkpoint of robust_lenet.yaml (trained if missing)")
    parser.add_argument("--normal-ckpt", type=Path, help="checkpoint of normal_lenet.yaml (trained if missing)")
    parser.add_argument("--train-epochs", type=int, default=None, help="override the configs' max_epochs")
    parser.add_argument("--examples", type=int, default=300, help="correctly classified test digits")
    parser.add_argument("--targets", type=float, nargs=3, default=(0.1, 0.3, 0.5), help="attacked shares N1-N3")
    parser.add_argument("--clever-batches", type=int, default=20)
    parser.add_argument("--clever-batch-size", type=int, default=64)
    parser.add_argument("--clever-paper-sizes", action="store_true", help="CLEVER with 500 x 1024 samples")
    parser.add_argument("--out", type=Path, default=Path("bench_acts_protocol_out"))
    parser.add_argument("--threads", type=int, default=1)
    add_device_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    models = {"robust_lenet.yaml": args.robust_ckpt, "normal_lenet.yaml": args.normal_ckpt}
    results = {}
    for config, ckpt in models.items():
        name = config.removesuffix(".yaml")
        if ckpt is None:
            ckpt = trained_checkpoint(config, args.out / "train_logs", args.train_epochs, args.device)
        network, x, y, index = load_examples(config, ckpt, args.examples, args.device)
        rates = {eps: attacked_fraction(network, x, y, index, eps) for eps in sorted({*GRID, *DEFAULT_ACTS_EPS})}
        levels = calibrate(rates, args.targets)
        print(f"\n=== {name}: {x.shape[0]} correctly classified test digits ===")
        print("PGD l_inf (3 steps, step eps/2) attacked share: "
              + ", ".join(f"eps {eps:g}: {100 * rate:.1f}%" for eps, rate in rates.items()))
        print(f"default certify.acts.eps {list(DEFAULT_ACTS_EPS)}: "
              + ", ".join(f"{100 * rates[eps]:.1f}%" for eps in DEFAULT_ACTS_EPS))
        print(f"calibrated N1-N3 for {[f'{t:.0%}' for t in args.targets]}: {levels}")
        clever = (["--certify.acts.clever.paper_sizes=true"] if args.clever_paper_sizes else
                  [f"--certify.acts.clever.num_batches={args.clever_batches}",
                   f"--certify.acts.clever.batch_size={args.clever_batch_size}"])
        out = args.out / name
        start = time.perf_counter()
        summary = certify.main(["--config", config, f"--ckpt_path={ckpt}", f"--certify.output_dir={out}",
                                f"--trainer.logger.init_args.save_dir={args.out / 'certify_logs'}",
                                f"--certify.num_examples={args.examples}", "--certify.kinds=[uniform]",
                                "--certify.attacks.enabled=false", f"--certify.acts.num_examples={args.examples}",
                                "--certify.acts.attacks=[pgd]",
                                f"--certify.acts.eps=[{', '.join(str(v) for v in levels)}]",
                                "--certify.num_figure_examples=0", *clever, *trainer_flags(args.device), *QUIET])
        assert summary is not None
        print(f"certify.py ACTS report in {time.perf_counter() - start:.0f}s")
        results[name] = {"rates": rates, "levels": levels, "acts": summary["acts"],
                         "pgd": summary["acts"]["attacks"]["pgd"]}

    print("\n=== summary: Overlap% (AUROC) per level; ACTS wanted < 10% ===")
    print(f"{'model':<14}{'level':<7}{'eps':>8}{'attacked':>10}{'ACTS':>18}{'L2 CLEVER':>18}{'Linf CLEVER':>18}")
    for name, result in results.items():
        for level in result["pgd"]["levels"]:
            cells = "".join(f"{level[m]['overlap_percent']:>9.2f}% ({level[m]['auroc'] or float('nan'):.3f})"
                            for m in ("acts", "clever_l2", "clever_linf"))
            share = level["attacked"] / result["acts"]["examples"]
            print(f"{name:<14}{level['name']:<7}{level['eps']:>8.4f}{100 * share:>9.1f}%{cells}")
        seconds = result["acts"]["seconds_per_image"]
        acts_seconds = result["pgd"]["seconds_per_image"]["acts_mean"]
        print(f"{name:<14}s/image: ACTS (incl. its 3-step PGD) {acts_seconds:.5f}, "
              f"CLEVER l2 {seconds['clever_l2']:.4f}, "
              f"linf {seconds['clever_linf']:.4f} (ratio CLEVER l2/ACTS {seconds['clever_l2'] / acts_seconds:.0f}x); "
              f"attack flips {result['pgd']['attack_flips']}")
    (args.out / "bench_acts_protocol.json").write_text(json.dumps(results, indent=2, default=str))
    print(memory_line(args.device))


if __name__ == "__main__":
    main()
