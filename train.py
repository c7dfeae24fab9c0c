"""Train a classifier: ``python train.py --config robust_lenet.yaml`` (a bare name resolves in configs/).

Resume an interrupted run with ``--ckpt_path logs/<name>/version_<n>/checkpoints/last.ckpt``.
"""

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger

from cli import RenamedOptionError, RobustCLI, check_checkpoint_matches, make_cli

log = logging.getLogger("train")


def continue_in_checkpoint_run(cli: RobustCLI, ckpt_path: str) -> None:
    """Log a resumed run into the run folder its checkpoint came from (one continuous TensorBoard run).

    Applies when the checkpoint lies at ``<save_dir>/<name>/<version>/checkpoints/`` of the configured
    TensorBoard logger and no logger version was set: the resumed run then writes its events and checkpoints
    next to the interrupted run's, with steps continuing from the checkpoint's global step. The run's original
    ``config.yaml`` is kept; the resumed invocation's config (with its ``ckpt_path``) goes to
    ``config_resumed.yaml``.
    """
    logger = cli.trainer.logger
    # TensorBoardLogger picks a new version lazily when none is given; it has no public setter for it.
    if not isinstance(logger, TensorBoardLogger) or logger._version is not None:
        return
    folder = Path(ckpt_path).resolve().parent
    if folder.name == "checkpoints" and folder.parent.parent == Path(logger.root_dir).resolve():
        logger._version = folder.parent.name
        for callback in cli.trainer.callbacks:
            if isinstance(callback, SaveConfigCallback):
                callback.config_filename = "config_resumed.yaml"
        log.info("Resuming in the checkpoint's run folder %s", folder.parent)


def main(args: Sequence[str] | None = None) -> RobustCLI:
    """Parse the config, fit the model (resuming from ``--ckpt_path`` if given) and test the best checkpoint.

    Args:
        args: Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        The CLI, with its trainer, model and datamodule, for callers and tests.
    """
    cli = make_cli(args)
    ckpt_path = cli.config.get("ckpt_path")
    if ckpt_path:
        check_checkpoint_matches(cli.model, ckpt_path)
        continue_in_checkpoint_run(cli, ckpt_path)
    describe = getattr(cli.datamodule, "describe", None)
    if callable(describe):
        cli.trainer.print(f"Data: {describe()}")
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, weights_only=False)
    if not cli.trainer.interrupted and cli.trainer.checkpoint_callback is not None:
        best = cli.trainer.checkpoint_callback.best_model_path or None
        cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best, weights_only=False)
    return cli


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except RenamedOptionError as err:  # a user error, not a bug: the message alone, exit status 2 like argparse
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
