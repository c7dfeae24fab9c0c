"""Certify a trained checkpoint: ``python certify.py --config robust_lenet.yaml --ckpt_path PATH``.

Reads the same YAML as ``train.py`` (its ``certify:`` group holds the options below), loads the checkpoint (or,
without one, runs on the model as built when it loads its own weights, ``model.weights``, or when
``certify.allow_no_checkpoint`` says so: ``python certify.py --config imagenet_resnet50_acts.yaml --model.weights
PATH --data.data_dir PATH``), picks the first ``certify.num_examples`` correctly classified test examples (or, with
``certify.labels: predicted``, the first ones labelled with the model's own predictions), certifies them with
every kind in ``certify.kinds`` (possibly none) through a Lightning Trainer (devices and strategies as in
training; each example is certified exactly once; the progress bar shows examples per second and the estimated
total time is logged after the first batch) and writes to ``certify.output_dir`` (default: ``certify/`` next to
the checkpoint's folder, or in the run's log folder without a checkpoint):

- ``summary.json``: per kind the mean geometric-mean width over certified examples, the certified fraction
  and seconds per example; the asymmetric/uniform and asymmetric/non-uniform width ratios; the Table 3 shape
  statistics (pairwise cosine similarity and Wasserstein distance of eps1+eps2 and of eps2-eps1); the weights
  the run used and the labels it scored;
- ``radii.pt``: per kind the dataset indices, ``eps_lower``, ``eps_upper``, ``certified`` of every example;
- ``figures/heatmaps.png`` (Figure 4, ``1 - (eps1 + eps2)`` per kind) and ``figures/explorer.png``
  (``eps2 - eps1``) for a grid of examples;
- the same scalars, histograms and images under ``certify/`` in the run's TensorBoard logger;
- unless ``certify.attacks.enabled`` is false, the attacks report (Amoeba Table 4; :mod:`reporting.attacks`)
  on the first ``certify.attacks.num_examples`` of those examples: ``attacks.json``, ``attacks.md`` and
  ``certify/attacks/<attack>/<plain|s|a>/<accuracy|l_inf|l_0|l_2|l_1>`` scalars; the guided variants reuse the
  certificates computed above;
- unless ``certify.acts.enabled`` is false, the ACTS protocol report (ACTS Section 4: FGSM, BIM and PGD of
  ``certify.acts.attacks``, Tables 1, 2, 3, 5, 6, 7 and Figures 3-6, with CLEVER; :mod:`reporting.acts`)
  on the first ``certify.acts.num_examples``: ``acts.json``, ``acts.md``, ``acts.pt``, ``figures/acts_*.png``
  and ``certify/acts/<attack>/...`` scalars, histograms and images.

The options are those of :class:`reporting.options.CertifyOptions` (``--help`` lists them); this script only
wires the CLI, the weights, the examples and the Trainer to :mod:`reporting`.
"""
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader

from callbacks.indexing import IndexedDataset
from cli import RenamedOptionError, check_checkpoint_matches, make_cli
from reporting.acts.rendering import write_acts_report
from reporting.attacks.rendering import write_attacks_report
from reporting.options import CertifyOptions
from reporting.rendering import write_report
from reporting.running import CertificationTask
from reporting.selection import select_examples

log = logging.getLogger("certify")


def classifier_of(module: nn.Module) -> nn.Module:
    """The network to bound: the LightningModule's ``model`` attribute when it has one, else the module itself."""
    inner = getattr(module, "model", None)
    return inner if isinstance(inner, nn.Module) else module


def load_weights(cli: Any, options: CertifyOptions) -> str:
    """Load ``--ckpt_path`` into the model if given, and say which weights the reports are about.

    Args:
        cli: The instantiated CLI (``model``, ``config``).
        options: The ``certify`` options.

    Returns:
        A description of the weights for the reports.

    Raises:
        ValueError: Without ``--ckpt_path``, unless the model loads its own weights (``model.weights``) or
            ``certify.allow_no_checkpoint`` is set.
    """
    ckpt_path = cli.config.get("ckpt_path")
    hparams = getattr(cli.model, "hparams", {})
    weights = hparams.get("weights") if hasattr(hparams, "get") else None
    if ckpt_path:
        checkpoint = check_checkpoint_matches(cli.model, ckpt_path)
        cli.model.load_state_dict(checkpoint["state_dict"])
        return f"checkpoint {Path(ckpt_path).resolve()}"
    if weights:
        return f"model.weights {weights} (no checkpoint)"
    if options.allow_no_checkpoint:
        return (f"as built: no checkpoint and no model.weights, the initialisation of seed_everything="
                f"{cli.config.get('seed_everything')} (certify.allow_no_checkpoint)")
    raise ValueError("certify.py needs --ckpt_path PATH (a checkpoint written by train.py), or a model that loads "
                     "its own weights (--model.weights PATH or a torchvision weights name), or "
                     "--certify.allow_no_checkpoint true to run on the model as built (random weights)")


def main(args: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Run the certification report.

    Args:
        args: Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        The summary on rank 0, ``None`` on other ranks.

    Raises:
        ValueError: Without weights to certify (see :func:`load_weights`) or without an example to score.
    """
    cli = make_cli(args)
    options: CertifyOptions = cli.config_init["certify"]
    weights = load_weights(cli, options)
    datamodule = cli.datamodule
    datamodule.setup("test")
    dataset = datamodule.test_set
    network = classifier_of(cli.model)
    trainer = cli.trainer
    indices, labels, clean_accuracy, dataset_accuracy = select_examples(network, dataset, options, trainer)
    input_range = tuple(getattr(datamodule, "input_range", (-1.0, 1.0)))
    task = CertificationTask(network, options, indices, input_range)
    loader = DataLoader(IndexedDataset(dataset, indices, labels), batch_size=options.batch_size, shuffle=False)
    ckpt_path = cli.config.get("ckpt_path")
    # trainer.log_dir is a collective under DDP: every rank asks for it, before the rank-0 branch.
    output_dir = (Path(options.output_dir) if options.output_dir else
                  Path(ckpt_path).resolve().parent.parent / "certify" if ckpt_path else
                  Path(trainer.log_dir or ".") / "certify")
    trainer.test(task, dataloaders=loader, verbose=False)
    if not trainer.is_global_zero:
        return None
    logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
    report_facts = {"weights": weights, "labels": options.labels, "dataset_accuracy": dataset_accuracy}
    summary = write_report(task.results, dataset, options, output_dir, input_range, logger, report_facts)
    trainer.print(json.dumps({k: summary[k] for k in ("kinds", "ratios", "weights", "labels")}, indent=2))
    writer = logger.experiment if logger is not None else None
    if task.attack_report is not None:
        summary["attacks"] = write_attacks_report(task.attack_results, task.attack_report.specs(), output_dir, writer)
        trainer.print((output_dir / "attacks.md").read_text())
    if task.acts_protocol is not None:
        model_name = str(cli.model.hparams.get("architecture", type(network).__name__))
        summary["acts"] = write_acts_report(task.acts_results, task.acts_protocol, output_dir, writer,
                                            clean_accuracy=clean_accuracy, model_name=model_name,
                                            metadata=report_facts)
        trainer.print((output_dir / "acts.md").read_text())
    trainer.print(f"Report written to {output_dir}")
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except RenamedOptionError as err:  # a user error, not a bug: the message alone, exit status 2 like argparse
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
