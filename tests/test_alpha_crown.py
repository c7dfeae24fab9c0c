"""alpha-CROWN (bounds/alpha_crown.py): never looser than CROWN, sound, and certification with it."""

from pathlib import Path

import pytest
import torch
from torch import nn

import certify as certify_script
import train
from bounds import (
    AlphaOptions,
    AlphaWarmStart,
    alpha_crown_margin_bounds,
    alpha_linear_margin_bounds,
    margin_lower_bounds,
)
from bounds.certify import certify
from bounds.crown import crown_margin_bounds
from bounds.errors import UnsupportedLayerError
from tests.soundness import assert_label_constant, pgd_in_box, sample_box

KINDS = ("uniform", "nonuniform", "asymmetric")


def fc_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.LeakyReLU(0.1),
                         nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 5)).eval()


def cnn(seed: int) -> nn.Sequential:
    """Conv-ReLU-MaxPool (the fused pool path), Conv-LeakyReLU, a BatchNorm and dense layers."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3),
                          nn.BatchNorm2d(6), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(6 * 2 * 2, 16), nn.ReLU(),
                          nn.Linear(16, 4))
    with torch.no_grad():
        model[4].running_mean.uniform_(-0.2, 0.2)
        model[4].running_var.uniform_(0.5, 1.5)
    return model.eval()


def data(shape: tuple[int, ...], classes: int, count: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable synthetic data: class means plus noise."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, *shape, generator=gen)
    y = torch.randint(0, classes, (count,), generator=gen)
    return (means[y] + 0.3 * torch.randn(count, *shape, generator=gen)).clamp(-2, 2), y


def trained(model: nn.Sequential, shape: tuple[int, ...], classes: int, steps: int = 150) -> nn.Sequential:
    """A few Adam steps on the synthetic data (BatchNorm statistics stay fixed in eval mode)."""
    x, y = data(shape, classes, 256, seed=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model.eval()


MODELS = {
    "fc": lambda: fc_net(0),
    "cnn": lambda: cnn(0),
    "fc-trained": lambda: trained(fc_net(1), (1, 4, 4), 5),
    "cnn-trained": lambda: trained(cnn(1), (1, 8, 8), 4),
}
SHAPES = {"fc": ((1, 4, 4), 5), "cnn": ((1, 8, 8), 4), "fc-trained": ((1, 4, 4), 5), "cnn-trained": ((1, 8, 8), 4)}


def true_margins(model: nn.Module, points: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(S, B, K)`` margins ``f_y - f_j`` of the points."""
    with torch.no_grad():
        out = torch.stack([model(p) for p in points])
    return out.gather(2, y.view(1, -1, 1).expand(out.shape[0], -1, 1)) - out


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("radius", [0.05, 0.2])
@pytest.mark.parametrize("joint", [True, False])
def test_never_looser_than_crown_and_sound(name: str, radius: float, joint: bool) -> None:
    model = MODELS[name]()
    shape, classes = SHAPES[name]
    x, _ = data(shape, classes, 12, seed=2)
    with torch.no_grad():
        y = model(x).argmax(1)
        lower, upper = x - radius, x + radius
        crown = crown_margin_bounds(model, lower, upper, y)
        alpha = alpha_crown_margin_bounds(model, lower, upper, y, optimise_intermediate=joint)
    finite = torch.isfinite(crown)
    assert torch.equal(torch.isfinite(alpha), finite)
    assert bool((alpha[finite] >= crown[finite] - 1e-6).all())
    points = torch.cat([sample_box(lower, upper, 64, 64), pgd_in_box(model, lower, upper, y, steps=30)])
    margins = true_margins(model, points, y)
    gap = (alpha.detach().unsqueeze(0) - margins)[:, finite]
    assert bool((gap <= 1e-5).all()), float(gap.max())
    # The linear bound holds at every point too, and its concretisation is the margin bound (up to IBP's part).
    linear, _ = alpha_linear_margin_bounds(model, lower, upper, y, options=AlphaOptions(optimise_intermediate=joint))
    at_points = torch.stack([(linear.coefficients.flatten(2) @ p.flatten(1).unsqueeze(2)).squeeze(2)
                             + linear.offset for p in points])
    assert bool(((at_points.detach() - margins)[:, finite] <= 1e-5).all())
    assert bool((linear.margins(lower, upper)[finite] <= alpha[finite] + 1e-6).all())


def test_optimisation_tightens_and_iteration_zero_is_crown() -> None:
    model = trained(fc_net(3), (1, 4, 4), 5)
    x, _ = data((1, 4, 4), 5, 16, seed=4)
    with torch.no_grad():
        y = model(x).argmax(1)
    lower, upper = x - 0.3, x + 0.3
    with torch.no_grad():
        crown = crown_margin_bounds(model, lower, upper, y)
        finite = torch.isfinite(crown)
        zero = alpha_crown_margin_bounds(model, lower, upper, y, iterations=0)
        assert torch.equal(zero, crown)
        alpha = alpha_crown_margin_bounds(model, lower, upper, y)
        final_only = alpha_crown_margin_bounds(model, lower, upper, y, optimise_intermediate=False)
        assert float((alpha - crown)[finite].max()) > 1e-3  # the slopes were optimised somewhere
        assert float((final_only - crown)[finite].max()) > 1e-3
        assert float((alpha - crown)[finite].mean()) > 0
        assert torch.equal(margin_lower_bounds(model, lower, upper, y, "alpha-crown"), alpha)
        # More steps follow the same trajectory first, and the best iterate is kept.
        longer = alpha_crown_margin_bounds(model, lower, upper, y, iterations=30)
        assert bool((longer[finite] >= alpha[finite] - 1e-6).all())


def test_warm_start_on_a_larger_box_is_sound_and_never_looser_than_crown() -> None:
    model = cnn(5)
    x, _ = data((1, 8, 8), 4, 10, seed=6)
    with torch.no_grad():
        y = model(x).argmax(1)
    _, state = alpha_linear_margin_bounds(model, x - 0.05, x + 0.05, y)
    assert state.alphas and all(a.shape[:2] == (10, 3) for a in state.alphas.values())
    assert state.intermediate  # the dense layer's bounds had their own slopes
    lower, upper = x - 0.1, x + 0.1
    warm, _ = alpha_linear_margin_bounds(model, lower, upper, y, options=AlphaOptions(iterations=3), warm=state)
    crown = crown_margin_bounds(model, lower, upper, y)
    finite = torch.isfinite(crown)
    assert bool((warm.margins(lower, upper)[finite] >= crown[finite] - 1e-6).all())
    margins = true_margins(model, sample_box(lower, upper, 32, 32), y)
    assert bool(((warm.margins(lower, upper).unsqueeze(0) - margins)[:, finite] <= 1e-5).all())
    # A subset of the examples keeps its own slopes.
    subset = torch.tensor([4, 1])
    part, _ = alpha_linear_margin_bounds(model, lower[subset], upper[subset], y[subset],
                                         options=AlphaOptions(iterations=0), warm=state.rows(subset))
    assert part.coefficients.shape[0] == 2


def test_search_warm_start_keeps_each_example_slopes() -> None:
    model = trained(fc_net(2), (1, 4, 4), 5)
    x, _ = data((1, 4, 4), 5, 6, seed=8)
    with torch.no_grad():
        y = model(x).argmax(1)
    search = AlphaWarmStart(6, AlphaOptions(iterations=6, warm_iterations=2))
    search.linear_bound(model, x - 0.2, x + 0.2, y)
    assert bool(search.seen.all()) and search.intermediate
    index = torch.tensor([5, 0, 3])
    lower, upper = x[index] - 0.3, x[index] + 0.3
    bound = search.linear_bound(model, lower, upper, y[index], index)
    crown = crown_margin_bounds(model, lower, upper, y[index]).detach()
    finite = torch.isfinite(crown)
    assert bool((bound.margins(lower, upper)[finite] >= crown[finite] - 1e-6).all())
    margins = true_margins(model, sample_box(lower, upper, 32, 32), y[index])
    assert bool(((bound.margins(lower, upper).unsqueeze(0) - margins)[:, finite] <= 1e-5).all())
    part = search.select(index)
    assert part.seen.shape == (3,) and all(a.shape[0] == 3 for a in part.alphas.values())
    assert torch.equal(part.alphas[min(part.alphas)], search.alphas[min(search.alphas)][index])


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + self.inner(x))


def test_branching_graphs_are_refused_clearly() -> None:
    x = torch.zeros(2, 4)
    with pytest.raises(UnsupportedLayerError, match="alpha-CROWN.*method='crown'"):
        alpha_crown_margin_bounds(Residual().eval(), x - 0.1, x + 0.1, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="method must be one of"):
        margin_lower_bounds(fc_net(0), x, x, torch.tensor([0, 1]), "beta-crown")  # type: ignore[arg-type]


def mean_log_width(cert) -> torch.Tensor:
    """Per example ``mean_i log(eps_lower + eps_upper)``: Problem 2's objective."""
    return torch.log((cert.eps_lower + cert.eps_upper).clamp(min=1e-12)).flatten(1).mean(1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["fc-trained", "cnn-trained"])
def test_certified_boxes_survive_attacks_and_are_never_smaller_than_crown(kind: str, name: str) -> None:
    model = MODELS[name]()
    shape, classes = SHAPES[name]
    x, y = data(shape, classes, 8, seed=7)
    options = {"delta": 1e-3, "iterations": 40, "crown_rounds": 2}
    crown = certify(model, x, y, kind, method="crown", **options)
    alpha = certify(model, x, y, kind, method="alpha-crown", **options)
    assert bool(alpha.certified.any())
    assert bool((alpha.certified | ~crown.certified).all())
    both = crown.certified
    assert bool((mean_log_width(alpha)[both] >= mean_log_width(crown)[both] - 1e-6).all())
    lower, upper = x - alpha.eps_lower, x + alpha.eps_upper
    margins = margin_lower_bounds(model, lower[alpha.certified], upper[alpha.certified], y[alpha.certified],
                                  "alpha-crown")
    assert bool((margins >= 1e-3 * (1 - 1e-6)).all())
    assert_label_constant(model, lower, upper, y, mask=alpha.certified, pgd_steps=30, num_samples=32)


def test_callback_takes_the_method() -> None:
    from callbacks import AmoebaBoundCallback

    assert AmoebaBoundCallback(method="alpha-crown").method == "alpha-crown"
    with pytest.raises(ValueError, match="method must be one of"):
        AmoebaBoundCallback(method="beta-crown")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method must be one of"):
        certify(fc_net(0), torch.zeros(1, 1, 4, 4), torch.tensor([0]), method="beta-crown")  # type: ignore[arg-type]


def test_certify_script_accepts_alpha_crown(tmp_path: Path) -> None:
    quiet = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    common = ["--config", "normal_lenet.yaml", "--model.init_args.architecture=fc100", *quiet,
              "--data.init_args.max_train_examples=300", "--data.init_args.max_eval_examples=40",
              "--model.init_args.eval_attack_steps=1", f"--trainer.logger.init_args.save_dir={tmp_path}"]
    cli = train.main([*common, "--trainer.max_epochs=1"])
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    out = tmp_path / "alpha"
    summary = certify_script.main([*common, f"--ckpt_path={ckpt}", "--certify.num_examples=4",
                                   "--certify.kinds=[uniform]", "--certify.method", "alpha-crown",
                                   "--certify.crown_rounds=1", "--certify.attacks.enabled=false",
                                   "--certify.acts.enabled=false",
                                   "--certify.num_figure_examples=0", f"--certify.output_dir={out}"])
    assert summary["kinds"]["uniform"]["examples"] == 4
    radii = torch.load(out / "radii.pt")["uniform"]
    cli.datamodule.setup("test")
    index = radii["index"]
    x = torch.stack([cli.datamodule.test_set[int(i)][0] for i in index])
    y = torch.tensor([int(cli.datamodule.test_set[int(i)][1]) for i in index])
    ok = radii["certified"]
    assert bool(ok.any())
    network = cli.model.model.eval()
    margins = margin_lower_bounds(network, (x - radii["eps_lower"])[ok], (x + radii["eps_upper"])[ok], y[ok],
                                  "alpha-crown")
    assert bool((margins >= 1e-4 * (1 - 1e-6) - 1e-7).all())
