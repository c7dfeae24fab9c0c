"""The one LightningCLI shared by ``train.py`` and ``certify.py``.

One YAML file (and the ``config.yaml`` each run saves in its log folder) works for both scripts: every
top-level key either script reads is declared here, ``--ckpt_path`` included (``run=False`` mode has no
subcommand to declare it; Lightning issues #12302 and #17447).
"""

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class CertifyOptions:
    """Options of ``certify.py`` (the ``certify:`` group of every config; ``train.py`` ignores them).

    Args:
        num_examples: Number of correctly classified test examples to certify (the paper uses 2,000).
        kinds: Certification kinds to run and compare.
        batch_size: Examples certified together in one batched call.
        delta: Margin the certificate proves: ``lower[y] - upper[j] >= delta``.
        clip_to_input_range: Certify the box intersected with the input range (DESIGN.md); off by default
            as in the paper.
        output_dir: Folder for the report; default ``<checkpoint folder>/../certify``.
        num_figure_examples: Examples drawn in the heatmap and Explorer figures.
        seed: Seed of the certification optimiser.
    """

    def __init__(
        self,
        num_examples: int = 2000,
        kinds: list[Literal["uniform", "nonuniform", "asymmetric"]] | None = None,
        batch_size: int = 200,
        delta: float = 1e-4,
        clip_to_input_range: bool = False,
        output_dir: str | None = None,
        num_figure_examples: int = 16,
        seed: int = 0,
    ) -> None:
        if num_examples < 1 or batch_size < 1 or num_figure_examples < 0:
            raise ValueError("num_examples and batch_size must be >= 1 and num_figure_examples >= 0")
        self.num_examples = num_examples
        self.kinds = list(kinds) if kinds is not None else ["uniform", "nonuniform", "asymmetric"]
        self.batch_size = batch_size
        self.delta = delta
        self.clip_to_input_range = clip_to_input_range
        self.output_dir = output_dir
        self.num_figure_examples = num_figure_examples
        self.seed = seed


class RobustCLI(LightningCLI):
    """LightningCLI with the project's links, checkpointing and the declared ``ckpt_path`` and ``certify`` keys."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Declare ``--ckpt_path``, the ``certify`` group, the checkpoint callback and the data-to-model links."""
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="Checkpoint to resume or certify.")
        parser.add_class_arguments(CertifyOptions, "certify")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        for name in ("input_shape", "num_classes", "input_range"):
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")


def resolve_config_arguments(argv: Sequence[str]) -> list[str]:
    """Resolve bare config names (``--config robust_lenet.yaml``) to files in ``configs/``.

    A value of ``--config`` that is not an existing path is looked up in ``configs/`` (with or without
    the ``.yaml`` suffix).

    Args:
        argv: Command-line arguments without the program name.

    Returns:
        The arguments with every ``--config`` value replaced by an existing path.

    Raises:
        FileNotFoundError: If a config is neither a path nor a file in ``configs/``; the message lists
            the available configs.
    """
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            args[i + 1] = str(_find_config(args[i + 1]))
        elif arg.startswith("--config="):
            args[i] = "--config=" + str(_find_config(arg.split("=", 1)[1]))
    return args


def _find_config(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    available = ", ".join(sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"Config '{name}' not found as a path nor in {CONFIG_DIR}. Available configs: {available}")


def make_cli(args: Sequence[str] | None, model_class: type[LightningModule] | None = None) -> RobustCLI:
    """Build the shared CLI without running anything (``run=False``).

    Args:
        args: Command-line arguments (``None``: ``sys.argv[1:]``); bare config names are resolved.
        model_class: Base class of the accepted models (any LightningModule by default).

    Returns:
        The instantiated CLI with ``model``, ``datamodule`` and ``trainer``.
    """
    from lightning_modules import ImageClassifier

    argv = resolve_config_arguments(sys.argv[1:] if args is None else args)
    return RobustCLI(
        model_class=model_class or ImageClassifier,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=argv,
        run=False,
    )


class CheckpointMismatchError(ValueError):
    """A checkpoint whose weights do not fit the configured model."""


def load_checkpoint_state(path: str) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU, with a clear error for a missing or unreadable file.

    Args:
        path: Path of the ``.ckpt`` file.

    Returns:
        The checkpoint dictionary.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is not a Lightning checkpoint.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {file}")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - re-raised with the path in the message
        raise ValueError(f"Could not read checkpoint {file}: {error}") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{file} is not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def check_checkpoint_matches(model: LightningModule, path: str) -> dict[str, Any]:
    """Check that a checkpoint's weights fit ``model`` before Lightning loads it.

    Args:
        model: The configured LightningModule.
        path: Path of the checkpoint.

    Returns:
        The loaded checkpoint dictionary.

    Raises:
        CheckpointMismatchError: Naming missing, unexpected and wrongly shaped weights and the
            checkpoint's own hyperparameters, so the user sees which config it belongs to.
    """
    checkpoint = load_checkpoint_state(path)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    found = {k: v.shape for k, v in checkpoint["state_dict"].items() if hasattr(v, "shape")}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(f"{k}: checkpoint {tuple(found[k])} vs model {tuple(expected[k])}"
                   for k in set(expected) & set(found) if found[k] != expected[k])
    if missing or unexpected or wrong:
        hparams = checkpoint.get("hyper_parameters", {})
        described = {k: hparams[k] for k in ("architecture", "input_shape", "num_classes") if k in hparams}
        parts = [f"Checkpoint {path} does not fit the configured model {type(model).__name__}"
                 f"({', '.join(f'{k}={v}' for k, v in model.hparams.items() if k in described)})."]
        if described:
            parts.append(f"The checkpoint was trained with {described}.")
        if missing:
            parts.append(f"Missing weights: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}.")
        if unexpected:
            parts.append(f"Unexpected weights: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}.")
        if wrong:
            parts.append(f"Wrong shapes: {'; '.join(wrong[:8])}{' ...' if len(wrong) > 8 else ''}.")
        raise CheckpointMismatchError(" ".join(parts))
    return checkpoint
