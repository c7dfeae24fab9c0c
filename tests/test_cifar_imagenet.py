"""CIFAR-10 and ImageNet folders (generated files in the real formats), the new zoo entries and the weights option."""

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms

import certify
import train
from bounds.normalization import InputNormalization
from cli import make_cli
from datamodules import CIFAR10DataModule, ImageNetDataModule
from datamodules.cifar10 import CIFAR10_MEAN, CIFAR10_STD
from datamodules.imagenet import IMAGENET_MEAN, IMAGENET_STD
from lightning_modules import ImageClassifier
from lightning_modules.torchvision_models import hub_cache_file, resolve_torchvision_weights
from lightning_modules.zoo import ARCHITECTURES, build_model
from tests.data_files import cifar10_checksums, read_cifar10_batch, write_cifar10_batches, write_image_folder
from tests.test_certify_script import assert_radii_sound

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
WNIDS = ["n01440764", "n01443537", "n01484850"]


def cifar_files(root: Path) -> dict[str, str]:
    return write_cifar10_batches(root, per_batch=8, n_test=30)


def raw_cifar_image(root: Path, name: str, index: int) -> torch.Tensor:
    batch = read_cifar10_batch(root, name)
    return torch.as_tensor(batch["data"][index]).view(3, 32, 32).float() / 255


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------------------------------------------
def test_cifar10_attributes_split_range_and_pixels(tmp_path: Path) -> None:
    md5s = cifar_files(tmp_path)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_size=8, augment=False)
    assert dm.input_shape == (3, 32, 32) and dm.num_classes == 10 and dm.input_range == (0.0, 1.0)
    assert dm.normalization == (CIFAR10_MEAN, CIFAR10_STD)
    with cifar10_checksums(md5s):
        dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (32, 8, 30)
    x, y = dm.test_set[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x, raw_cifar_image(tmp_path, "test_batch", 3))  # plain ToTensor: pixels in [0, 1]
    assert y == read_cifar10_batch(tmp_path, "test_batch")["labels"][3]
    train_and_val = torch.stack([dm.train_set[i][0] for i in range(32)] + [dm.val_set[i][0] for i in range(8)])
    assert float(train_and_val.min()) >= 0.0 and float(train_and_val.max()) <= 1.0
    all_train = torch.stack([raw_cifar_image(tmp_path, f"data_batch_{b}", i) for b in range(1, 6) for i in range(8)])
    # The split is a partition of the 40 training images.
    matches = (train_and_val.flatten(1)[:, None] == all_train.flatten(1)[None]).all(-1)
    assert matches.sum(1).eq(1).all() and matches.sum(0).eq(1).all()
    with cifar10_checksums(md5s):
        other = CIFAR10DataModule(data_dir=str(tmp_path), val_size=8, seed=1)
        other.setup("fit")
    assert [int(other.val_set[i][1]) for i in range(8)] != [int(dm.val_set[i][1]) for i in range(8)] or not \
        torch.equal(other.val_set[0][0], dm.val_set[0][0])


def test_cifar10_augmentation_only_on_the_training_split_and_switchable(tmp_path: Path) -> None:
    md5s = cifar_files(tmp_path)
    with cifar10_checksums(md5s):
        augmented = CIFAR10DataModule(data_dir=str(tmp_path), val_size=8, augment=True)
        plain = CIFAR10DataModule(data_dir=str(tmp_path), val_size=8, augment=False)
        augmented.setup("fit")
        plain.setup("fit")
    torch.manual_seed(0)
    draws = [torch.stack([augmented.train_set[i][0] for i in range(8)]) for _ in range(3)]
    assert not torch.equal(draws[0], draws[1]) or not torch.equal(draws[1], draws[2])
    assert torch.equal(augmented.val_set[0][0], augmented.val_set[0][0])
    assert torch.equal(augmented.test_set[0][0], plain.test_set[0][0])
    assert torch.equal(torch.stack([plain.train_set[i][0] for i in range(8)]),
                       torch.stack([plain.train_set[i][0] for i in range(8)]))
    assert augmented.train_set[0][0].shape == (3, 32, 32)


def test_cifar10_missing_and_rejected_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data_batch_1.*batches\.meta.*download: true"):
        CIFAR10DataModule(data_dir=str(tmp_path / "empty")).setup("fit")
    cifar_files(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="missing [^ ]*test_batch \\("):
        CIFAR10DataModule(data_dir=str(tmp_path)).setup("fit")
    cifar_files(tmp_path)  # Real format, but not the official files: torchvision's MD5 check fails.
    with pytest.raises(RuntimeError, match="MD5"):
        CIFAR10DataModule(data_dir=str(tmp_path), val_size=8).setup("fit")


# ---------------------------------------------------------------------------------------------------------------
# ImageNet folders
# ---------------------------------------------------------------------------------------------------------------
def test_imagenet_folder_preprocessing_labels_and_order(tmp_path: Path) -> None:
    written = write_image_folder(tmp_path, WNIDS, per_class=2)
    dm = ImageNetDataModule(data_dir=str(tmp_path), image_size=64)
    assert dm.input_shape == (3, 64, 64) and dm.num_classes == 1000 and dm.input_range == (0.0, 1.0)
    assert dm.normalization == (IMAGENET_MEAN, IMAGENET_STD) and dm.resize_size == 73
    assert ImageNetDataModule().resize_size == 256 and ImageNetDataModule(image_size=299).resize_size == 342
    dm.setup("test")
    assert dm.layout == "imagefolder" and dm.classes == WNIDS
    assert len(dm.test_set) == len(dm.val_set) == len(dm.train_set) == 6
    reference = transforms.Compose([transforms.Resize(73), transforms.CenterCrop(64), transforms.ToTensor()])
    seen = set()
    for i in range(6):
        x, y = dm.test_set[i]
        assert x.shape == (3, 64, 64) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        path = next(p for p in written[WNIDS[y]] if torch.equal(reference(Image.open(p).convert("RGB")), x))
        seen.add(path)
    assert len(seen) == 6  # every image once, with the label of its sorted folder position
    assert [dm.test_set[i][1] for i in range(6)] != sorted(dm.test_set[i][1] for i in range(6))  # shuffled once


def test_imagenet_errors_and_torchvision_root(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageNetDataModule(data_dir=str(tmp_path / "missing")).setup("test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No class folders"):
        ImageNetDataModule(data_dir=str(tmp_path / "empty")).setup("test")
    write_image_folder(tmp_path / "no_images", WNIDS, per_class=0)
    with pytest.raises(FileNotFoundError, match="No images"):
        ImageNetDataModule(data_dir=str(tmp_path / "no_images")).setup("test")
    write_image_folder(tmp_path / "three", WNIDS, per_class=1)
    with pytest.raises(ValueError, match="3 class folders but num_classes=2"):
        ImageNetDataModule(data_dir=str(tmp_path / "three"), num_classes=2).setup("test")
    # Empty class folders keep their index: only the second class has images.
    write_image_folder(tmp_path / "sparse", WNIDS, per_class=0)
    write_image_folder(tmp_path / "sparse", [WNIDS[1]], per_class=2)
    sparse = ImageNetDataModule(data_dir=str(tmp_path / "sparse"), image_size=32, num_classes=3)
    sparse.setup("test")
    assert [sparse.test_set[i][1] for i in range(2)] == [1, 1]
    # A prepared torchvision ImageNet root (meta.bin + val/).
    root = tmp_path / "torchvision_root"
    write_image_folder(root / "val", WNIDS, per_class=1)
    torch.save(({w: (f"class {w}",) for w in WNIDS}, [WNIDS[0]] * 3), root / "meta.bin")
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        tv = ImageNetDataModule(data_dir=str(root), image_size=32)
        tv.setup("test")
    assert tv.layout == "torchvision_imagenet" and tv.classes == WNIDS and len(tv.test_set) == 3
    assert "not the standard ImageNet index" in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# Zoo and weights
# ---------------------------------------------------------------------------------------------------------------
def test_cnn_7layer_is_the_published_cnn7() -> None:
    model = build_model("cnn_7layer", (3, 32, 32), 10)
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (64, (3, 3), (1, 1), (1, 1)), (64, (3, 3), (1, 1), (1, 1)), (128, (3, 3), (2, 2), (1, 1)),
        (128, (3, 3), (1, 1), (1, 1)), (128, (3, 3), (1, 1), (1, 1))]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model) == 5
    assert [type(m).__name__ for m in model][-5:] == ["Flatten", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert model[-4].in_features == 128 * 16 * 16 and model[-4].out_features == 512
    assert model.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_torchvision_classifiers_by_name_and_typos() -> None:
    assert {"resnet50", "vgg16", "inception_v3", "cnn_7layer", "resnet_small", "vit_b_16"} <= set(ARCHITECTURES)
    resnet = build_model("resnet50", (3, 64, 64), 1000)
    assert resnet.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 1000)
    inception = build_model("inception_v3", (3, 80, 80), 7)
    assert inception.AuxLogits is None and inception.transform_input
    assert inception.train()(torch.rand(2, 3, 80, 80)).shape == (2, 7)  # plain logits in train mode too
    with pytest.raises(ValueError, match="choose one of .*cnn_7layer.*resnet50"):
        build_model("resnet_5O", (3, 32, 32), 10)
    with pytest.raises(ValueError, match="RGB"):
        build_model("resnet18", (1, 28, 28), 10)


def test_weights_from_local_files(tmp_path: Path) -> None:
    source = build_model("resnet18", (3, 32, 32), 10)
    torch.save(source.state_dict(), tmp_path / "resnet18.pt")
    loaded = ImageClassifier("resnet18", (3, 32, 32), 10, (0.0, 1.0), weights=str(tmp_path / "resnet18.pt"))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.model.state_dict().values(),
                                                 strict=True))
    # A Lightning checkpoint of a normalised classifier loads into a fresh one (keys under model.1.).
    normalised = ImageClassifier("lenet", (3, 32, 32), 10, (0.0, 1.0), normalization=(CIFAR10_MEAN, CIFAR10_STD))
    torch.save({"state_dict": normalised.state_dict()}, tmp_path / "lenet.ckpt")
    again = ImageClassifier("lenet", (3, 32, 32), 10, (0.0, 1.0), weights=str(tmp_path / "lenet.ckpt"))
    assert torch.equal(again.model[0][0].weight, normalised.model[1][0][0].weight)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ImageClassifier("lenet", (3, 32, 32), 10, (0.0, 1.0), weights=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="do not fit"):
        ImageClassifier("fc100", (3, 32, 32), 10, (0.0, 1.0), weights=str(tmp_path / "lenet.ckpt"))


def test_torchvision_weights_only_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    assert hub_cache_file(resolve_torchvision_weights("resnet50", "IMAGENET1K_V1")) == expected
    for name in ("IMAGENET1K_V1", "ResNet50_Weights.IMAGENET1K_V1"):
        with pytest.raises(FileNotFoundError, match=str(expected)):
            ImageClassifier("resnet50", (3, 224, 224), 1000, (0.0, 1.0), weights=name)
    with pytest.raises(ValueError, match="IMAGENET1K_V2"):
        build_model("resnet50", (3, 224, 224), 1000, weights="IMAGENET9K")
    with pytest.raises(ValueError, match="zoo model"):
        build_model("lenet", (3, 32, 32), 10, weights="IMAGENET1K_V1")
    # A file in the cache is read offline by torchvision's own loader.
    fake = build_model("resnet18", (3, 32, 32), 1000)
    cached = hub_cache_file(resolve_torchvision_weights("resnet18", "DEFAULT"))
    cached.parent.mkdir(parents=True)
    torch.save(fake.state_dict(), cached)
    loaded = build_model("resnet18", (3, 32, 32), 1000, weights="DEFAULT")
    assert torch.equal(loaded.fc.weight, fake.fc.weight)


def test_normalization_none_keeps_state_dict_keys() -> None:
    network_keys = list(build_model("lenet", (1, 28, 28), 10).state_dict())
    plain = ImageClassifier("lenet", (1, 28, 28), 10)
    assert list(plain.model.state_dict()) == network_keys
    assert [k for k in plain.state_dict() if k.startswith("model.")] == [f"model.{k}" for k in network_keys]
    normalised = ImageClassifier("lenet", (3, 32, 32), 10, (0.0, 1.0), normalization=(CIFAR10_MEAN, CIFAR10_STD))
    assert isinstance(normalised.model[0], InputNormalization)
    assert list(normalised.model.state_dict())[:2] == ["0.mean", "0.std"]
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    assert torch.allclose(normalised.eval()(x), normalised.model[1]((x - mean) / std))


# ---------------------------------------------------------------------------------------------------------------
# Configs end to end
# ---------------------------------------------------------------------------------------------------------------
def cifar_args(config: str, data_dir: Path, log_dir: Path) -> list[str]:
    args = ["--config", config, f"--data.init_args.data_dir={data_dir}", "--data.init_args.download=false",
            "--data.init_args.val_size=8", "--data.init_args.batch_size=8", "--model.init_args.eval_attack_steps=1",
            f"--trainer.logger.init_args.save_dir={log_dir}", *QUIET]
    if "pgd" in config:
        args.append("--model.init_args.attack_steps=1")
    if "bound_guided" in config:
        args.append("--model.init_args.shape_iterations=1")
    return args


@pytest.mark.parametrize("config", [f"cifar10_{m}_{t}.yaml" for m in ("cnn7", "resnet")
                                    for t in ("normal", "pgd", "bound_guided")])
def test_cifar10_configs_run(config: str, tmp_path: Path) -> None:
    md5s = cifar_files(tmp_path / "data")
    with cifar10_checksums(md5s):
        cli = train.main([*cifar_args(config, tmp_path / "data", tmp_path / "logs"), "--trainer.fast_dev_run=true"])
    assert cli.trainer.state.finished
    assert cli.model.hparams.normalization == (CIFAR10_MEAN, CIFAR10_STD)
    assert isinstance(cli.model.model[0], InputNormalization)
    assert cli.model.hparams.architecture in ("cnn_7layer", "resnet_small")


# Full CROWN of the paper-size cnn_7layer takes minutes per bound on a 2-core CPU (README, Model zoo) and a CROWN
# certification needs about ten bounds per example, so the CROWN case certifies the same architecture at width 4
# (every layer type, the stride-2 convolution, BatchNorm folding and the windowed intermediate bounds alike).
NARROW_CNN7 = ['--model.init_args.architecture_options={"width": 4, "linear_size": 16}']


@pytest.mark.slow
@pytest.mark.parametrize(("config", "method", "extra"), [
    ("cifar10_cnn7_normal.yaml", "ibp", []),
    ("cifar10_cnn7_normal.yaml", "crown", NARROW_CNN7),
    ("cifar10_resnet_normal.yaml", "ibp", []),
    ("cifar10_resnet_normal.yaml", "crown", []),
])
def test_cifar10_train_then_certify_every_box_attacked(config: str, method: str, extra: list[str],
                                                       tmp_path: Path) -> None:
    md5s = cifar_files(tmp_path / "data")
    args = [*cifar_args(config, tmp_path / "data", tmp_path / "logs"), *extra]
    with cifar10_checksums(md5s):
        cli = train.main([*args, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                          "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1"])
        ckpt = cli.trainer.checkpoint_callback.best_model_path
        assert ckpt
        out = tmp_path / "report"
        summary = certify.main([*args, f"--ckpt_path={ckpt}", "--certify.num_examples=1", "--certify.batch_size=1",
                                f"--certify.method={method}", "--certify.crown_rounds=1",
                                "--certify.attacks.enabled=false", "--certify.acts.enabled=false",
                                "--certify.num_figure_examples=1",
                                f"--certify.output_dir={out}"])
    assert set(summary["kinds"]) == {"uniform", "nonuniform", "asymmetric"}
    assert all(v["examples"] == 1 for v in summary["kinds"].values())
    cli.datamodule.setup("test")
    network = cli.model.model.eval()
    assert isinstance(network[0], InputNormalization)  # boxes are in [0, 1] pixel units, normalisation inside
    if extra:
        assert network[1][0].out_channels == 4 and network[1][-1].in_features == 16  # the narrow cnn_7layer
    assert_radii_sound(network, cli.datamodule.test_set, torch.load(out / "radii.pt"), method=method)


@pytest.mark.parametrize(("config", "size"), [("imagenet_resnet50_acts.yaml", 224), ("imagenet_vgg16_acts.yaml", 224),
                                              ("imagenet_inception_v3_acts.yaml", 299)])
def test_imagenet_configs_instantiate(config: str, size: int, tmp_path: Path) -> None:
    write_image_folder(tmp_path / "val", WNIDS, per_class=1)
    cli = make_cli(["--config", config, f"--data.init_args.data_dir={tmp_path / 'val'}",
                    f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}", *QUIET])
    assert cli.datamodule.input_shape == (3, size, size) and cli.model.hparams.num_classes == 1000
    assert cli.model.hparams.normalization == (IMAGENET_MEAN, IMAGENET_STD)
    assert isinstance(cli.model.model[0], InputNormalization)
    options = cli.config_init["certify"]
    assert options.acts.enabled and not options.attacks.enabled
    assert options.acts.steps == 3 and options.acts.step_fraction == 0.5
    assert options.acts.eps == pytest.approx([0.1 / 255, 0.2 / 255, 0.3 / 255])
