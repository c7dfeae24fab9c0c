"""Which network a callback evaluates inside a LightningModule, and on which input range."""

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from torch import nn

from callbacks.arguments import check_input_range


def resolve_network(pl_module: LightningModule, names: tuple[str, ...] | None, prefer_inner: bool) -> tuple[
        nn.Module, str]:
    """The network a callback evaluates, and a human-readable name of where it came from.

    Args:
        pl_module: The LightningModule being trained or validated.
        names: Dotted attribute paths of ``pl_module``; one gives that module, several are chained in this order
            into an ``nn.Sequential`` that shares their parameters (e.g. ``["normalize", "net"]``).
        prefer_inner: Without ``names``, use ``pl_module.model`` when it is an ``nn.Module`` (this project's
            convention: the bare ``nn.Sequential`` zoo network) instead of ``pl_module`` itself.

    Returns:
        ``(network, where)``.

    Raises:
        ValueError: If an attribute is missing or is not an ``nn.Module``.
    """
    if names is None:
        inner = getattr(pl_module, "model", None)
        if prefer_inner and isinstance(inner, nn.Module):
            return inner, "pl_module.model"
        return pl_module, "pl_module"
    modules = []
    for name in names:
        value: Any = pl_module
        for part in name.split("."):
            if not hasattr(value, part):
                raise ValueError(f"model_attribute {name!r}: {type(pl_module).__name__} has no attribute path {name!r}")
            value = getattr(value, part)
        if not isinstance(value, nn.Module):
            raise ValueError(f"model_attribute {name!r} is a {type(value).__name__}, not an nn.Module")
        modules.append(value)
    if len(modules) == 1:
        return modules[0], f"pl_module.{names[0]}"
    return nn.Sequential(*modules), "nn.Sequential(" + ", ".join(f"pl_module.{n}" for n in names) + ")"


def resolve_input_range(explicit: tuple[float, float] | None, trainer: Trainer,
                        pl_module: LightningModule) -> tuple[float, float] | None:
    """``explicit`` if given, else the datamodule's ``input_range``, else the module's ``hparams.input_range``."""
    if explicit is not None:
        return explicit
    for source in (getattr(trainer, "datamodule", None), getattr(pl_module, "hparams", None)):
        value = getattr(source, "input_range", None)
        if value is None and isinstance(source, dict):
            value = source.get("input_range")
        if value is not None:
            return check_input_range(tuple(value))
    return None
