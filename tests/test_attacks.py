"""Invariants of the stateless attacks in bounds.attacks."""

from functools import partial

import pytest
import torch
from torch import nn

from bounds.attacks.bim import bim
from bounds.attacks.carlini_wagner import carlini_wagner_l2
from bounds.attacks.common import AttackResult
from bounds.attacks.fgsm import fgsm
from bounds.attacks.pgd import pgd
from lightning_modules.zoo import build_model

SHAPE = (1, 12, 12)


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(4 * 12 * 12, 5),
    )


def batch(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *SHAPE), generator=generator) * 2 - 1
    y = torch.randint(0, 5, (n,), generator=generator)
    return x, y


ATTACKS = {
    "fgsm": partial(fgsm, eps=0.1),
    "bim": partial(bim, eps=0.1, step_size=0.03, steps=5),
    "pgd_linf": partial(pgd, eps=0.1, step_size=0.03, steps=5, generator=torch.Generator().manual_seed(0)),
    "pgd_l2": partial(pgd, norm="l2", eps=0.8, step_size=0.3, steps=5, generator=torch.Generator().manual_seed(0)),
    "cw": partial(carlini_wagner_l2, c_init=1.0, search_steps=3, max_iterations=30, lr=0.05),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_steps_sum_to_perturbation_and_stay_in_range(name: str) -> None:
    model = small_net()
    x, y = batch()
    result = ATTACKS[name](model, x, y)
    assert isinstance(result, AttackResult)
    assert result.adversarial.shape == x.shape
    assert result.steps.shape[1:] == x.shape and result.steps.shape[0] >= 1
    torch.testing.assert_close(result.steps.sum(0), result.adversarial - x, atol=1e-6, rtol=0)
    assert result.adversarial.min() >= -1 and result.adversarial.max() <= 1
    assert result.success.dtype == torch.bool and result.success.shape == (x.shape[0],)
    with torch.no_grad():
        model.eval()
        expected = model(result.adversarial).argmax(1) != y
    assert torch.equal(result.success, expected)


@pytest.mark.parametrize("name", ["fgsm", "bim", "pgd_linf"])
def test_linf_ball(name: str) -> None:
    x, y = batch()
    result = ATTACKS[name](small_net(), x, y)
    assert (result.adversarial - x).abs().max() <= 0.1 + 1e-6
    if name == "fgsm":
        moved = (result.adversarial - x).abs()
        interior = (x.abs() < 0.89) & (moved > 0)
        torch.testing.assert_close(moved[interior], torch.full_like(moved[interior], 0.1))


def test_l2_ball_and_per_example_eps() -> None:
    x, y = batch()
    eps = torch.linspace(0.2, 1.0, x.shape[0])
    result = pgd(small_net(), x, y, norm="l2", eps=eps, step_size=0.4, steps=6, random_start=True)
    norms = (result.adversarial - x).flatten(1).norm(dim=1)
    assert torch.all(norms <= eps + 1e-5)
    assert result.num_init_steps == 1 and result.steps.shape[0] == 7


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_box_and_sign_masks(name: str) -> None:
    x, y = batch()
    generator = torch.Generator().manual_seed(3)
    eps_lower = torch.rand(x.shape, generator=generator) * 0.05
    eps_upper = torch.rand(x.shape, generator=generator) * 0.05
    positive = torch.rand(x.shape, generator=generator) < 0.5
    negative = torch.rand(x.shape, generator=generator) < 0.5
    result = ATTACKS[name](small_net(), x, y, box=(eps_lower, eps_upper), mask=(positive, negative))
    delta = result.adversarial - x
    assert torch.all(delta >= -eps_lower - 1e-6) and torch.all(delta <= eps_upper + 1e-6)
    assert torch.all(delta[~positive] <= 0)
    assert torch.all(delta[~negative] >= 0)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_single_mask(name: str) -> None:
    x, y = batch()
    mask = torch.zeros(SHAPE, dtype=torch.bool)
    mask[:, :4] = True  # broadcast over the batch
    result = ATTACKS[name](small_net(), x, y, mask=mask)
    delta = result.adversarial - x
    assert torch.all(delta[:, ~mask] == 0)
    assert (delta[:, mask] != 0).any()


def test_unbounded_input_range_and_custom_loss() -> None:
    x, y = batch()
    calls = []

    def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls.append(logits.shape)
        return -logits.gather(1, labels[:, None]).sum()

    result = bim(small_net(), x * 10, y, eps=2.0, step_size=1.0, steps=3, input_range=None, loss_fn=margin_loss)
    assert len(calls) == 3
    assert (result.adversarial - x * 10).abs().max() > 1.0


def test_success_against_a_weak_model() -> None:
    torch.manual_seed(0)
    model = build_model("fc100", SHAPE, 5)
    x, _ = batch(16)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the model gets right
    attacks = (
        partial(pgd, eps=0.3, step_size=0.1, steps=10),
        partial(pgd, norm="l2", eps=3.0, step_size=1.0, steps=10),
        partial(carlini_wagner_l2, c_init=10.0, search_steps=2, max_iterations=30, lr=0.1),
    )
    for attack in attacks:
        assert attack(model, x, y).success.all()
    strong = pgd(model, x, y, eps=0.3, step_size=0.1, steps=10)
    weaker = fgsm(model, x, y, 1e-4)
    assert weaker.success.float().mean() < strong.success.float().mean()


def test_targeted_pgd_reaches_target() -> None:
    torch.manual_seed(0)
    model = build_model("fc100", SHAPE, 5)
    x, _ = batch(8)
    target = torch.full((8,), 2)
    result = pgd(model, x, target, eps=0.8, step_size=0.1, steps=20, targeted=True)
    assert result.success.float().mean() >= 0.75
    with torch.no_grad():
        assert torch.equal(result.success, model(result.adversarial).argmax(1) == 2)


def test_modes_grads_and_flags_restored_under_inference_mode() -> None:
    model = small_net()
    model.train()
    model[1].eval()  # a frozen BatchNorm must stay frozen
    model[0].weight.requires_grad_(False)
    before = {name: module.training for name, module in model.named_modules()}
    x, y = batch()
    with torch.inference_mode():
        x_inference, y_inference = x.clone(), y.clone()
        for name in sorted(ATTACKS):
            result = ATTACKS[name](model, x_inference, y_inference)
            assert not result.adversarial.requires_grad
    assert {name: module.training for name, module in model.named_modules()} == before
    assert all(p.grad is None for p in model.parameters())
    assert not model[0].weight.requires_grad and model[0].bias.requires_grad


def test_eval_mode_is_used_inside() -> None:
    model = small_net()
    model.train()
    x, y = batch()
    first = pgd(model, x, y, eps=0.1, step_size=0.03, steps=3, random_start=False)
    second = pgd(model, x, y, eps=0.1, step_size=0.03, steps=3, random_start=False)
    assert torch.equal(first.adversarial, second.adversarial)  # dropout would make these differ


def test_random_start_is_reproducible_with_a_generator() -> None:
    x, y = batch()
    results = [
        pgd(small_net(), x, y, eps=0.1, step_size=0.03, steps=2, generator=torch.Generator().manual_seed(5))
        for _ in range(2)
    ]
    assert torch.equal(results[0].adversarial, results[1].adversarial)
    assert torch.any(results[0].steps[0] != 0)


def test_record_steps_off() -> None:
    x, y = batch()
    result = pgd(small_net(), x, y, eps=0.1, step_size=0.03, steps=2, record_steps=False)
    assert result.steps.shape[0] == 0


def test_bad_inputs() -> None:
    model = small_net()
    x, y = batch()
    with pytest.raises(ValueError, match="shape"):
        fgsm(model, x, y[:-1], 0.1)
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, y, norm="l1", eps=0.1, step_size=0.1, steps=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps"):
        pgd(model, x, y, eps=-0.1, step_size=0.1, steps=1)
    with pytest.raises(ValueError, match="broadcast"):
        fgsm(model, x, y, 0.1, mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="bounded"):
        carlini_wagner_l2(model, x, y, input_range=None, max_iterations=1, search_steps=1)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_non_finite_input_raises(name: str) -> None:
    """An attack on a NaN input used to report success (NaN logits); it must refuse the input instead."""
    model = small_net()
    x, y = batch()
    for bad in (float("nan"), float("inf")):
        x_bad = x.clone()
        x_bad[1, 0, 3, 3] = bad
        with pytest.raises(ValueError, match="finite"):
            ATTACKS[name](model, x_bad, y)
