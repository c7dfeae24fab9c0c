"""Torchvision classifiers by name for the model zoo (:func:`lightning_modules.zoo.build_model`).

Every torchvision classifier by name (``resnet50``, ``vgg16``, ``inception_v3``, ... any name of
``torchvision.models.list_models(module=torchvision.models)``), for 3-channel images. ``inception_v3`` and
``googlenet`` are built without auxiliary classifiers (``aux_logits=False``, so ``forward`` returns logits in
train mode too) and with ``transform_input=True``, the setting of torchvision's pretrained weights.

``build_model(..., weights=NAME)`` loads torchvision weights by enum name (``IMAGENET1K_V1`` or
``ResNet50_Weights.IMAGENET1K_V1``) only from the torch hub cache (``torch.hub.get_dir()/checkpoints/<file>``):
nothing is ever downloaded. Local weight files are loaded by the classifier LightningModule.
"""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models

TORCHVISION_ARCHITECTURES: tuple[str, ...] = tuple(
    dict.fromkeys(("resnet50", "vgg16", "inception_v3", *sorted(models.list_models(module=models))))
)
"""The torchvision classifiers, by their ``torchvision.models.get_model`` names."""
AUX_HEADS: tuple[str, ...] = ("AuxLogits", "aux1", "aux2")  # inception_v3's and googlenet's auxiliary classifiers
_WEIGHT_FILE_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".ckpt", ".bin", ".tar")



def _drop_aux_heads(network: nn.Module) -> nn.Module:
    """Remove inception_v3's / googlenet's auxiliary classifiers, as torchvision does for ``aux_logits=False``."""
    if getattr(network, "aux_logits", False):
        network.aux_logits = False
        for name in AUX_HEADS:
            if hasattr(network, name):
                setattr(network, name, None)
    return network


def hub_cache_file(weights: models.WeightsEnum) -> Path:
    """Where ``torch.hub`` keeps the file of a torchvision weights enum: ``<hub dir>/checkpoints/<url basename>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def resolve_torchvision_weights(architecture: str, name: str) -> models.WeightsEnum:
    """The weights enum member called ``name`` (``IMAGENET1K_V1``, ``DEFAULT`` or ``ResNet50_Weights.IMAGENET1K_V1``).

    Raises:
        ValueError: If ``architecture`` has no such weights; the message lists the ones it has.
    """
    enum = models.get_model_weights(architecture)
    member = name.rsplit(".", 1)[-1]
    prefix = name.rsplit(".", 1)[0] if "." in name else enum.__name__
    if prefix != enum.__name__ or member not in enum.__members__:
        choices = ", ".join(f"{m} ({enum.__name__}.{m})" for m in enum.__members__)
        raise ValueError(f"'{name}' is not a weights name of {architecture}; choose one of {choices}, "
                         "or pass the path of a local state-dict file")
    return enum[member]


def is_weights_file(weights: str) -> bool:
    """Whether a ``weights`` value names a file (a path, or a name ending in .pt/.pth/.ckpt/...) or a weights enum."""
    return os.sep in weights or "/" in weights or weights.endswith(_WEIGHT_FILE_SUFFIXES) or Path(weights).exists()


def torchvision_classifier(architecture: str, input_shape: Sequence[int], num_classes: int,
                           weights: str | None = None) -> nn.Module:
    """A torchvision classifier by name, randomly initialised or with weights (module docstring).

    Args:
        architecture: A name of :data:`TORCHVISION_ARCHITECTURES`.
        input_shape: ``(3, H, W)``.
        num_classes: Number of output logits (with a torchvision weights name: the weights' number of classes).
        weights: ``None`` or a torchvision weights name, read from the torch hub cache.

    Returns:
        The network (in train mode, as torchvision returns it).

    Raises:
        ValueError: For inputs that are not RGB images, an unknown weights name or a class count the weights lack.
        FileNotFoundError: If the weights' file is not in the hub cache; the message names the path looked for.
    """
    if len(input_shape) != 3 or input_shape[0] != 3:
        raise ValueError(f"{architecture} needs RGB image inputs (3, H, W), got input_shape={tuple(input_shape)}")
    extra: dict[str, Any] = {}
    if architecture in ("inception_v3", "googlenet"):
        extra = {"aux_logits": False, "init_weights": True, "transform_input": True}
    if weights is None:
        return models.get_model(architecture, weights=None, num_classes=num_classes, **extra)
    enum = resolve_torchvision_weights(architecture, weights)
    categories = len(enum.meta.get("categories") or [])
    if categories and categories != num_classes:
        raise ValueError(f"{architecture} weights {enum} have {categories} classes, but num_classes={num_classes}")
    cached = hub_cache_file(enum)
    if not cached.is_file():
        raise FileNotFoundError(
            f"{architecture} weights {enum} are not in the torch hub cache: looked for '{cached}'. Nothing is "
            f"downloaded: copy {os.path.basename(cached)} (from {enum.url}) there, set TORCH_HOME to the folder "
            "above its 'hub', or pass the path of a local state-dict file as weights"
        )
    # The file is cached, so torchvision's own loader reads it (and applies its per-model key fixes) offline.
    return _drop_aux_heads(models.get_model(architecture, weights=enum))
