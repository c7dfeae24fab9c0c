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
- unless ``certify.attacks`` is false, the attacks report (Amoeba Table 4; :mod:`lightning_modules.attack_report`)
  on the first ``certify.attack_num_examples`` of those examples: ``attacks.json``, ``attacks.md`` and
  ``certify/attacks/<attack>/<plain|s|a>/<accuracy|l_inf|l_0|l_2|l_1>`` scalars; the guided variants reuse the
  certificates computed above;
- unless ``certify.acts`` is false, the ACTS protocol report (ACTS Section 4: FGSM, BIM and PGD of
  ``certify.acts_attacks``, Tables 1, 2, 3, 5, 6, 7 and Figures 3-6, with CLEVER; :mod:`lightning_modules.acts_report`)
  on the first ``certify.acts_num_examples``: ``acts.json``, ``acts.md``, ``acts.pt``, ``figures/acts_*.png``
  and ``certify/acts/<attack>/...`` scalars, histograms and images.
"""
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from bounds.analysis import geometric_mean_width, pairwise_cosine_similarity, pairwise_wasserstein_distance
from bounds.modes import evaluation_mode
from callbacks.figures import colormap_grid, map_rows_figure, save_figure
from cli import CertifyOptions, check_checkpoint_matches, make_cli
from lightning_modules.acts_report import ACTSProtocol, write_acts_report
from lightning_modules.attack_report import AttackReport, write_attacks_report
from lightning_modules.certification import CertificationTask, IndexedDataset

log = logging.getLogger("certify")

SHAPE_STATISTICS_EXAMPLES = 200  # Table 3 of the Amoeba paper uses 200 examples.


def classifier_of(module: nn.Module) -> nn.Module:
    """The network to bound: the LightningModule's ``model`` attribute when it has one, else the module itself."""
    inner = getattr(module, "model", None)
    return inner if isinstance(inner, nn.Module) else module


def correctly_classified_indices(model: nn.Module, dataset: Dataset, limit: int, batch_size: int = 500) -> list[int]:
    """Indices of the first ``limit`` examples of ``dataset`` that ``model`` classifies correctly.

    Args:
        model: Classifier returning logits.
        dataset: Dataset of ``(x, y)``.
        limit: How many indices to return at most.
        batch_size: Evaluation batch size.

    Returns:
        Sorted indices, at most ``limit`` of them.
    """
    return select_correct(model, dataset, limit, batch_size)[0]


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def select_correct(model: nn.Module, dataset: Dataset, limit: int, batch_size: int = 500) -> tuple[list[int], float]:
    """The first ``limit`` correctly classified indices and the accuracy over the examples scanned to find them.

    Runs on the device of ``model``'s parameters.

    Args:
        model: Classifier returning logits.
        dataset: Dataset of ``(x, y)``.
        limit: How many indices to return at most.
        batch_size: Evaluation batch size.

    Returns:
        ``(indices, clean_accuracy)``; the accuracy covers the scanned prefix of ``dataset`` (whole batches).
    """
    chosen: list[int] = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    device = _model_device(model)
    offset = 0
    with evaluation_mode(model), torch.no_grad():
        for x, y in loader:
            predicted = model(x.to(device)).argmax(dim=1)
            correct = (predicted == torch.as_tensor(y, device=device)).nonzero().flatten() + offset
            chosen.extend(correct.tolist())
            offset += len(x)
            if len(chosen) >= limit:
                break
    return chosen[:limit], len(chosen) / max(offset, 1)


def select_predicted(model: nn.Module, dataset: Dataset, limit: int,
                     batch_size: int = 500) -> tuple[list[int], list[int], float]:
    """The first ``limit`` examples with the model's own predictions as labels (``certify.labels: predicted``).

    Runs on the device of ``model``'s parameters.

    Args:
        model: Classifier returning logits.
        dataset: Dataset of ``(x, y)``.
        limit: How many examples to take.
        batch_size: Evaluation batch size.

    Returns:
        ``(indices, predicted_labels, dataset_accuracy)``: the accuracy of the predictions on the dataset's labels
        of those examples.
    """
    predictions: list[int] = []
    correct = 0
    device = _model_device(model)
    loader = DataLoader(Subset(dataset, range(min(limit, len(dataset)))), batch_size=batch_size, shuffle=False)
    with evaluation_mode(model), torch.no_grad():
        for x, y in loader:
            predicted = model(x.to(device)).argmax(dim=1)
            correct += int((predicted == torch.as_tensor(y, device=device)).sum())
            predictions.extend(predicted.tolist())
    return list(range(len(predictions))), predictions, correct / max(len(predictions), 1)


def summarise(results: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Build the ``summary.json`` content from the gathered per-example results.

    Args:
        results: Kind -> ``index``, ``eps_lower``, ``eps_upper``, ``certified``, ``seconds`` tensors.

    Returns:
        A JSON-serialisable dictionary.
    """
    summary: dict[str, Any] = {"kinds": {}, "ratios": {}, "shape_statistics": {}}
    for kind, result in results.items():
        certified = result["certified"]
        widths = geometric_mean_width(result["eps_lower"], result["eps_upper"])
        summary["kinds"][kind] = {
            "examples": int(certified.numel()),
            "certified_fraction": float(certified.double().mean()) if certified.numel() else 0.0,
            "mean_geometric_width": float(widths[certified].mean()) if certified.any() else 0.0,
            "seconds_per_example": float(result["seconds"].double().mean()) if certified.numel() else 0.0,
        }
    kinds = summary["kinds"]
    if "asymmetric" in kinds:
        for other, key in (("uniform", "asymmetric/uniform"), ("nonuniform", "asymmetric/nonuniform")):
            if other in kinds and kinds[other]["mean_geometric_width"] > 0:
                asymmetric_width = kinds["asymmetric"]["mean_geometric_width"]
                summary["ratios"][key] = asymmetric_width / kinds[other]["mean_geometric_width"]
    for kind, result in results.items():
        mask = result["certified"]
        if int(mask.sum()) < 2:
            continue
        eps_lower = result["eps_lower"][mask][:SHAPE_STATISTICS_EXAMPLES]
        eps_upper = result["eps_upper"][mask][:SHAPE_STATISTICS_EXAMPLES]
        widths, explorer = eps_lower + eps_upper, eps_upper - eps_lower
        stats = {
            "examples": int(widths.shape[0]),
            "cosine_width": pairwise_cosine_similarity(widths),
            "wasserstein_width": pairwise_wasserstein_distance(widths),
        }
        if kind == "asymmetric":
            stats["wasserstein_explorer"] = pairwise_wasserstein_distance(explorer)
        summary["shape_statistics"][kind] = stats
    return summary


def write_report(
    results: dict[str, dict[str, torch.Tensor]],
    dataset: Dataset,
    options: CertifyOptions,
    output_dir: Path,
    input_range: tuple[float, float],
    logger: TensorBoardLogger | None,
    facts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``summary.json``, ``radii.pt``, the PNG figures and the TensorBoard entries (rank 0 only).

    Args:
        results: Gathered per-example results per kind.
        dataset: The test dataset the indices refer to (for the figures' inputs).
        options: The ``certify`` options.
        output_dir: Report folder.
        input_range: Range of valid inputs.
        logger: TensorBoard logger of the run, or ``None``.
        facts: Extra top-level entries of ``summary.json`` (e.g. ``weights``, ``labels``).

    Returns:
        The summary dictionary.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(results)
    summary.update(facts or {})
    summary["options"] = vars(options)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    torch.save(results, output_dir / "radii.pt")

    first = next(iter(results.values()), None)
    count = 0 if first is None else min(options.num_figure_examples, int(first["index"].numel()))
    is_image = first is not None and first["eps_lower"].dim() == 4
    if count > 0 and is_image:
        images = torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in first["index"][:count]])
        heatmaps = {k: 1 - (r["eps_lower"][:count] + r["eps_upper"][:count]) for k, r in results.items()}
        save_figure(map_rows_figure(images, {f"1-(e1+e2) {k}": v for k, v in heatmaps.items()}, input_range),
                    output_dir / "figures" / "heatmaps.png")
        if "asymmetric" in results:
            explorer = results["asymmetric"]["eps_upper"][:count] - results["asymmetric"]["eps_lower"][:count]
            save_figure(map_rows_figure(images, {"e2-e1": explorer}, input_range, diverging=("e2-e1",)),
                        output_dir / "figures" / "explorer.png")

    if logger is not None:
        writer = logger.experiment
        for kind, values in summary["kinds"].items():
            for name in ("mean_geometric_width", "certified_fraction", "seconds_per_example"):
                writer.add_scalar(f"certify/{kind}/{name}", values[name], 0)
        for name, value in summary["ratios"].items():
            writer.add_scalar(f"certify/ratio/{name.replace('/', '_over_')}", value, 0)
        for kind, stats in summary["shape_statistics"].items():
            for name, value in stats.items():
                if name != "examples":
                    writer.add_scalar(f"certify/{kind}/{name}", value, 0)
        for kind, result in results.items():
            mask = result["certified"]
            if mask.any():
                writer.add_histogram(f"certify/{kind}/eps_lower", result["eps_lower"][mask].flatten(), 0)
                writer.add_histogram(f"certify/{kind}/eps_upper", result["eps_upper"][mask].flatten(), 0)
                writer.add_histogram(f"certify/{kind}/width",
                                     geometric_mean_width(result["eps_lower"], result["eps_upper"])[mask], 0)
            if count > 0 and is_image:
                width = result["eps_lower"][:count] + result["eps_upper"][:count]
                writer.add_image(f"certify/{kind}/heatmap", colormap_grid(1 - width), 0)
                if kind == "asymmetric":
                    writer.add_image("certify/asymmetric/explorer", colormap_grid(
                        result["eps_upper"][:count] - result["eps_lower"][:count], cmap="coolwarm", symmetric=True), 0)
        writer.flush()
    return summary


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


def select_examples(network: nn.Module, dataset: Dataset, options: CertifyOptions,
                    trainer: Trainer) -> tuple[list[int], list[int] | None, float, float]:
    """The examples of the reports, on the trainer's device, as ``certify.labels`` says.

    Args:
        network: The classifier.
        dataset: The test dataset.
        options: The ``certify`` options.
        trainer: The trainer whose device runs the selection.

    Returns:
        ``(indices, labels, clean_accuracy, dataset_accuracy)``: ``labels`` replace the dataset's (``None``:
        keep them); ``clean_accuracy`` is on the labels used (1 for predicted labels), ``dataset_accuracy`` on
        the dataset's labels.

    Raises:
        ValueError: If no example can be scored.
    """
    network.to(trainer.strategy.root_device)
    if options.labels == "predicted":
        indices, labels, accuracy = select_predicted(network, dataset, options.num_examples, options.batch_size)
        clean_accuracy = 1.0
    else:
        indices, accuracy = select_correct(network, dataset, options.num_examples, options.batch_size)
        labels, clean_accuracy = None, accuracy
    if not indices:
        raise ValueError("The model classifies no test example correctly: nothing to certify (for a model that "
                         "cannot, e.g. random weights, --certify.labels predicted scores its own predictions)")
    return indices, labels, clean_accuracy, accuracy


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
    attack_report = make_attack_report(options, input_range) if options.attacks else None
    acts_protocol = make_acts_protocol(options, input_range) if options.acts else None
    task = CertificationTask(network, options.kinds, delta=options.delta,
                             clip_to_input_range=options.clip_to_input_range, input_range=input_range,
                             seed=options.seed, method=options.method, crown_rounds=options.crown_rounds,
                             attack_report=attack_report,
                             attack_indices=indices[: options.attack_num_examples], acts_protocol=acts_protocol,
                             acts_indices=indices[: options.acts_num_examples], num_examples=len(indices))
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
    if attack_report is not None:
        summary["attacks"] = write_attacks_report(task.attack_results, attack_report.specs(), output_dir, writer)
        trainer.print((output_dir / "attacks.md").read_text())
    if acts_protocol is not None:
        model_name = str(cli.model.hparams.get("architecture", type(network).__name__))
        summary["acts"] = write_acts_report(task.acts_results, acts_protocol, output_dir, writer,
                                            bins=options.acts_bins, clean_accuracy=clean_accuracy,
                                            model_name=model_name, metadata=report_facts)
        trainer.print((output_dir / "acts.md").read_text())
    trainer.print(f"Report written to {output_dir}")
    return summary


def make_attack_report(options: CertifyOptions, input_range: tuple[float, float]) -> AttackReport:
    """The attacks of the report (Amoeba Table 4) from the ``certify`` options."""
    return AttackReport(
        fgsm_eps=options.attack_fgsm_eps,
        pgd_linf_eps=options.attack_pgd_linf_eps,
        pgd_linf_step_size=options.attack_pgd_linf_step_size,
        pgd_linf_steps=options.attack_pgd_linf_steps,
        pgd_l2_eps=options.attack_pgd_l2_eps,
        pgd_l2_step_size=options.attack_pgd_l2_step_size,
        pgd_l2_steps=options.attack_pgd_l2_steps,
        cw_kappa=options.attack_cw_kappa,
        cw_search_steps=options.attack_cw_search_steps,
        cw_max_iterations=options.attack_cw_max_iterations,
        cw_c_init=options.attack_cw_c_init,
        cw_lr=options.attack_cw_lr,
        p_start=options.attack_p_start,
        p_step=options.attack_p_step,
        p_max=options.attack_p_max,
        input_range=input_range,
        seed=options.seed,
    )


def make_acts_protocol(options: CertifyOptions, input_range: tuple[float, float]) -> ACTSProtocol:
    """The ACTS protocol (ACTS Section 4, with CLEVER) from the ``certify`` options."""
    return ACTSProtocol(
        eps_levels=options.acts_eps,
        attacks=options.acts_attacks,
        steps=options.acts_steps,
        step_fraction=options.acts_step_fraction,
        top_k=options.acts_top_k,
        top_k_values=options.acts_top_k_values,
        clever_norms=options.clever_norms,
        clever_radius_l2=options.clever_radius_l2,
        clever_radius_linf=options.clever_radius_linf,
        clever_num_batches=options.clever_num_batches,
        clever_batch_size=options.clever_batch_size,
        clever_top_k=options.clever_top_k,
        clever_max_points_per_pass=options.clever_max_points_per_pass,
        input_range=input_range,
        seed=options.seed,
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
