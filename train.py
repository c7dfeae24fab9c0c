"""Train a classifier: ``python train.py --config robust_lenet.yaml`` (a bare name resolves in configs/).

Resume an interrupted run with ``--ckpt_path logs/<name>/version_<n>/checkpoints/last.ckpt``.
"""

import logging
from collections.abc import Sequence

from cli import RobustCLI, check_checkpoint_matches, make_cli

log = logging.getLogger("train")


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
    main()
