import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from bounds.analysis import (
    bound_heatmap,
    explorer_map,
    geometric_mean_width,
    mean_certified_width,
    pairwise_cosine_similarity,
    pairwise_wasserstein_distance,
)
from bounds.certificate import Certificate


def make_certificate(seed: int = 0) -> Certificate:
    gen = torch.Generator().manual_seed(seed)
    eps_lower = torch.rand(5, 1, 4, 4, generator=gen) * 0.1
    eps_upper = torch.rand(5, 1, 4, 4, generator=gen) * 0.2
    certified = torch.tensor([True, True, False, True, True])
    eps_lower[2] = 0
    eps_upper[2] = 0
    return Certificate("asymmetric", eps_lower, eps_upper, certified, torch.arange(5), 1e-4, 0.5)


def test_geometric_mean_width_matches_numpy():
    cert = make_certificate()
    width = (cert.eps_lower + cert.eps_upper).numpy().reshape(5, -1).astype(np.float64)
    expected = np.prod(width, axis=1) ** (1 / width.shape[1])
    np.testing.assert_allclose(geometric_mean_width(cert).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(geometric_mean_width(cert.eps_lower, cert.eps_upper).numpy(), expected, rtol=1e-6)
    assert geometric_mean_width(cert)[2] == 0
    # one zero width makes the volume zero
    lower = cert.eps_lower.clone()
    upper = cert.eps_upper.clone()
    lower[0, 0, 0, 0] = upper[0, 0, 0, 0] = 0
    assert geometric_mean_width(lower, upper)[0] == 0


def test_geometric_mean_width_is_log_space_stable():
    tiny = torch.full((1, 784), 1e-3)
    assert geometric_mean_width(tiny, tiny).item() == pytest.approx(2e-3, rel=1e-5)  # prod would underflow


def test_mean_certified_width():
    cert = make_certificate()
    expected = geometric_mean_width(cert)[cert.certified].mean().item()
    assert mean_certified_width(cert) == pytest.approx(expected)
    none = Certificate("uniform", cert.eps_lower, cert.eps_upper, torch.zeros(5, dtype=torch.bool),
                       cert.labels, 1e-4, 0.1)
    assert mean_certified_width(none) == 0.0


def test_maps():
    cert = make_certificate()
    torch.testing.assert_close(explorer_map(cert), cert.eps_upper - cert.eps_lower)
    torch.testing.assert_close(bound_heatmap(cert), 1 - cert.eps_lower - cert.eps_upper)


def test_pairwise_cosine_matches_numpy():
    maps = torch.rand(6, 3, 5, generator=torch.Generator().manual_seed(1)) - 0.3
    flat = maps.reshape(6, -1).double().numpy()
    sims = [flat[i] @ flat[j] / np.linalg.norm(flat[i]) / np.linalg.norm(flat[j])
            for i in range(6) for j in range(i + 1, 6)]
    assert pairwise_cosine_similarity(maps) == pytest.approx(float(np.mean(sims)), rel=1e-9)


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_pairwise_wasserstein_matches_scipy(chunk):
    maps = torch.randn(7, 2, 6, generator=torch.Generator().manual_seed(2)) * torch.arange(1, 8).view(-1, 1, 1)
    flat = maps.reshape(7, -1).double().numpy()
    dists = [wasserstein_distance(flat[i], flat[j]) for i in range(7) for j in range(i + 1, 7)]
    assert pairwise_wasserstein_distance(maps, chunk=chunk) == pytest.approx(float(np.mean(dists)), rel=1e-9)


def test_table_3_inputs_from_certificate():
    cert = make_certificate()
    keep = cert.certified
    assert 0 < pairwise_cosine_similarity(cert.width[keep]) <= 1
    asym = pairwise_wasserstein_distance(explorer_map(cert)[keep])
    flat = explorer_map(cert)[keep].reshape(4, -1).double().numpy()
    ref = np.mean([wasserstein_distance(flat[i], flat[j]) for i in range(4) for j in range(i + 1, 4)])
    assert asym == pytest.approx(ref, rel=1e-9)


def test_bad_inputs():
    with pytest.raises(ValueError):
        pairwise_wasserstein_distance(torch.zeros(1, 4))
    with pytest.raises(ValueError):
        pairwise_cosine_similarity(torch.zeros(4))
    with pytest.raises(ValueError):
        geometric_mean_width(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        geometric_mean_width(-torch.ones(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        geometric_mean_width(torch.ones(2, 3))
