"""Certify a trained checkpoint: ``python certify.py --config robust_lenet.yaml --ckpt_path PATH``.

Reads the same YAML as ``train.py`` (its ``certify:`` group holds the options below), loads the checkpoint,
picks the first ``certify.num_examples`` correctly classified test examples, certifies them with every kind
in ``certify.kinds`` through a Lightning Trainer (devices and strategies as in training; each example is
certified exactly once) and writes to ``certify.output_dir``:

- ``summary.json``: per kind the mean geometric-mean width over certified examples, the certified fraction
  and seconds per example; the asymmetric/uniform and asymmetric/non-uniform width ratios; the Table 3 shape
  statistics (pairwise cosine similarity and Wasserstein distance of eps1+eps2 and of eps2-eps1);
- ``radii.pt``: per kind the dataset indices, ``eps_lower``, ``eps_upper``, ``certified`` of every example;
- ``figures/heatmaps.png`` (Figure 4, ``1 - (eps1 + eps2)`` per kind) and ``figures/explorer.png``
  (``eps2 - eps1``) for a grid of examples;
- the same scalars, histograms and images under ``certify/`` in the run's TensorBoard logger;
- unless ``certify.attacks`` is false, the attacks report (Amoeba Table 4; :mod:`lightning_modules.attack_report`)
  on the first ``certify.attack_num_examples`` of those examples: ``attacks.json``, ``attacks.md`` and
  ``certify/attacks/<attack>/<plain|s|a>/<accuracy|l_inf|l_0|l_2|l_1>`` scalars; the guided variants reuse the
  certificates computed above;
- unless ``certify.acts`` is false, the ACTS protocol report (ACTS Section 4, Tables 1, 2, 3, 7, with CLEVER;
  :mod:`lightning_modules.acts_report`) on the first ``certify.acts_num_examples``: ``acts.json``, ``acts.md``,
  ``figures/acts_histograms.png`` and ``certify/acts/...`` scalars, histograms and an image.
"""

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bounds.analysis import geometric_mean_width, pairwise_cosine_similarity, pairwise_wasserstein_distance
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


def select_correct(model: nn.Module, dataset: Dataset, limit: int, batch_size: int = 500) -> tuple[list[int], float]:
    """The first ``limit`` correctly classified indices and the accuracy over the examples scanned to find them.

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
    was_training = model.training
    model.eval()
    offset = 0
    with torch.no_grad():
        for x, y in loader:
            correct = (model(x).argmax(dim=1) == torch.as_tensor(y)).nonzero().flatten() + offset
            chosen.extend(correct.tolist())
            offset += len(x)
            if len(chosen) >= limit:
                break
    model.train(was_training)
    return chosen[:limit], len(chosen) / max(offset, 1)


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
) -> dict[str, Any]:
    """Write ``summary.json``, ``radii.pt``, the PNG figures and the TensorBoard entries (rank 0 only).

    Args:
        results: Gathered per-example results per kind.
        dataset: The test dataset the indices refer to (for the figures' inputs).
        options: The ``certify`` options.
        output_dir: Report folder.
        input_range: Range of valid inputs.
        logger: TensorBoard logger of the run, or ``None``.

    Returns:
        The summary dictionary.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(results)
    summary["options"] = vars(options)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    torch.save(results, output_dir / "radii.pt")

    first = next(iter(results.values()))
    count = min(options.num_figure_examples, int(first["index"].numel()))
    is_image = first["eps_lower"].dim() == 4
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


def main(args: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Run the certification report.

    Args:
        args: Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        The summary on rank 0, ``None`` on other ranks.

    Raises:
        ValueError: Without ``--ckpt_path``.
    """
    cli = make_cli(args)
    ckpt_path = cli.config.get("ckpt_path")
    if not ckpt_path:
        raise ValueError("certify.py needs --ckpt_path PATH (a checkpoint written by train.py)")
    checkpoint = check_checkpoint_matches(cli.model, ckpt_path)
    cli.model.load_state_dict(checkpoint["state_dict"])
    options: CertifyOptions = cli.config_init["certify"]
    datamodule = cli.datamodule
    datamodule.setup("test")
    dataset = datamodule.test_set
    network = classifier_of(cli.model)
    indices, clean_accuracy = select_correct(network, dataset, options.num_examples)
    if not indices:
        raise ValueError("The model classifies no test example correctly: nothing to certify")
    input_range = tuple(getattr(datamodule, "input_range", (-1.0, 1.0)))
    attack_report = make_attack_report(options, input_range) if options.attacks else None
    acts_protocol = make_acts_protocol(options, input_range) if options.acts else None
    task = CertificationTask(network, options.kinds, delta=options.delta,
                             clip_to_input_range=options.clip_to_input_range, input_range=input_range,
                             seed=options.seed, method=options.method, crown_rounds=options.crown_rounds,
                             attack_report=attack_report,
                             attack_indices=indices[: options.attack_num_examples], acts_protocol=acts_protocol,
                             acts_indices=indices[: options.acts_num_examples])
    loader = DataLoader(IndexedDataset(dataset, indices), batch_size=options.batch_size, shuffle=False)
    trainer = cli.trainer
    trainer.test(task, dataloaders=loader, verbose=False)
    if not trainer.is_global_zero:
        return None
    output_dir = Path(options.output_dir) if options.output_dir else Path(ckpt_path).resolve().parent.parent / "certify"
    logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
    summary = write_report(task.results, dataset, options, output_dir, input_range, logger)
    trainer.print(json.dumps({k: summary[k] for k in ("kinds", "ratios")}, indent=2))
    writer = logger.experiment if logger is not None else None
    if attack_report is not None:
        summary["attacks"] = write_attacks_report(task.attack_results, attack_report.specs(), output_dir, writer)
        trainer.print((output_dir / "attacks.md").read_text())
    if acts_protocol is not None:
        model_name = str(cli.model.hparams.get("architecture", type(network).__name__))
        summary["acts"] = write_acts_report(task.acts_results, acts_protocol, output_dir, writer,
                                            bins=options.acts_bins, clean_accuracy=clean_accuracy,
                                            model_name=model_name)
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
        steps=options.acts_steps,
        step_fraction=options.acts_step_fraction,
        top_k=options.acts_top_k,
        clever_norms=options.clever_norms,
        clever_radius_l2=options.clever_radius_l2,
        clever_radius_linf=options.clever_radius_linf,
        clever_num_batches=options.clever_num_batches,
        clever_batch_size=options.clever_batch_size,
        clever_top_k=options.clever_top_k,
        input_range=input_range,
        seed=options.seed,
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
