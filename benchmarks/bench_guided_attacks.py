"""Bound-guided attacks (Amoeba Algorithm 2, Table 4) on the normal quickstart LeNet, through certify.py's report.

Trains ``normal_lenet.yaml`` with ``train.main`` (or loads ``--ckpt``), runs ``certify.py``'s attacks report (Amoeba
Table 8's MNIST hyperparameters by default; ``--certify.*`` overrides can be appended after ``--``) on
``--examples`` correctly classified test digits, prints the Table 4 layout and checks the paper's claims:

- C&W^a reaches the success rate of C&W with a smaller mean l_1 distance;
- PGD^a (l_2) keeps or lowers PGD's accuracy with a smaller mean l_1 distance.

Training and ``certify.py`` run on ``--device`` (``--trainer.accelerator``/``--trainer.devices``); the last line is
the peak memory of this process (``torch.cuda.max_memory_allocated`` on CUDA, peak RSS on the CPU).

Run: ``python benchmarks/bench_guided_attacks.py [--ckpt PATH] [--examples 100] [-- --certify.attacks.cw_lr=0.01]``.
Timings on a shared, loaded machine are inflated; compare them side by side only.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from common import add_device_argument, memory_line, trainer_flags

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import certify  # noqa: E402
from benchmarks.bench_acts_protocol import QUIET, trained_checkpoint  # noqa: E402


def variant(summary: dict, key: str, name: str) -> dict:
    """The summary entry of one attack variant."""
    attack = next(a for a in summary["attacks"] if a["key"] == key)
    return attack["variants"][name]


def main() -> None:
    """Run the attacks report, print Table 4 and check the claims."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, help="checkpoint of normal_lenet.yaml (trained if missing)")
    parser.add_argument("--train-epochs", type=int, default=None, help="override the config's max_epochs")
    parser.add_argument("--examples", type=int, default=100, help="correctly classified test digits attacked")
    parser.add_argument("--out", type=Path, default=Path("bench_guided_attacks_out"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="extra certify.py arguments, after --")
    add_device_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = args.ckpt or trained_checkpoint("normal_lenet.yaml", args.out / "train_logs", args.train_epochs,
                                           args.device)
    start = time.perf_counter()
    summary = certify.main(["--config", "normal_lenet.yaml", f"--ckpt_path={ckpt}",
                            f"--certify.output_dir={args.out / 'report'}",
                            f"--trainer.logger.init_args.save_dir={args.out / 'certify_logs'}",
                            f"--certify.num_examples={args.examples}",
                            f"--certify.attacks.num_examples={args.examples}",
                            "--certify.kinds=[nonuniform, asymmetric]", "--certify.acts.enabled=false",
                            "--certify.num_figure_examples=0", *trainer_flags(args.device), *QUIET, *args.overrides])
    assert summary is not None
    attacks = summary["attacks"]
    print(f"\ncertify.py (certification + attacks report) in {time.perf_counter() - start:.0f}s\n")
    print((args.out / "report" / "attacks.md").read_text())

    cw_key = next(a["key"] for a in attacks["attacks"] if a["key"].startswith("cw_"))
    pgd_key = next(a["key"] for a in attacks["attacks"] if a["key"].startswith("pgd_l2"))
    checks = []
    cw, cw_a = variant(attacks, cw_key, "plain"), variant(attacks, cw_key, "a")
    checks.append(("C&W^a success rate >= C&W's", 1 - cw_a["accuracy"], 1 - cw["accuracy"],
                   cw_a["accuracy"] <= cw["accuracy"]))
    checks.append(("C&W^a mean l_1 < C&W's", cw_a["distances"]["l_1"]["mean"], cw["distances"]["l_1"]["mean"],
                   cw_a["distances"]["l_1"]["mean"] < cw["distances"]["l_1"]["mean"]))
    pgd, pgd_a = variant(attacks, pgd_key, "plain"), variant(attacks, pgd_key, "a")
    checks.append(("PGD^a (l_2) accuracy <= PGD's", pgd_a["accuracy"], pgd["accuracy"],
                   pgd_a["accuracy"] <= pgd["accuracy"]))
    checks.append(("PGD^a (l_2) mean l_1 < PGD's", pgd_a["distances"]["l_1"]["mean"], pgd["distances"]["l_1"]["mean"],
                   pgd_a["distances"]["l_1"]["mean"] < pgd["distances"]["l_1"]["mean"]))
    print(f"{'claim (Amoeba Table 4)':<34}{'guided':>10}{'plain':>10}  result")
    for claim, guided, plain, holds in checks:
        print(f"{claim:<34}{guided:>10.4f}{plain:>10.4f}  {'holds' if holds else 'DOES NOT HOLD'}")
    print(memory_line(args.device))


if __name__ == "__main__":
    main()
