import pytest
import torch
from torch import nn

from bounds.errors import UnsupportedLayerError
from bounds.interval import check_supported, interval_bounds
from bounds.margins import margin_lower_bounds, margins_from_bounds
from bounds.normalization import InputNormalization
from tests.soundness import assert_encloses, sample_box


def _randomise_batchnorm(model: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen))  # both signs
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen))


def conv_net() -> nn.Sequential:
    """Every supported layer type, with nesting."""
    return nn.Sequential(
        InputNormalization([0.1, -0.2], [0.5, 2.0]),
        nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.LeakyReLU(0.1),
            nn.MaxPool2d(2),
            nn.Sequential(nn.Conv2d(4, 5, 3, padding=1, padding_mode="reflect"), nn.Tanh()),
            nn.AvgPool2d(2),
            nn.Identity(),
        ),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(5 * 2 * 2, 12),
        nn.BatchNorm1d(12),
        nn.Sigmoid(),
        nn.Linear(12, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 10), nn.ReLU(), nn.Sequential(nn.Linear(10, 10), nn.Tanh()),
                         nn.Linear(10, 4))


@pytest.mark.parametrize("factory,shape", [(conv_net, (2, 8, 8)), (mlp, (6,))])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bounds_enclose_outputs(factory, shape, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = factory()
    _randomise_batchnorm(model, gen)
    model.eval()
    x = torch.randn(5, *shape, generator=gen)
    radius = torch.rand(5, *shape, generator=gen) * torch.tensor([0.0, 0.01, 0.1, 0.5, 1.0]).view(-1, *[1] * len(shape))
    lower, upper = x - radius * torch.rand(x.shape, generator=gen), x + radius
    out_lower, out_upper = interval_bounds(model, lower, upper)
    assert out_lower.shape == (5, model(x).shape[1])
    assert bool((out_lower <= out_upper).all())
    points = sample_box(lower, upper, num_random=100, num_corners=100, seed=seed)
    assert_encloses(model, lower, upper, out_lower, out_upper, points)


def test_zero_width_box_gives_the_output():
    torch.manual_seed(0)
    model = conv_net().eval()
    x = torch.randn(3, 2, 8, 8)
    out_lower, out_upper = interval_bounds(model, x, x)
    expected = model(x)
    torch.testing.assert_close(out_lower, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_upper, expected, atol=1e-5, rtol=1e-5)


def test_linear_layer_matches_closed_form():
    torch.manual_seed(0)
    layer = nn.Linear(7, 5).double()
    lower = torch.randn(4, 7, dtype=torch.float64)
    upper = lower + torch.rand(4, 7, dtype=torch.float64)
    mid, rad = (lower + upper) / 2, (upper - lower) / 2
    w, b = layer.weight.detach(), layer.bias.detach()
    out_lower, out_upper = interval_bounds(layer, lower, upper)
    torch.testing.assert_close(out_lower, mid @ w.T + b - rad @ w.abs().T)
    torch.testing.assert_close(out_upper, mid @ w.T + b + rad @ w.abs().T)
    # Theorem 1's own form: [W]+ l + [W]- u + b.
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    torch.testing.assert_close(out_lower, lower @ wp.T + upper @ wn.T + b)
    torch.testing.assert_close(out_upper, upper @ wp.T + lower @ wn.T + b)


def test_conv_layer_matches_theorem_1():
    torch.manual_seed(0)
    layer = nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
    lower = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    upper = lower + torch.rand(2, 2, 7, 7, dtype=torch.float64)
    w, b = layer.weight.detach(), layer.bias.detach()
    conv = torch.nn.functional.conv2d
    out_lower, out_upper = interval_bounds(layer, lower, upper)
    expected_lower = conv(lower, w.clamp(min=0), b, 2, 1) + conv(upper, w.clamp(max=0), None, 2, 1)
    expected_upper = conv(upper, w.clamp(min=0), b, 2, 1) + conv(lower, w.clamp(max=0), None, 2, 1)
    torch.testing.assert_close(out_lower, expected_lower)
    torch.testing.assert_close(out_upper, expected_upper)


def test_larger_box_never_tighter():
    torch.manual_seed(3)
    model = conv_net().eval()
    x = torch.randn(4, 2, 8, 8)
    inner = torch.rand(4, 2, 8, 8) * 0.1
    lo_small, up_small = interval_bounds(model, x - inner, x + inner)
    lo_big, up_big = interval_bounds(model, x - inner - 0.05 * torch.rand_like(x), x + inner + 0.02)
    assert bool((lo_big <= lo_small + 1e-6).all())
    assert bool((up_big >= up_small - 1e-6).all())


def test_gradients_flow_to_box():
    torch.manual_seed(0)
    model = conv_net().eval()
    x = torch.randn(2, 2, 8, 8)
    lower = (x - 0.1).requires_grad_(True)
    upper = (x + 0.1).requires_grad_(True)
    out_lower, out_upper = interval_bounds(model, lower, upper)
    (out_upper - out_lower).sum().backward()
    assert lower.grad is not None and upper.grad is not None
    assert bool(torch.isfinite(lower.grad).all()) and lower.grad.abs().sum() > 0
    assert upper.grad.abs().sum() > 0
    # Widening the box widens the output: d(width)/d(upper) >= 0 and d(width)/d(lower) <= 0.
    assert bool((upper.grad >= -1e-6).all()) and bool((lower.grad <= 1e-6).all())


def test_parameters_untouched():
    model = conv_net().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    interval_bounds(model, torch.zeros(1, 2, 8, 8), torch.ones(1, 2, 8, 8))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class Custom(nn.Module):
    def forward(self, x):
        return torch.exp(x) * 2


class Doubling(nn.Module):
    def forward(self, x):
        return x * 2


class MyReLU(nn.ReLU):
    def forward(self, x):
        return -super().forward(x)


@pytest.mark.parametrize(
    "model,type_name,path",
    [
        (nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Sequential(Custom()))), "torch.exp", "1.1.0"),
        (nn.Sequential(nn.Flatten(), nn.LSTM(4, 4)), "LSTM", "1"),
        (nn.Softmax(dim=1), "Softmax", ""),
    ],
)
def test_unsupported_layer_named(model, type_name, path):
    with pytest.raises(UnsupportedLayerError) as info:
        check_supported(model)
    assert info.value.path == path
    assert type_name in str(info.value)
    with pytest.raises(UnsupportedLayerError):
        interval_bounds(model, torch.zeros(1, 2), torch.ones(1, 2))


def test_custom_forward_modules_and_layer_subclasses_are_traced_soundly():
    """What their forward computes is bounded (a subclass of ReLU that negates is not bounded as a ReLU)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Sequential(MyReLU(), nn.Sequential(Doubling())), nn.Linear(3, 2))
    lower, upper = -torch.ones(4, 2), torch.ones(4, 2)
    out_l, out_u = interval_bounds(model, lower, upper)
    assert_encloses(model, lower, upper, out_l, out_u, sample_box(lower, upper, 256, 256))
    x = torch.randn(4, 2)
    point_l, point_u = interval_bounds(model, x, x)
    with torch.no_grad():
        assert torch.allclose(point_l, model(x), atol=1e-6) and torch.allclose(point_u, model(x), atol=1e-6)


def test_named_children_paths():
    features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Softmax2d())
    model = nn.Sequential()
    model.add_module("features", features)
    with pytest.raises(UnsupportedLayerError) as info:
        check_supported(model)
    assert info.value.path == "features.1" and isinstance(info.value, TypeError)


def test_negative_leaky_slope_rejected():
    with pytest.raises(UnsupportedLayerError):
        check_supported(nn.Sequential(nn.Linear(2, 2), nn.LeakyReLU(-0.5)))


def test_check_supported_accepts_zoo_like_models():
    check_supported(conv_net())
    check_supported(mlp())
    check_supported(nn.Linear(3, 2))


def test_bad_inputs():
    model = mlp().eval()
    x = torch.zeros(2, 6)
    with pytest.raises(ValueError, match="finite"):
        interval_bounds(model, x.clone().fill_(float("nan")), x)
    with pytest.raises(ValueError, match="finite"):
        interval_bounds(model, x, x.clone().fill_(float("inf")))
    with pytest.raises(ValueError, match="same shape"):
        interval_bounds(model, x, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="exceed"):
        interval_bounds(model, x + 0.1, x)
    # rounding-level inversion is tolerated
    out_lower, out_upper = interval_bounds(model, x + 1e-8, x)
    assert bool((out_lower <= out_upper + 1e-6).all())


def test_train_mode_layers_raise():
    bn = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).train()
    with pytest.raises(ValueError, match="train mode"):
        interval_bounds(bn, torch.zeros(2, 3), torch.ones(2, 3))
    drop = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)).train()
    with pytest.raises(ValueError, match="train mode"):
        interval_bounds(drop, torch.zeros(2, 3), torch.ones(2, 3))
    check_supported(bn)  # structure is fine; mode is the caller's business


def test_margins():
    torch.manual_seed(0)
    model = mlp().eval()
    x = torch.randn(3, 6)
    y = torch.tensor([0, 2, 3])
    margins = margin_lower_bounds(model, x - 0.01, x + 0.01, y)
    out_lower, out_upper = interval_bounds(model, x - 0.01, x + 0.01)
    for b in range(3):
        for j in range(4):
            if j == y[b]:
                assert margins[b, j] == float("inf")
            else:
                assert margins[b, j] == out_lower[b, y[b]] - out_upper[b, j]
    with pytest.raises(ValueError):
        margins_from_bounds(out_lower, out_upper, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError):
        margins_from_bounds(out_lower, out_upper, torch.tensor([0.0, 1.0, 2.0]))
