"""Validation of the labels every bound, certification, attack and score function takes: one check, one message."""

import torch
from torch import Tensor


def validate_labels(y: Tensor, batch: int, num_classes: int | None = None) -> None:
    """Raise ``ValueError`` unless ``y`` is an integer tensor ``(batch,)`` with values in ``[0, num_classes)``.

    The one label check of every bound, certification, attack and score function.

    Args:
        y: Labels.
        batch: The number of examples.
        num_classes: The number of logits ``K``; ``None`` skips the range check.

    Raises:
        ValueError: Naming the dtype and shape found, or the range of the labels.

    Example:
        >>> validate_labels(torch.tensor([0, 2]), batch=2, num_classes=3)
        >>> validate_labels(torch.tensor([0.0, 2.0]), batch=2)
        Traceback (most recent call last):
        ...
        ValueError: y must be an integer tensor of shape (2,), got dtype torch.float32 and shape (2,)
    """
    if not isinstance(y, Tensor):
        raise ValueError(f"y must be an integer tensor of shape ({batch},), got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.shape != (batch,):
        raise ValueError(f"y must be an integer tensor of shape ({batch},), got dtype {y.dtype} and shape "
                         f"{tuple(y.shape)}")
    if y.device.type == "meta":
        raise ValueError("y is on the meta device, which holds no values")
    if num_classes is not None and batch and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) (the model has {num_classes} outputs), got range "
                         f"[{int(y.min())}, {int(y.max())}]")
