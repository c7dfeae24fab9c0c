"""Cost of ACTS on an ImageNet-sized ResNet50 (ACTS Table 6): seconds per image under one-step and 3-step attacks.

In one run on ``torchvision.models.resnet50`` at 3x224x224 with random weights (no pretrained weights can be had
offline, so only costs are measured; the ImageNet mean/std normalisation is the model's first layer, pixels in
[0, 1]) on ``--examples`` random images, labelled with the model's own predictions:

- per attack of the ACTS protocol (FGSM: one step of eps; BIM and PGD: ``--steps`` steps of eps/2, PGD from a
  random start), the seconds per image of the attack alone and of the ACTS score given its steps (one
  ``torch.func.jvp``, :func:`reporting.acts.running.acts_scores`), their sum (ACTS's time, as the paper
  counts it) and the ratio of that sum to the attack alone;
- CLEVER (:func:`bounds.clever_score`, l_2, runner-up class) at ``--clever-batches`` x ``--clever-batch-size``
  samples on ``--clever-examples`` images, and its time at the paper's 500 x 1024 samples: measured when those
  are the sizes given, else extrapolated linearly in the number of samples (labelled so);
- CLEVER's time over ACTS's (the paper's "speed-up": 2181-6628 on a V100);
- the run's peak memory (``torch.cuda.max_memory_allocated`` on CUDA, the process's peak RSS on the CPU).

The model and the images live on ``--device``; on CUDA every timing is synchronised.

Run: ``python benchmarks/bench_acts_imagenet.py --threads 2`` (CPU, small defaults: a few minutes), or
``--device cuda --clever-batches 500 --clever-batch-size 1024`` on a GPU for the paper's sizes.
"""

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from common import add_device_argument, memory_line, timed
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bounds.attacks import (  # noqa: E402
    AttackResult,
    bim,
    fgsm,
    per_example_pgd,  # noqa: E402
)
from bounds.clever import clever_score  # noqa: E402
from bounds.normalization import InputNormalization  # noqa: E402
from reporting.acts.running import acts_scores  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PAPER_SAMPLES = 500 * 1024


def attack_fn(name: str, model: nn.Module, eps: float, steps: int) -> Callable[[Tensor, Tensor, Tensor], AttackResult]:
    """The attack ``name`` of the ACTS protocol as ``(x, y, index) -> AttackResult``."""
    if name == "fgsm":
        return lambda x, y, index: fgsm(model, x, y, eps, input_range=(0.0, 1.0))
    if name == "bim":
        return lambda x, y, index: bim(model, x, y, eps=eps, step_size=eps / 2, steps=steps, input_range=(0.0, 1.0))
    return lambda x, y, index: per_example_pgd(model, x, y, index, eps=eps, step_size=eps / 2, steps=steps, seed=0,
                                               input_range=(0.0, 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--examples", type=int, default=2, help="images for the ACTS timings")
    parser.add_argument("--batch-size", type=int, default=2, help="images per attack/ACTS batch")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--eps", type=float, default=0.2 / 255, help="l_inf budget (the paper's N2: 0.2/255)")
    parser.add_argument("--steps", type=int, default=3, help="BIM and PGD steps (the paper: 3)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per attack; medians are printed")
    parser.add_argument("--clever-examples", type=int, default=1, help="images for CLEVER (0: skip CLEVER)")
    parser.add_argument("--clever-batches", type=int, default=2, help="CLEVER N_b (the paper: 500)")
    parser.add_argument("--clever-batch-size", type=int, default=16, help="CLEVER N_s (the paper: 1024)")
    parser.add_argument("--clever-points-per-pass", type=int, default=16, help="CLEVER samples per pass (memory)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    torch.manual_seed(0)
    network = torchvision.models.resnet50(weights=None, num_classes=1000)
    model = nn.Sequential(InputNormalization(IMAGENET_MEAN, IMAGENET_STD), network).eval().to(device)
    x_all = torch.rand(args.examples, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(1))
    x_all = x_all.to(device)
    with torch.no_grad():
        y_all = torch.cat([model(chunk).argmax(dim=1) for chunk in x_all.split(args.batch_size)])
    index_all = torch.arange(args.examples, device=device)
    print(f"resnet50 (random weights), 3x{args.image_size}x{args.image_size}, device {device}, "
          f"{torch.get_num_threads()} threads, {args.examples} images in batches of {args.batch_size}, "
          f"eps {args.eps:.6f} ({args.eps * 255:.3g}/255), BIM/PGD {args.steps} steps of eps/2, top-k {args.top_k}, "
          f"medians of {args.repeats} timed runs")
    batches = list(zip(x_all.split(args.batch_size), y_all.split(args.batch_size), index_all.split(args.batch_size),
                       strict=True))
    rows = []
    for name in ("fgsm", "bim", "pgd"):
        run = attack_fn(name, model, args.eps, args.steps)
        x, y, index = batches[0]
        acts_scores(model, x, run(x, y, index), [args.top_k])  # warm-up at the batch size (allocator), not timed
        attack_runs, score_runs = [], []
        for _ in range(args.repeats):
            attack_seconds = score_seconds = 0.0
            fooled = 0
            for x, y, index in batches:
                seconds, result = timed(run, x, y, index, device=device)
                attack_seconds += seconds
                seconds, _ = timed(acts_scores, model, x, result, [args.top_k], device=device)
                score_seconds += seconds
                fooled += int(result.success.sum())
            attack_runs.append(attack_seconds / args.examples)
            score_runs.append(score_seconds / args.examples)
        rows.append((name, statistics.median(attack_runs), statistics.median(score_runs), fooled))

    print("\n| attack | steps | attack s/image | ACTS score s/image | ACTS total s/image | total / attack | fooled |")
    print("|---|---|---|---|---|---|---|")
    for name, attack, score, fooled in rows:
        steps = 1 if name == "fgsm" else args.steps
        print(f"| {name.upper()} | {steps} | {attack:.3f} | {score:.3f} | {attack + score:.3f} | "
              f"{(attack + score) / attack:.2f}x | {fooled}/{args.examples} |")

    if args.clever_examples > 0:
        x, y = x_all[: args.clever_examples], y_all[: args.clever_examples]
        samples = args.clever_batches * args.clever_batch_size
        generator = torch.Generator(device=device).manual_seed(0)
        seconds, _ = timed(clever_score, model, x, y, norm="l2", radius=2.0, num_batches=args.clever_batches,
                           batch_size=args.clever_batch_size, top_k=1, input_range=(0.0, 1.0), generator=generator,
                           max_points_per_pass=args.clever_points_per_pass, device=device)
        per_image = seconds / x.shape[0]
        paper = per_image * PAPER_SAMPLES / samples
        label = "measured" if samples == PAPER_SAMPLES else "EXTRAPOLATED linearly in the number of samples"
        print(f"\nCLEVER l_2 (runner-up class), {args.clever_batches} x {args.clever_batch_size} = {samples} samples "
              f"on {x.shape[0]} image(s): {per_image:.2f} s/image measured")
        print(f"CLEVER at the paper's 500 x 1024 = {PAPER_SAMPLES} samples: {paper:.1f} s/image ({label})")
        one_step = rows[0][1] + rows[0][2]
        multi_step = sum(attack + score for _, attack, score, _ in rows[1:]) / 2
        print(f"CLEVER (500 x 1024) / ACTS: one-step (FGSM) {paper / one_step:.0f}x, {args.steps}-step (BIM/PGD mean) "
              f"{paper / multi_step:.0f}x")
    print("ACTS Table 6 (V100, pretrained): CLEVER 196.25-331.42 s/image; ACTS 0.04-0.05 s (one-step) and "
          "0.09-0.13 s (multi-step); speed-up 4906-6628 and 2181-2549 (ResNet50: 196.25 s, 0.04/0.09 s)")
    print(memory_line(device))


if __name__ == "__main__":
    main()
