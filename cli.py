"""The one LightningCLI shared by ``train.py`` and ``certify.py``.

One YAML file (and the ``config.yaml`` each run saves in its log folder) works for both scripts: every
top-level key either script reads is declared here, ``--ckpt_path`` included (``run=False`` mode has no
subcommand to declare it; Lightning issues #12302 and #17447).
"""

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from bounds.certificate import Kind
from bounds.margins import Method

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

DEFAULT_ACTS_EPS = (0.175, 0.225, 0.275)
"""Default noise levels N1-N3 of the ACTS protocol report (``certify.acts_eps``): measured with
benchmarks/bench_acts_protocol.py, 3-step PGD fools 12%, ~19%, ~29% of the quickstart robust LeNet's and 24%, ~35%,
~49% of the normal LeNet's correctly classified test digits at these levels."""


class CertifyOptions:
    """Options of ``certify.py`` (the ``certify:`` group of every config; ``train.py`` ignores them).

    Args:
        num_examples: Number of correctly classified test examples to certify (the paper uses 2,000).
        kinds: Certification kinds to run and compare.
        batch_size: Examples certified together in one batched call.
        delta: Margin the certificate proves: ``lower[y] - upper[j] >= delta``.
        clip_to_input_range: Certify the box intersected with the input range (the widths are then those of the
            clipped box); off by default, as in the paper.
        output_dir: Folder for the report; default ``<checkpoint folder>/../certify``.
        num_figure_examples: Examples drawn in the heatmap and Explorer figures.
        seed: Seed of the certification optimiser (and of the attacks' and CLEVER's random draws).
        labels: Labels the reports score and certify against: ``dataset`` (the first ``num_examples`` test
            examples the model classifies correctly) or ``predicted`` (the first ``num_examples`` test examples,
            labelled with the model's own predictions, e.g. for a model whose weights cannot reach the dataset's
            accuracy, such as random weights); the reports record which.
        allow_no_checkpoint: Without ``--ckpt_path``, run on the model as built (random initialisation unless the
            model loads its own weights, e.g. ``model.weights``); off: ``--ckpt_path`` or ``model.weights`` is needed.
        method: Bound method of the certification and of its final check: ``ibp`` (interval propagation, Amoeba
            Theorem 1), ``crown`` (CROWN linear relaxation, never looser than ibp; much wider boxes, slower) or
            ``alpha-crown`` (CROWN with optimised ReLU slopes, never looser than crown; chain models only).
        crown_rounds: CROWN relaxations per example with ``method: crown`` (fewer: faster, narrower boxes).
        attacks: Write the attacks report (Amoeba Table 4: plain, ``^s`` and ``^a`` attacks; ``attacks.json``,
            ``attacks.md``, ``certify/attacks/...`` tags).
        attack_num_examples: Cap on the examples attacked (the first ones of the certified examples).
        attack_fgsm_eps: FGSM l_inf budgets (Amoeba Table 8, MNIST: 0.2 and 0.3).
        attack_pgd_linf_eps: PGD l_inf budget (Table 8: 0.2).
        attack_pgd_linf_step_size: PGD l_inf step (Table 8: 0.015).
        attack_pgd_linf_steps: PGD l_inf steps (Table 8: 20).
        attack_pgd_l2_eps: PGD l_2 budget (Table 8: 5.0 for MNIST/FMNIST, 10.0 for SVHN).
        attack_pgd_l2_step_size: PGD l_2 step (Table 8: 0.5).
        attack_pgd_l2_steps: PGD l_2 steps (Table 8: 20).
        attack_cw_kappa: C&W confidence (Table 8: 0).
        attack_cw_search_steps: C&W binary-search steps over its constant (the reference code: 9).
        attack_cw_max_iterations: C&W Adam iterations per search step (the reference code: 10,000).
        attack_cw_c_init: C&W's initial constant ``c`` (the reference code: 1e-3).
        attack_cw_lr: C&W's Adam learning rate (the reference code: 1e-2 with 10,000 iterations).
        attack_p_start: First proportion of pixels of the guided attacks (Amoeba Algorithm 2).
        attack_p_step: Increase of the proportion per round of Algorithm 2.
        attack_p_max: Last proportion of Algorithm 2.
        acts: Write the ACTS protocol report (ACTS Section 4, Tables 1, 2, 3, 5, 6, 7 and Figs. 3-6; ``acts.json``,
            ``acts.md``, ``figures/acts_*.png``, ``certify/acts/<attack>/...`` tags).
        acts_num_examples: Cap on the examples of the ACTS protocol (the first ones of the certified examples).
        acts_attacks: Attacks of the ACTS protocol, each at every level and scored from its own steps: ``fgsm``
            (one step of eps), ``bim`` (``acts_steps`` steps, no random start), ``pgd`` (the same from a random
            start); the ACTS paper runs all three.
        acts_eps: l_inf noise levels N1 < N2 < N3 of the attacks, in input units (inputs in [-1, 1]); the
            defaults make PGD fool about 10% to 50% of the quickstart LeNets' examples (the ACTS paper's ImageNet
            levels on [0, 1] pixels: 0.1/255, 0.2/255, 0.3/255).
        acts_steps: BIM and PGD steps at every level (the ACTS paper: 3).
        acts_step_fraction: BIM and PGD step size as a fraction of the level's eps (the ACTS paper: 0.5).
        acts_top_k: Competing classes of ACTS in every table but Table 5 and in the figures (the ACTS paper: 10).
        acts_top_k_values: Competing classes of Table 5's rows ACTS-k (the ACTS paper: 10, 20, 50); the scores
            for all of them come from the same attack and Jacobian-vector product, so extra values cost nothing; a
            value above the number of classes minus one counts every other class.
        acts_bins: Histogram bins of Overlap%.
        clever_norms: CLEVER norms scored beside ACTS (ACTS Table 7 has both); empty for no CLEVER.
        clever_radius_l2: CLEVER's l_2 sampling radius (and largest score).
        clever_radius_linf: CLEVER's l_inf sampling radius (and largest score).
        clever_num_batches: CLEVER's number of batches ``N_b`` (small by default for speed; the paper: 500).
        clever_batch_size: CLEVER's samples per batch ``N_s`` (small by default for speed; the paper: 1024).
        clever_paper_sizes: Use the CLEVER paper's 500 x 1024 samples instead of the two options above.
        clever_top_k: CLEVER's competing classes (1: the runner-up, CLEVER's "top-2" target that ACTS Table 4
            compares with; ``null``: all classes).
        clever_max_points_per_pass: CLEVER samples per forward-backward pass (memory; at least
            ``clever_batch_size``): 1024 suits MNIST-sized inputs; an ImageNet ResNet50 holds the activations of
            every sample of a pass, so use far fewer there.
    """

    def __init__(
        self,
        num_examples: int = 2000,
        kinds: list[Kind] | None = None,
        batch_size: int = 200,
        delta: float = 1e-4,
        clip_to_input_range: bool = False,
        output_dir: str | None = None,
        num_figure_examples: int = 16,
        seed: int = 0,
        labels: Literal["dataset", "predicted"] = "dataset",
        allow_no_checkpoint: bool = False,
        method: Method = "ibp",
        crown_rounds: int = 4,
        attacks: bool = True,
        attack_num_examples: int = 200,
        attack_fgsm_eps: list[float] | None = None,
        attack_pgd_linf_eps: float = 0.2,
        attack_pgd_linf_step_size: float = 0.015,
        attack_pgd_linf_steps: int = 20,
        attack_pgd_l2_eps: float = 5.0,
        attack_pgd_l2_step_size: float = 0.5,
        attack_pgd_l2_steps: int = 20,
        attack_cw_kappa: float = 0.0,
        attack_cw_search_steps: int = 6,
        attack_cw_max_iterations: int = 200,
        attack_cw_c_init: float = 1e-2,
        attack_cw_lr: float = 5e-2,
        attack_p_start: float = 0.1,
        attack_p_step: float = 0.1,
        attack_p_max: float = 1.0,
        acts: bool = True,
        acts_num_examples: int = 500,
        acts_attacks: list[Literal["fgsm", "bim", "pgd"]] | None = None,
        acts_eps: list[float] | None = None,
        acts_steps: int = 3,
        acts_step_fraction: float = 0.5,
        acts_top_k: int = 10,
        acts_top_k_values: list[int] | None = None,
        acts_bins: int = 20,
        clever_norms: list[Literal["l2", "linf"]] | None = None,
        clever_radius_l2: float = 2.0,
        clever_radius_linf: float = 0.3,
        clever_num_batches: int = 20,
        clever_batch_size: int = 64,
        clever_paper_sizes: bool = False,
        clever_top_k: int | None = 1,
        clever_max_points_per_pass: int = 1024,
    ) -> None:
        if num_examples < 1 or batch_size < 1 or num_figure_examples < 0:
            raise ValueError("num_examples and batch_size must be >= 1 and num_figure_examples >= 0")
        if crown_rounds < 1:
            raise ValueError(f"certify.crown_rounds must be >= 1, got {crown_rounds}")
        if attack_num_examples < 1 or acts_num_examples < 1 or acts_bins < 1:
            raise ValueError("attack_num_examples, acts_num_examples and acts_bins must be >= 1")
        fgsm_eps = [0.2, 0.3] if attack_fgsm_eps is None else list(attack_fgsm_eps)
        levels = list(DEFAULT_ACTS_EPS) if acts_eps is None else list(acts_eps)
        if len(levels) < 1 or any(e <= 0 for e in levels) or levels != sorted(levels):
            raise ValueError(f"certify.acts_eps must be positive and increasing, got {levels}")
        acts_attack_list = ["fgsm", "bim", "pgd"] if acts_attacks is None else list(dict.fromkeys(acts_attacks))
        if not acts_attack_list or not set(acts_attack_list) <= {"fgsm", "bim", "pgd"}:
            raise ValueError("certify.acts_attacks must be a non-empty list of fgsm, bim, pgd; "
                             f"got {acts_attack_list}")
        top_k_values = [1, 5, 10] if acts_top_k_values is None else sorted(set(acts_top_k_values))
        if acts_top_k < 1 or not top_k_values or top_k_values[0] < 1:
            raise ValueError(f"certify.acts_top_k and acts_top_k_values must be >= 1, got {acts_top_k}, {top_k_values}")
        self.num_examples = num_examples
        self.kinds = list(kinds) if kinds is not None else ["uniform", "nonuniform", "asymmetric"]
        self.batch_size = batch_size
        self.delta = delta
        self.clip_to_input_range = clip_to_input_range
        self.output_dir = output_dir
        self.num_figure_examples = num_figure_examples
        self.seed = seed
        self.labels = labels
        self.allow_no_checkpoint = allow_no_checkpoint
        self.method = method
        self.crown_rounds = crown_rounds
        self.attacks = attacks
        self.attack_num_examples = attack_num_examples
        self.attack_fgsm_eps = fgsm_eps
        self.attack_pgd_linf_eps = attack_pgd_linf_eps
        self.attack_pgd_linf_step_size = attack_pgd_linf_step_size
        self.attack_pgd_linf_steps = attack_pgd_linf_steps
        self.attack_pgd_l2_eps = attack_pgd_l2_eps
        self.attack_pgd_l2_step_size = attack_pgd_l2_step_size
        self.attack_pgd_l2_steps = attack_pgd_l2_steps
        self.attack_cw_kappa = attack_cw_kappa
        self.attack_cw_search_steps = attack_cw_search_steps
        self.attack_cw_max_iterations = attack_cw_max_iterations
        self.attack_cw_c_init = attack_cw_c_init
        self.attack_cw_lr = attack_cw_lr
        self.attack_p_start = attack_p_start
        self.attack_p_step = attack_p_step
        self.attack_p_max = attack_p_max
        self.acts = acts
        self.acts_num_examples = acts_num_examples
        self.acts_attacks = acts_attack_list
        self.acts_eps = levels
        self.acts_steps = acts_steps
        self.acts_step_fraction = acts_step_fraction
        self.acts_top_k = acts_top_k
        self.acts_top_k_values = top_k_values
        self.acts_bins = acts_bins
        self.clever_norms = ["l2", "linf"] if clever_norms is None else list(clever_norms)
        self.clever_radius_l2 = clever_radius_l2
        self.clever_radius_linf = clever_radius_linf
        self.clever_num_batches = 500 if clever_paper_sizes else clever_num_batches
        self.clever_batch_size = 1024 if clever_paper_sizes else clever_batch_size
        self.clever_paper_sizes = clever_paper_sizes
        self.clever_top_k = clever_top_k
        self.clever_max_points_per_pass = clever_max_points_per_pass


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
