"""CROWN bounds (bounds/crown.py) and certification with them (bounds/linear_certify.py via certify)."""

import pytest
import torch
from torch import nn

from bounds.certify import certify
from bounds.crown import crown_margin_bounds, linear_margin_bounds
from bounds.errors import UnsupportedLayerError
from bounds.interval import interval_bounds
from bounds.margins import margin_lower_bounds
from bounds.normalization import InputNormalization
from tests.soundness import assert_label_constant, sample_box

KINDS = ("uniform", "nonuniform", "asymmetric")


def conv_net(seed: int) -> nn.Sequential:
    """Every supported layer type: normalisation, conv, BN, ReLU, MaxPool, Tanh, AvgPool, Sigmoid, LeakyReLU."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        InputNormalization([0.1], [0.5]),
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=1),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Sequential(nn.Linear(6, 16), nn.LeakyReLU(0.2), nn.Dropout(0.1), nn.Identity()),
        nn.Linear(16, 12),
        nn.Sigmoid(),
        nn.BatchNorm1d(12),
        nn.Linear(12, 4),
    )
    with torch.no_grad():
        for bn in (model[2], model[12]):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(),
                         nn.Linear(20, 3)).eval()


def mean_log_width(cert) -> torch.Tensor:
    """Per example ``mean_i log(eps_lower + eps_upper)``: Problem 2's objective (certified boxes have no zero width)."""
    return torch.log((cert.eps_lower + cert.eps_upper).clamp(min=1e-12)).flatten(1).mean(1)


def true_margins(model: nn.Module, points: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(S, B, K)`` margins ``f_y - f_j`` of sampled points."""
    with torch.no_grad():
        out = torch.stack([model(p) for p in points])
    return out.gather(2, y.view(1, -1, 1).expand(out.shape[0], -1, 1)) - out


@pytest.mark.parametrize("intermediate", ["crown", "ibp"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("radius", [0.02, 0.1, 0.4])
def test_bounds_enclose_samples_and_never_looser_than_ibp(seed, radius, intermediate):
    model = conv_net(seed)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    y = torch.arange(6) % 4
    lower, upper = x - radius, x + radius * torch.rand_like(x)
    bound = crown_margin_bounds(model, lower, upper, y, intermediate=intermediate)
    linear = linear_margin_bounds(model, lower, upper, y, intermediate=intermediate)
    points = sample_box(lower, upper, 48, 48, seed)
    margins = true_margins(model, points, y)
    finite = torch.isfinite(bound)
    assert bool(torch.isinf(bound[~finite]).all()) and int((~finite).sum()) == 6  # +inf exactly at j == y
    assert bool((bound[finite] <= margins.min(0).values[finite] + 1e-5).all())
    # The linear bound holds pointwise on the box it was built for.
    values = (linear.coefficients.unsqueeze(0) * points.unsqueeze(2)).flatten(3).sum(3) + linear.offset
    assert bool((values[:, finite] <= margins[:, finite] + 1e-5).all())
    assert bool((bound[finite] >= margin_lower_bounds(model, lower, upper, y)[finite] - 1e-6).all())
    # ... and concretised on sub-boxes it stays sound there.
    sub_lower, sub_upper = (lower + x) / 2, (upper + x) / 2
    sub = linear.margins(sub_lower, sub_upper)
    sub_margins = true_margins(model, sample_box(sub_lower, sub_upper, 32, 32, seed + 7), y).min(0).values
    assert bool((sub[finite] <= sub_margins[finite] + 1e-5).all())


def test_full_crown_tighter_than_ibp_on_mlp():
    model = mlp(0)
    x = torch.randn(8, 6)
    y = model(x).argmax(1)
    ibp = margin_lower_bounds(model, x - 0.05, x + 0.05, y)
    crown = crown_margin_bounds(model, x - 0.05, x + 0.05, y)
    crown_ibp = crown_margin_bounds(model, x - 0.05, x + 0.05, y, intermediate="ibp")
    finite = torch.isfinite(ibp)
    assert float((crown - ibp).detach()[finite].mean()) > 0.05
    assert bool((crown[finite] >= crown_ibp[finite] - 1e-5).all())


def test_single_linear_layer_is_exact():
    torch.manual_seed(3)
    layer = nn.Linear(5, 4)
    x = torch.randn(3, 5)
    lower, upper = x - torch.rand(3, 5), x + torch.rand(3, 5)
    y = torch.tensor([0, 2, 3])
    bound = crown_margin_bounds(layer, lower, upper, y).detach()
    with torch.no_grad():
        diff = layer.weight[y].unsqueeze(1) - layer.weight.unsqueeze(0)  # (B, K, n): w_y - w_j
        mid, rad = (upper + lower) / 2, (upper - lower) / 2
        expected = (diff @ mid.unsqueeze(2)).squeeze(2) - (diff.abs() @ rad.unsqueeze(2)).squeeze(2)
        expected = expected + layer.bias[y].unsqueeze(1) - layer.bias
    finite = torch.isfinite(bound)
    torch.testing.assert_close(bound[finite], expected[finite], atol=1e-5, rtol=1e-5)
    linear = linear_margin_bounds(layer, lower, upper, y)
    torch.testing.assert_close(linear.coefficients[finite], diff[finite], atol=1e-6, rtol=1e-6)
    # Interval propagation through one linear layer is looser (it loses the correlation of f_y and f_j).
    ibp = margin_lower_bounds(layer, lower, upper, y).detach()
    assert float((bound - ibp)[finite].min()) >= -1e-5 and float((bound - ibp)[finite].max()) > 0


def test_differentiable_in_the_box():
    model = conv_net(0)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    radius = torch.full_like(x, 0.05, requires_grad=True)
    bound = crown_margin_bounds(model, x - radius, x + radius, torch.tensor([0, 1]))
    bound[torch.isfinite(bound)].sum().backward()
    assert radius.grad is not None and bool(torch.isfinite(radius.grad).all()) and float(radius.grad.abs().sum()) > 0


class Indexing(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.head = nn.Linear(2, 2)

    def forward(self, x):
        return self.head(self.inner(x)[:, :2])


def test_unsupported_layers_rejected():
    x = torch.zeros(1, 4)
    with pytest.raises(UnsupportedLayerError, match="no rule"):
        crown_margin_bounds(Indexing(), x, x + 0.1, torch.tensor([0]))
    margin_lower_bounds(Indexing(), x, x + 0.1, torch.tensor([0]))  # interval propagation bounds it
    with pytest.raises(UnsupportedLayerError):
        crown_margin_bounds(nn.Sequential(nn.Linear(4, 3), nn.LeakyReLU(2.0), nn.Linear(3, 2)), x, x,
                            torch.tensor([0]))
    with pytest.raises(ValueError, match="method"):
        margin_lower_bounds(nn.Linear(4, 2), x, x, torch.tensor([0]), method="lp")  # type: ignore[arg-type]


def test_zero_width_box_equals_the_network():
    model = conv_net(1)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    y = torch.tensor([0, 1, 2])
    bound = crown_margin_bounds(model, x, x, y)
    exact = true_margins(model, x.unsqueeze(0), y)[0]
    finite = torch.isfinite(bound)
    torch.testing.assert_close(bound[finite], exact[finite], atol=1e-5, rtol=1e-5)
    out_l, out_u = interval_bounds(model, x, x)
    torch.testing.assert_close(out_l, out_u, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("clip", [False, True])
def test_certified_crown_boxes_survive_attacks(kind, clip):
    model = conv_net(2)
    x = (torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1).clamp(-0.9, 0.9)
    x[:, :, :2] = -1.0  # some entries at the end of the input range
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 4  # one misclassified example
    cert = certify(model, x, y, kind, method="crown", clip_to_input_range=clip, delta=1e-3)
    ibp = certify(model, x, y, kind, clip_to_input_range=clip, delta=1e-3)
    assert not bool(cert.certified[0]) and float(cert.eps_lower[0].abs().sum() + cert.eps_upper[0].abs().sum()) == 0
    assert bool(cert.certified[1:].all())
    assert bool((cert.eps_lower >= 0).all()) and bool((cert.eps_upper >= 0).all())
    lower, upper = x - cert.eps_lower, x + cert.eps_upper
    if clip:
        assert float(lower.min()) >= -1 - 1e-6 and float(upper.max()) <= 1 + 1e-6
    if kind != "asymmetric" and not clip:
        assert torch.equal(cert.eps_lower, cert.eps_upper)
    # Re-check: fresh CROWN margins on exactly the reported boxes reach delta; sampling and PGD agree.
    margins = crown_margin_bounds(model, lower, upper, y).min(1).values
    assert bool((margins[cert.certified] >= 1e-3).all())
    assert_label_constant(model, lower, upper, y, cert.certified, pgd_steps=30, num_samples=48)
    # CROWN boxes are larger than IBP's on this net (geometric-mean width).
    both = cert.certified & ibp.certified
    assert float(mean_log_width(cert)[both].mean()) > float(mean_log_width(ibp)[both].mean())


def test_crown_certify_on_mlp_and_modes_restored():
    model = mlp(1)
    model[1].train()
    params = list(model.parameters())
    params[0].requires_grad_(False)
    x = torch.randn(6, 6)
    with torch.no_grad(), evaluation_guard(model):
        y = model(x).argmax(1)
    with torch.inference_mode():
        cert = certify(model, x, y, "asymmetric", method="crown")
    assert model[1].training and not model[0].training and not model[2].training
    assert [p.requires_grad for p in params] == [False] + [True] * (len(params) - 1)
    assert bool(cert.certified.all())
    uniform = certify(model, x, y, "uniform", method="crown")
    ibp_uniform = certify(model, x, y, "uniform")
    assert bool((uniform.eps_lower[:, 0] >= ibp_uniform.eps_lower[:, 0] * 0.999).all())
    assert_label_constant(model.eval(), x - cert.eps_lower, x + cert.eps_upper, y, cert.certified)
    with pytest.raises(ValueError, match="method"):
        certify(model, x, y, method="exact")  # type: ignore[arg-type]


def evaluation_guard(model: nn.Module):
    from bounds.modes import evaluation_mode

    return evaluation_mode(model)


@pytest.mark.parametrize("kind", KINDS)
def test_crown_certification_never_smaller_than_interval_certification(kind):
    """Per example, method="crown" reports a box at least as large (Problem 2 objective) as method="ibp"."""
    model = conv_net(3)
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(8)) * 2 - 1
    with torch.no_grad():
        y = model(x).argmax(1)
    crown = certify(model, x, y, kind, method="crown", crown_rounds=1)
    ibp = certify(model, x, y, kind)
    assert bool((crown.certified >= ibp.certified).all())
    assert bool((mean_log_width(crown)[ibp.certified] >= mean_log_width(ibp)[ibp.certified] - 1e-6).all())
