"""Context managers that run a model in evaluation mode and restore it exactly afterwards."""

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each one's own ``training`` flag on exit.

    ``model.train(was_training)`` is not enough: a model may be in train mode with some submodules
    frozen in eval mode (e.g. BatchNorm), and a plain ``train()`` would unfreeze them.

    Args:
        model: The module to switch.

    Yields:
        The same module, in eval mode.
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag
