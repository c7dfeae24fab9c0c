"""The TensorBoard writer the callbacks' images and histograms go to, among any loggers of the trainer.

Scalars go through ``pl_module.log`` to every logger (TensorBoard, CSV, W&B, MLflow ...). Images and histograms
have no logger-neutral API in Lightning, so they are written through the first ``TensorBoardLogger`` in
``trainer.loggers`` (whatever other loggers sit beside it); with loggers but none of them TensorBoard, a callback
warns once that they are skipped.
"""

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.tensorboard import SummaryWriter


def tensorboard_writer(trainer: Trainer) -> SummaryWriter | None:
    """The ``SummaryWriter`` of the first ``TensorBoardLogger`` in ``trainer.loggers`` (call on rank 0 only)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def warn_without_tensorboard(owner: str, trainer: Trainer) -> bool:
    """Warn (rank 0) that ``owner``'s images and histograms are skipped when no logger is a ``TensorBoardLogger``.

    Args:
        owner: The callback's name.
        trainer: The running trainer.

    Returns:
        Whether it warned: ``trainer.loggers`` is not empty and holds no ``TensorBoardLogger`` (without any
        logger nothing is logged at all, and there is nothing to say).
    """
    loggers = trainer.loggers
    if not loggers or any(isinstance(logger, TensorBoardLogger) for logger in loggers):
        return False
    names = ", ".join(type(logger).__name__ for logger in loggers)
    rank_zero_warn(f"{owner}: no TensorBoardLogger in trainer.loggers ({names}); its scalars are logged, but its "
                   "images and histograms are skipped. Add a TensorBoardLogger to the trainer's loggers to get them.")
    return True
