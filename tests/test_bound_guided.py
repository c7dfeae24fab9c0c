"""Asymmetric-bound-guided training: the robust loss bounds the clean loss, the shape, the schedule, the module."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)

import train
from bounds.analysis import mean_certified_width
from bounds.certify import certify
from bounds.guided_training import (
    asymmetric_shape,
    lagrangian_refresh,
    normalise_shape,
    robust_cross_entropy,
    shaped_box,
    worst_case_logits,
)
from datamodules import Synthetic2DDataModule
from lightning_modules.bound_guided import BoundGuidedClassifier, ramp_fraction
from lightning_modules.zoo import build_model

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]



def synthetic_batch(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    data = Synthetic2DDataModule(num_points=2 * n, seed=seed, train_fraction=0.5)
    data.setup("fit")
    train_x, train_y = (torch.stack(t) for t in zip(*[data.train_set[i] for i in range(n)], strict=True))
    test_x, test_y = (torch.stack(t) for t in zip(*[data.test_set[i] for i in range(n)], strict=True))
    return train_x, train_y.long(), test_x, test_y.long()


def fit(model: BoundGuidedClassifier, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int = 0) -> None:
    """Plain loop over ``training_loss`` at the end of the schedule (no Trainer: fast and deterministic)."""
    torch.manual_seed(seed)
    model.progress = 1e9
    optimiser = torch.optim.Adam(model.parameters(), lr=model.hparams.learning_rate)
    for step in range(steps):
        index = torch.randint(0, x.shape[0], (100,), generator=torch.Generator().manual_seed(step))
        loss, _ = model.training_loss(x[index], y[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def test_worst_case_logits_pick_lower_for_label_and_upper_elsewhere() -> None:
    lower = torch.tensor([[0.0, 1.0, 2.0]])
    upper = torch.tensor([[10.0, 11.0, 12.0]])
    assert worst_case_logits(lower, upper, torch.tensor([1])).tolist() == [[10.0, 1.0, 12.0]]
    with pytest.raises(ValueError, match="need bounds"):
        worst_case_logits(lower, upper[:, :2], torch.tensor([1]))


@pytest.mark.parametrize("architecture", ["lenet", "fc100"])
def test_robust_loss_upper_bounds_clean_loss_on_random_nets(architecture: str) -> None:
    torch.manual_seed(0)
    model = build_model(architecture, (1, 28, 28), 10)
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    y = torch.randint(0, 10, (8,))
    clean = F.cross_entropy(model(x), y, reduction="none")
    for scale in (0.0, 1e-3, 0.05, 0.3):
        eps_lower, eps_upper = scale * torch.rand_like(x), scale * torch.rand_like(x)
        robust, _ = robust_cross_entropy(model, x - eps_lower, x + eps_upper, y, reduction="none")
        assert (robust >= clean - 1e-4).all()
        # ... and every point of the box, not only the centre.
        inside = x - eps_lower + torch.rand_like(x) * (eps_lower + eps_upper)
        assert (robust >= F.cross_entropy(model(inside), y, reduction="none") - 1e-4).all()
    robust_zero, verified = robust_cross_entropy(model, x, x, y, reduction="none")
    torch.testing.assert_close(robust_zero, clean, atol=1e-4, rtol=1e-4)
    assert torch.equal(verified, model(x).argmax(1) == y)


def test_robust_loss_upper_bounds_clean_loss_on_a_trained_net() -> None:
    train_x, train_y, test_x, test_y = synthetic_batch()
    torch.manual_seed(0)
    model = BoundGuidedClassifier(architecture="fcnn2d", input_shape=(2,), num_classes=10, learning_rate=0.01,
                                  target_radius=0.02, final_clean_weight=0.5, eval_attack_eps=0.0)
    fit(model, train_x, train_y, steps=60)
    net = model.model
    assert (net(test_x).argmax(1) == test_y).float().mean() > 0.5
    clean = F.cross_entropy(net(test_x), test_y, reduction="none")
    for scale in (0.001, 0.02, 0.2):
        eps_lower, eps_upper = scale * torch.rand_like(test_x), scale * torch.rand_like(test_x)
        robust, verified = robust_cross_entropy(net, test_x - eps_lower, test_x + eps_upper, test_y, reduction="none")
        assert (robust >= clean - 1e-5).all()
        assert not (verified & (net(test_x).argmax(1) != test_y)).any()
    # A verified box certifies: certify's uniform radius of a verified example is at least the box's.
    lower, upper = shaped_box(test_x, 0.01, torch.ones_like(test_x), torch.ones_like(test_x))
    _, verified = robust_cross_entropy(net, lower, upper, test_y)
    if verified.any():
        cert = certify(net, test_x[verified], test_y[verified], kind="uniform")
        assert (cert.eps_lower >= 0.01 - 1e-3).all()


def test_normalise_shape_has_unit_geometric_mean_and_clipped_ratios() -> None:
    torch.manual_seed(0)
    eps_lower = torch.rand(4, 1, 6, 6).pow(4) + 1e-6
    eps_upper = torch.rand(4, 1, 6, 6) * 3
    a1, a2 = normalise_shape(eps_lower, eps_upper, max_ratio=5.0)
    half = (a1 + a2) / 2
    torch.testing.assert_close(half.log().flatten(1).mean(1), torch.zeros(4), atol=1e-5, rtol=0)
    assert half.max() / half.min() <= 25.0 * 1.5
    torch.testing.assert_close(a1 / (a1 + a2), eps_lower / (eps_lower + eps_upper))
    u1, u2 = normalise_shape(torch.full((2, 3), 0.2), torch.full((2, 3), 0.2))
    torch.testing.assert_close(u1, torch.ones(2, 3))
    torch.testing.assert_close(u2, torch.ones(2, 3))
    flat1, flat2 = normalise_shape(eps_lower, eps_upper, max_ratio=1.0)
    torch.testing.assert_close((flat1 + flat2) / 2, torch.ones_like(flat1))
    with pytest.raises(ValueError, match="max_ratio"):
        normalise_shape(eps_lower, eps_upper, max_ratio=0.5)


def test_lagrangian_refresh_leaves_model_gradients_alone_and_shapes_the_box() -> None:
    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10)
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    y = model(x).argmax(1)
    start = torch.full_like(x, 0.05)
    eps_lower, eps_upper = lagrangian_refresh(model, x, y, start, start, iterations=4)
    assert all(p.grad is None for p in model.parameters())
    assert eps_lower.shape == x.shape and (eps_lower > 0).all() and (eps_upper > 0).all()
    assert not torch.equal(eps_lower, eps_upper)  # the asymmetric optimiser moved the two sides differently
    same_lower, same_upper = lagrangian_refresh(model, x, y, start, start, iterations=0)
    assert torch.equal(same_lower, start) and torch.equal(same_upper, start)
    a1, a2 = asymmetric_shape(model, x, y, 0.05, iterations=4, max_ratio=3.0)
    torch.testing.assert_close(((a1 + a2) / 2).log().flatten(1).mean(1), torch.zeros(4), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="size must be positive"):
        asymmetric_shape(model, x, y, 0.0)
    with pytest.raises(ValueError, match="iterations"):
        lagrangian_refresh(model, x, y, start, start, iterations=-1)


def test_schedule_ramps_radius_up_and_clean_weight_down() -> None:
    model = BoundGuidedClassifier(target_radius=0.2, warmup_epochs=1, ramp_epochs=4, final_clean_weight=0.25,
                                  eval_attack_eps=0.0)
    assert model.schedule(0.5) == (0.0, 1.0)
    size, kappa = model.schedule(3.0)
    assert math.isclose(size, 0.1) and math.isclose(kappa, 0.625)
    assert model.schedule(10.0) == (0.2, 0.25)
    assert ramp_fraction(2.0, 2.0, 0.0) == 1.0 and ramp_fraction(1.9, 2.0, 0.0) == 0.0
    assert model.verify_radius == 0.2
    assert BoundGuidedClassifier(eval_verify_radius=0.05).verify_radius == 0.05


def test_training_loss_is_clean_during_warmup_and_bounds_it_afterwards() -> None:
    torch.manual_seed(0)
    model = BoundGuidedClassifier(target_radius=0.1, warmup_epochs=1, ramp_epochs=1, final_clean_weight=0.0,
                                  shape_iterations=2, eval_attack_eps=0.0)
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    y = torch.randint(0, 10, (6,))
    model.progress = 0.0
    warm, logits = model.training_loss(x, y)
    torch.testing.assert_close(warm, F.cross_entropy(logits, y))
    model.progress = 5.0
    robust, logits = model.training_loss(x, y)
    assert all(p.grad is None for p in model.parameters())  # the shape step took no parameter gradients
    assert robust >= F.cross_entropy(logits, y)
    robust.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_short_bound_guided_run_increases_asymmetric_width() -> None:
    train_x, train_y, test_x, test_y = synthetic_batch()
    widths = {}
    for name, clean_weight in (("guided", 0.0), ("clean", 1.0)):
        torch.manual_seed(0)
        model = BoundGuidedClassifier(architecture="fcnn2d", input_shape=(2,), num_classes=10, learning_rate=0.01,
                                      target_radius=0.05, warmup_epochs=0, ramp_epochs=0,
                                      final_clean_weight=clean_weight, shape_iterations=3, eval_attack_eps=0.0)
        fit(model, train_x, train_y, steps=80)
        cert = certify(model.model, test_x[:150], test_y[:150], kind="asymmetric", iterations=30)
        widths[name] = mean_certified_width(cert)
    assert widths["guided"] > 1.2 * widths["clean"] > 0


def test_trains_through_train_main_with_bound_loss(tmp_path: Path) -> None:
    # The LeNet config's module and schedule on the small 2-D data (the config itself runs in test_train.py).
    cli = train.main(["--config", "bound_guided_lenet.yaml", "--trainer.max_epochs=1",
                      "--data=datamodules.Synthetic2DDataModule", "--data.init_args.num_points=400",
                      "--model.init_args.architecture=fcnn2d",
                      "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                      "--trainer.limit_test_batches=1", "--trainer.log_every_n_steps=1",
                      f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
                      "--model.init_args.warmup_epochs=0", "--model.init_args.ramp_epochs=0",
                      "--model.init_args.shape_iterations=2", "--model.init_args.eval_attack_steps=2", *QUIET])
    assert cli.trainer.state.finished
    assert isinstance(cli.model, BoundGuidedClassifier)
    events = EventAccumulator(cli.trainer.logger.log_dir, size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("train/robust_loss", "train/verified_acc", "train/radius", "train/clean_weight",
                "val/verified_acc", "test/verified_acc", "test/acc"):
        assert tag in tags, tag
        assert all(math.isfinite(event.value) for event in events.Scalars(tag))
    assert events.Scalars("train/radius")[-1].value == pytest.approx(0.15)
    assert events.Scalars("train/robust_loss")[-1].value > 0


def test_trains_with_amoeba_bound_and_acts_callbacks(tmp_path: Path) -> None:
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import TensorBoardLogger

    from callbacks import ACTSCallback, AmoebaBoundCallback

    data = Synthetic2DDataModule(num_points=600, batch_size=50)
    model = BoundGuidedClassifier(architecture="fcnn2d", input_shape=(2,), num_classes=10, learning_rate=0.01,
                                  target_radius=0.05, warmup_epochs=0, ramp_epochs=1, shape_iterations=2,
                                  eval_attack_eps=0.05, eval_attack_steps=2)
    trainer = Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=2, num_sanity_val_steps=0,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      logger=TensorBoardLogger(tmp_path / "logs"),
                      callbacks=[AmoebaBoundCallback(num_examples=8, num_image_examples=2, every_n_epochs=1,
                                                     iterations=5),
                                 ACTSCallback(num_examples=16, steps=2, every_n_epochs=1)])
    trainer.fit(model, datamodule=data)
    metrics = trainer.callback_metrics
    for tag in ("val/amoeba/asymmetric/mean_width", "val/amoeba/uniform/certified_fraction", "val/acts/mean",
                "train/robust_loss", "val/verified_acc"):
        assert tag in metrics, tag
    assert float(metrics["val/amoeba/asymmetric/mean_width"]) > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_radius": 0.0}, "target_radius"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"ramp_epochs": -0.5}, "ramp_epochs"),
        ({"final_clean_weight": 1.5}, "final_clean_weight"),
        ({"shape": "round"}, "shape"),
        ({"shape_iterations": -1}, "shape_iterations"),
        ({"shape_lr": 0.0}, "shape_lr"),
        ({"shape_max_ratio": 0.9}, "shape_max_ratio"),
        ({"eval_verify_radius": -0.1}, "eval_verify_radius"),
        ({"learning_rate": 0.0}, "learning_rate"),
    ],
)
def test_invalid_hyperparameters_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BoundGuidedClassifier(**kwargs)
