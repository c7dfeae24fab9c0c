"""Certification benchmark: bound quality and speed of the three kinds, side by side, on MNIST zoo models.

Trains (or reuses) each MNIST zoo model normally (``normal_lenet.yaml``) and with PGD (``robust_lenet.yaml``), with
``--model.init_args.architecture`` switched and the same epoch budget, on the embedded MNIST digits, through
``train.main`` exactly as users train. Then it certifies the first ``--examples`` correctly classified test digits
with every kind (``bounds.certify`` defaults with ``--method``'s bound, batched) and prints, per model, the mean
geometric-mean width over certified examples, the certified fraction and milliseconds per example of each kind, and
the ratios asymmetric/uniform and asymmetric/non-uniform. Every number comes from one run on one machine.

    python benchmarks/bench_certify.py                          # all of FC100/300/500 and LeNet, normal and PGD
    python benchmarks/bench_certify.py --models lenet fc100 --examples 400 --threads 2
    python benchmarks/bench_certify.py --certify-option iterations=100 --certify-option lr=0.1   # tuning
    python benchmarks/bench_certify.py --certify-option dual_every=5    # the classical dual updates (40 steps)
    python benchmarks/bench_certify.py --models lenet fc100 --method crown --examples 100 --batch-size 50

Trained checkpoints are kept under ``--log-dir`` and reused by later runs (delete the folder to retrain).
"""

import argparse
import json
from pathlib import Path

import torch
from common import add_device_argument, memory_line, timed, trainer_flags

import train
from bounds.analysis import mean_certified_width
from bounds.certificate import Certificate
from bounds.certify import certify

CONFIGS = {"normal": "normal_lenet.yaml", "pgd": "robust_lenet.yaml"}
KINDS = ("uniform", "nonuniform", "asymmetric")


def trained_model(architecture: str, training: str, epochs: int, log_dir: Path,
                  device: torch.device | str = "cpu") -> tuple[torch.nn.Module, object]:
    """Train (or reload) one zoo model with the framework's own config on ``device``; the network and datamodule."""
    name = f"{architecture}_{training}"
    args = ["--config", CONFIGS[training], f"--model.init_args.architecture={architecture}",
            f"--trainer.max_epochs={epochs}", "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", f"--trainer.logger.init_args.save_dir={log_dir}",
            f"--trainer.logger.init_args.name={name}", "--trainer.logger.init_args.version=bench",
            *trainer_flags(device)]
    checkpoint = log_dir / name / "bench" / "checkpoints" / "last.ckpt"
    if checkpoint.is_file():
        cli = train.main([*args, "--trainer.max_epochs=0"])
        cli.model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"])
    else:
        cli = train.main(args)
    return cli.model.model.eval().to(device), cli.datamodule


def correctly_classified(model: torch.nn.Module, datamodule: object, count: int) -> tuple[torch.Tensor, ...]:
    """The first ``count`` correctly classified test digits and the clean test accuracy."""
    datamodule.setup("test")
    x = torch.stack([datamodule.test_set[i][0] for i in range(len(datamodule.test_set))])
    y = torch.tensor([int(datamodule.test_set[i][1]) for i in range(len(datamodule.test_set))])
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    keep = correct.nonzero().flatten()[:count]
    return x[keep], y[keep], correct.float().mean()


def certify_in_batches(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str, batch_size: int,
                       method: str, options: dict[str, float | int | bool]) -> list[Certificate]:
    """``certify`` of ``x`` in batches of ``batch_size``."""
    return [certify(model, x[i : i + batch_size], y[i : i + batch_size], kind=kind, method=method, **options)
            for i in range(0, len(y), batch_size)]


def parse_options(pairs: list[str]) -> dict[str, float | int | bool]:
    """``key=value`` strings -> certify keyword arguments (ints, floats and booleans)."""
    options: dict[str, float | int | bool] = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        options[key] = value == "true" if value in ("true", "false") else (float(value) if "." in value else int(value))
    return options


def main() -> None:
    """Run the benchmark and print the table (and a JSON line per model)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["fc100", "fc300", "fc500", "lenet"])
    parser.add_argument("--training", nargs="+", default=["normal", "pgd"], choices=sorted(CONFIGS))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-dir", type=Path, default=Path("logs/bench_certify"))
    parser.add_argument("--certify-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--method", default="ibp", choices=["ibp", "crown", "alpha-crown"], help="bound method")
    add_device_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = parse_options(args.certify_option)

    rows = []
    for architecture in args.models:
        for training in args.training:
            model, datamodule = trained_model(architecture, training, args.epochs, args.log_dir, args.device)
            x, y, accuracy = correctly_classified(model, datamodule, args.examples)
            row = {"model": architecture, "training": training, "clean_acc": float(accuracy), "examples": len(y)}
            for kind in KINDS:
                seconds, certificates = timed(certify_in_batches, model, x, y, kind, args.batch_size, args.method,
                                              options, device=args.device)
                eps_lower = torch.cat([c.eps_lower for c in certificates])
                eps_upper = torch.cat([c.eps_upper for c in certificates])
                certified = torch.cat([c.certified for c in certificates])
                merged = type(certificates[0])(kind=kind, eps_lower=eps_lower, eps_upper=eps_upper,
                                               certified=certified, labels=y, delta=certificates[0].delta,
                                               seconds=seconds)
                row[kind] = {"width": mean_certified_width(merged), "certified": float(certified.float().mean()),
                             "ms_per_example": 1000 * seconds / len(y)}
            row["asym/unif"] = row["asymmetric"]["width"] / row["uniform"]["width"]
            row["asym/nonunif"] = row["asymmetric"]["width"] / row["nonuniform"]["width"]
            row["ordered"] = row["asymmetric"]["width"] >= row["nonuniform"]["width"] >= row["uniform"]["width"]
            rows.append(row)
            print(json.dumps(row), flush=True)

    header = (f"{'model':<7}{'train':<7}{'acc':>6}{'n':>5} | {'uniform w':>10}{'ms':>6} | {'nonunif w':>10}{'ms':>6} | "
              f"{'asym w':>10}{'ms':>6} | {'asym/unif':>9}{'asym/non':>9}  order")
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        cells = "".join(f" | {r[k]['width']:>10.5f}{r[k]['ms_per_example']:>6.1f}" for k in KINDS)
        print(f"{r['model']:<7}{r['training']:<7}{r['clean_acc']:>6.3f}{r['examples']:>5}{cells} | "
              f"{r['asym/unif']:>9.3f}{r['asym/nonunif']:>9.3f}  {'ok' if r['ordered'] else 'VIOLATED'}")
    settings = f"method={args.method}, threads={args.threads}, batch={args.batch_size}, epochs={args.epochs}"
    print(f"\n{settings}, device={args.device}, certify options={options or 'defaults'}")
    print(memory_line(args.device))


if __name__ == "__main__":
    main()
