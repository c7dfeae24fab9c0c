"""Run a callback's computation without side effects on training (gradients, modes, flags, RNG states)."""

import random
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import numpy as np
import torch
from torch import nn

from bounds.modes import evaluation_mode


@contextmanager
def isolated(network: nn.Module) -> Iterator[None]:
    """Run a callback's computation without side effects on training.

    Inside: gradients enabled even under ``no_grad`` / ``inference_mode``, every submodule in eval mode, and the
    parameters frozen (no ``.grad`` is ever written). On exit the modes, the ``requires_grad`` flags and the
    global random states of ``torch`` (CPU and initialised CUDA devices), ``numpy`` and ``random`` are restored.
    """
    rng_torch = torch.get_rng_state()
    rng_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    rng_numpy = np.random.get_state()
    rng_python = random.getstate()
    flags = [(p, p.requires_grad) for p in network.parameters()]
    try:
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
            stack.enter_context(evaluation_mode(network))
            for parameter, _ in flags:
                parameter.requires_grad_(False)
            yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        torch.set_rng_state(rng_torch)
        if rng_cuda is not None:
            torch.cuda.set_rng_state_all(rng_cuda)
        np.random.set_state(rng_numpy)
        random.setstate(rng_python)
