"""The uniform radius CROWN certifies (``crown_uniform_radius``) against a bisection on the same bound."""

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from bounds.crown_radius import crown_uniform_radius
from bounds.uniform import clipped_box, min_margin
from datamodules import embedded_mnist_splits
from lightning_modules.zoo import lenet
from tests.soundness import assert_label_constant
from tests.test_crown import conv_net

TARGET = 1e-3


def bisection(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cap: float,
              input_range: tuple[float, float] | None, steps: int = 20) -> torch.Tensor:
    """The plain reference: 20 halvings of ``[0, cap]``, one CROWN evaluation per step."""
    low, high = torch.zeros(x.shape[0], dtype=x.dtype), torch.full((x.shape[0],), cap, dtype=x.dtype)
    view = (x.shape[0], *([1] * (x.dim() - 1)))
    with torch.no_grad():
        for _ in range(steps):
            middle = (low + high) / 2
            lower, upper = clipped_box(x, middle.view(view), middle.view(view), input_range)
            certified = min_margin(model, lower, upper, y, "crown") >= TARGET
            low, high = torch.where(certified, middle, low), torch.where(certified, high, middle)
    return low


def trained_mnist_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 784-64-64-10 ReLU net after 150 Adam steps on the embedded MNIST digits, and 16 correct test digits."""
    train, _, test = embedded_mnist_splits(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    images, labels = train.tensors
    for step in range(150):
        batch = slice(100 * (step % 40), 100 * (step % 40) + 100)
        optimiser.zero_grad()
        F.cross_entropy(model(images[batch]), labels[batch]).backward()
        optimiser.step()
    model.eval()
    x, y = test.tensors
    with torch.no_grad():
        keep = (model(x[:64]).argmax(1) == y[:64]).nonzero().squeeze(1)[:16]
    return model, x[keep], y[keep]


def random_lenet() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    model = lenet((1, 16, 16), 10).eval()
    x = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        return model, x, model(x).argmax(1)


def random_conv_net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = conv_net(3)
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        return model, x, model(x).argmax(1)


@pytest.mark.parametrize("build", [trained_mnist_mlp, random_lenet, random_conv_net])
@pytest.mark.parametrize("input_range", [None, (-1.0, 1.0)])
def test_within_one_percent_of_bisection_and_sound(build, input_range):
    model, x, y = build()
    if input_range is not None and build is random_conv_net:
        input_range = (0.0, 1.0)
    reference = bisection(model, x, y, cap=2.0, input_range=input_range)
    radius = crown_uniform_radius(model, x, y, target=TARGET, input_range=input_range, cap=2.0)
    assert bool((reference > 0).all())
    ratio = radius / reference
    assert float(ratio.min()) >= 0.99, ratio
    # The search returns radii some CROWN relaxation certified: not above the bisection (beyond its resolution);
    # a fresh CROWN evaluation on the very box agrees up to float32 rounding (certify re-verifies every box and
    # shrinks the rare ones that fail), and the boxes survive attacks.
    assert float(ratio.max()) <= 1.0 + 2.0 / 2**20 / float(reference.min())
    view = (x.shape[0], *([1] * (x.dim() - 1)))
    lower, upper = clipped_box(x, radius.view(view), radius.view(view), input_range)
    with torch.no_grad():
        assert bool((min_margin(model, lower, upper, y, "crown") >= TARGET - 1e-5).all())
    assert_label_constant(model, lower, upper, y)


def test_examples_not_certified_at_the_point_get_zero():
    model, x, y = random_lenet()
    with torch.no_grad():
        logits = model(x)
    top2 = logits.topk(2, dim=1).values
    target = float((top2[:, 0] - top2[:, 1]).max()) + 1.0  # above every clean margin
    radius = crown_uniform_radius(model, x, y, target=target, cap=2.0)
    assert bool((radius == 0).all())
