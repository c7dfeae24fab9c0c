"""The model zoo of both papers and a CIFAR-style ResNet, built only from operators the bound engine supports.

Architectures (Amoeba appendix, Tables 6 and 7; Section 4.1; ACTS Section 4.1):

- ``fc100`` / ``fc300`` / ``fc500``: Flatten, three hidden ``Linear + ReLU`` layers of 100/300/500 units, output layer.
- ``lenet``: ``Conv(C,6,3,1,1)-ReLU-MaxPool(2,2)-Conv(6,16,5,1,0)-ReLU-MaxPool(2,2)-Flatten-FC(120)-ReLU-FC(84)-
  ReLU-FC(K)`` for 1x28x28 (MNIST, Fashion-MNIST) and 3x32x32 (SVHN) inputs.
- ``fcnn2d``: the 2-D synthetic classifier with hidden layers of 16 and 32 ReLU units.
- ``and_gate``: the ACTS AND-gate toy, a two-layer net (one hidden layer of 8 ReLU units, two outputs).
- ``resnet_small``: a CIFAR-style ResNet (He et al. 2016, Section 4.2) for ``(C, H, W)`` images: a 3x3 stem of 16
  channels with BatchNorm and ReLU, two basic residual blocks (16 channels; 32 channels with stride 2 and a 1x1
  projection shortcut), global average pooling and a linear layer. It is an ordinary ``nn.Module`` with its own
  ``forward`` (residual additions), bounded by interval propagation and by CROWN over its graph.
- ``cnn_7layer``: the CIFAR-10 CNN7 of certified training (Shi et al. 2021, ``cnn_7layer_bn`` of their code, also
  used by SABR and MTL-IBP): five 3x3 convolutions of 64, 64, 128, 128, 128 channels (strides 1, 1, 2, 1, 1,
  padding 1), each followed by BatchNorm2d and ReLU, then Flatten, Linear(512), BatchNorm1d, ReLU, Linear(K).
- Every torchvision classifier by name (``resnet50``, ``vgg16``, ``inception_v3``, ...), built by
  :mod:`lightning_modules.torchvision_models` (weights read from the torch hub cache only, never downloaded).
"""

from collections.abc import Mapping, Sequence
from math import prod
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from lightning_modules.torchvision_models import TORCHVISION_ARCHITECTURES, is_weights_file, torchvision_classifier

ZOO_ARCHITECTURES: tuple[str, ...] = (
    "fc100", "fc300", "fc500", "lenet", "fcnn2d", "and_gate", "resnet_small", "cnn_7layer",
)
"""The architectures defined in this file."""
ARCHITECTURES: tuple[str, ...] = ZOO_ARCHITECTURES + TORCHVISION_ARCHITECTURES
# The keyword arguments build_model's ``options`` may set, per architecture (the builders' own arguments).
ARCHITECTURE_OPTIONS: dict[str, tuple[str, ...]] = {"cnn_7layer": ("width", "linear_size"), "resnet_small": ("widths",)}
"""Every name ``build_model`` accepts: the one home of the names (``Architecture`` is built from it)."""
Architecture = Literal[ARCHITECTURES]  # type: ignore[valid-type]
"""``Literal`` of :data:`ARCHITECTURES`, so that the CLI rejects a typo and lists the choices."""

def fully_connected(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int]) -> nn.Sequential:
    """A ReLU multilayer perceptron that flattens its input first.

    Args:
        input_shape: Shape of one example, e.g. ``(1, 28, 28)`` or ``(2,)``.
        num_classes: Number of output logits.
        hidden: Widths of the hidden layers.

    Returns:
        ``Sequential(Flatten, Linear, ReLU, ..., Linear)``.
    """
    layers: list[nn.Module] = [nn.Flatten()]
    width = prod(input_shape)
    for units in hidden:
        layers += [nn.Linear(width, units), nn.ReLU()]
        width = units
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def lenet(input_shape: Sequence[int], num_classes: int) -> nn.Sequential:
    """The Amoeba LeNet (Table 7) for ``(C, H, W)`` images.

    Args:
        input_shape: ``(C, H, W)``, e.g. ``(1, 28, 28)`` or ``(3, 32, 32)``.
        num_classes: Number of output logits.

    Returns:
        A ``Sequential`` with a ``features`` and a ``classifier`` part.

    Raises:
        ValueError: If the input is not an image large enough for two conv/pool stages.
    """
    if len(input_shape) != 3:
        raise ValueError(f"lenet needs image inputs (C, H, W), got input_shape={tuple(input_shape)}")
    channels, height, width = input_shape
    # conv3 pad1 keeps the size, pool halves it, conv5 removes 4, pool halves it.
    out_h, out_w = (height // 2 - 4) // 2, (width // 2 - 4) // 2
    if out_h < 1 or out_w < 1:
        raise ValueError(f"lenet needs images of at least 12x12 pixels, got {height}x{width}")
    features = nn.Sequential(
        nn.Conv2d(channels, 6, kernel_size=3, stride=1, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(6, 16, kernel_size=5, stride=1, padding=0),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
    )
    classifier = nn.Sequential(
        nn.Flatten(),
        nn.Linear(16 * out_h * out_w, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )
    return nn.Sequential(features, classifier)


class BasicBlock(nn.Module):
    """A basic residual block: ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`` (He et al. 2016, Figure 2).

    Args:
        channels_in: Input channels.
        channels: Output channels.
        stride: Stride of the first convolution (and of the 1x1 projection shortcut when shapes change).
    """

    def __init__(self, channels_in: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(channels_in, channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output, shaped ``(B, channels, H / stride, W / stride)``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """The ``resnet_small`` architecture (see the module docstring).

    Args:
        input_shape: ``(C, H, W)`` of one example.
        num_classes: Number of output logits.
        widths: Channels of the residual blocks; each block after the first halves the resolution.

    Raises:
        ValueError: If the input is not an image.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (16, 32)) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"resnet_small needs image inputs (C, H, W), got input_shape={tuple(input_shape)}")
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, previous = [], widths[0]
        for position, width in enumerate(widths):
            blocks.append(BasicBlock(previous, width, 1 if position == 0 else 2))
            previous = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)``."""
        features = self.blocks(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))


def cnn_7layer(input_shape: Sequence[int], num_classes: int, width: int = 64, linear_size: int = 512) -> nn.Sequential:
    """The certified-training CNN7 with BatchNorm (module docstring; Shi et al. 2021's ``cnn_7layer_bn``).

    Args:
        input_shape: ``(C, H, W)``, e.g. ``(3, 32, 32)``.
        num_classes: Number of output logits.
        width: Channels of the first two convolutions (the next three have ``2 * width``).
        linear_size: Units of the hidden linear layer.

    Returns:
        A flat ``Sequential``.

    Raises:
        ValueError: If the input is not an image.
    """
    if len(input_shape) != 3:
        raise ValueError(f"cnn_7layer needs image inputs (C, H, W), got input_shape={tuple(input_shape)}")
    channels, height, width_px = input_shape
    layers: list[nn.Module] = []
    previous = channels
    for out, stride in ((width, 1), (width, 1), (2 * width, 2), (2 * width, 1), (2 * width, 1)):
        layers += [nn.Conv2d(previous, out, 3, stride=stride, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        previous = out
    flat = previous * ((height - 1) // 2 + 1) * ((width_px - 1) // 2 + 1)  # one stride-2 conv, padding 1
    layers += [nn.Flatten(), nn.Linear(flat, linear_size), nn.BatchNorm1d(linear_size), nn.ReLU(),
               nn.Linear(linear_size, num_classes)]
    return nn.Sequential(*layers)


def build_model(architecture: Architecture, input_shape: Sequence[int], num_classes: int,
                weights: str | None = None, options: Mapping[str, Any] | None = None) -> nn.Module:
    """Build a zoo model by name, optionally loading weights.

    Args:
        architecture: A name of :data:`ARCHITECTURES`: ``fc100``, ``fc300``, ``fc500``, ``lenet``, ``fcnn2d``,
            ``and_gate``, ``resnet_small``, ``cnn_7layer`` or a torchvision classifier (``resnet50``, ``vgg16``,
            ``inception_v3``, ...).
        input_shape: Shape of one example without the batch dimension.
        num_classes: Number of classes.
        weights: ``None`` (fresh initialisation) or, for torchvision architectures, a torchvision weights name
            (``IMAGENET1K_V1``, ``ResNet50_Weights.IMAGENET1K_V1``), loaded only from the torch hub cache. Local
            files are loaded by :class:`~lightning_modules.classifier.ImageClassifier` (``weights``).
        options: Keyword arguments of the zoo builder, for the architectures that have some
            (:data:`ARCHITECTURE_OPTIONS`): ``cnn_7layer``'s ``width`` and ``linear_size``, ``resnet_small``'s
            ``widths``; e.g. ``{"width": 16}`` for a narrower CNN7.

    Returns:
        The model.

    Raises:
        ValueError: For an unknown architecture name (the message lists the choices), unusable weights or an
            option the architecture does not have (the message lists the ones it has).
        FileNotFoundError: If torchvision weights are not in the hub cache; the message names the file looked for.
    """
    if weights is not None and is_weights_file(weights):
        raise ValueError(f"weights='{weights}' is a file: build_model takes torchvision weights names only; load "
                         "files with lightning_modules.classifier.load_weights_file or ImageClassifier(weights=...)")
    options = dict(options or {})
    unknown = sorted(set(options) - set(ARCHITECTURE_OPTIONS.get(architecture, ())))
    if unknown:
        known = ", ".join(ARCHITECTURE_OPTIONS.get(architecture, ())) or "none"
        raise ValueError(f"architecture options {unknown} do not exist for {architecture} (its options: {known})")
    if architecture in TORCHVISION_ARCHITECTURES:
        return torchvision_classifier(architecture, input_shape, num_classes, weights)
    if architecture in ("fc100", "fc300", "fc500"):
        width = int(architecture[2:])
        network: nn.Module = fully_connected(input_shape, num_classes, (width, width, width))
    elif architecture == "lenet":
        network = lenet(input_shape, num_classes)
    elif architecture == "fcnn2d":
        network = fully_connected(input_shape, num_classes, (16, 32))
    elif architecture == "and_gate":
        network = fully_connected(input_shape, num_classes, (8,))
    elif architecture == "resnet_small":
        network = SmallResNet(input_shape, num_classes, **options)
    elif architecture == "cnn_7layer":
        network = cnn_7layer(input_shape, num_classes, **options)
    else:
        raise ValueError(f"Unknown architecture '{architecture}'; choose one of {', '.join(ARCHITECTURES)}")
    if weights is not None:
        raise ValueError(f"weights='{weights}': torchvision weights names only exist for the torchvision "
                         f"architectures, and {architecture} is a zoo model (load a local file with ImageClassifier's "
                         "weights option)")
    return network
