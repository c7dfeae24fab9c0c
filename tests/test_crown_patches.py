"""Windowed ("patches") back-substitution (bounds/crown_patches.py) and the fused max-pool/activation step.

The reference is the dense back-substitution of bounds/crown_backward.py applied to the identity of the bounded layer:
both must give the same bounds on every neuron, and both must enclose every sampled activation.
"""

import pytest
import torch
from torch import nn

import bounds.crown_backward as crown_backward
import bounds.crown_intermediate as crown_intermediate
import bounds.crown_patches as crown_patches
from bounds.certify import certify
from bounds.crown import _build, back_substitute, concretize, crown_margin_bounds
from bounds.crown_patches import patch_bounds, patches_apply
from bounds.normalization import InputNormalization
from lightning_modules.zoo import build_model
from tests.soundness import assert_label_constant, sample_box


def lenet_like(seed: int) -> nn.Sequential:
    """The Amoeba LeNet's layer pattern, small: conv-ReLU-pool-conv-ReLU-pool-FC."""
    torch.manual_seed(seed)
    return nn.Sequential(
        InputNormalization([0.1], [0.5]),
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 2 * 2, 10), nn.ReLU(), nn.Linear(10, 3),
    ).double().eval()


def odd_geometry(seed: int) -> nn.Sequential:
    """Strided, padded ("same" too), dilated and grouped convolutions; a padded max-pool; BatchNorm; all activations."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=2),  # 2x11x11 -> 4x7x7
        nn.BatchNorm2d(4),
        nn.LeakyReLU(0.1),
        nn.MaxPool2d(2, padding=1),  # -> 4x4x4
        nn.Conv2d(4, 4, 3, padding=1, groups=2),
        nn.Sigmoid(),
        nn.AvgPool2d(3, stride=1, padding=1),
        nn.Conv2d(4, 4, 2, padding="same"),  # even kernel: one more zero row/column at the bottom/right
        nn.Conv2d(4, 3, 2, dilation=2, padding=1),  # -> 3x4x4
        nn.Tanh(),
        nn.Conv2d(3, 2, 3, stride=1),  # -> 2x2x2
        nn.ReLU(),
        nn.Flatten(), nn.Linear(8, 3),
    )
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 1.5)
    return model.double().eval()


def narrow_cnn7(seed: int) -> nn.Sequential:
    """The first three conv-BN-ReLU blocks of cnn_7layer (the second has stride 2) at width 2; one without bias."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(),
        nn.Conv2d(2, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2), nn.ReLU(),
        nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 3),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model.double().eval()


CASES = [  # (model builder, input shape, indices of layers whose input gets bounded in windows)
    (lenet_like, (1, 12, 12), (5,)),
    (odd_geometry, (2, 11, 11), (5, 9, 11)),
    (narrow_cnn7, (3, 8, 8), (5, 8)),
]


def _dense_reference(layers, shapes, relaxations, stop, lower, upper):
    """Dense back-substitution of ``[I; -I]`` at the input of layer ``stop``: bounds of every neuron."""
    neurons = torch.Size(shapes[stop]).numel()
    eye = torch.eye(neurons, dtype=lower.dtype).view(1, neurons, *shapes[stop])
    spec = torch.cat([eye, -eye], 1)
    coeffs, offset = back_substitute(layers, shapes, relaxations, spec, lower.new_zeros(1, 2 * neurons), stop)
    bounds = concretize(coeffs.expand(lower.shape[0], *coeffs.shape[1:]), offset, lower, upper)
    return bounds[:, :neurons].view(-1, *shapes[stop]), -bounds[:, neurons:].view(-1, *shapes[stop])


@pytest.mark.parametrize(("builder", "shape", "stops"), CASES)
@pytest.mark.parametrize("radius", [0.05, 0.3])
@pytest.mark.parametrize("split_rows", [False, True])
def test_windows_equal_dense_back_substitution_and_enclose_samples(builder, shape, stops, radius, split_rows,
                                                                   monkeypatch):
    if split_rows:  # a tiny memory budget: one example's specification rows are processed a few at a time
        monkeypatch.setattr(crown_patches, "CHUNK_ELEMENTS", 4096)
    model = builder(0)
    torch.manual_seed(1)
    x = torch.rand(3, *shape, dtype=torch.float64)
    lower, upper = x - radius * torch.rand_like(x), x + radius * torch.rand_like(x)
    layers, shapes, relaxations, _, _ = _build(model, lower, upper, "crown")
    points = sample_box(lower, upper, 200)
    for stop in stops:
        assert patches_apply(layers, shapes, stop)
        low, up = patch_bounds(layers, shapes, relaxations, stop, lower, upper)
        ref_low, ref_up = _dense_reference(layers, shapes, relaxations, stop, lower, upper)
        torch.testing.assert_close(low, ref_low, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(up, ref_up, rtol=1e-9, atol=1e-9)
        with torch.no_grad():
            hidden = nn.Sequential(*[layer for _, layer in layers[:stop]])(points.flatten(0, 1))
        hidden = hidden.view(points.shape[0], *low.shape)
        assert bool((hidden >= low - 1e-9).all()) and bool((hidden <= up + 1e-9).all())


@pytest.mark.parametrize(("builder", "shape", "stops"), CASES)
@pytest.mark.parametrize("split_rows", [False, True])
def test_sparse_rows_equal_dense_on_the_needed_neurons(builder, shape, stops, split_rows, monkeypatch):
    # Only the needed neurons' windows are back-substituted (each at its own grid position, examples padded to
    # the largest count); they must equal the dense reference there, and the others stay unbounded.
    if split_rows:
        monkeypatch.setattr(crown_patches, "CHUNK_ELEMENTS", 4096)
    model = builder(5)
    fraction = crown_patches.SPARSE_FRACTION
    torch.manual_seed(6)
    x = torch.rand(3, *shape, dtype=torch.float64)
    lower, upper = x - 0.2 * torch.rand_like(x), x + 0.2 * torch.rand_like(x)
    layers, shapes, relaxations, _, _ = _build(model, lower, upper, "crown")
    for stop in stops:
        needed = torch.rand(3, *shapes[stop]) < torch.tensor([0.3, 0.05, 0.0]).view(3, 1, 1, 1)
        needed[0, 0, 0, 0] = needed[0, -1, -1, -1] = True  # the grid's corners: windows cut by the padding
        monkeypatch.setattr(crown_patches, "SPARSE_FRACTION", 1.0)  # sparse rows whatever the count
        low, up = patch_bounds(layers, shapes, relaxations, stop, lower, upper, needed)
        monkeypatch.setattr(crown_patches, "SPARSE_FRACTION", fraction)
        ref_low, ref_up = _dense_reference(layers, shapes, relaxations, stop, lower, upper)
        torch.testing.assert_close(low[needed], ref_low[needed], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(up[needed], ref_up[needed], rtol=1e-9, atol=1e-9)
        assert bool((low[~needed] == -torch.inf).all()) and bool((up[~needed] == torch.inf).all())
        # Too many needed neurons: the whole grid is bounded, as without a mask.
        all_low, _ = patch_bounds(layers, shapes, relaxations, stop, lower, upper, torch.ones_like(needed))
        torch.testing.assert_close(all_low, ref_low, rtol=1e-9, atol=1e-9)


def _margins_on_a_box(builder, shape, seed: int):
    """CROWN margins of ``builder(seed)`` on a fixed box of four examples, recomputed on each call."""
    model = builder(seed)
    torch.manual_seed(seed + 1)
    x = torch.rand(4, *shape, dtype=torch.float64)
    return lambda: crown_margin_bounds(model, x - 0.1, x + 0.1, torch.tensor([0, 1, 2, 0]))


@pytest.mark.parametrize(("builder", "shape", "stops"), CASES)
def test_patches_and_pool_fusion_do_not_change_margins(builder, shape, stops, monkeypatch):
    margins = _margins_on_a_box(builder, shape, 2)
    fast = margins()
    monkeypatch.setattr(crown_intermediate, "patches_apply", lambda *args: False)
    monkeypatch.setattr(crown_backward, "activation_below_pool", lambda *args: None)
    torch.testing.assert_close(fast, margins(), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(("builder", "shape", "stops"), CASES)
def test_small_memory_blocks_do_not_change_margins(builder, shape, stops, monkeypatch):
    # The dense intermediate rows in chunks of one example, the windows split into a few rows at a time and the
    # transposed convolutions in blocks of a few rows: the same margins as in one piece.
    margins = _margins_on_a_box(builder, shape, 4)
    whole = margins()
    monkeypatch.setattr(crown_intermediate, "CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(crown_patches, "CHUNK_ELEMENTS", 4096)
    monkeypatch.setattr(crown_backward, "_TRANSPOSE_BLOCK_ELEMENTS", 1000)
    blocks = margins()
    monkeypatch.setattr(crown_intermediate, "patches_apply", lambda *args: False)  # dense rows through every conv
    dense_blocks = margins()
    torch.testing.assert_close(blocks, whole, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(dense_blocks, whole, rtol=1e-8, atol=1e-8)


def test_not_patchable_where_windows_do_not_apply():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(3, stride=1), nn.Conv2d(2, 2, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(2 * 4 * 4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    x = torch.rand(2, 1, 10, 10)
    layers, shapes, _, _, _ = _build(net, x - 0.1, x + 0.1, "ibp")
    assert not patches_apply(layers, shapes, 4)  # overlapping max-pool windows below
    assert not patches_apply(layers, shapes, 7)  # a flat (Linear) layer: no windows
    assert patches_apply(layers, shapes, 1)


def test_windows_are_differentiable_in_the_box():
    model = lenet_like(4)
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    radius = torch.full_like(x, 0.1, requires_grad=True)
    margins = crown_margin_bounds(model, x - radius, x + radius, torch.tensor([0, 1]))
    margins[torch.isfinite(margins)].sum().backward()
    assert radius.grad is not None and bool(torch.isfinite(radius.grad).all()) and bool((radius.grad != 0).any())


@pytest.mark.parametrize("kind", ["uniform", "asymmetric"])
def test_certified_lenet_boxes_survive_attacks(kind):
    """The zoo LeNet (windows for its second convolution, fused pool/ReLU): no counterexample in any box."""
    torch.manual_seed(6)
    model = build_model("lenet", (1, 12, 12), 10).eval()
    x = torch.rand(6, 1, 12, 12, generator=torch.Generator().manual_seed(7)) * 2 - 1
    with torch.no_grad():
        y = model(x).argmax(1)
    cert = certify(model, x, y, kind, method="crown", crown_rounds=2)
    assert bool(cert.certified.all())
    lower, upper = x - cert.eps_lower, x + cert.eps_upper
    assert bool((crown_margin_bounds(model, lower, upper, y).min(1).values >= cert.delta).all())
    assert_label_constant(model, lower, upper, y, cert.certified, pgd_steps=30, num_samples=48)


def test_folding_batch_norm_into_the_layer_before_changes_nothing(monkeypatch):
    # Conv2d-BatchNorm2d and Linear-BatchNorm1d pairs are back-substituted as one folded affine map.
    torch.manual_seed(7)
    model = nn.Sequential(*narrow_cnn7(8)[:9], nn.Flatten(), nn.Linear(64, 6), nn.BatchNorm1d(6), nn.ReLU(),
                          nn.Linear(6, 3)).double().eval()
    model[11].running_mean.uniform_(-0.2, 0.2)
    model[11].running_var.uniform_(0.5, 1.5)
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    lower, upper, y = x - 0.05, x + 0.05, torch.tensor([0, 1, 2])
    folded = crown_margin_bounds(model, lower, upper, y)
    monkeypatch.setattr(crown_backward, "folded_into_previous", lambda *args: None)
    monkeypatch.setattr(crown_patches, "folded_into_previous", lambda *args: None)
    torch.testing.assert_close(folded, crown_margin_bounds(model, lower, upper, y), rtol=1e-10, atol=1e-10)
