"""ACTS (bounds.acts) and the Overlap% / AUROC protocol helpers (bounds.overlap)."""


import pytest
import torch
import torchvision
from scipy.stats import spearmanr
from torch import nn

from bounds.acts import DEFAULT_C, acts_from_speeds, acts_score, class_losses, loss_and_speeds, mean_unit_direction
from bounds.attacks.bim import bim
from bounds.attacks.pgd import pgd
from bounds.overlap import overlap_percent, score_auroc, score_histograms
from lightning_modules.zoo import build_model


def test_jvp_matches_autograd_jacobian() -> None:
    torch.manual_seed(0)
    model = build_model("lenet", (1, 12, 12), 10).double().eval()
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64) * 2 - 1
    direction = torch.randn_like(x)
    losses, speeds = loss_and_speeds(model, x, direction)
    jacobian = torch.autograd.functional.jacobian(lambda inputs: class_losses(model(inputs)), x)  # [B, K, B, ...]
    expected = torch.einsum("bkcijl,cijl->bk", jacobian, direction)
    torch.testing.assert_close(speeds, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(losses, class_losses(model(x)))
    assert torch.allclose(losses.argmin(1), model(x).argmax(1))


def test_mean_unit_direction_skips_zero_steps() -> None:
    steps = torch.zeros(3, 2, 2)
    steps[0, 0] = torch.tensor([3.0, 4.0])
    steps[2, 0] = torch.tensor([0.0, -2.0])
    expected = torch.tensor([[0.3, -0.1], [0.0, 0.0]])
    torch.testing.assert_close(mean_unit_direction(steps), expected)


def test_acts_formula_on_a_linear_model() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    direction = torch.randn(5, 4)
    direction = direction / direction.norm(dim=1, keepdim=True)
    scores = acts_score(model, x, attack=direction.unsqueeze(0), top_k=2, C=7.0)
    with torch.no_grad():
        logits = model(x)
        weights = model.weight.detach()
    expected = []
    for b in range(5):
        t = int(logits[b].argmax())
        times = []
        for j in range(3):
            if j == t:
                continue
            closing = float((weights[j] - weights[t]) @ direction[b])  # s_t - s_j with the CE loss
            gap = float(logits[b, t] - logits[b, j])  # y_j - y_t
            times.append(gap / closing if closing > 0 and gap > 0 else 7.0)
        expected.append(min(times))
    torch.testing.assert_close(scores, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_constant_c_where_no_direction_can_flip() -> None:
    losses = torch.tensor([[0.1, 1.0, 2.0], [0.5, 0.2, 3.0]])
    speeds = torch.tensor([[-1.0, 0.5, 0.0], [0.0, 0.0, 0.0]])  # s_t - s_j <= 0 for every j
    torch.testing.assert_close(acts_from_speeds(losses, speeds, C=42.0), torch.tensor([42.0, 42.0]))
    reachable = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
    # example 0: t=0, j=1: 0.9/0.5, j=2: 1.9/1.0 -> 1.8
    torch.testing.assert_close(acts_from_speeds(losses, reachable, C=42.0), torch.tensor([1.8, 42.0]))

    # A model whose output ignores its input: every speed is zero, so every score is C.
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([2.0, 0.0, -1.0]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bias + 0.0 * x.flatten(1).sum(1, keepdim=True)

    scores = acts_score(Constant(), torch.rand(4, 1, 3, 3), attack="pgd", eps=0.1)
    assert torch.all(scores == DEFAULT_C)


def test_attack_names_results_and_steps_agree() -> None:
    torch.manual_seed(0)
    model = build_model("fc100", (1, 8, 8), 4)
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        y = model(x).argmax(1)
    by_name = acts_score(model, x, y, attack="bim", eps=0.1, step_size=0.05, steps=3)
    result = bim(model, x, y, eps=0.1, step_size=0.05, steps=3)
    torch.testing.assert_close(acts_score(model, x, attack=result), by_name)
    torch.testing.assert_close(acts_score(model, x, attack=result.steps), by_name)
    assert torch.all(by_name > 0) and torch.all(by_name <= DEFAULT_C)
    # PGD's random start is not an attack direction: passing the result skips it.
    started = pgd(model, x, y, eps=0.1, step_size=0.05, steps=3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(acts_score(model, x, attack=started), acts_score(model, x, attack=started.steps[1:]))
    with pytest.raises(ValueError, match="attack"):
        acts_score(model, x, attack="deepfool")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        acts_score(model, x, attack=result.steps[:, :2])


def test_torchvision_resnet_under_inference_mode_restores_state() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.train()
    running_mean = model.bn1.running_mean.clone()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.inference_mode():
        scores = acts_score(model, x, attack="fgsm", eps=0.01)
    assert scores.shape == (2,) and torch.all(torch.isfinite(scores)) and torch.all(scores > 0)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model.bn1.running_mean, running_mean)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_steps_or_output_are_rejected(bad: float) -> None:
    """A NaN used to fail every comparison of Eq. 2 and score C = 1000, the most robust score."""
    torch.manual_seed(0)
    model = build_model("fc100", (1, 4, 4), 3)
    x = torch.rand(3, 1, 4, 4) * 2 - 1
    steps = torch.randn(2, 3, 1, 4, 4)
    poisoned = x.clone()
    poisoned[1, 0, 2, 2] = bad
    for attack in ("fgsm", "pgd", steps):
        with pytest.raises(ValueError, match=r"x must be finite \(found NaN or inf at 1 entries\)"):
            acts_score(model, poisoned, attack=attack, eps=0.1)
    bad_steps = steps.clone()
    bad_steps[0, 2, 0, 1, 1] = bad
    with pytest.raises(ValueError, match="attack steps must be finite"):
        acts_score(model, x, attack=bad_steps)

    class Broken(nn.Module):
        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return model(inputs) * torch.tensor([1.0, bad, 1.0])

    with pytest.raises(ValueError, match="must be finite"):
        acts_score(Broken(), x, attack=steps)


def _trained_and_gate() -> nn.Module:
    torch.manual_seed(1)
    model = build_model("and_gate", (2,), 2)
    x = torch.rand(1000, 2, generator=torch.Generator().manual_seed(1))
    y = ((x[:, 0] >= 0.5) & (x[:, 1] >= 0.5)).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(300):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean()
    assert accuracy >= 0.98, f"the AND-gate toy did not train (accuracy {accuracy:.3f})"
    return model


def test_and_gate_toy_acts_grows_with_distance_to_boundary() -> None:
    """ACTS Section 3.2 / Figure 2: FGSM eps=0.1 on the points with x1 AND x2 = 1."""
    model = _trained_and_gate()
    values = torch.linspace(0.55, 1.0, 10)
    points = torch.cartesian_prod(values, values)
    labels = torch.ones(points.shape[0], dtype=torch.long)
    scores = acts_score(model, points, labels, attack="fgsm", eps=0.1, input_range=(0.0, 1.0), top_k=10)
    distance = points.min(dim=1).values - 0.5
    assert spearmanr(scores.numpy(), distance.numpy()).statistic >= 0.8
    peak = points[scores.argmax()]
    assert torch.all(peak >= 0.9), f"ACTS peaks at {peak.tolist()}, expected near (1, 1)"


def test_overlap_percent_known_histograms() -> None:
    # Two bins on [0, 2]: bin 0 holds 3 attacked + 1 survivor, bin 1 holds 1 attacked + 5 survivors.
    scores = torch.tensor([0.1, 0.2, 0.3, 0.4, 1.5, 1.1, 1.2, 1.3, 1.4, 1.9])
    attacked = torch.tensor([True, True, True, False, True, False, False, False, False, False])
    attacked_counts, survived_counts, edges = score_histograms(scores, attacked, bins=2, range=(0.0, 2.0))
    assert attacked_counts.tolist() == [3.0, 1.0] and survived_counts.tolist() == [1.0, 5.0]
    assert edges.tolist() == [0.0, 1.0, 2.0]
    assert overlap_percent(scores, attacked, bins=2, range=(0.0, 2.0)) == pytest.approx(100 * (1 + 1) / 10)
    separated = torch.tensor([0.0, 0.1, 0.9, 1.0])
    split = torch.tensor([True, True, False, False])
    assert overlap_percent(separated, split, bins=2) == 0.0
    assert overlap_percent(separated, torch.tensor([True, False, True, False]), bins=2) == pytest.approx(50.0)
    assert overlap_percent(separated, torch.zeros(4, dtype=torch.bool)) == 0.0
    # explicit edges; values beyond them land in the end bins
    edges = torch.tensor([0.0, 0.5, 1.0])
    assert overlap_percent(
        torch.tensor([-5.0, 0.2, 5.0, 0.7]), torch.tensor([True, False, True, False]), bins=edges
    ) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="bool"):
        overlap_percent(separated, split.long())


def test_score_auroc_orientation_and_large_scores() -> None:
    scores = torch.tensor([0.1, 0.2, 0.3, 1000.0, 2000.0])
    attacked = torch.tensor([True, True, False, False, False])
    assert score_auroc(scores, attacked) == pytest.approx(1.0)
    assert score_auroc(-scores, attacked) == pytest.approx(0.0)
    # the two huge scores stay distinct and the tie between an attacked and a survivor counts one half
    tied = torch.tensor([0.5, 0.5, 3000.0, 2000.0])
    assert score_auroc(tied, torch.tensor([True, False, False, True])) == pytest.approx(0.625)
    assert score_auroc(scores, torch.zeros(5, dtype=torch.bool)) != score_auroc(
        scores, torch.zeros(5, dtype=torch.bool)
    )
