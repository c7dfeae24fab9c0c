"""Reusable soundness checks: sample and attack a box, assert bounds enclose outputs and labels never change.

Import as ``from tests.soundness import ...``.
"""

import torch
from torch import Tensor, nn


def sample_box(lower: Tensor, upper: Tensor, num_random: int = 64, num_corners: int = 64, seed: int = 0) -> Tensor:
    """Points of the boxes ``[lower[b], upper[b]]``: uniform random points, random corners, centre and both ends.

    Args:
        lower: ``(B, ...)`` lower ends.
        upper: ``(B, ...)`` upper ends.
        num_random: Uniform samples per example.
        num_corners: Random vertices per example (each entry at ``lower`` or ``upper``).
        seed: Seed of the generator (the global RNG is untouched).

    Returns:
        ``(S, B, ...)`` with ``S = num_random + num_corners + 3``.
    """
    gen = torch.Generator().manual_seed(seed)
    shape = (num_random, *lower.shape)
    width = upper - lower
    rand = lower + torch.rand(shape, generator=gen, dtype=lower.dtype) * width
    bits = torch.randint(0, 2, (num_corners, *lower.shape), generator=gen).to(lower.dtype)
    corners = lower + bits * width
    ends = torch.stack([lower, upper, (lower + upper) / 2])
    return torch.cat([rand, corners, ends]).clamp(min=lower, max=upper)


def assert_encloses(model: nn.Module, lower: Tensor, upper: Tensor, out_lower: Tensor, out_upper: Tensor,
                    points: Tensor, atol: float = 1e-5) -> None:
    """Assert ``out_lower <= model(p) <= out_upper`` for every point ``p`` of ``points`` ``(S, B, ...)``."""
    with torch.no_grad():
        for p in points:
            assert bool(((p >= lower) & (p <= upper)).all()), "sample outside its box"
            out = model(p)
            scale = 1 + out.abs()
            assert bool((out >= out_lower - atol * scale).all()), f"lower bound violated by {(out_lower - out).max()}"
            assert bool((out <= out_upper + atol * scale).all()), f"upper bound violated by {(out - out_upper).max()}"


def pgd_in_box(model: nn.Module, lower: Tensor, upper: Tensor, y: Tensor, steps: int = 50,
               restarts: int = 2, seed: int = 0) -> Tensor:
    """PGD restricted to the box: maximise ``max_{j != y} f_j - f_y`` by sign steps, projecting onto the box.

    Step size is a tenth of each entry's box width; restart 0 starts at the centre, later ones at random points.

    Returns:
        ``(restarts, B, ...)`` final iterates (all inside the boxes).
    """
    gen = torch.Generator().manual_seed(seed)
    width = upper - lower
    step = width / 10
    results = []
    with torch.enable_grad():
        for restart in range(restarts):
            if restart == 0:
                z = (lower + upper) / 2
            else:
                z = lower + torch.rand(lower.shape, generator=gen, dtype=lower.dtype) * width
            for _ in range(steps):
                z = z.detach().requires_grad_(True)
                logits = model(z)
                true = logits.gather(1, y.view(-1, 1)).squeeze(1)
                others = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), -torch.inf)
                loss = (others.max(1).values - true).sum()
                (grad,) = torch.autograd.grad(loss, z)
                z = torch.max(torch.min(z + step * grad.sign(), upper), lower)
            results.append(z.detach())
    return torch.stack(results)


def assert_label_constant(model: nn.Module, lower: Tensor, upper: Tensor, y: Tensor, mask: Tensor | None = None,
                          pgd_steps: int = 40, num_samples: int = 64, seed: int = 0) -> None:
    """Assert that no sampled, corner or PGD point of each box (where ``mask``) changes the label from ``y``."""
    if mask is None:
        mask = torch.ones(y.shape[0], dtype=torch.bool)
    if not bool(mask.any()):
        return
    lower, upper, y = lower[mask], upper[mask], y[mask]
    points = torch.cat([sample_box(lower, upper, num_samples, num_samples, seed),
                        pgd_in_box(model, lower, upper, y, steps=pgd_steps, seed=seed)])
    with torch.no_grad():
        for p in points:
            pred = model(p).argmax(1)
            assert bool((pred == y).all()), f"label changed inside a certified box for examples {(pred != y).nonzero()}"
