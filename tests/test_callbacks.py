"""AmoebaBoundCallback and ACTSCallback in one process: values, TensorBoard output, inference mode, isolation."""

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import STORE_EVERYTHING_SIZE_GUIDANCE, EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import train
from bounds.acts import acts_score
from bounds.analysis import geometric_mean_width
from bounds.attacks import per_example_pgd, pgd
from bounds.certify import certify
from bounds.normalization import InputNormalization
from callbacks import ACTSCallback, AmoebaBoundCallback
from datamodules import MNISTDataModule
from lightning_modules import AdversarialClassifier, ImageClassifier

FAST_AMOEBA = {"num_examples": 6, "every_n_epochs": 1, "iterations": 8, "num_image_examples": 4}
FAST_ACTS = {"num_examples": 12, "steps": 2, "every_n_epochs": 1, "bins": 8}


def datamodule(batch_size: int = 8, eval_examples: int = 20) -> MNISTDataModule:
    return MNISTDataModule(source="embedded", batch_size=batch_size, max_train_examples=32,
                           max_eval_examples=eval_examples)


def classifier(architecture: str = "fc100") -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(architecture=architecture, eval_attack_eps=0.0)


def trainer(tmp_path: Path, callbacks: list[Any], name: str = "run", **kwargs: Any) -> Trainer:
    options = {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "enable_progress_bar": False,
               "enable_model_summary": False, "enable_checkpointing": False, "num_sanity_val_steps": 0,
               "logger": TensorBoardLogger(tmp_path, name=name, version=0), "callbacks": callbacks}
    options.update(kwargs)
    return Trainer(**options)


def events(log_dir: str) -> EventAccumulator:
    accumulator = EventAccumulator(log_dir, size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    accumulator.Reload()
    return accumulator


def first_validation_examples(dm: MNISTDataModule, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    dm.setup("validate")
    xs, ys = zip(*(dm.val_set[i] for i in range(count)), strict=True)
    return torch.stack(xs), torch.as_tensor(ys)


# ----------------------------------------------------------------------------------------- constructors


@pytest.mark.parametrize("kwargs", [
    {"kinds": ()}, {"kinds": ("uniform", "uniform")}, {"kinds": ("box",)}, {"num_examples": 0},
    {"every_n_epochs": 0}, {"batch_size": 0}, {"delta": 0.0}, {"num_image_examples": -1},
{"iterations": -1}, {"input_range": (1.0, -1.0)}, {"crown_rounds": 0},
    {"model_attribute": ""}, {"model_attribute": []},
])
def test_amoeba_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AmoebaBoundCallback(**kwargs)


@pytest.mark.parametrize("kwargs", [
    {"attack": "cw"}, {"eps": 0.0}, {"eps": float("nan")}, {"step_size": -0.1}, {"steps": 0}, {"top_k": 0},
    {"num_examples": 0}, {"every_n_epochs": 0}, {"bins": 0}, {"seed": -1},
])
def test_acts_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ACTSCallback(**kwargs)


# ----------------------------------------------------------------------------------------- values


def test_validate_under_inference_mode_matches_direct_bounds_and_acts(tmp_path: Path) -> None:
    """trainer.validate runs under inference_mode; logged values equal bounds/ computed directly on the subset."""
    dm, model = datamodule(), classifier()
    amoeba = AmoebaBoundCallback(kinds=("uniform", "nonuniform", "asymmetric"), **FAST_AMOEBA)
    acts = ACTSCallback(attack="bim", **FAST_ACTS)
    logged = trainer(tmp_path, [amoeba, acts]).validate(model, datamodule=dm)[0]

    x, y = first_validation_examples(dm, 12)
    widths = {}
    for kind in ("uniform", "nonuniform", "asymmetric"):
        cert = certify(model.model, x[:6], y[:6], kind=kind, iterations=8)
        width = geometric_mean_width(cert)[cert.certified]
        widths[kind] = float(width.mean()) if width.numel() else 0.0
        assert logged[f"val/amoeba/{kind}/mean_width"] == pytest.approx(widths[kind], rel=1e-5)
        assert logged[f"val/amoeba/{kind}/certified_fraction"] == pytest.approx(float(cert.certified.float().mean()))
    assert widths["uniform"] > 0
    assert logged["val/amoeba/ratio_asymmetric_uniform"] == pytest.approx(widths["asymmetric"] / widths["uniform"],
                                                                         rel=1e-5)
    assert logged["val/amoeba/ratio_asymmetric_nonuniform"] == pytest.approx(
        widths["asymmetric"] / widths["nonuniform"], rel=1e-5)

    predicted = model.model(x).argmax(1)
    scores = acts_score(model.model, x, predicted, attack="bim", eps=0.1, step_size=0.05, steps=2)
    assert logged["val/acts/mean"] == pytest.approx(float(scores.mean()), rel=1e-5)
    assert logged["val/acts/median"] == pytest.approx(float(scores.median()), rel=1e-5)
    assert 0.0 <= logged["val/acts/attack_success_rate"] <= 1.0
    assert 0.0 <= logged["val/acts/overlap_percent"] <= 50.0


def test_margins_below_delta_are_uncertified_and_the_rest_is_logged(tmp_path: Path) -> None:
    """A clean margin in (0, delta) used to crash Algorithm 1 (NaN), so the callback logged nothing for the epoch."""
    dm, model = datamodule(), classifier()
    x, y = first_validation_examples(dm, 6)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):  # fit the six digits so that they are classified correctly, with varied margins
        optimiser.zero_grad()
        F.cross_entropy(model.model(x), y).backward()
        optimiser.step()
    with torch.no_grad():
        logits = model.model(x)
    correct = logits.argmax(1) == y
    top2 = logits.topk(2, dim=1).values
    gaps = (top2[:, 0] - top2[:, 1])[correct]
    assert gaps.numel() >= 2
    delta = float(gaps.median())
    amoeba = AmoebaBoundCallback(kinds=("nonuniform", "asymmetric"), delta=delta, **FAST_AMOEBA)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a recorded failure warns: none may happen
        logged = trainer(tmp_path, [amoeba]).validate(model, datamodule=dm)[0]
    for kind in ("nonuniform", "asymmetric"):
        cert = certify(model.model, x, y, kind=kind, delta=delta, iterations=8)
        assert 0 < int(cert.certified.sum()) < int(correct.sum())
        width = geometric_mean_width(cert)[cert.certified]
        assert logged[f"val/amoeba/{kind}/certified_fraction"] == pytest.approx(float(cert.certified.float().mean()))
        assert logged[f"val/amoeba/{kind}/mean_width"] == pytest.approx(float(width.mean()), rel=1e-5)


def test_crown_method_logs_the_crown_certificates(tmp_path: Path) -> None:
    """AmoebaBoundCallback(method="crown") logs certify(method="crown") on the subset: wider than IBP on LeNet."""
    dm, model = datamodule(), classifier("lenet")
    x, y = first_validation_examples(dm, 4)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):  # fit the four digits so that they are classified correctly
        optimiser.zero_grad()
        F.cross_entropy(model.model(x), y).backward()
        optimiser.step()
    amoeba = AmoebaBoundCallback(kinds=("asymmetric",), num_examples=4, every_n_epochs=1, num_image_examples=2,
                                 method="crown", crown_rounds=2)
    logged = trainer(tmp_path, [amoeba]).validate(model, datamodule=dm)[0]
    cert = certify(model.model, x, y, kind="asymmetric", method="crown", crown_rounds=2, iterations=100)
    assert bool(cert.certified.all())
    ibp = certify(model.model, x, y, kind="asymmetric", iterations=100)
    width = geometric_mean_width(cert)[cert.certified]
    assert logged["val/amoeba/asymmetric/mean_width"] == pytest.approx(float(width.mean()), rel=1e-5)
    assert float(width.mean()) > float(geometric_mean_width(ibp)[ibp.certified].mean())


def test_subset_does_not_depend_on_the_validation_batch_size(tmp_path: Path) -> None:
    results = []
    for batch_size in (3, 20):
        callbacks = [AmoebaBoundCallback(**FAST_AMOEBA), ACTSCallback(**FAST_ACTS)]
        run = trainer(tmp_path, callbacks, name=f"b{batch_size}")
        results.append(run.validate(classifier(), datamodule=datamodule(batch_size=batch_size))[0])
    keys = [k for k in results[0] if k.startswith(("val/amoeba", "val/acts"))]
    assert len(keys) >= 10
    for key in keys:  # batched float kernels round differently; ACTS's ratio amplifies that to ~1e-5
        assert results[0][key] == pytest.approx(results[1][key], rel=1e-4), key


def test_fit_writes_scalars_histograms_and_images_on_schedule(tmp_path: Path) -> None:
    amoeba = AmoebaBoundCallback(**{**FAST_AMOEBA, "every_n_epochs": 2})
    acts = ACTSCallback(**FAST_ACTS)
    run = trainer(tmp_path, [amoeba, acts], max_epochs=3, num_sanity_val_steps=2)
    run.fit(classifier(), datamodule=datamodule())
    acc = events(run.logger.log_dir)
    tags = acc.Tags()
    steps_per_epoch = 4  # 32 training examples, batches of 8
    # Epochs 0 and 2 for the bounds, every epoch for ACTS; never the sanity check. Histograms and images are
    # written at trainer.global_step (Lightning writes the epoch-end scalars one step earlier during fit).
    assert len(acc.Scalars("val/amoeba/asymmetric/mean_width")) == 2
    assert len(acc.Scalars("val/acts/mean")) == 3
    assert [e.step for e in acc.Images("val/amoeba/uniform/heatmap")] == [steps_per_epoch, 3 * steps_per_epoch]
    assert [e.step for e in acc.Histograms("val/acts/scores")] == [steps_per_epoch * k for k in (1, 2, 3)]
    for kind in ("uniform", "asymmetric"):
        for name in ("mean_width", "certified_fraction"):
            assert f"val/amoeba/{kind}/{name}" in tags["scalars"]
        assert f"val/amoeba/{kind}/heatmap" in tags["images"]
    assert "val/amoeba/asymmetric/explorer" in tags["images"] and "val/amoeba/inputs" in tags["images"]
    assert "val/amoeba/uniform/explorer" not in tags["images"]
    for name in ("mean", "median", "attack_success_rate", "overlap_percent", "unreachable_fraction"):
        assert f"val/acts/{name}" in tags["scalars"]
    histograms = set(tags["histograms"])
    assert "val/acts/scores" in histograms
    certified = acc.Scalars("val/amoeba/uniform/certified_fraction")[-1].value
    if certified > 0:
        assert {f"val/amoeba/uniform/{name}" for name in ("eps_lower", "eps_upper", "width")} <= histograms
    image = acc.Images("val/amoeba/asymmetric/heatmap")[-1]
    assert image.width > 4 * 28 and image.height >= 28
    assert amoeba.runs == 2 and acts.runs == 3


# ----------------------------------------------------------------------------------------- isolation


def test_training_is_unchanged_by_the_callbacks(tmp_path: Path) -> None:
    """Same seed, with and without both callbacks: identical weights (RNG, modes and grad flags restored).

    Validation runs after 2 of the 4 training batches, so training (PGD's random starts draw from the global
    RNG) goes on after the callbacks ran.
    """
    weights = []
    for name, callbacks in (("plain", []), ("callbacks", [AmoebaBoundCallback(**FAST_AMOEBA),
                                                          ACTSCallback(**FAST_ACTS)])):
        seed_everything(3)
        model = AdversarialClassifier(architecture="fc100", attack_steps=2, eval_attack_eps=0.0)
        model.model[1].weight.requires_grad_(False)  # a frozen layer stays frozen
        trainer(tmp_path, callbacks, name=name, val_check_interval=2).fit(model, datamodule=datamodule())
        assert not model.model[1].weight.requires_grad and model.model[-1].weight.requires_grad
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
        if callbacks:
            assert callbacks[0].runs == 2 and callbacks[1].runs == 2
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key


def test_modes_grad_flags_and_global_rng_are_restored(tmp_path: Path) -> None:
    import random

    import numpy as np

    model = classifier()
    model.train()
    model.model[0].eval()  # a submodule frozen in eval mode must stay so
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    seed_everything(11)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    seed_everything(11)
    amoeba, acts = AmoebaBoundCallback(**FAST_AMOEBA), ACTSCallback(**FAST_ACTS)
    run = trainer(tmp_path, [amoeba, acts])
    dm = datamodule()
    dm.setup("validate")
    amoeba.setup(run, model, "validate")
    acts.setup(run, model, "validate")
    x, y = first_validation_examples(dm, 6)
    for context in (torch.no_grad, torch.inference_mode):
        seed_everything(11)
        with context():
            amoeba.certify_batch(x, y, torch.arange(6))
            acts.score_batch(x, torch.arange(6))
        after = (torch.rand(3), np.random.rand(3), random.random())
        assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1]) and after[2] == expected[2]
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert modes == {n: m.training for n, m in model.named_modules()}
    assert all(p.grad is None for p in model.parameters())


def test_per_example_pgd_start_does_not_depend_on_the_batch() -> None:
    model = classifier().model.eval()
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    y = model(x).argmax(1)
    index = torch.tensor([7, 3, 11, 0, 4])
    whole = per_example_pgd(model, x, y, index, eps=0.1, step_size=0.05, steps=3, seed=2, input_range=(-1, 1))
    part = per_example_pgd(model, x[2:4], y[2:4], index[2:4], eps=0.1, step_size=0.05, steps=3, seed=2,
                           input_range=(-1, 1))
    torch.testing.assert_close(part.adversarial, whole.adversarial[2:4])
    assert whole.num_init_steps == 1 and whole.steps.shape == (4, *x.shape)
    torch.testing.assert_close(whole.steps.sum(0), whole.adversarial - x, atol=1e-6, rtol=0)
    assert bool(((whole.adversarial - x).abs() <= 0.1 + 1e-6).all())
    assert bool((whole.adversarial >= -1).all() and (whole.adversarial <= 1).all())
    # With the same start, PGD's own iterates are the same.
    start = x + whole.steps[0]
    reference = pgd(model, start, y, eps=0.2, step_size=0.05, steps=3, random_start=False,
                    box=((start - x + 0.1).clamp(min=0), (x + 0.1 - start).clamp(min=0)))
    torch.testing.assert_close(reference.adversarial, whole.adversarial)


# ----------------------------------------------------------------------------------------- foreign projects


class ForeignClassifier(LightningModule):
    """A LightningModule written without this project: its own names, forward and training_step."""

    def __init__(self, custom: bool = False) -> None:
        super().__init__()
        self.normalize = InputNormalization(mean=[0.5], std=[0.25])
        layers: list[nn.Module] = [nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 3)]
        if custom:
            layers.insert(3, Squash())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Squash(nn.Module):
    """A custom activation interval propagation knows nothing about."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (1 + x.abs())


def foreign_loaders() -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    y = torch.arange(48) % 3
    x = torch.rand(48, 1, 4, 4, generator=generator) * 0.3 + y.view(-1, 1, 1, 1) * 0.3
    data = TensorDataset(x, y)
    return DataLoader(data, batch_size=12), DataLoader(data, batch_size=10)


def test_foreign_lightning_module_gets_both_callbacks_in_three_lines(tmp_path: Path) -> None:
    train_loader, val_loader = foreign_loaders()
    model = ForeignClassifier()
    # The three lines a user adds:
    callbacks = [AmoebaBoundCallback(model_attribute=["normalize", "net"], input_range=(0.0, 1.0), every_n_epochs=2,
                                     iterations=10),
                 ACTSCallback(eps=0.05, input_range=(0.0, 1.0), every_n_epochs=2)]
    run = trainer(tmp_path, callbacks, max_epochs=3)  # runs on epoch 0 and on the last epoch (2)
    run.fit(model, train_loader, val_loader)
    metrics = run.callback_metrics
    assert metrics["val/amoeba/asymmetric/certified_fraction"] > 0.5
    assert metrics["val/amoeba/asymmetric/mean_width"] > 0
    assert 0 <= metrics["val/acts/attack_success_rate"] <= 1
    assert metrics["val/acts/median"] > 0
    # The chained network (normalisation included) is what was certified: compare with bounds/ directly.
    x, y = val_loader.dataset.tensors
    cert = certify(nn.Sequential(model.normalize, model.net), x[:16], y[:16], kind="uniform", input_range=(0.0, 1.0))
    fraction = float(cert.certified.float().mean())
    assert float(metrics["val/amoeba/uniform/certified_fraction"]) == pytest.approx(fraction)
    width = geometric_mean_width(cert)[cert.certified].mean()
    assert float(metrics["val/amoeba/uniform/mean_width"]) == pytest.approx(float(width), rel=1e-5)
    assert model.normalize.training and model.net.training


def test_unsupported_model_warns_once_skips_bounds_and_still_logs_acts(tmp_path: Path) -> None:
    train_loader, val_loader = foreign_loaders()
    model = ForeignClassifier(custom=True)
    callbacks = [AmoebaBoundCallback(model_attribute=["normalize", "net"], every_n_epochs=1),
                 ACTSCallback(eps=0.05, input_range=(0.0, 1.0))]
    run = trainer(tmp_path, callbacks, max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.fit(model, train_loader, val_loader)
        run.validate(model, val_loader)
    messages = [str(w.message) for w in caught if "AmoebaBoundCallback" in str(w.message)]
    assert len(messages) == 1, messages
    assert "Tensor.abs" in messages[0] and "pl_module.net.3" in messages[0] and "test_callbacks.py" in messages[0]
    assert not any(k.startswith("val/amoeba") for k in run.callback_metrics)
    assert "val/acts/mean" in run.callback_metrics and callbacks[1].runs == 3


class LitClassifier(LightningModule):
    """A LightningModule written the way the Lightning docs write one: layers inline, functional forward."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(16, 32)
        self.l2 = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.size(0), -1)
        return self.l2(torch.relu(self.l1(x)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


@pytest.mark.parametrize("module_class", [ForeignClassifier, LitClassifier])
def test_default_callback_bounds_a_lightning_module_with_its_own_forward(tmp_path: Path, module_class) -> None:
    """AmoebaBoundCallback() with no arguments on a LightningModule whose forward is not a Sequential."""
    train_loader, val_loader = foreign_loaders()
    torch.manual_seed(0)
    model = module_class()
    amoeba = AmoebaBoundCallback(kinds=("uniform", "asymmetric"), every_n_epochs=1, num_examples=10, iterations=8,
                                 input_range=(0.0, 1.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = trainer(tmp_path, [amoeba], max_epochs=3)
        run.fit(model, train_loader, val_loader)
        logged = run.validate(model, val_loader)[0]
    assert not [str(w.message) for w in caught if "AmoebaBoundCallback" in str(w.message)]
    assert amoeba.runs == 4
    x, y = next(iter(val_loader))
    for kind in ("uniform", "asymmetric"):
        cert = certify(model, x, y, kind=kind, iterations=8, input_range=(0.0, 1.0))
        width = geometric_mean_width(cert)[cert.certified]
        assert float(cert.certified.float().mean()) > 0
        assert logged[f"val/amoeba/{kind}/certified_fraction"] == pytest.approx(float(cert.certified.float().mean()))
        assert logged[f"val/amoeba/{kind}/mean_width"] == pytest.approx(float(width.mean()), rel=1e-5)


# ----------------------------------------------------------------------------------------- edge cases, resume


def test_auroc_is_skipped_when_no_attack_succeeds(tmp_path: Path) -> None:
    train_loader, val_loader = foreign_loaders()
    model = ForeignClassifier()
    logged = trainer(tmp_path, [ACTSCallback(attack="fgsm", eps=1e-6, input_range=(0.0, 1.0))]).validate(
        model, val_loader)[0]
    assert logged["val/acts/attack_success_rate"] == 0.0
    assert "val/acts/auroc" not in logged
    assert logged["val/acts/overlap_percent"] == 0.0


def test_state_dict_round_trip_and_resume(tmp_path: Path) -> None:
    amoeba, acts = AmoebaBoundCallback(**FAST_AMOEBA), ACTSCallback(**FAST_ACTS)
    run = trainer(tmp_path, [amoeba, acts], enable_checkpointing=True, default_root_dir=tmp_path)
    run.fit(classifier(), datamodule=datamodule())
    path = tmp_path / "last.ckpt"
    run.save_checkpoint(path)
    assert amoeba.state_dict()["last_run_step"] == run.global_step == 4
    fresh_amoeba, fresh_acts = AmoebaBoundCallback(**FAST_AMOEBA), ACTSCallback(**FAST_ACTS)
    resumed = trainer(tmp_path, [fresh_amoeba, fresh_acts], name="resumed", max_epochs=2)
    resumed.fit(classifier(), datamodule=datamodule(), ckpt_path=path)
    assert fresh_amoeba.runs == 2 and fresh_acts.runs == 2  # one restored, one new
    assert fresh_amoeba.last_run_epoch == 1 and fresh_amoeba.last_run_step == 8
    other = AmoebaBoundCallback(num_examples=7, num_image_examples=8)
    assert other.num_image_examples == 7
    with pytest.warns(UserWarning, match="num_examples=6"):
        other.load_state_dict(amoeba.state_dict())


# ----------------------------------------------------------------------------------------- quickstart config

SMALL_CALLBACKS = """
trainer:
  callbacks:
    - class_path: callbacks.AmoebaBoundCallback
      init_args: {kinds: [uniform, asymmetric], num_examples: 16, every_n_epochs: 4, num_image_examples: 4,
                  iterations: 5}
    - class_path: callbacks.ACTSCallback
      init_args: {attack: pgd, eps: 0.1, steps: 2, num_examples: 16}
"""
QUICK = ["--trainer.max_epochs=1", "--data.init_args.max_train_examples=50", "--data.init_args.max_eval_examples=16",
         "--data.init_args.batch_size=25", "--model.init_args.attack_steps=2", "--model.init_args.eval_attack_steps=2",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def test_quickstart_config_declares_both_callbacks() -> None:
    from cli import CONFIG_DIR

    text = (CONFIG_DIR / "robust_lenet.yaml").read_text()
    assert "callbacks.AmoebaBoundCallback" in text and "callbacks.ACTSCallback" in text


def test_quickstart_tensorboard_holds_the_callbacks_output(tmp_path: Path) -> None:
    (tmp_path / "small.yaml").write_text(SMALL_CALLBACKS)
    cli = train.main(["--config", "robust_lenet.yaml", "--config", str(tmp_path / "small.yaml"), *QUICK])
    assert {type(c).__name__ for c in cli.trainer.callbacks} >= {"AmoebaBoundCallback", "ACTSCallback"}
    acc = events(cli.trainer.logger.log_dir)
    tags = acc.Tags()
    for tag in ("val/amoeba/uniform/mean_width", "val/amoeba/asymmetric/certified_fraction", "val/acts/mean",
                "val/acts/median", "val/acts/attack_success_rate", "val/acts/overlap_percent"):
        assert len(acc.Scalars(tag)) == 1, tag
    certified = acc.Scalars("val/amoeba/uniform/mean_width")[0].value > 0  # one epoch on 50 digits: maybe none
    assert ("val/amoeba/ratio_asymmetric_uniform" in tags["scalars"]) == certified
    assert ("val/amoeba/uniform/eps_lower" in tags["histograms"]) == certified
    assert "val/acts/scores" in tags["histograms"]
    assert {"val/amoeba/inputs", "val/amoeba/uniform/heatmap", "val/amoeba/asymmetric/explorer"} <= set(tags["images"])


# ----------------------------------------------------------------------------------------- other loggers


def test_csv_logger_gets_the_scalars_and_one_warning_that_images_are_skipped(tmp_path: Path) -> None:
    """Without a TensorBoardLogger the scalars still reach the logger; images and histograms are skipped, said once."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    amoeba, acts = AmoebaBoundCallback(**FAST_AMOEBA), ACTSCallback(**FAST_ACTS)
    run = trainer(tmp_path, [amoeba, acts], max_epochs=2, logger=CSVLogger(tmp_path, name="csv", version=0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.fit(classifier(), datamodule=datamodule())
    skipped = [str(w.message) for w in caught if "images and histograms are skipped" in str(w.message)]
    assert len([m for m in skipped if m.startswith("AmoebaBoundCallback")]) == 1, skipped
    assert len([m for m in skipped if m.startswith("ACTSCallback")]) == 1, skipped
    assert all("CSVLogger" in message for message in skipped)
    assert amoeba.runs == 2 and acts.runs == 2
    with open(Path(run.logger.log_dir) / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    for tag in ("val/amoeba/uniform/mean_width", "val/amoeba/asymmetric/certified_fraction", "val/acts/mean"):
        assert len([row for row in rows if row.get(tag)]) == 2, tag


def test_the_tensorboard_logger_among_several_gets_images_and_histograms(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    loggers = [CSVLogger(tmp_path, name="csv", version=0), TensorBoardLogger(tmp_path, name="tb", version=0)]
    amoeba, acts = AmoebaBoundCallback(**FAST_AMOEBA), ACTSCallback(**FAST_ACTS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [amoeba, acts], logger=loggers).validate(classifier(), datamodule=datamodule())
    assert not [w for w in caught if "images and histograms are skipped" in str(w.message)]
    tags = events(str(tmp_path / "tb" / "version_0")).Tags()
    assert {"val/amoeba/inputs", "val/amoeba/uniform/heatmap", "val/amoeba/asymmetric/explorer"} <= set(tags["images"])
    assert "val/acts/scores" in tags["histograms"]
