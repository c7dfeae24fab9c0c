import pytest
import torch
from torch import nn

from bounds.analysis import geometric_mean_width
from bounds.certify import certify
from bounds.errors import UnsupportedLayerError
from bounds.margins import margin_lower_bounds
from bounds.normalization import InputNormalization
from tests.soundness import assert_label_constant

KINDS = ("uniform", "nonuniform", "asymmetric")
FAST = {"iterations": 40}


def small_conv_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        InputNormalization([0.0], [0.5]),
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Sequential(nn.Linear(6, 16), nn.LeakyReLU(0.2), nn.Dropout(0.1)),
        nn.Linear(16, 4),
    )
    with torch.no_grad():
        bn = model[2]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    return model.eval()



def synthetic_2d(seed: int = 0, n: int = 600) -> tuple[torch.Tensor, torch.Tensor]:
    """Amoeba's 2-D synthetic task: points in [-1, 1]^2 labelled by the nearest of 5 fixed random seed points."""
    seeds = torch.rand(5, 2, generator=torch.Generator().manual_seed(1234)) * 2 - 1
    x = torch.rand(n, 2, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    y = torch.cdist(x, seeds).argmin(1)
    return x, y


@pytest.fixture(scope="module")
def trained_2d() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x, y = synthetic_2d()
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        loss = nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    x_test, y_test = synthetic_2d(seed=1, n=60)
    with torch.no_grad():
        assert (model(x_test).argmax(1) == y_test).float().mean() > 0.9
    return model, x_test, y_test


def check_certificate(model, x, y, cert, delta=1e-4):
    assert cert.eps_lower.shape == x.shape and cert.eps_upper.shape == x.shape
    assert bool((cert.eps_lower >= 0).all()) and bool((cert.eps_upper >= 0).all())
    assert torch.equal(cert.labels, y)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert not bool((cert.certified & ~correct).any())
    flat = cert.width.flatten(1)
    assert bool((flat[~cert.certified] == 0).all())
    mask = cert.certified
    if bool(mask.any()):
        margins = margin_lower_bounds(model, (x - cert.eps_lower)[mask], (x + cert.eps_upper)[mask], y[mask])
        assert bool((margins.min(1).values >= delta).all())
    assert_label_constant(model, x - cert.eps_lower, x + cert.eps_upper, y, mask=mask)
    if cert.kind != "asymmetric":
        assert torch.equal(cert.eps_lower, cert.eps_upper)
    if cert.kind == "uniform":
        assert bool((flat == flat[:, :1]).all())


@pytest.mark.parametrize("kind", KINDS)
def test_random_conv_net_sound(kind):
    model = small_conv_net(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(12, 1, 8, 8, generator=gen) * 2 - 1
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 4  # two misclassified examples
    cert = certify(model, x, y, kind, **FAST)
    check_certificate(model, x, y, cert)
    assert not bool(cert.certified[:2].any())
    assert bool((cert.eps_lower[:2] == 0).all()) and bool((cert.eps_upper[:2] == 0).all())
    assert bool(cert.certified[2:].all())
    assert bool((geometric_mean_width(cert)[2:] > 0).all())


@pytest.mark.parametrize("kind", KINDS)
def test_trained_2d_net_sound_and_ordered(kind, trained_2d):
    model, x, y = trained_2d
    cert = certify(model, x, y, kind)
    check_certificate(model, x, y, cert)
    assert cert.certified.float().mean() > 0.9
    if kind != "uniform":
        uniform = certify(model, x, y, "uniform")
        both = cert.certified & uniform.certified
        # Each example keeps the better of the optimised and the uniform box.
        assert bool((geometric_mean_width(cert)[both] >= geometric_mean_width(uniform)[both] * (1 - 1e-4)).all())


def test_asymmetric_beats_symmetric_on_2d(trained_2d):
    model, x, y = trained_2d
    widths = {k: geometric_mean_width(certify(model, x, y, k)).mean().item() for k in KINDS}
    assert widths["asymmetric"] > widths["nonuniform"] >= widths["uniform"] * (1 - 1e-4)
    assert widths["asymmetric"] > 1.1 * widths["uniform"]


def test_uniform_is_tight():
    model = small_conv_net(1)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        y = model(x).argmax(1)
    cert = certify(model, x, y, "uniform")
    r = cert.eps_lower.flatten(1)[:, 0]
    bigger = (r * 1.001 + 1e-5).view(-1, 1, 1, 1)
    margins = margin_lower_bounds(model, x - bigger, x + bigger, y).min(1).values
    assert bool((margins[cert.certified] < 1e-4).all())


@pytest.mark.parametrize("options,tol", [({}, 2e-2), ({"iterations": 200, "lr_decay": True}, 2e-3)])
def test_paper_1d_example(options, tol):
    """Amoeba Eq. 1 / Figure 1: x = 0.3 in [0, 1], decision boundary at 0.5.

    The symmetric boxes are exact up to delta; the asymmetric right end is as close to 0.5 as the
    optimiser gets (40 constant-lr Adam steps by default, closer with more steps and lr decay).
    """
    model = nn.Linear(1, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0], [1.0]]))
        model.bias.copy_(torch.tensor([0.5, -0.5]))
    x, y = torch.tensor([[0.3]]), torch.tensor([0])
    boxes = {}
    for kind in KINDS:
        cert = certify(model, x, y, kind, clip_to_input_range=True, input_range=(0.0, 1.0), **options)
        assert bool(cert.certified.all())
        boxes[kind] = ((x - cert.eps_lower).item(), (x + cert.eps_upper).item())
    assert boxes["asymmetric"][0] == pytest.approx(0.0, abs=tol)
    assert boxes["asymmetric"][1] == pytest.approx(0.5, abs=tol) and boxes["asymmetric"][1] < 0.5
    for kind in ("uniform", "nonuniform"):
        assert boxes[kind][0] == pytest.approx(0.1, abs=1e-3)
        assert boxes[kind][1] == pytest.approx(0.5, abs=1e-3) and boxes[kind][1] < 0.5


@pytest.mark.parametrize("kind", KINDS)
def test_clip_to_input_range(kind, trained_2d):
    model, x, y = trained_2d
    cert = certify(model, x, y, kind, clip_to_input_range=True, **FAST)
    lower, upper = x - cert.eps_lower, x + cert.eps_upper
    assert bool((lower >= -1 - 1e-6).all()) and bool((upper <= 1 + 1e-6).all())
    check_certificate(model, x, y, cert) if kind == "asymmetric" else assert_label_constant(
        model, lower, upper, y, mask=cert.certified)
    with pytest.raises(ValueError, match="inside"):
        certify(model, x * 3, y, kind, clip_to_input_range=True)


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic(kind):
    model = small_conv_net(2)
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        y = model(x).argmax(1)
    first = certify(model, x, y, kind, seed=3, **FAST)
    second = certify(model, x, y, kind, seed=3, **FAST)
    assert torch.equal(first.eps_lower, second.eps_lower) and torch.equal(first.eps_upper, second.eps_upper)
    assert torch.equal(first.certified, second.certified)


def test_modes_and_requires_grad_restored_and_grad_contexts():
    model = small_conv_net(3)
    model.train()
    model[2].eval()  # a frozen BatchNorm inside a training model
    model[1].weight.requires_grad_(False)
    flags = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        model.eval()
        y = model(x).argmax(1)
        for m, f in flags:
            m.training = f
    reference = certify(model, x, y, "asymmetric", **FAST)
    with torch.no_grad():
        in_no_grad = certify(model, x, y, "asymmetric", **FAST)
    with torch.inference_mode():
        x_inf, y_inf = x.clone(), y.clone()
        in_inference = certify(model, x_inf, y_inf, "asymmetric", **FAST)
    for cert in (in_no_grad, in_inference):
        assert torch.equal(cert.eps_lower, reference.eps_lower)
        assert torch.equal(cert.certified, reference.certified)
    assert bool(reference.certified.all())
    assert all(m.training == f for m, f in flags)
    assert all(p.requires_grad == g and p.grad is None for p, g in grads)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_batch_size_chunks(trained_2d):
    model, x, y = trained_2d
    whole = certify(model, x, y, "uniform")
    chunked = certify(model, x, y, "uniform", batch_size=7, progress=False)
    torch.testing.assert_close(whole.eps_lower, chunked.eps_lower, atol=1e-5, rtol=1e-4)
    assert torch.equal(whole.certified, chunked.certified)
    assert chunked.seconds > 0 and chunked.seconds_per_example == pytest.approx(chunked.seconds / x.shape[0])


def test_bad_arguments(trained_2d):
    model, x, y = trained_2d
    with pytest.raises(ValueError, match="kind"):
        certify(model, x, y, "diamond")
    with pytest.raises(ValueError, match="y must"):
        certify(model, x, y[:-1])
    with pytest.raises(ValueError, match="finite"):
        certify(model, x.clone().fill_(float("nan")), y)
    with pytest.raises(ValueError, match="delta"):
        certify(model, x, y, delta=0.0)
    with pytest.raises(ValueError, match="iterations"):
        certify(model, x, y, iterations=-1)
    with pytest.raises(UnsupportedLayerError):
        certify(nn.Sequential(nn.Linear(2, 5), nn.Softmax(dim=1)), x, y)


def test_empty_and_all_misclassified(trained_2d):
    model, x, y = trained_2d
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 5
    cert = certify(model, x, wrong, "asymmetric")
    assert not bool(cert.certified.any()) and bool((cert.width == 0).all())
    empty = certify(model, x[:0], y[:0], "nonuniform")
    assert empty.eps_lower.shape == (0, 2) and empty.certified.shape == (0,)
