"""The first block's closed-form lines (bounds/crown_first_block.py) and the checkpoint of dense intermediate rows.

The references are the layer-by-layer rules: the dense back-substitution (bounds/crown_backward.py, with the first
block switched off) and the windowed one (bounds/crown_patches.py). Both rewrites must give the same numbers.
"""

import pytest
import torch
from torch import nn

import bounds.crown_backward as crown_backward
import bounds.crown_intermediate as crown_intermediate
from bounds.certify import certify
from bounds.crown import _build, back_substitute, crown_margin_bounds, linear_margin_bounds
from bounds.crown_first_block import first_block, next_conv_block, next_conv_bounds
from bounds.crown_patches import patch_bounds
from bounds.normalization import InputNormalization
from tests.soundness import assert_label_constant, sample_box


def _with_batch_norm(model: nn.Sequential) -> nn.Sequential:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model


def lenet_pattern(seed: int) -> nn.Sequential:
    """conv (padded) - ReLU - pool - conv - ReLU - pool - FC - ReLU - FC - ReLU - FC, as the zoo's LeNet."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 2 * 2, 12), nn.ReLU(), nn.Linear(12, 10),
                         nn.ReLU(), nn.Linear(10, 4))


def strided_batch_norm(seed: int) -> nn.Sequential:
    """conv - BN - ReLU - strided conv - BN - ReLU (cnn_7layer's pattern): no pool, BatchNorm folded on both sides."""
    torch.manual_seed(seed)
    return _with_batch_norm(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                          nn.Conv2d(4, 5, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(5),
                                          nn.ReLU(), nn.Flatten(), nn.Linear(5 * 6 * 6, 3)))


def odd_pool(seed: int) -> nn.Sequential:
    """Strided first conv, a 3x3 pool that drops the map's last rows, a "same" conv, smooth activations."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 4, stride=2, padding=1), nn.Tanh(), nn.MaxPool2d(3),
                         nn.Conv2d(4, 5, 2, 1, "same"), nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(5 * 2 * 2, 3))


def normalized(seed: int) -> nn.Sequential:
    """An input normalization before the first conv (how ImageClassifier wraps CIFAR models); a strided second conv."""
    torch.manual_seed(seed)
    return nn.Sequential(InputNormalization([0.1, 0.2], [0.5, 0.3]), nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(4, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 3))


CASES = [(lenet_pattern, (1, 16, 16)), (strided_batch_norm, (3, 11, 11)), (odd_pool, (2, 15, 15)),
         (normalized, (2, 15, 15))]


def _built(builder, shape, radius: float, seed: int = 1):
    model = builder(0).double().eval()
    torch.manual_seed(seed)
    x = torch.rand(3, *shape, dtype=torch.float64)
    lower, upper = x - radius * torch.rand_like(x), x + radius * torch.rand_like(x)
    return model, lower, upper, _build(model, lower, upper, "crown")


@pytest.mark.parametrize(("builder", "shape"), CASES)
@pytest.mark.parametrize("radius", [0.05, 0.4])
@pytest.mark.parametrize("budget", [2**23, 700])
def test_next_conv_bounds_equal_the_windowed_rules_and_enclose_samples(builder, shape, radius, budget):
    model, lower, upper, (layers, shapes, relaxations, _, _) = _built(builder, shape, radius)
    stops = [stop for stop in range(len(layers)) if next_conv_block(layers, shapes, stop) is not None]
    assert len(stops) == 1
    stop = stops[0]
    block = next_conv_block(layers, shapes, stop)
    box_l, box_u = lower, upper
    if block.start:  # the normalization before A is monotone: its box is the image of the input box
        box_l, box_u = layers[0][1](lower), layers[0][1](upper)
    below = {k: v for k, v in relaxations.items() if k < stop}
    low, up = next_conv_bounds(block, layers, shapes, below, stop, box_l, box_u, budget)
    ref_low, ref_up = patch_bounds(layers, shapes, below, stop, lower, upper)
    torch.testing.assert_close(low, ref_low, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(up, ref_up, rtol=1e-10, atol=1e-10)
    points = sample_box(lower, upper, 100)
    with torch.no_grad():
        hidden = nn.Sequential(*[layer for _, layer in layers[:stop]])(points.flatten(0, 1)).view(-1, *low.shape)
    assert bool((hidden >= low - 1e-9).all()) and bool((hidden <= up + 1e-9).all())


@pytest.mark.parametrize(("builder", "shape"), CASES)
@pytest.mark.parametrize("shared_rows", [False, True])
def test_dense_rows_through_the_block_equal_the_layer_by_layer_rules(builder, shape, shared_rows, monkeypatch):
    # Random rows at the block's output (one set for all examples, or one per example) to the model input.
    _, lower, _, (layers, shapes, relaxations, _, _) = _built(builder, shape, 0.2)
    block = first_block(layers, shapes)
    assert block is not None
    torch.manual_seed(2)
    rows = torch.randn(1 if shared_rows else 3, 7, *shapes[block.end + 1], dtype=torch.float64)
    offset = torch.randn(1 if shared_rows else 3, 7, dtype=torch.float64)
    fused = back_substitute(layers, shapes, relaxations, rows, offset, block.end + 1)
    monkeypatch.setattr(crown_backward, "first_block", lambda *args: None)
    reference = back_substitute(layers, shapes, relaxations, rows, offset, block.end + 1)
    torch.testing.assert_close(fused[0].expand_as(reference[0]), reference[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fused[1].expand_as(reference[1]), reference[1], rtol=1e-10, atol=1e-10)
    assert fused[0].shape[2:] == lower.shape[1:]


def _margins(builder, shape, radius: float):
    model = builder(3).double().eval()
    torch.manual_seed(4)
    x = torch.rand(4, *shape, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    return lambda: linear_margin_bounds(model, x - radius, x + radius, y)


@pytest.mark.parametrize(("builder", "shape"), CASES)
def test_first_block_does_not_change_the_margin_bounds(builder, shape, monkeypatch):
    bound = _margins(builder, shape, 0.1)
    fast = bound()
    monkeypatch.setattr(crown_backward, "first_block", lambda *args: None)
    monkeypatch.setattr(crown_intermediate, "next_conv_block", lambda *args: None)
    slow = bound()
    torch.testing.assert_close(fast.coefficients, slow.coefficients, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(fast.offset, slow.offset, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("radius", [0.02, 0.12])
def test_checkpoint_of_dense_rows_never_loosens_the_margins(radius, monkeypatch):
    # LeNet's fully connected layers: their rows are concretised on the way (at the pools' outputs); the neurons
    # settled there go no further (their relaxation is exact either way), the others keep the tighter bound.
    model = lenet_pattern(3).double().eval()
    torch.manual_seed(4)
    x = torch.rand(16, 1, 16, 16, dtype=torch.float64)
    y = torch.arange(16) % 4
    starts = []
    checkpoint = crown_intermediate._checkpoint

    def counted(*args):
        start = checkpoint(*args)
        starts.append(start)
        return start

    monkeypatch.setattr(crown_intermediate, "_checkpoint", counted)
    fast = crown_margin_bounds(model, x - radius, x + radius, y)
    assert starts == [3, 6]  # fc1's rows stop at the first pool's output, fc2's at the second's
    monkeypatch.setattr(crown_intermediate, "_checkpoint", lambda *args: None)
    slow = crown_margin_bounds(model, x - radius, x + radius, y)
    finite = torch.isfinite(slow)
    assert bool((fast[finite] >= slow[finite] - 1e-10).all())
    if radius > 0.1:  # wide boxes: the checkpoint's bound is tighter than full CROWN's on some neurons
        assert bool((fast[finite] > slow[finite] + 1e-6).any())


def test_checkpoints_sit_between_blocks():
    _, _, _, (layers, _, _, _, _) = _built(lenet_pattern, (1, 16, 16), 0.1)
    assert crown_intermediate._checkpoint(layers, 8) == 6  # the Flatten after the second pool
    assert crown_intermediate._checkpoint(layers, 5) == 3  # the second convolution, after the first pool
    assert crown_intermediate._checkpoint(layers, 2) is None  # nothing below the first block
    _, _, _, (layers, _, _, _, _) = _built(strided_batch_norm, (3, 11, 11), 0.1)
    assert crown_intermediate._checkpoint(layers, 5) == 3


@pytest.mark.parametrize("kind", ["uniform", "asymmetric"])
def test_certified_boxes_of_normalized_and_batch_norm_models_survive_attacks(kind):
    for builder, shape in ((normalized, (2, 15, 15)), (strided_batch_norm, (3, 11, 11))):
        model = builder(5).eval()
        x = torch.rand(5, *shape, generator=torch.Generator().manual_seed(8))
        with torch.no_grad():
            y = model(x).argmax(1)
        cert = certify(model, x, y, kind, method="crown", crown_rounds=3)
        assert bool(cert.certified.any())
        lower, upper = x - cert.eps_lower, x + cert.eps_upper
        margins = crown_margin_bounds(model, lower, upper, y).min(1).values
        assert bool((margins[cert.certified] >= cert.delta).all())
        assert_label_constant(model, lower, upper, y, cert.certified, pgd_steps=30, num_samples=48)
