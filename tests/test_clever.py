"""CLEVER (bounds.clever) against closed forms."""


import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from bounds.clever import clever_score, reverse_weibull_location


@pytest.mark.parametrize(("norm", "dual"), [("l2", 2), ("linf", 1)])
def test_linear_layer_matches_closed_form(norm: str, dual: int) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    x = torch.randn(3, 6)
    radius = 10.0
    scores = clever_score(layer, x, norm=norm, radius=radius, num_batches=8, batch_size=16)
    with torch.no_grad():
        logits = layer(x)
        weights = layer.weight.detach()
    expected = []
    for b in range(3):
        t = int(logits[b].argmax())
        ratios = [
            float((logits[b, t] - logits[b, j]) / torch.linalg.vector_norm(weights[t] - weights[j], ord=dual))
            for j in range(4)
            if j != t
        ]
        expected.append(min(min(ratios), radius))
    torch.testing.assert_close(scores, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    # the radius caps the score, and top_k=1 (the runner-up class only) can only be larger
    capped = clever_score(layer, x, norm=norm, radius=1e-3, num_batches=2, batch_size=4)
    torch.testing.assert_close(capped, torch.full((3,), 1e-3))
    assert torch.all(clever_score(layer, x, norm=norm, radius=radius, num_batches=2, batch_size=4, top_k=1) >= scores)


def test_reverse_weibull_location_recovers_the_support_end() -> None:
    rng = np.random.default_rng(0)
    sample = stats.weibull_max.rvs(3.0, loc=2.0, scale=0.5, size=300, random_state=rng)
    location = reverse_weibull_location(sample)
    assert sample.max() <= location + 1e-6 and location == pytest.approx(2.0, abs=0.05)
    assert reverse_weibull_location(np.full(10, 1.5)) == 1.5
    with pytest.raises(ValueError, match="finite"):
        reverse_weibull_location(np.array([1.0, np.nan]))


def test_relu_network_scores_are_bounded_and_reproducible() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(1, 4)
    kwargs = {"norm": "l2", "radius": 2.0, "num_batches": 20, "batch_size": 32}
    first = clever_score(model, x, generator=torch.Generator().manual_seed(0), **kwargs)
    second = clever_score(model, x, generator=torch.Generator().manual_seed(0), **kwargs)
    torch.testing.assert_close(first, second)
    assert torch.all(first > 0) and torch.all(first <= 2.0)
    # the samples do not depend on the classes, so the runner-up's score is shared and the min over all
    # classes can only be smaller
    runner_up = clever_score(model, x, generator=torch.Generator().manual_seed(0), top_k=1, **kwargs)
    assert torch.all(first <= runner_up)


def test_bad_arguments() -> None:
    layer = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="norm"):
        clever_score(layer, torch.randn(1, 3), norm="l1", radius=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="radius"):
        clever_score(layer, torch.randn(1, 3), norm="l2", radius=0.0)
