"""certify.py's ACTS report on a torchvision ResNet50 (random weights) over a generated ImageFolder of JPEGs.

The ImageNet config as shipped (``configs/imagenet_resnet50_acts.yaml``: FGSM, BIM and PGD, 3 steps of eps/2, no box
certification, the 1,000-class ResNet50), without a checkpoint, on 4 JPEGs cropped to 32x32 so that it runs in
seconds. A random ResNet50 classifies almost no image correctly, so the examples are scored against the model's own
predictions (``certify.labels: predicted``), which the report records, as it records the weights used. At the
paper's levels (0.1/255 to 0.3/255) no attack changes the random model's prediction on these images (FGSM first does
at 1/255), so the test raises the levels to 1/255, 3/255 and 10/255 to have attacked and surviving examples.
"""

import contextlib
import io
import json
import logging
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)

import certify
from tests.data_files import write_image_folder

EXAMPLES = 4
ARGS = ["--config", "imagenet_resnet50_acts.yaml", "--model.init_args.weights=null",
        "--data.init_args.image_size=32", "--data.init_args.batch_size=4", "--certify.allow_no_checkpoint=true",
        "--certify.labels=predicted", f"--certify.num_examples={EXAMPLES}", f"--certify.acts.num_examples={EXAMPLES}",
        "--certify.batch_size=4", "--certify.acts.eps=[0.00392156862745098, 0.011764705882352941, 0.0392156862745098]",
        "--certify.acts.clever.norms=[l2, linf]", "--certify.acts.clever.num_batches=2",
        "--certify.acts.clever.batch_size=4", "--certify.acts.bins=5", "--trainer.enable_model_summary=false"]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def imagenet_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, str, list[str]]:
    root = tmp_path_factory.mktemp("imagenet")
    write_image_folder(root / "val", ["n01440764", "n01443537"], per_class=EXAMPLES // 2)
    out = root / "report"
    records = _Records()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(records)
    bar = io.StringIO()
    try:
        with contextlib.redirect_stdout(bar):  # Lightning's test progress bar (enabled, as in the config)
            summary = certify.main([*ARGS, f"--data.init_args.data_dir={root / 'val'}", f"--certify.output_dir={out}",
                                    f"--trainer.logger.init_args.save_dir={root / 'logs'}"])
    finally:
        logger.removeHandler(records)
    assert summary is not None
    return out, root / "logs", summary, bar.getvalue(), records.messages


def test_resnet50_acts_report_writes_every_table_and_figure(
        imagenet_report: tuple[Path, Path, dict, str, list[str]]) -> None:
    out, _, summary, _, _ = imagenet_report
    acts = json.loads((out / "acts.json").read_text())
    assert acts == json.loads(json.dumps(summary["acts"]))
    assert acts["model"] == "resnet50" and acts["labels"] == "predicted"
    assert acts["weights"].startswith("as built") and summary["weights"] == acts["weights"]
    assert acts["examples"] == EXAMPLES and acts["clean_accuracy"] == 1.0
    assert 0.0 <= acts["dataset_accuracy"] <= 1.0
    assert summary["kinds"] == {}  # the config runs no box certification
    assert list(acts["attacks"]) == ["fgsm", "bim", "pgd"]
    eps = [1 / 255, 3 / 255, 10 / 255]
    rows = torch.load(out / "acts.pt")
    assert rows["index"].tolist() == list(range(EXAMPLES))
    for attack, result in acts["attacks"].items():
        assert [level["eps"] for level in result["levels"]] == pytest.approx(eps)
        attacked = rows[f"{attack}/attacked"]
        assert attacked.shape == (EXAMPLES, 3) and rows[f"{attack}/acts_top_k"].shape == (EXAMPLES, 3, 5)
        assert bool((rows[f"{attack}/acts"] > 0).all())
        for level, entry in enumerate(result["levels"]):
            assert 0 <= entry["attacked"] <= EXAMPLES and entry["attacked"] == int(attacked[:, level].sum())
            assert entry["adversarial_accuracy"] == pytest.approx(1 - entry["attacked"] / EXAMPLES)
            for metric in ("acts", "clever_l2", "clever_linf"):
                assert 0.0 <= entry[metric]["overlap_percent"] <= 100.0
                assert entry[metric]["auroc"] is None or 0.0 <= entry[metric]["auroc"] <= 1.0
            assert set(entry["top_k"]) == {"1", "5", "10", "20", "50"}
            for separation in entry["top_k"].values():
                assert 0.0 <= separation["overlap_percent"] <= 100.0
        assert all(0 <= count <= EXAMPLES for count in result["attack_flips"].values())
        seconds = result["seconds_per_image"]["acts"].values()
        assert all(value > 0 and math.isfinite(value) for value in seconds)
    counts = [entry["attacked"] for result in acts["attacks"].values() for entry in result["levels"]]
    assert max(counts) > 0 and min(counts) < EXAMPLES  # attacked and surviving examples both occur
    table = (out / "acts.md").read_text()
    for caption in ("Table 1", "Table 2", "Table 3", "Table 5", "Table 6", "Table 7"):
        section = table.split(caption, 1)[1].split("\n\n", 2)[1]
        body = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| Attack")
                and not line.startswith("| Model")]
        attack_rows = {line.split("|")[1].strip() for line in body}
        if caption == "Table 6":
            assert {"ACTS (FGSM, one-step)", "ACTS (BIM, 3-step)", "ACTS (PGD, 3-step)"} <= {
                line.split("|")[2].strip() for line in body}
        else:
            assert attack_rows == {"FGSM", "BIM", "PGD"}, caption
            assert all("resnet50" in line for line in body)
    for name in ("acts_histograms", "acts_noise_effectiveness"):
        with Image.open(out / "figures" / f"{name}.png") as image:
            image.verify()
            assert image.size[0] > 300 and image.size[1] > 200


def test_resnet50_acts_report_tags_each_attack(imagenet_report: tuple[Path, Path, dict, str, list[str]]) -> None:
    _, logs, _, _, _ = imagenet_report
    run = next((logs / "imagenet_resnet50_acts").iterdir())
    tags = EventAccumulator(str(run), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE).Reload().Tags()
    for attack in ("fgsm", "bim", "pgd"):
        assert {f"certify/acts/{attack}/N1/acts/overlap_percent", f"certify/acts/{attack}/N3/attacked",
                f"certify/acts/{attack}/N2/acts_top50/overlap_percent",
                f"certify/acts/{attack}/seconds_per_image"} <= set(tags["scalars"])
    assert {"certify/acts/histograms", "certify/acts/noise_effectiveness"} <= set(tags["images"])


def test_progress_shows_examples_per_second_and_a_time_estimate(
        imagenet_report: tuple[Path, Path, dict, str, list[str]]) -> None:
    _, _, _, bar, messages = imagenet_report
    assert "Testing" in bar and "examples/s" in bar and "left" in bar
    (estimate,) = [message for message in messages if message.startswith("certify: first batch")]
    assert "of 4 examples" in estimate and "acts" in estimate and "estimated total time" in estimate


def test_certify_without_checkpoint_or_weights_is_refused(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "val", ["n01440764"], per_class=1)
    with pytest.raises(ValueError, match="--ckpt_path.*allow_no_checkpoint"):
        certify.main(["--config", "imagenet_resnet50_acts.yaml", "--model.init_args.weights=null",
                      f"--data.init_args.data_dir={tmp_path / 'val'}", "--trainer.logger=false"])
