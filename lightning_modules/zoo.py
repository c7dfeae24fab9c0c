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
"""

from collections.abc import Sequence
from math import prod
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

Architecture = Literal["fc100", "fc300", "fc500", "lenet", "fcnn2d", "and_gate", "resnet_small"]
ARCHITECTURES: tuple[str, ...] = ("fc100", "fc300", "fc500", "lenet", "fcnn2d", "and_gate", "resnet_small")


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


def build_model(architecture: Architecture, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Build a zoo model by name.

    Args:
        architecture: One of ``fc100``, ``fc300``, ``fc500``, ``lenet``, ``fcnn2d``, ``and_gate``, ``resnet_small``.
        input_shape: Shape of one example without the batch dimension.
        num_classes: Number of classes.

    Returns:
        The freshly initialised model.

    Raises:
        ValueError: For an unknown architecture name.
    """
    if architecture in ("fc100", "fc300", "fc500"):
        width = int(architecture[2:])
        return fully_connected(input_shape, num_classes, (width, width, width))
    if architecture == "lenet":
        return lenet(input_shape, num_classes)
    if architecture == "fcnn2d":
        return fully_connected(input_shape, num_classes, (16, 32))
    if architecture == "and_gate":
        return fully_connected(input_shape, num_classes, (8,))
    if architecture == "resnet_small":
        return SmallResNet(input_shape, num_classes)
    raise ValueError(f"Unknown architecture '{architecture}'; choose one of {', '.join(ARCHITECTURES)}")
