"""certify.py end to end: a trained checkpoint -> summary.json, radii, figures, TensorBoard; every box is sound."""

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)

import certify
import train
from bounds.margins import margin_lower_bounds
from tests.soundness import assert_label_constant

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
SMALL_DATA = ["--data.init_args.max_train_examples=600", "--data.init_args.max_eval_examples=120",
              "--model.init_args.eval_attack_steps=2"]


def assert_radii_sound(network: torch.nn.Module, dataset, radii: dict, delta: float = 1e-4,
                       method: str = "ibp") -> None:
    """Every certified box of ``radii.pt`` holds the margin with ``method``, and sampling and PGD find nothing."""
    for kind, result in radii.items():
        index = result["index"]
        assert index.tolist() == sorted(set(index.tolist())), "each example certified exactly once"
        x = torch.stack([dataset[int(i)][0] for i in index])
        y = torch.tensor([int(dataset[int(i)][1]) for i in index])
        certified = result["certified"]
        assert bool((result["eps_lower"][~certified] == 0).all()) and bool((result["eps_upper"][~certified] == 0).all())
        lower, upper = x - result["eps_lower"], x + result["eps_upper"]
        margins = margin_lower_bounds(network, lower[certified], upper[certified], y[certified], method)
        assert bool((margins >= delta * (1 - 1e-6) - 1e-7).all()), kind
        assert_label_constant(network, lower, upper, y, mask=certified, pgd_steps=20, num_samples=16)


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    log_dir = tmp_path_factory.mktemp("logs")
    cli = train.main(["--config", "normal_lenet.yaml", "--trainer.max_epochs=2",
                      f"--trainer.logger.init_args.save_dir={log_dir}", *SMALL_DATA, *QUIET])
    return Path(cli.trainer.checkpoint_callback.last_model_path)


def test_certify_writes_a_sound_report(trained_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    summary = certify.main(["--config", "normal_lenet.yaml", f"--ckpt_path={trained_checkpoint}",
                            "--certify.num_examples=24", "--certify.batch_size=10", f"--certify.output_dir={out}",
                            "--certify.num_figure_examples=4", "--certify.attacks.enabled=false",
                            "--certify.acts.enabled=false",
                            f"--trainer.logger.init_args.save_dir={tmp_path}",
                            *SMALL_DATA, *QUIET])
    assert summary is not None
    on_disk = json.loads((out / "summary.json").read_text())
    assert set(on_disk["kinds"]) == {"uniform", "nonuniform", "asymmetric"}
    for kind, values in on_disk["kinds"].items():
        assert values["examples"] == 24, kind
        assert 0.0 < values["certified_fraction"] <= 1.0
        assert values["mean_geometric_width"] > 0
        assert values["seconds_per_example"] > 0
    widths = {k: v["mean_geometric_width"] for k, v in on_disk["kinds"].items()}
    assert widths["asymmetric"] >= widths["nonuniform"] >= widths["uniform"]
    assert on_disk["ratios"]["asymmetric/uniform"] == pytest.approx(widths["asymmetric"] / widths["uniform"])
    shape_statistics = on_disk["shape_statistics"]["asymmetric"]
    assert {"cosine_width", "wasserstein_width", "wasserstein_explorer"} <= set(shape_statistics)
    assert (out / "figures" / "heatmaps.png").stat().st_size > 0
    assert (out / "figures" / "explorer.png").stat().st_size > 0

    # Every certified box is re-verified and attacked: no counterexample.
    radii = torch.load(out / "radii.pt")
    cli = train.main(["--config", "normal_lenet.yaml", "--trainer.fast_dev_run=true", *QUIET,
                      f"--trainer.logger.init_args.save_dir={tmp_path / 'x'}", *SMALL_DATA])
    model = cli.model
    model.load_state_dict(torch.load(trained_checkpoint, weights_only=False)["state_dict"])
    cli.datamodule.setup("test")
    assert_radii_sound(model.model.eval(), cli.datamodule.test_set, radii)

    run = next((tmp_path / "normal_lenet").iterdir())
    events = EventAccumulator(str(run), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE).Reload()
    tags = events.Tags()
    assert {"certify/asymmetric/mean_geometric_width", "certify/uniform/certified_fraction",
            "certify/ratio/asymmetric_over_uniform"} <= set(tags["scalars"])
    assert "certify/asymmetric/eps_lower" in tags["histograms"]
    assert {"certify/asymmetric/heatmap", "certify/asymmetric/explorer"} <= set(tags["images"])


def test_certify_requires_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--ckpt_path"):
        certify.main(["--config", "normal_lenet.yaml", *QUIET])


def test_certify_rejects_a_checkpoint_of_another_model(trained_checkpoint: Path, tmp_path: Path) -> None:
    from cli import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError, match="lenet"):
        certify.main(["--config", "normal_lenet.yaml", "--model.init_args.architecture=fc100",
                      f"--ckpt_path={trained_checkpoint}", f"--trainer.logger.init_args.save_dir={tmp_path}", *QUIET])


def test_certify_with_crown_gives_sound_and_wider_boxes(tmp_path: Path) -> None:

    # LeNet: CROWN's windowed back-substitution of the second convolution runs end to end.
    fc = ["--config", "normal_lenet.yaml", *SMALL_DATA, *QUIET, f"--trainer.logger.init_args.save_dir={tmp_path}"]
    cli = train.main([*fc, "--trainer.max_epochs=1"])
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    reports = {}
    for method in ("ibp", "crown"):
        out = tmp_path / method
        reports[method] = certify.main([*fc, f"--ckpt_path={ckpt}", "--certify.num_examples=6",
                                        "--certify.kinds=[uniform, asymmetric]", f"--certify.method={method}",
                                        "--certify.crown_rounds=2", "--certify.attacks.enabled=false",
                                        "--certify.acts.enabled=false",
                                        f"--certify.output_dir={out}"])
    for kind in ("uniform", "asymmetric"):
        assert reports["crown"]["kinds"][kind]["mean_geometric_width"] > reports["ibp"]["kinds"][kind][
            "mean_geometric_width"]
    cli.datamodule.setup("test")
    assert_radii_sound(cli.model.model.eval(), cli.datamodule.test_set, torch.load(tmp_path / "crown" / "radii.pt"),
                       method="crown")


def test_certify_finishes_when_some_clean_margins_are_below_delta(trained_checkpoint: Path, tmp_path: Path) -> None:
    """One example with a clean margin in (0, delta) used to crash the whole run (NaN in Algorithm 1)."""
    from datamodules import MNISTDataModule
    from lightning_modules import ImageClassifier

    network = ImageClassifier.load_from_checkpoint(trained_checkpoint).model.eval()
    data = MNISTDataModule(source="embedded", max_train_examples=600, max_eval_examples=120)
    data.setup("test")
    x = torch.stack([data.test_set[i][0] for i in range(40)])
    with torch.no_grad():
        top2 = network(x).topk(2, dim=1).values
    delta = float((top2[:, 0] - top2[:, 1]).median())  # about half of the examples cannot reach it
    out = tmp_path / "report"
    summary = certify.main(["--config", "normal_lenet.yaml", f"--ckpt_path={trained_checkpoint}",
                            "--certify.num_examples=12", f"--certify.delta={delta}", f"--certify.output_dir={out}",
                            "--certify.attacks.enabled=false", "--certify.acts.enabled=false",
                            "--certify.num_figure_examples=2",
                            f"--trainer.logger.init_args.save_dir={tmp_path}", *SMALL_DATA, *QUIET])
    for kind, values in summary["kinds"].items():
        assert values["examples"] == 12, kind
        assert 0.0 < values["certified_fraction"] < 1.0, kind
    assert_radii_sound(network, data.test_set, torch.load(out / "radii.pt"), delta=delta)


def test_train_and_certify_the_zoo_resnet(tmp_path: Path) -> None:
    """The zoo's residual network (an ordinary nn.Module) trains from a config and certify.py certifies it (IBP)."""
    args = ["--config", "normal_lenet.yaml", "--model.init_args.architecture=resnet_small", *SMALL_DATA, *QUIET,
            f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.callbacks=[]"]
    cli = train.main([*args, "--trainer.max_epochs=1"])
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    assert ckpt
    out = tmp_path / "report"
    summary = certify.main([*args, f"--ckpt_path={ckpt}", "--certify.num_examples=4",
                            "--certify.kinds=[uniform, asymmetric]", "--certify.attacks.enabled=false",
                            "--certify.acts.enabled=false",
                            f"--certify.output_dir={out}", "--certify.num_figure_examples=2"])
    assert summary["kinds"]["asymmetric"]["certified_fraction"] > 0
    cli.datamodule.setup("test")
    assert_radii_sound(cli.model.model.eval(), cli.datamodule.test_set, torch.load(out / "radii.pt"))
