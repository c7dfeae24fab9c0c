"""Regression tests for what a new user found broken (issue 11): each failed on the code before its fix.

- Sequential subclasses with their own ``forward`` (and modules whose behaviour differs from their type's) are
  refused, never bounded as the chain of their children; dispatch is on exact types everywhere.
- An example with a clean margin below ``delta`` comes back uncertified; the rest of the batch is certified and
  every certified box survives sampling, corners and PGD.
- Bad input (labels, dtypes, devices, in-place activations, a Linear on a 4-D tensor) gets a clear error or
  the right answer.
"""

import pytest
import torch
from torch import nn

from bounds.certify import certify
from bounds.crown import crown_margin_bounds
from bounds.errors import UnsupportedLayerError
from bounds.interval import interval_bounds
from bounds.layer_relaxations import relax_layer
from bounds.margins import margin_lower_bounds
from tests.soundness import assert_encloses, assert_label_constant, sample_box

KINDS = ("uniform", "nonuniform", "asymmetric")
METHODS = ("ibp", "crown")


class ResidualSeq(nn.Sequential):
    def forward(self, x):
        return x + super().forward(x)


class Scaled(nn.Sequential):
    def forward(self, x):
        return 10 * super().forward(x)


class PlainSeq(nn.Sequential):
    """A subclass that keeps ``nn.Sequential.forward``: bounded as a chain, like the base class."""


class MyReLU(nn.ReLU):
    def forward(self, x):
        return -super().forward(x)


def issue_model(block: type[nn.Sequential]) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), block(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16)), nn.ReLU(),
                         nn.Linear(16, 10)).eval()


@pytest.mark.parametrize("block", [ResidualSeq, Scaled])
@pytest.mark.parametrize("kind", KINDS)
def test_sequential_subclass_with_own_forward_is_bounded_as_its_forward(block, kind):
    """The issue's repro: once bounded as the chain of its children (unsound); now traced as what forward computes."""
    model = issue_model(block)
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = model(x).argmax(1)
    out_l, out_u = interval_bounds(model, x, x)
    with torch.no_grad():
        assert torch.allclose(out_l, model(x), atol=1e-5) and torch.allclose(out_u, model(x), atol=1e-5)
    cert = certify(model, x, y, kind=kind, iterations=20)
    assert bool(cert.certified.any())
    margins = margin_lower_bounds(model, (x - cert.eps_lower)[cert.certified], (x + cert.eps_upper)[cert.certified],
                                  y[cert.certified])
    assert bool((margins.min(1).values >= 1e-4).all())
    assert_label_constant(model, x - cert.eps_lower, x + cert.eps_upper, y, mask=cert.certified)


@pytest.mark.parametrize("block", [ResidualSeq, Scaled])
def test_crown_certifies_the_issue_models_soundly(block):
    model = issue_model(block)
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = model(x).argmax(1)
    ibp = certify(model, x, y, kind="asymmetric", iterations=20)
    crown = certify(model, x, y, kind="asymmetric", method="crown", iterations=20, crown_rounds=2)
    assert bool((crown.certified >= ibp.certified).all())
    margins = crown_margin_bounds(model, (x - crown.eps_lower)[crown.certified],
                                  (x + crown.eps_upper)[crown.certified], y[crown.certified])
    assert bool((margins.min(1).values >= 1e-4).all())
    assert_label_constant(model, x - crown.eps_lower, x + crown.eps_upper, y, mask=crown.certified)


def test_sequential_subclass_keeping_forward_is_bounded_like_sequential():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    sub = PlainSeq(*plain)
    x = torch.randn(5, 4)
    for method in METHODS:
        assert torch.equal(margin_lower_bounds(plain, x - 0.1, x + 0.1, torch.zeros(5, dtype=torch.long), method),
                           margin_lower_bounds(sub, x - 0.1, x + 0.1, torch.zeros(5, dtype=torch.long), method))


def test_modules_whose_behaviour_differs_from_their_type_are_refused():
    hooked = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    hooked[1].register_forward_hook(lambda module, args, out: out * 5)
    replaced = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    replaced[1].forward = lambda x: -x
    for model, reason in ((hooked, "hooks"), (replaced, "replaced on the instance")):
        with pytest.raises(UnsupportedLayerError, match=reason) as info:
            interval_bounds(model, torch.zeros(1, 4), torch.ones(1, 4))
        assert info.value.path == "1"


def test_layer_subclass_is_traced_not_bounded_as_its_base_class():
    """Dispatch on exact types: a subclass of ReLU that negates is bounded as -relu, never by ReLU's rule."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), MyReLU(), nn.Linear(3, 2)).eval()
    lower, upper = -torch.ones(3, 2), torch.ones(3, 2)
    out_l, out_u = interval_bounds(model, lower, upper)
    assert_encloses(model, lower, upper, out_l, out_u, sample_box(lower, upper, 256, 256))
    y = torch.tensor([0, 1, 0])
    crown = crown_margin_bounds(model, lower, upper, y)  # through the graph back-substitution (negation)
    with torch.no_grad():
        for p in sample_box(lower, upper, 256, 256):
            logits = model(p)
            gaps = logits.gather(1, y.view(-1, 1)) - logits
            assert bool((gaps[torch.isfinite(crown)] >= crown[torch.isfinite(crown)] - 1e-5).all())
    with pytest.raises(UnsupportedLayerError, match="MyReLU"):
        relax_layer(MyReLU(), -torch.ones(1, 2), torch.ones(1, 2))
    with pytest.raises(UnsupportedLayerError, match="Softmax"):
        relax_layer(nn.Softmax(dim=1), -torch.ones(1, 2), torch.ones(1, 2))


class Exp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return torch.exp(self.fc(x))


def test_unsupported_model_error_says_what_to_do():
    with pytest.raises(UnsupportedLayerError) as info:
        interval_bounds(nn.Sequential(nn.Identity(), Exp()), torch.zeros(1, 4), torch.ones(1, 4))
    message = str(info.value)
    assert "torch.exp at '1'" in message and "test_user_findings.py" in message
    assert "bounds exactly these operators" in message and "Replace the operator" in message


def tiny_margin_batch():
    """A Tanh MLP and a batch where example 2 has a clean margin of about 5e-5 (below the default delta 1e-4)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)).eval()
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
        # Move example 2 along the line to its nearest decision boundary until its margin is ~5e-5.
        y = logits.argmax(1)
        direction = torch.randn(4, generator=torch.Generator().manual_seed(2))
        low, high = 0.0, 50.0
        for _ in range(200):
            mid = (low + high) / 2
            top2 = model(x[2:3] + mid * direction).topk(2, 1).values
            gap = float(top2[0, 0] - top2[0, 1])
            keeps = int(model(x[2:3] + mid * direction).argmax(1)) == int(y[2])
            if keeps and gap > 5e-5:
                low = mid
            else:
                high = mid
        x[2] = x[2] + low * direction
        y = model(x).argmax(1)
        top2 = model(x).topk(2, 1).values
    gaps = top2[:, 0] - top2[:, 1]
    assert 0 < float(gaps[2]) < 1e-4 and bool((gaps[[0, 1, 3, 4, 5]] > 1e-2).all())
    return model, x, y


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
def test_margin_below_delta_leaves_the_rest_of_the_batch_certified(kind, method):
    model, x, y = tiny_margin_batch()
    cert = certify(model, x, y, kind=kind, method=method, iterations=20)
    assert not bool(cert.certified[2])
    assert bool((cert.eps_lower[2] == 0).all()) and bool((cert.eps_upper[2] == 0).all())
    others = torch.tensor([0, 1, 3, 4, 5])
    assert bool(cert.certified[others].all())
    assert bool((cert.width[others] > 0).all())
    assert_label_constant(model, x - cert.eps_lower, x + cert.eps_upper, y, mask=cert.certified)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ("nonuniform", "asymmetric"))
def test_large_delta_on_a_lenet_shaped_net(kind, method):
    """The issue's LeNet repro: delta=0.1 puts some clean margins of a random conv net in (0, delta)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 10)).eval()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    top2 = logits.topk(2, 1).values
    gaps = top2[:, 0] - top2[:, 1]
    delta = float(gaps.median())
    small = gaps < delta * 1.05
    assert bool(small.any()) and bool((~small).any())
    cert = certify(model, x, y, kind=kind, method=method, delta=delta, iterations=10, crown_rounds=2)
    assert not bool(cert.certified[small].any())
    assert bool((cert.width[small] == 0).all())
    assert bool(cert.certified[~small].any())
    margins = margin_lower_bounds(model, (x - cert.eps_lower)[cert.certified], (x + cert.eps_upper)[cert.certified],
                                  y[cert.certified], method)
    assert bool((margins.min(1).values >= delta).all())
    assert_label_constant(model, x - cert.eps_lower, x + cert.eps_upper, y, mask=cert.certified)


def simple_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def test_labels_out_of_range_and_float_labels_raise():
    model = simple_model()
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        certify(model, x, torch.tensor([0, 1, 3]), kind="uniform")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        certify(model, x, torch.tensor([0, -1, 2]), kind="asymmetric")
    with pytest.raises(ValueError, match="dtype torch.float32"):
        certify(model, x, torch.tensor([0.0, 1.0, 2.0]), kind="uniform")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_refused_before_work(dtype):
    model = simple_model()
    x = torch.randn(3, 4)
    y = torch.tensor([0, 1, 2])
    for call in (lambda: certify(model, x.to(dtype), y), lambda: certify(model.to(dtype), x.to(dtype), y),
                 lambda: interval_bounds(model, x.to(dtype), x.to(dtype))):
        with pytest.raises(ValueError, match="float32 or float64 only"):
            call()
        model.float()


def test_dtype_and_device_must_match_the_model():
    model = simple_model()
    x = torch.randn(3, 4)
    y = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="torch.float64 on cpu, but the model's parameter '0.weight' is torch.float32"):
        certify(model, x.double(), y)
    with pytest.raises(ValueError, match="model's parameter"):
        crown_margin_bounds(model, x.double(), x.double(), y)
    with pytest.raises(ValueError, match="meta device"):
        certify(model, x.to("meta"), y)
    with pytest.raises(ValueError, match="meta device"):
        interval_bounds(model, x.to("meta"), x.to("meta"))
    cert = certify(model.double(), x.double(), y, kind="uniform")  # float64 end to end works
    assert cert.eps_lower.dtype == torch.float64


def test_crown_linear_on_the_last_dimension_of_a_4d_tensor_is_sound():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 2 * 5, 3)).eval()
    x = torch.randn(4, 3, 2, 4, generator=torch.Generator().manual_seed(0))
    lower, upper = x - 0.2, x + 0.2
    y = model(x).argmax(1)
    margins = crown_margin_bounds(model, lower, upper, y)
    ibp = margin_lower_bounds(model, lower, upper, y)
    assert bool((margins >= ibp - 1e-6).all())
    with torch.no_grad():
        points = sample_box(lower, upper, 256, 256)
        for p in points:
            logits = model(p)
            true = logits.gather(1, y.view(-1, 1))
            others = torch.isfinite(margins)
            assert bool(((true - logits)[others] >= margins[others] - 1e-5).all())
    cert = certify(model, x, y, kind="asymmetric", method="crown", iterations=10, crown_rounds=2)
    assert_label_constant(model, x - cert.eps_lower, x + cert.eps_upper, y, mask=cert.certified)


def test_inplace_relu_never_writes_the_callers_tensors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 3)).eval()
    lower, upper = -torch.ones(2, 4), torch.ones(2, 4)
    lower_copy, upper_copy = lower.clone(), upper.clone()
    out_l, out_u = interval_bounds(model, lower, upper)
    assert torch.equal(lower, lower_copy) and torch.equal(upper, upper_copy)
    points = sample_box(lower, upper)
    assert_encloses(model, lower, upper, out_l, out_u, points.clone())
    crown_margin_bounds(model, lower, upper, torch.tensor([0, 1]))
    assert torch.equal(lower, lower_copy) and torch.equal(upper, upper_copy)
