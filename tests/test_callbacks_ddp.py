"""The callbacks under DDP with 2 CPU processes (gloo): same values as one process, every tag once per step."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import STORE_EVERYTHING_SIZE_GUIDANCE, EventAccumulator

from callbacks import ACTSCallback, AmoebaBoundCallback
from datamodules import MNISTDataModule
from lightning_modules import ImageClassifier

ROOT = Path(__file__).resolve().parent.parent
# 23 validation examples in batches of 4 on 2 ranks: rank 1's DistributedSampler pads with example 0 again,
# so the de-duplication of gathered per-example results is exercised.
EVAL_EXAMPLES = 23


def trained_classifier() -> ImageClassifier:
    """A quickly trained fc100 (plain loop, a few steps) so that a fair share of examples is certified."""
    torch.manual_seed(0)
    model = ImageClassifier(architecture="fc100", eval_attack_eps=0.0)
    dm = MNISTDataModule(source="embedded", max_train_examples=400)
    dm.setup("fit")
    x = torch.stack([dm.train_set[i][0] for i in range(400)])
    y = torch.as_tensor([dm.train_set[i][1] for i in range(400)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        for begin in range(0, 400, 50):
            optimizer.zero_grad()
            F.cross_entropy(model(x[begin:begin + 50]), y[begin:begin + 50]).backward()
            optimizer.step()
    return model


def validate(tmp_path: Path, name: str, model: ImageClassifier, **trainer_options: Any) -> tuple[dict[str, float], str]:
    callbacks = [AmoebaBoundCallback(kinds=("uniform", "asymmetric"), num_examples=EVAL_EXAMPLES, iterations=8,
                                     num_image_examples=4),
                 ACTSCallback(attack="pgd", steps=2, num_examples=EVAL_EXAMPLES, bins=8)]
    logger = TensorBoardLogger(tmp_path, name=name, version=0)
    trainer = Trainer(accelerator="cpu", logger=logger, callbacks=callbacks, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, **trainer_options)
    dm = MNISTDataModule(source="embedded", batch_size=4, max_train_examples=8, max_eval_examples=EVAL_EXAMPLES)
    results = trainer.validate(model, datamodule=dm, verbose=False)[0]
    return results, str(Path(tmp_path) / name / "version_0")


def events(log_dir: str) -> EventAccumulator:
    accumulator = EventAccumulator(log_dir, size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    accumulator.Reload()
    return accumulator


@pytest.fixture
def file_system_sharing() -> Any:
    """Share tensors with the spawned ranks through files: some sandboxes refuse the default fd passing."""
    previous = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    yield
    torch.multiprocessing.set_sharing_strategy(previous)


@pytest.mark.slow
def test_ddp_values_equal_single_process_values(tmp_path: Path, file_system_sharing: None) -> None:
    model = trained_classifier()
    single, single_dir = validate(tmp_path, "single", model, devices=1)
    ddp, ddp_dir = validate(tmp_path, "ddp", model, devices=2, strategy="ddp_spawn")
    keys = sorted(k for k in single if k.startswith(("val/amoeba", "val/acts")))
    assert {"val/amoeba/asymmetric/mean_width", "val/amoeba/ratio_asymmetric_uniform", "val/acts/mean",
            "val/acts/auroc"} <= set(keys)
    assert sorted(k for k in ddp if k.startswith(("val/amoeba", "val/acts"))) == keys
    assert 0 < single["val/amoeba/uniform/certified_fraction"] < 1
    # Fractions are multiples of 1/23: a duplicated (padded) example would show up here.
    assert round(single["val/amoeba/uniform/certified_fraction"] * EVAL_EXAMPLES, 4) % 1 == 0
    for key in keys:  # batches differ between the runs; float rounding of batched kernels stays ~1e-5
        assert ddp[key] == pytest.approx(single[key], rel=1e-4), key

    one, two = events(single_dir), events(ddp_dir)
    for tag in ("val/amoeba/asymmetric/width", "val/amoeba/uniform/eps_lower", "val/acts/scores"):
        (h1,), (h2,) = one.Histograms(tag), two.Histograms(tag)
        assert h1.histogram_value.num == h2.histogram_value.num, tag
        assert h2.histogram_value.sum == pytest.approx(h1.histogram_value.sum, rel=1e-4), tag
    assert one.Tags()["images"] == two.Tags()["images"]
    for tag in one.Tags()["images"]:
        assert len(two.Images(tag)) == 1


SMALL_CALLBACKS = """
trainer:
  callbacks:
    - class_path: callbacks.AmoebaBoundCallback
      init_args: {kinds: [uniform, asymmetric], num_examples: 6, every_n_epochs: 1, num_image_examples: 4,
                  iterations: 5}
    - class_path: callbacks.ACTSCallback
      init_args: {attack: pgd, eps: 0.1, steps: 2, num_examples: 12}
"""


@pytest.mark.slow
def test_train_script_under_ddp_logs_every_tag_once_per_step(tmp_path: Path) -> None:
    (tmp_path / "small.yaml").write_text(SMALL_CALLBACKS)
    command = [sys.executable, str(ROOT / "train.py"), "--config", "robust_lenet.yaml", "--config", "small.yaml",
               "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
               "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
               "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
               "--data.init_args.max_train_examples", "40", "--data.init_args.max_eval_examples", "15",
               "--data.init_args.batch_size", "10", "--model.init_args.attack_steps", "2",
               "--model.init_args.eval_attack_steps", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    log_dirs = sorted((tmp_path / "logs" / "robust_lenet").glob("version_*"))
    assert len(log_dirs) == 1
    acc = events(str(log_dirs[0]))
    tags = acc.Tags()
    ours = {kind: [t for t in tags[kind] if t.startswith(("val/amoeba", "val/acts"))]
            for kind in ("scalars", "histograms", "images")}
    assert {"val/amoeba/uniform/mean_width", "val/acts/mean", "val/acts/overlap_percent"} <= set(ours["scalars"])
    assert "val/acts/scores" in ours["histograms"] and "val/amoeba/inputs" in ours["images"]
    read = {"scalars": acc.Scalars, "histograms": acc.Histograms, "images": acc.Images}
    for kind, names in ours.items():
        for tag in names:
            steps = [event.step for event in read[kind](tag)]
            assert len(steps) == 2 and len(set(steps)) == 2, (tag, steps)  # two epochs, once per logging step
