"""Fast certification paths: Algorithm 1 with multiplier estimates, the final scale search, CROWN along a shaped ray."""

import pytest
import torch

from bounds.analysis import geometric_mean_width
from bounds.certify import _lagrangian_options, certify
from bounds.crown_radius import crown_radius_bracket, crown_uniform_radius, ray_shape
from bounds.lagrangian import (
    LagrangianOptions,
    _scale_to_feasible,
    augmented_lagrangian,
    dual_update,
    optimise_radii,
)
from bounds.uniform import clipped_box, min_margin, uniform_radius
from tests.soundness import assert_label_constant
from tests.test_certify import check_certificate, small_conv_net

DELTA = 1e-4
TARGET = DELTA * 1.05


def _batch(seed: int, count: int = 10) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = small_conv_net(seed)
    x = torch.rand(count, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.mark.parametrize("kind", ["asymmetric", "nonuniform"])
def test_estimated_multipliers_match_the_classical_widths_and_are_sound(kind: str) -> None:
    """The default steps with multiplier estimates reach the widths of 40 classical steps; every box is attacked."""
    model, x, y = _batch(0)
    fast = certify(model, x, y, kind)
    classical = certify(model, x, y, kind, dual_every=5)  # a penalty setting selects the classical updates
    check_certificate(model, x, y, fast)
    check_certificate(model, x, y, classical)
    assert bool(fast.certified.all()) and bool(classical.certified.all())
    fast_w, classical_w = geometric_mean_width(fast), geometric_mean_width(classical)
    assert fast_w.mean() >= 0.99 * classical_w.mean()
    assert bool((fast_w >= 0.95 * classical_w).all())


def test_estimated_multipliers_with_clipping_and_more_steps_are_sound() -> None:
    model, x, y = _batch(1)
    cert = certify(model, x, y, "asymmetric", clip_to_input_range=True, iterations=20, lr_decay=True)
    check_certificate(model, x, y, cert)
    assert bool(((x - cert.eps_lower) >= -1 - 1e-6).all()) and bool(((x + cert.eps_upper) <= 1 + 1e-6).all())
    assert bool(cert.certified.all())


def test_penalty_settings_select_the_classical_update() -> None:
    fixed = {"shrink_steps": 12, "init_scale": 1.0, "lr_decay": None}
    none = {"penalty_init": None, "penalty_growth": None, "penalty_every": None, "dual_every": None}
    default = _lagrangian_options(iterations=None, lr=None, **none, **fixed)
    assert default == LagrangianOptions() and default.multipliers == "estimate"
    classical = _lagrangian_options(iterations=None, lr=None, **{**none, "penalty_init": 2.0}, **fixed)
    assert classical == LagrangianOptions.classical(penalty_init=2.0)
    assert (classical.multipliers, classical.iterations, classical.lr, classical.momentum) == ("dual", 40, 0.2, 0.9)
    assert default.lr_decay and not classical.lr_decay  # the defaults of each update; lr_decay=... sets either
    assert not _lagrangian_options(iterations=None, lr=None, **none, **{**fixed, "lr_decay": False}).lr_decay
    decayed = {**fixed, "lr_decay": True}
    assert _lagrangian_options(iterations=None, lr=None, **{**none, "dual_every": 5}, **decayed).lr_decay
    steps = _lagrangian_options(iterations=7, lr=0.3, **{**none, "dual_every": 2}, **fixed)
    assert (steps.iterations, steps.lr, steps.dual_every, steps.multipliers) == (7, 0.3, 2, "dual")
    with pytest.raises(ValueError, match="multipliers"):
        LagrangianOptions(multipliers="newton")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="momentum"):
        LagrangianOptions(momentum=1.0)
    model, x, y = _batch(2, 4)
    a = certify(model, x, y, "asymmetric", dual_every=5)
    b = certify(model, x, y, "asymmetric", penalty_init=1.0)  # the same classical settings
    assert torch.equal(a.eps_lower, b.eps_lower) and torch.equal(a.eps_upper, b.eps_upper)


@pytest.mark.parametrize("use_slope", [False, True])
def test_final_scale_search_is_checked_and_close_to_the_largest_scale(use_slope: bool) -> None:
    """The false-position search returns a certified ``t`` within about ``1e-3`` of a 40-step bisection's."""
    model, x, y = _batch(3, 12)
    gen = torch.Generator().manual_seed(3)
    r = uniform_radius(model, x, y, delta=TARGET).view(-1, 1, 1, 1)
    eps_lower = r * 3 * torch.rand(x.shape, generator=gen)  # random shapes, most infeasible at t = 1
    eps_upper = r * 3 * torch.rand(x.shape, generator=gen)
    clean = min_margin(model, x, x, y)
    with torch.no_grad():
        slope = None
        if use_slope:  # a finite-difference d g / d log t at t = 1
            low1, up1 = clipped_box(x, eps_lower, eps_upper, None)
            low2, up2 = clipped_box(x, eps_lower * 1.01, eps_upper * 1.01, None)
            slope = (min_margin(model, low2, up2, y) - min_margin(model, low1, up1, y)) / 0.00995
        t = _scale_to_feasible(model, x, y, eps_lower, eps_upper, TARGET, None, 12, clean_margin=clean,
                               log_slope=slope)
        reference = _scale_to_feasible(model, x, y, eps_lower, eps_upper, TARGET, None, 40, clean_margin=clean,
                                       rtol=1e-7)
        tv = t.view(-1, 1, 1, 1)
        assert bool((min_margin(model, x - tv * eps_lower, x + tv * eps_upper, y) >= TARGET).all())
    assert bool((t <= reference * (1 + 1e-6)).all()) and bool((t >= reference * (1 - 2e-3)).all())


def test_optimise_radii_without_a_start_gives_zero_radii() -> None:
    model, x, y = _batch(4, 4)
    start = uniform_radius(model, x, y, delta=TARGET)
    start[1] = 0
    lower, upper = optimise_radii(model, x, y, start, symmetric=False, delta=DELTA, target=TARGET)
    assert bool((lower[1] == 0).all()) and bool((upper[1] == 0).all())
    keep = torch.tensor([0, 2, 3])
    margins = min_margin(model, x[keep] - lower[keep], x[keep] + upper[keep], y[keep])
    assert bool((margins >= TARGET).all())


def test_augmented_lagrangian_and_dual_update_closed_form() -> None:
    objective = torch.tensor([0.5, -1.0])
    v = torch.tensor([[0.0, 0.3, -0.2], [0.1, 0.0, 2.0]])
    mu = torch.tensor([[0.0, 1.0, 0.5], [0.4, 0.0, 1.0]])
    eta = 2.0
    s = torch.minimum(v, mu / eta)
    expected = objective + (-mu * s + eta / 2 * s * s).sum(1)
    torch.testing.assert_close(augmented_lagrangian(objective, v, mu, eta), expected)
    others = torch.tensor([[False, True, True], [True, False, True]])
    torch.testing.assert_close(dual_update(mu, v, eta, others),
                               torch.tensor([[0.0, 0.4, 0.9], [0.2, 0.0, 0.0]]))


def test_ray_shape_has_unit_geometric_mean_half_width() -> None:
    gen = torch.Generator().manual_seed(5)
    eps_lower = torch.rand(3, 1, 4, 4, generator=gen) ** 3 + 1e-4
    eps_upper = torch.rand(3, 1, 4, 4, generator=gen)
    for power in (0.0, 0.5, 1.0):
        s1, s2 = ray_shape(eps_lower, eps_upper, power=power)
        assert bool((s1 > 0).all()) and bool((s2 > 0).all())
        torch.testing.assert_close(((s1 + s2) / 2).log().flatten(1).mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    s1, s2 = ray_shape(eps_lower, eps_upper, power=0.0)
    torch.testing.assert_close(s1, torch.ones_like(s1))
    s1, s2 = ray_shape(eps_lower, eps_upper, power=1.0, floor=0.0)
    torch.testing.assert_close(s1 / s2, eps_lower / eps_upper)  # power 1: the box's own shape


def test_shaped_crown_search_is_certified_and_uniform_by_default() -> None:
    model, x, y = _batch(6, 6)
    default = crown_uniform_radius(model, x, y, target=TARGET, rounds=3)
    ones = crown_uniform_radius(model, x, y, target=TARGET, rounds=3, shape=(torch.ones_like(x), torch.ones_like(x)))
    assert torch.equal(default, ones)
    start = uniform_radius(model, x, y, delta=TARGET)
    lower, upper = optimise_radii(model, x, y, start, symmetric=False, delta=DELTA, target=TARGET)
    s1, s2 = ray_shape(lower, upper)
    scale = crown_uniform_radius(model, x, y, target=TARGET, rounds=3, shape=(s1, s2), first=0.2).view(-1, 1, 1, 1)
    assert bool((scale > 0).all())
    margins = min_margin(model, x - scale * s1, x + scale * s2, y, "crown")
    assert bool((margins >= TARGET * (1 - 1e-6)).all())
    # The bracket's other end (the first closed-form round's growth comes from it): a radius CROWN was seen to fail
    # at, beyond the certified one, or inf where no radius tried failed.
    low, failed, kept = crown_radius_bracket(model, x, y, target=TARGET, rounds=3, shape=(s1, s2), first=0.2)
    assert torch.equal(low.view(-1, 1, 1, 1), scale) and kept is None
    seen = torch.isfinite(failed)
    assert bool(seen.any()) and bool((failed[seen] > low[seen]).all())
    wide = failed[seen].view(-1, 1, 1, 1)
    assert bool((min_margin(model, (x - wide * s1)[seen], (x + wide * s2)[seen], y[seen], "crown") < TARGET).all())


def test_first_round_reuses_the_relaxation_the_ray_search_failed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bracket keeps the relaxation of each failed box; round 1 reuses it where it relaxes that box again."""
    import bounds.linear_certify as linear_certify

    model, x, y = _batch(6, 8)
    start = uniform_radius(model, x, y, delta=TARGET)
    lower, upper = optimise_radii(model, x, y, start, symmetric=False, delta=DELTA, target=TARGET)
    s1, s2 = ray_shape(lower, upper)
    low, failed, kept = crown_radius_bracket(model, x, y, target=TARGET, rounds=2, shape=(s1, s2), first=0.2,
                                             keep_failed=True)
    seen = torch.isfinite(failed)
    assert kept is not None and bool(seen.any())
    wide = failed[seen].view(-1, 1, 1, 1)
    rebuilt = linear_certify.relaxation_parts(model, x[seen], y[seen], wide * s1[seen], wide * s2[seen], None, "crown",
                                              TARGET)
    for part, again in zip(kept, rebuilt, strict=True):
        torch.testing.assert_close(part[seen], again)
        assert bool((part[~seen] == 0).all())
    view = (-1, 1, 1, 1)
    box = (failed.view(view) * s1, failed.view(view) * s2)
    growth = torch.where(seen, failed / low, torch.full_like(low, 2.0))
    start_l, start_u = low.view(view) * s1, low.view(view) * s2
    relaxed: list[int] = []
    original = linear_certify.relaxation_parts
    monkeypatch.setattr(linear_certify, "relaxation_parts", lambda *a, **k: relaxed.append(a[1].shape[0]) or
                        original(*a, **k))
    options = {"symmetric": False, "target": TARGET, "rounds": 2, "first_growth": growth}
    plain = linear_certify.crown_optimise_radii(model, x, y, start_l, start_u, start, **options)
    passes_plain, relaxed[:] = list(relaxed), []
    reused = linear_certify.crown_optimise_radii(model, x, y, start_l, start_u, start, **options, known=kept)
    floor = start.clamp(min=1e-6).view(view)  # round 1 relaxes the grown start box, every radius at least the floor
    first_l, first_u = (start_l * growth.view(view)).clamp(min=floor), (start_u * growth.view(view)).clamp(min=floor)
    same = seen & torch.isclose(first_l, box[0], rtol=1e-5).flatten(1).all(1)
    same = same & torch.isclose(first_u, box[1], rtol=1e-5).flatten(1).all(1)
    assert bool(same.any()) and passes_plain == [8, 8] and relaxed == [int((~same).sum()), 8]
    for a, b in zip(plain, reused, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    margins = min_margin(model, x - reused[0], x + reused[1], y, "crown")
    assert bool((margins >= DELTA).all())


@pytest.mark.parametrize("kind", ["asymmetric", "nonuniform"])
def test_crown_certification_along_the_shaped_ray_is_sound_and_never_below_ibp(kind: str) -> None:
    """method="crown" boxes are re-verified by CROWN, attacked, and at least as large as the interval boxes."""
    model, x, y = _batch(7, 8)
    y[0] = (y[0] + 1) % 4  # one misclassified example
    crown = certify(model, x, y, kind, method="crown")
    ibp = certify(model, x, y, kind)
    assert not bool(crown.certified[0]) and bool(crown.certified[1:].all())
    assert bool((crown.eps_lower[0] == 0).all()) and bool((crown.eps_upper[0] == 0).all())
    mask = crown.certified
    lower, upper = x - crown.eps_lower, x + crown.eps_upper
    assert bool((min_margin(model, lower[mask], upper[mask], y[mask], "crown") >= DELTA).all())
    assert_label_constant(model, lower, upper, y, mask=mask)
    if kind == "nonuniform":
        assert torch.equal(crown.eps_lower, crown.eps_upper)
    both = mask & ibp.certified
    assert bool((geometric_mean_width(crown)[both] >= geometric_mean_width(ibp)[both] * (1 - 1e-5)).all())
    for rounds in (1, 4):  # one shaped pass only; three shaped passes and the closed-form round
        other = certify(model, x, y, kind, method="crown", crown_rounds=rounds)
        assert torch.equal(other.certified, crown.certified)
        lower, upper = x - other.eps_lower, x + other.eps_upper
        assert bool((min_margin(model, lower[mask], upper[mask], y[mask], "crown") >= DELTA).all())
        assert_label_constant(model, lower, upper, y, mask=mask)
