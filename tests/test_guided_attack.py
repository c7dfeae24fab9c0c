"""Amoeba Algorithm 2 (bound-guided attacks) and the Table 4 distances."""

import math
from functools import partial

import pytest
import torch

from bounds.attacks.bim import bim
from bounds.attacks.carlini_wagner import carlini_wagner_l2
from bounds.attacks.pgd import pgd
from bounds.certificate import Certificate
from bounds.guided_attack import apply_masks, guided_attack, guided_masks, perturbation_distances
from lightning_modules.zoo import build_model

SHAPE = (1, 8, 8)
PIXELS = 64


def certificate(kind: str = "asymmetric", n: int = 6, seed: int = 0) -> Certificate:
    generator = torch.Generator().manual_seed(seed)
    eps_lower = torch.rand((n, *SHAPE), generator=generator) * 0.3
    eps_upper = torch.rand((n, *SHAPE), generator=generator) * 0.3 if kind == "asymmetric" else eps_lower.clone()
    return Certificate(
        kind=kind,  # type: ignore[arg-type]
        eps_lower=eps_lower,
        eps_upper=eps_upper,
        certified=torch.ones(n, dtype=torch.bool),
        labels=torch.zeros(n, dtype=torch.long),
        delta=0.0,
        seconds=0.0,
    )


def test_asymmetric_masks_pick_smallest_radii() -> None:
    cert = certificate("asymmetric")
    positive, negative = guided_masks(cert, 0.25)
    count = math.ceil(0.25 * PIXELS)
    assert positive.shape == cert.eps_upper.shape and positive.dtype == torch.bool
    assert torch.all(positive.flatten(1).sum(1) == count) and torch.all(negative.flatten(1).sum(1) == count)
    for b in range(cert.batch_size):
        upper, lower = cert.eps_upper[b].flatten(), cert.eps_lower[b].flatten()
        assert upper[positive[b].flatten()].max() <= upper[~positive[b].flatten()].min()
        assert lower[negative[b].flatten()].max() <= lower[~negative[b].flatten()].min()
    assert not torch.equal(positive, negative)


def test_symmetric_masks_and_edge_proportions() -> None:
    cert = certificate("nonuniform")
    mask = guided_masks(cert, 0.5)
    assert isinstance(mask, torch.Tensor) and torch.all(mask.flatten(1).sum(1) == PIXELS // 2)
    assert not guided_masks(cert, 0.0).any()
    assert guided_masks(cert, 1.0).all()
    with pytest.raises(ValueError, match="p must be"):
        guided_masks(cert, 1.5)


def test_apply_masks_is_algorithm_2_line_5() -> None:
    x = torch.zeros(1, 4)
    attacked = torch.tensor([[1.0, -1.0, 2.0, -2.0]])
    positive = torch.tensor([[True, True, False, False]])
    negative = torch.tensor([[False, True, False, True]])
    assert torch.equal(apply_masks(x, attacked, (positive, negative)), torch.tensor([[1.0, -1.0, 0.0, -2.0]]))
    assert torch.equal(apply_masks(x, attacked, positive), torch.tensor([[1.0, -1.0, 0.0, 0.0]]))


def _model_and_data(n: int = 6) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("fc100", SHAPE, 3)
    x = torch.rand((n, *SHAPE), generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.mark.parametrize("kind", ["asymmetric", "nonuniform"])
def test_guided_attack_increases_p_until_success(kind: str) -> None:
    model, x, y = _model_and_data()
    cert = certificate(kind, n=x.shape[0])
    attack = partial(bim, eps=0.4, step_size=0.1, steps=6)
    result, p_used = guided_attack(model, x, y, cert, attack, p_start=0.1, p_step=0.2)
    assert p_used.shape == (x.shape[0],) and torch.all((p_used >= 0.1) & (p_used <= 1.0))
    torch.testing.assert_close(result.steps.sum(0), result.adversarial - x, atol=1e-6, rtol=0)
    with torch.no_grad():
        assert torch.equal(result.success, model(result.adversarial).argmax(1) != y)
    assert result.success.any()
    # Every example stayed inside its final masks.
    delta = result.adversarial - x
    for b in range(x.shape[0]):
        masks = guided_masks(cert, float(p_used[b]))
        positive, negative = masks if isinstance(masks, tuple) else (masks, masks)
        assert torch.all(delta[b][~positive[b]] <= 0) and torch.all(delta[b][~negative[b]] >= 0)
    # "until successful attack": where p grew, the previous proportion failed (BIM is deterministic).
    for b in torch.nonzero(result.success & (p_used > 0.1 + 1e-9)).flatten().tolist():
        previous = float(p_used[b]) - 0.2
        masks = guided_masks(cert, previous)
        masks_b = tuple(m[b : b + 1] for m in masks) if isinstance(masks, tuple) else masks[b : b + 1]
        assert not attack(model, x[b : b + 1], y[b : b + 1], mask=masks_b).success.item()


def test_guided_cw_and_pgd_l2_perturb_fewer_pixels() -> None:
    model, x, y = _model_and_data(4)
    cert = certificate("asymmetric", n=x.shape[0])
    for attack in (
        partial(pgd, norm="l2", eps=3.0, step_size=0.5, steps=10, generator=torch.Generator().manual_seed(0)),
        partial(carlini_wagner_l2, c_init=10.0, search_steps=2, max_iterations=30, lr=0.1),
    ):
        result, p_used = guided_attack(model, x, y, cert, attack, p_start=0.5, p_step=0.5)
        l0 = perturbation_distances(x, result.adversarial)["l_0"]
        allowed = torch.tensor([2 * math.ceil(float(p) * PIXELS) for p in p_used])
        assert torch.all(l0 <= allowed)
        assert result.success.float().mean() >= 0.5


def test_guided_attack_restricts_an_attack_that_ignores_masks() -> None:
    model, x, y = _model_and_data()
    cert = certificate("asymmetric", n=x.shape[0])

    def ignores_mask(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, mask: object) -> object:
        return pgd(model, x, y, eps=0.5, step_size=0.1, steps=5, random_start=False)

    result, p_used = guided_attack(model, x, y, cert, ignores_mask, p_start=0.3, p_step=0.3, p_max=0.6)
    assert torch.all(p_used <= 0.6 + 1e-9)
    torch.testing.assert_close(result.steps.sum(0), result.adversarial - x, atol=1e-6, rtol=0)
    l0 = perturbation_distances(x, result.adversarial)["l_0"]
    assert torch.all(l0 <= 2 * math.ceil(0.6 * PIXELS))


def test_perturbation_distances() -> None:
    x = torch.zeros(2, 1, 2, 2)
    x_adv = torch.tensor([[[[0.5, -0.2], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    distances = perturbation_distances(x, x_adv)
    torch.testing.assert_close(distances["l_inf"], torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(distances["l_0"], torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(distances["l_2"], torch.tensor([math.hypot(0.5, 0.2), 0.0]))
    torch.testing.assert_close(distances["l_1"], torch.tensor([0.7, 0.0]))
    with pytest.raises(ValueError, match="same shape"):
        perturbation_distances(x, x_adv[:1])
