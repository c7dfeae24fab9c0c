"""The graph bound engine: tracing, the cache, every operator's interval rule and CROWN relaxation, general models.

Soundness is checked by sampling (uniform points, corners, ends) and PGD inside every certified box.
"""

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bounds.engine.graph as graph_module
from bounds.analysis import geometric_mean_width
from bounds.certify import certify
from bounds.crown import crown_margin_bounds, linear_margin_bounds
from bounds.engine import supported_operators
from bounds.errors import UnsupportedLayerError
from bounds.interval import check_supported, interval_bounds
from bounds.layer_relaxations import relax_layer
from bounds.margins import margin_lower_bounds
from bounds.normalization import InputNormalization
from lightning_modules.zoo import SmallResNet
from tests.soundness import assert_encloses, assert_label_constant, sample_box

KINDS = ("uniform", "nonuniform", "asymmetric")


# ------------------------------------------------------------------ the old Sequential walk, as a reference


def reference_interval(model: nn.Module, lower: torch.Tensor, upper: torch.Tensor):
    """The pre-engine interval propagation through a nested Sequential (Theorem 1 layer by layer), for comparison."""
    for layer in (model if isinstance(model, nn.Sequential) else [model]):
        if isinstance(layer, nn.Sequential):
            lower, upper = reference_interval(layer, lower, upper)
            continue
        mid, rad = (upper + lower) / 2, (upper - lower) / 2
        if type(layer) is nn.Linear:
            mid, rad = F.linear(mid, layer.weight, layer.bias), F.linear(rad, layer.weight.abs())
        elif type(layer) is nn.Conv2d:
            mid, rad = layer._conv_forward(mid, layer.weight, layer.bias), layer._conv_forward(rad, layer.weight.abs(),
                                                                                             None)
        elif type(layer) in (nn.BatchNorm1d, nn.BatchNorm2d):
            scale = torch.rsqrt(layer.running_var + layer.eps) * layer.weight
            shift = layer.bias - layer.running_mean * scale
            view = (1, -1, *([1] * (mid.dim() - 2)))
            mid, rad = mid * scale.view(view) + shift.view(view), rad * scale.abs().view(view)
        elif type(layer) is InputNormalization:
            view = (1, -1, *([1] * (mid.dim() - 2)))
            mid, rad = (mid - layer.mean.reshape(view)) / layer.std.reshape(view), rad / layer.std.reshape(view)
        else:
            lower, upper = layer(lower), layer(upper)
            continue
        lower, upper = mid - rad, mid + rad
    return lower, upper


def sequential_conv_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        InputNormalization([0.1], [0.5]), nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Sequential(nn.Linear(6, 16), nn.LeakyReLU(0.2), nn.Dropout(0.1)), nn.Linear(16, 4))
    with torch.no_grad():
        model[2].running_mean.uniform_(-0.2, 0.2)
        model[2].running_var.uniform_(0.5, 1.5)
    return model.eval()


class FunctionalConvNet(nn.Module):
    """The same network written as most Lightning projects write one: own forward, functional calls, a view."""

    def __init__(self, source: nn.Sequential) -> None:
        super().__init__()
        self.norm, self.conv1, self.bn = source[0], source[1], source[2]
        self.conv2, self.fc1, self.fc2 = source[5], source[9][0], source[10]

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv1(self.norm(x)))), 2)
        x = F.avg_pool2d(torch.tanh(self.conv2(x)), 2)
        x = x.view(x.size(0), -1)
        return self.fc2(F.dropout(F.leaky_relu(self.fc1(x), 0.2), 0.1, training=self.training))


def test_sequential_models_give_the_old_interval_bounds():
    model = sequential_conv_net()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for radius in (0.0, 0.01, 0.1):
        new = interval_bounds(model, x - radius, x + radius)
        old = reference_interval(model, x - radius, x + radius)
        for a, b in zip(new, old, strict=True):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def test_custom_forward_model_equals_its_sequential_twin_with_ibp_and_crown():
    sequential = sequential_conv_net()
    functional = FunctionalConvNet(sequential).eval()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = sequential(x).argmax(1)
    for radius in (0.005, 0.05):
        for method in ("ibp", "crown"):
            a = margin_lower_bounds(sequential, x - radius, x + radius, y, method)
            b = margin_lower_bounds(functional, x - radius, x + radius, y, method)
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), method


# ------------------------------------------------------------------ every operator


ACTIVATION_MODULES = [nn.ReLU(), nn.LeakyReLU(0.1), nn.Sigmoid(), nn.Tanh(), nn.ELU(), nn.ELU(alpha=2.0),
                      nn.Softplus(), nn.Softplus(beta=2.0), nn.Hardtanh(-0.5, 0.8), nn.ReLU6(), nn.GELU(),
                      nn.GELU(approximate="tanh"), nn.SiLU()]


@pytest.mark.parametrize("layer", ACTIVATION_MODULES, ids=lambda m: repr(m))
def test_activation_interval_and_crown_relaxation_enclose_the_function(layer):
    gen = torch.Generator().manual_seed(0)
    centre = torch.randn(1, 400, generator=gen, dtype=torch.float64) * 3
    width = torch.rand(1, 400, generator=gen, dtype=torch.float64) * torch.tensor([0.0, 0.1, 1.0, 6.0]).repeat(
        100).view(1, 400)
    lower, upper = centre - width / 2, centre + width / 2
    dense = lower + (upper - lower) * torch.linspace(0, 1, 2001, dtype=torch.float64).view(-1, 1, 1)
    values = layer(dense)
    out_l, out_u = interval_bounds(layer.double(), lower, upper)
    assert bool((values >= out_l - 1e-9).all()) and bool((values <= out_u + 1e-9).all())
    assert bool((values.amin(0) <= out_l + 1e-3 + 1e-3 * width).all())  # tight up to the grid
    relax = relax_layer(layer, lower, upper)
    below = relax.slope_l * dense + relax.icpt_l
    above = relax.slope_u * dense + relax.icpt_u
    assert bool((below <= values + 1e-9).all()), "lower line above the function"
    assert bool((above >= values - 1e-9).all()), "upper line below the function"


OPERATOR_MODELS = {
    "residual_add": lambda: Residual(),
    "cat": lambda: Concatenating(),
    "scalar_arithmetic": lambda: Arithmetic(),
    "adaptive_and_mean": lambda: Pooling(),
    "reshape_and_index": lambda: Reshaping(),
}


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.a(x)) + x
        h = torch.add(h, F.silu(self.b(h)), alpha=0.5)
        return self.head(h - 0.5 * x)


class Concatenating(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(6, 4), nn.Linear(6, 5), nn.Linear(9, 3)

    def forward(self, x):
        return self.head(torch.cat([F.gelu(self.a(x)), F.elu(self.b(x))], dim=1))


class Arithmetic(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Linear(6, 6), nn.Linear(6, 3)
        self.register_buffer("offset", torch.linspace(-1, 1, 6))

    def forward(self, x):
        h = -(2.0 * self.a(x) / 3.0) + self.offset
        return self.head(F.softplus(h) - 1 + F.hardtanh(h).neg() * self.offset.abs())


class Pooling(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d((2, 2))
        self.head = nn.Linear(4 * 4 + 4, 3)

    def forward(self, x):
        h = F.relu6(self.conv(F.adaptive_avg_pool2d(x.view(x.size(0), 2, 3, 1), (3, 3))))
        return self.head(torch.cat([torch.flatten(self.pool(h), 1), h.mean((2, 3))], 1))


class Reshaping(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 3)

    def forward(self, x):
        h = x.reshape(x.shape[0], 2, 3)
        return self.head(F.leaky_relu(h[:, 0] - h[:, 1], 0.3).flatten(1))


@pytest.mark.parametrize("name", sorted(OPERATOR_MODELS))
def test_operators_interval_bounds_enclose_sampled_outputs(name):
    torch.manual_seed(0)
    model = OPERATOR_MODELS[name]().eval()
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    for radius in (0.0, 0.05, 0.5):
        lower, upper = x - radius, x + radius
        out_l, out_u = interval_bounds(model, lower, upper)
        assert_encloses(model, lower, upper, out_l, out_u, sample_box(lower, upper, 256, 256))
        if radius == 0.0:
            with torch.no_grad():
                assert torch.allclose(out_l, model(x), atol=1e-5) and torch.allclose(out_u, model(x), atol=1e-5)
    y = model(x).argmax(1)
    cert = certify(model, x, y, kind="asymmetric", iterations=15)
    assert_label_constant(model, x - cert.eps_lower, x + cert.eps_upper, y, mask=cert.certified)


def test_readme_lists_every_registered_operator():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("#### Supported operators"):]
    section = section[:section.index("\n#")]
    for title, spellings, crown in supported_operators():
        row = next((line for line in section.splitlines() if line.startswith(f"| {title} |")), None)
        assert row is not None, f"README lacks {title}"
        for spelling in spellings:
            assert f"`{spelling}`" in row, (title, spelling)
        assert row.rstrip().endswith("| yes |" if crown else "| no |"), title


# ------------------------------------------------------------------ tracing, cache, refusals


def test_trace_once_and_retrace_on_a_change(monkeypatch):
    model = sequential_conv_net()
    calls = []
    original = graph_module._fx_graph
    monkeypatch.setattr(graph_module, "_fx_graph", lambda m: calls.append(1) or original(m))
    x = torch.zeros(2, 1, 8, 8)
    for _ in range(3):
        interval_bounds(model, x, x)
    assert len(calls) == 1
    model[10] = nn.Linear(16, 5)  # a replaced layer is seen
    assert interval_bounds(model, x, x)[0].shape == (2, 5)
    assert len(calls) == 2
    model.train()
    with pytest.raises(ValueError, match="train mode"):
        interval_bounds(model, x, x)
    assert len(calls) == 3


def test_cache_does_not_keep_the_model_alive():
    model = sequential_conv_net()
    interval_bounds(model, torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_parameters_are_read_live():
    model = nn.Sequential(nn.Linear(2, 2)).eval()
    x = torch.ones(1, 2)
    interval_bounds(model, x, x)
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(3.0)
    assert torch.equal(interval_bounds(model, x, x)[0], torch.full((1, 2), 3.0))


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(x + torch.randn_like(x))


class Product(nn.Module):
    def forward(self, x):
        return x * x


class WithFlag(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x, features: bool = False):
        h = self.fc(x)
        return h if features else torch.relu(h)


def test_refusals_name_operator_path_and_source_line():
    x = torch.zeros(1, 2)
    with pytest.raises(UnsupportedLayerError, match="data-dependent control flow"):
        interval_bounds(Branchy(), x, x)
    with pytest.raises(UnsupportedLayerError, match="random sampling") as info:
        interval_bounds(nn.Sequential(nn.Identity(), Noisy()), x, x)
    assert info.value.path == "1" and "test_engine.py" in info.value.source
    with pytest.raises(UnsupportedLayerError, match="not affine"):
        interval_bounds(Product(), x, x)
    with pytest.raises(UnsupportedLayerError, match="LSTM"):
        check_supported(nn.Sequential(nn.LSTM(2, 2)))
    out_l, _ = interval_bounds(WithFlag(), -torch.ones(1, 2), torch.ones(1, 2))  # defaults are taken as constants
    assert bool((out_l >= 0).all())


# ------------------------------------------------------------------ residual networks and torchvision


def randomised_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
    return model.eval()


def briefly_trained_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = SmallResNet((3, 32, 32), 10)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32, generator=gen)
    y = (x[:, 0].mean((1, 2)) > x[:, 1].mean((1, 2))).long() + 2 * (x[:, 2].mean((1, 2)) > 0.5).long()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(15):
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model.eval()


@pytest.mark.parametrize("trained", [False, True], ids=["random", "trained"])
@pytest.mark.parametrize("kind", KINDS)
def test_resnet_certificates_survive_attacks(kind, trained):
    model = briefly_trained_resnet() if trained else randomised_batch_norms(SmallResNet((3, 32, 32), 10))
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    cert = certify(model, x, y, kind=kind, input_range=(0.0, 1.0), iterations=10)
    assert bool(cert.certified.all())
    margins = margin_lower_bounds(model, x - cert.eps_lower, x + cert.eps_upper, y)
    assert bool((margins.min(1).values >= 1e-4).all())
    assert_label_constant(model, x - cert.eps_lower, x + cert.eps_upper, y, pgd_steps=20, num_samples=32)
    crown = certify(model, x, y, kind=kind, method="crown", input_range=(0.0, 1.0), iterations=10, crown_rounds=2)
    assert bool(crown.certified.all())
    margins = crown_margin_bounds(model, x - crown.eps_lower, x + crown.eps_upper, y)
    assert bool((margins.min(1).values >= 1e-4).all())
    assert bool((geometric_mean_width(crown) >= geometric_mean_width(cert) * (1 - 1e-6)).all())
    assert_label_constant(model, x - crown.eps_lower, x + crown.eps_upper, y, pgd_steps=20, num_samples=32)


@pytest.mark.parametrize("name", ["residual_add", "cat", "scalar_arithmetic", "adaptive_and_mean"])
def test_graph_crown_encloses_samples_and_is_never_looser_than_ibp(name):
    torch.manual_seed(0)
    model = OPERATOR_MODELS[name]().eval()
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    for radius in (0.05, 0.5):
        lower, upper = x - radius, x + radius
        crown = crown_margin_bounds(model, lower, upper, y)
        assert bool((crown >= margin_lower_bounds(model, lower, upper, y) - 1e-6).all())
        linear = linear_margin_bounds(model, lower, upper, y)
        with torch.no_grad():
            for p in sample_box(lower, upper, 512, 512):
                logits = model(p)
                gaps = logits.gather(1, y.view(-1, 1)) - logits
                finite = torch.isfinite(crown)
                assert bool((gaps[finite] >= crown[finite] - 1e-5).all())
                plane = (linear.coefficients * p.unsqueeze(1)).flatten(2).sum(2) + linear.offset
                assert bool((gaps[finite] >= plane[finite] - 1e-5).all())


def test_torchvision_resnet18_is_certified_soundly():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = randomised_batch_norms(torchvision.models.resnet18(num_classes=10))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    for kind in ("uniform", "asymmetric"):
        cert = certify(model, x, y, kind=kind, input_range=(0.0, 1.0), iterations=5)
        assert bool(cert.certified.all())
        assert_label_constant(model, x - cert.eps_lower, x + cert.eps_upper, y, pgd_steps=10, num_samples=16)
    crown = certify(model, x, y, kind="uniform", input_range=(0.0, 1.0), method="crown", crown_rounds=1)
    assert bool(crown.certified.all())
    uniform_ibp = certify(model, x, y, kind="uniform", input_range=(0.0, 1.0))
    assert bool((crown.eps_lower.flatten(1)[:, 0] >= uniform_ibp.eps_lower.flatten(1)[:, 0] * (1 - 1e-6)).all())
    assert_label_constant(model, x - crown.eps_lower, x + crown.eps_upper, y, pgd_steps=10, num_samples=16)


def test_torchvision_vgg11_bn_interval_bounds_enclose_outputs():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = randomised_batch_norms(torchvision.models.vgg11_bn(num_classes=10))
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    lower, upper = x - 1e-4, x + 1e-4
    out_l, out_u = interval_bounds(model, lower, upper)
    assert_encloses(model, lower, upper, out_l, out_u, sample_box(lower, upper, 8, 8))


def test_crown_is_never_looser_than_ibp_on_the_functional_model():
    model = FunctionalConvNet(sequential_conv_net()).eval()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    y = model(x).argmax(1)
    for kind in KINDS:
        ibp = certify(model, x, y, kind=kind, iterations=10)
        crown = certify(model, x, y, kind=kind, method="crown", iterations=10, crown_rounds=2)
        assert bool((crown.certified >= ibp.certified).all())
        assert_label_constant(model, x - crown.eps_lower, x + crown.eps_upper, y, mask=crown.certified)
    margins = crown_margin_bounds(model, x - 0.02, x + 0.02, y)
    assert bool((margins >= margin_lower_bounds(model, x - 0.02, x + 0.02, y) - 1e-6).all())


class ConvResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        h = F.relu(self.stem(x))
        return self.head(torch.flatten(F.relu(self.conv(h)) + h, 1))


def test_graph_crown_in_chunks_of_examples_equals_one_pass(monkeypatch):
    import bounds.crown as crown

    torch.manual_seed(0)
    model = ConvResidual().eval()
    x = torch.rand(7, 2, 5, 5, dtype=torch.float64)
    model = model.double()
    lower = (x - 0.05).requires_grad_(True)
    upper = x + 0.05
    y = model(x).argmax(1)
    whole = linear_margin_bounds(model, lower, upper, y)
    margins = crown_margin_bounds(model, lower, upper, y)
    (grad_whole,) = torch.autograd.grad(margins[torch.isfinite(margins)].sum(), lower)
    monkeypatch.setattr(crown, "GRAPH_CHUNK_INPUT_ELEMENTS", 2 * x[0].numel())  # 2 + 2 + 2 + 1 examples
    calls = []
    run = crown.graph_back_substitution
    monkeypatch.setattr(crown, "graph_back_substitution", lambda *a: calls.append(a[1].shape[0]) or run(*a))
    parts = linear_margin_bounds(model, lower, upper, y)
    chunked = crown_margin_bounds(model, lower, upper, y)
    (grad_chunked,) = torch.autograd.grad(chunked[torch.isfinite(chunked)].sum(), lower)
    assert calls == [2, 2, 2, 1] * 2
    assert torch.allclose(parts.coefficients, whole.coefficients, atol=1e-12)
    assert torch.equal(parts.offset.isinf(), whole.offset.isinf())
    finite = torch.isfinite(whole.offset)
    assert torch.allclose(parts.offset[finite], whole.offset[finite], atol=1e-12)
    assert torch.allclose(chunked, margins, atol=1e-12) and torch.allclose(grad_chunked, grad_whole, atol=1e-12)
    assert parts.lower is lower and parts.upper is upper
