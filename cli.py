"""The one LightningCLI shared by ``train.py`` and ``certify.py``.

One YAML file (and the ``config.yaml`` each run saves in its log folder) works for both scripts: every
top-level key either script reads is declared here, ``--ckpt_path`` included (``run=False`` mode has no
subcommand to declare it; Lightning issues #12302 and #17447), and ``certify`` (the options of ``certify.py``,
:class:`reporting.options.CertifyOptions`, with one nested group per report). The README's "Configs" and
"certify.py" sections describe the keys; a key of the former flat ``certify`` layout is refused with its new name
(:data:`RENAMED_CERTIFY_KEYS`).
"""

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from reporting.options import CertifyOptions

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

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
        for name in ("input_shape", "num_classes", "input_range", "normalization"):
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")


_ATTACK_KEYS = ("fgsm_eps", "pgd_linf_eps", "pgd_linf_step_size", "pgd_linf_steps", "pgd_l2_eps", "pgd_l2_step_size",
                "pgd_l2_steps", "cw_kappa", "cw_search_steps", "cw_max_iterations", "cw_c_init", "cw_lr", "p_start",
                "p_step", "p_max", "num_examples")
_ACTS_KEYS = ("num_examples", "attacks", "eps", "steps", "step_fraction", "top_k", "top_k_values", "bins")
_CLEVER_KEYS = ("norms", "radius_l2", "radius_linf", "num_batches", "batch_size", "paper_sizes", "top_k",
                "max_points_per_pass")
RENAMED_CERTIFY_KEYS: dict[str, str] = {
    "attacks": "attacks.enabled",
    "acts": "acts.enabled",
    **{f"attack_{key}": f"attacks.{key}" for key in _ATTACK_KEYS},
    **{f"acts_{key}": f"acts.{key}" for key in _ACTS_KEYS},
    **{f"clever_{key}": f"acts.clever.{key}" for key in _CLEVER_KEYS},
}
"""Keys of the former flat ``certify`` group -> their place in the nested groups (``attacks`` and ``acts`` were
booleans and are now groups: their switch is ``enabled``)."""


class RenamedOptionError(ValueError):
    """A config or command line uses a key of the former flat ``certify`` group."""


def _renamed(key: str, value: Any) -> str | None:
    """The new name of ``certify.<key>`` if it is a former flat key (``attacks``/``acts`` only with a boolean)."""
    if key in ("attacks", "acts"):
        boolean = isinstance(value, bool) or str(value).strip().lower() in ("true", "false", "yes", "no")
        return RENAMED_CERTIFY_KEYS[key] if boolean else None
    return RENAMED_CERTIFY_KEYS.get(key)


def _certify_group_of_file(path: str) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return {}  # jsonargparse reports unreadable files itself
    return loaded if isinstance(loaded, dict) else {}


def check_renamed_certify_keys(argv: Sequence[str]) -> None:
    """Refuse keys of the former flat ``certify`` group, naming their new keys.

    Looks at the command line (``--certify.attack_cw_lr=0.1``, ``--certify.attacks false``), at every ``--config``
    file's ``certify:`` group and at a ``--certify`` file.

    Args:
        argv: Command-line arguments with resolved ``--config`` paths.

    Raises:
        RenamedOptionError: Naming every former key found, where it was found and its new key.
    """
    found: list[str] = []
    args = list(argv)
    for i, arg in enumerate(args):
        name, has_value, value = arg.partition("=")
        if not has_value:
            value = args[i + 1] if i + 1 < len(args) else ""
        if name == "--config" and value:
            group = _certify_group_of_file(value).get("certify")
            where, items = f"certify: in {value}", group.items() if isinstance(group, dict) else ()
        elif name == "--certify" and value:
            where, items = f"--certify file {value}", _certify_group_of_file(value).items()
        elif name.startswith("--certify."):
            where, items = "the command line", [(name.removeprefix("--certify."), value)]
        else:
            continue
        for key, item in items:
            new = _renamed(str(key), item)
            if new is not None:
                found.append(f"certify.{key} ({where}) is now certify.{new}")
    if found:
        raise RenamedOptionError("The certify options are nested groups now: " + "; ".join(found) + ". See "
                                 "`python certify.py --help` and the README's certify.py section.")


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

    Raises:
        RenamedOptionError: For a key of the former flat ``certify`` group (:func:`check_renamed_certify_keys`).
    """
    from lightning_modules import ImageClassifier

    argv = resolve_config_arguments(sys.argv[1:] if args is None else args)
    check_renamed_certify_keys(argv)
    with warnings.catch_warnings():
        # The resolved sys.argv is passed as ``args``; Lightning would warn that both are given.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
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
