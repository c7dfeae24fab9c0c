"""train.py and the shared CLI: every config instantiates and runs, bad input gets clear errors, resume works."""

import contextlib
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)

import train
from cli import CONFIG_DIR, CheckpointMismatchError, resolve_config_arguments
from tests.data_files import (
    cifar10_checksums,
    svhn_checksums,
    write_cifar10_batches,
    write_image_folder,
    write_mnist_idx,
    write_svhn_mat,
)

CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def data_overrides(config: str, data_dir: Path) -> tuple[list[str], AbstractContextManager]:
    """Point a config at tiny generated files in the real formats (IDX / .mat / CIFAR pickles / JPEGs), never the
    network; the context manager registers the tiny files' checksums where torchvision checks them."""
    text = (CONFIG_DIR / config).read_text()
    if "SVHNDataModule" in text:
        md5s = write_svhn_mat(data_dir, n_train=40, n_test=20)
        return [f"--data.init_args.data_dir={data_dir}", "--data.init_args.download=false",
                "--data.init_args.val_size=10"], svhn_checksums(md5s)
    if "CIFAR10DataModule" in text:
        md5s = write_cifar10_batches(data_dir, per_batch=8, n_test=20)
        return [f"--data.init_args.data_dir={data_dir}", "--data.init_args.download=false",
                "--data.init_args.val_size=10", "--data.init_args.batch_size=8"], cifar10_checksums(md5s)
    if "ImageNetDataModule" in text:
        write_image_folder(data_dir, ["n01440764", "n01443537"], per_class=2)
        return [f"--data.init_args.data_dir={data_dir}", "--data.init_args.image_size=80",
                "--data.init_args.batch_size=2"], contextlib.nullcontext()
    if "source: torchvision" in text:
        kind = "FashionMNIST" if "FashionMNIST" in text else "MNIST"
        write_mnist_idx(data_dir, num_train=40, num_test=20, kind=kind)
        return [f"--data.init_args.data_dir={data_dir}", "--data.init_args.download=false",
                "--data.init_args.val_size=10"], contextlib.nullcontext()
    return [], contextlib.nullcontext()


def run_train(args: list[str], checksums: AbstractContextManager | None = None):
    """Run train.main inside ``checksums`` (the tiny files' MD5 registration), if given."""
    with checksums or contextlib.nullcontext():
        return train.main(args)


def test_configs_folder_has_every_paper_model_and_mode() -> None:
    expected = {"robust_lenet.yaml", "normal_lenet.yaml", "synthetic2d.yaml", "and_gate.yaml"}
    for stem in ("mnist_fc100", "mnist_fc300", "mnist_fc500", "mnist_lenet", "fmnist_fc100", "fmnist_lenet",
                 "svhn_fc300", "svhn_lenet"):
        expected |= {f"{stem}_normal.yaml", f"{stem}_pgd.yaml"}
    assert expected <= set(CONFIGS)


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_instantiates_and_runs(config: str, tmp_path: Path) -> None:
    overrides, md5s = data_overrides(config, tmp_path / "data")
    cli = run_train(["--config", config, "--trainer.fast_dev_run=true",
                     f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}", *QUIET, *overrides], md5s)
    assert cli.trainer.state.finished
    assert tuple(cli.model.hparams.input_shape) == tuple(cli.datamodule.input_shape)
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes
    logits = cli.model(torch.zeros(2, *cli.datamodule.input_shape))
    assert logits.shape == (2, cli.datamodule.num_classes)


def test_bare_config_name_resolves_in_configs_folder() -> None:
    assert resolve_config_arguments(["--config", "robust_lenet.yaml"])[1] == str(CONFIG_DIR / "robust_lenet.yaml")
    assert resolve_config_arguments(["--config=robust_lenet"])[0] == f"--config={CONFIG_DIR / 'robust_lenet.yaml'}"


def test_missing_config_lists_available_configs() -> None:
    with pytest.raises(FileNotFoundError, match="Available configs: .*robust_lenet.yaml"):
        train.main(["--config", "no_such_config.yaml"])


def test_unknown_config_key_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text((CONFIG_DIR / "normal_lenet.yaml").read_text() + "unknown_top_level_key: 3\n")
    with pytest.raises(SystemExit) as raised:
        train.main(["--config", str(config)])
    assert raised.value.code != 0
    assert "unknown_top_level_key" in capsys.readouterr().err


def test_unknown_model_argument_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train.main(["--config", "normal_lenet.yaml", "--model.init_args.no_such_argument=1"])
    assert "no_such_argument" in capsys.readouterr().err


def test_data_dir_without_data_and_without_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="download"):
        train.main(["--config", "mnist_fc100_normal.yaml", f"--data.init_args.data_dir={tmp_path / 'empty'}",
                    "--data.init_args.download=false", "--trainer.fast_dev_run=true",
                    f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}", *QUIET])


def test_checkpoint_that_does_not_fit_the_model(tmp_path: Path) -> None:
    cli = train.main(["--config", "normal_lenet.yaml", "--model.init_args.architecture=fc100",
                      "--trainer.fast_dev_run=true", f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
                      *QUIET])
    ckpt = tmp_path / "fc100.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    with pytest.raises(CheckpointMismatchError, match="fc100"):
        train.main(["--config", "normal_lenet.yaml", f"--ckpt_path={ckpt}", "--trainer.fast_dev_run=true",
                    f"--trainer.logger.init_args.save_dir={tmp_path / 'logs2'}", *QUIET])


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Checkpoint not found"):
        train.main(["--config", "normal_lenet.yaml", f"--ckpt_path={tmp_path / 'missing.ckpt'}", *QUIET])


def test_training_writes_events_and_checkpoints_and_resumes(tmp_path: Path) -> None:
    small = ["--data.init_args.max_train_examples=200", "--data.init_args.max_eval_examples=100",
             "--model.init_args.eval_attack_steps=2", "--model.init_args.attack_steps=2",
             f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.log_every_n_steps=1", *QUIET]
    cli = train.main(["--config", "robust_lenet.yaml", "--trainer.max_epochs=1", *small])
    run_dir = Path(cli.trainer.log_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert (run_dir / "config.yaml").is_file()
    events = EventAccumulator(str(run_dir), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss_step", "train/loss_epoch", "train/acc", "val/loss", "val/acc", "val/adv_acc",
            "test/acc", "test/adv_acc"} <= tags
    steps_after_one_epoch = cli.trainer.global_step

    resumed = train.main(["--config", "robust_lenet.yaml", "--trainer.max_epochs=2", f"--ckpt_path={last}", *small])
    assert resumed.trainer.current_epoch == 2
    assert resumed.trainer.global_step == 2 * steps_after_one_epoch
    # The resumed run logs into the interrupted run's folder: one TensorBoard run with both epochs.
    assert Path(resumed.trainer.log_dir) == run_dir
    assert (run_dir / "config_resumed.yaml").is_file() and "ckpt_path: null" in (run_dir / "config.yaml").read_text()
    assert Path(resumed.trainer.checkpoint_callback.dirpath).resolve() == (run_dir / "checkpoints").resolve()
    events = EventAccumulator(str(run_dir), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE).Reload()
    assert len(events.Scalars("val/acc")) == 2
    assert [e.step for e in events.Scalars("train/loss_epoch")] == sorted({e.step for e in events.Scalars(
        "train/loss_epoch")})

    # The config.yaml saved in the run folder is itself a valid config for the same CLI.
    again = train.main(["--config", str(run_dir / "config.yaml"), "--trainer.fast_dev_run=true",
                        f"--trainer.logger.init_args.save_dir={tmp_path / 'again'}"])
    assert again.trainer.state.finished
