"""Analysis of certified boxes (Amoeba Sections 4.1, 4.3, 4.4 and Table 3).

Definitions:

- Geometric-mean width of an example: ``(prod_i (eps1[i] + eps2[i]))^(1/n)`` over its ``n`` input entries
  (Section 4.1, footnote 1: the n-th root of the box volume), computed as ``exp(mean_i log w_i)``; ``0``
  when any width is zero (e.g. uncertified examples).
- Mean certified width of a certificate: the mean of the geometric-mean widths over certified examples
  (:func:`mean_width_over_certified` for gathered rows); :func:`certified_fraction`, :func:`width_ratios`
  (asymmetric over uniform and non-uniform) complete the summary the callback and ``certify.py`` report.
- Explorer map: ``eps_upper - eps_lower`` (``eps2 - eps1``, the asymmetry; Table 3's last column).
- Bound heatmap: ``1 - (eps_lower + eps_upper)`` (Section 4.3: bright pixels have small robustness space).
- Pairwise statistics of a set of maps (Table 3): the mean over pairs ``i < j`` of the cosine similarity
  of the flattened maps, and of the 1-D Wasserstein distance between the two maps' value distributions
  (each map's entries taken as an empirical distribution, as ``scipy.stats.wasserstein_distance``).
"""

from collections.abc import Mapping

import torch
from torch import Tensor

from bounds.certificate import Certificate


def geometric_mean_width(cert_or_eps_lower: Certificate | Tensor, eps_upper: Tensor | None = None) -> Tensor:
    """Per-example geometric mean of the box widths ``eps_lower + eps_upper``.

    Args:
        cert_or_eps_lower: A :class:`~bounds.certificate.Certificate`, or left radii ``(B, ...)``.
        eps_upper: Right radii ``(B, ...)`` when the first argument is a tensor.

    Returns:
        ``(B,)`` tensor; ``0`` for examples with any zero width.

    Raises:
        ValueError: If the radii are missing, differently shaped or negative.
    """
    if isinstance(cert_or_eps_lower, Certificate):
        if eps_upper is not None:
            raise ValueError("pass either a Certificate or (eps_lower, eps_upper), not both")
        width = cert_or_eps_lower.width
    else:
        if eps_upper is None:
            raise ValueError("eps_upper is required when eps_lower is a tensor")
        if cert_or_eps_lower.shape != eps_upper.shape:
            raise ValueError(f"radii shapes differ: {tuple(cert_or_eps_lower.shape)} and {tuple(eps_upper.shape)}")
        width = cert_or_eps_lower + eps_upper
    if width.dim() < 1:
        raise ValueError("radii need a batch dimension")
    if bool((width < 0).any()):
        raise ValueError(f"widths must be nonnegative, found {width.min().item()}")
    flat = width.flatten(1).double()
    if flat.shape[1] == 0:
        raise ValueError("examples have no entries")
    return torch.exp(torch.log(flat).mean(1)).to(width.dtype)  # log 0 = -inf gives exp(-inf) = 0


def mean_certified_width(cert: Certificate) -> float:
    """Mean of :func:`geometric_mean_width` over the certified examples (``0.0`` if none is certified)."""
    return mean_width_over_certified(geometric_mean_width(cert), cert.certified)


def mean_width_over_certified(widths: Tensor, certified: Tensor) -> float:
    """Mean of per-example widths over the certified examples, in ``widths``' dtype (``0.0`` if none is certified).

    The one definition of a model's width figure (Amoeba Section 4.1), for a :class:`Certificate`
    (:func:`mean_certified_width`) or for gathered rows.

    Args:
        widths: Per-example geometric-mean widths ``(B,)`` (:func:`geometric_mean_width`).
        certified: Boolean ``(B,)``.

    Returns:
        The mean width of the certified examples.

    Example:
        >>> mean_width_over_certified(torch.tensor([0.5, 0.0, 0.25]), torch.tensor([True, False, True]))
        0.375
    """
    if not bool(certified.any()):
        return 0.0
    return float(widths[certified].mean())


def certified_fraction(certified: Tensor) -> float:
    """Share of certified examples (computed in float64; ``0.0`` for no examples).

    Example:
        >>> certified_fraction(torch.tensor([True, False, True, True]))
        0.75
    """
    return float(certified.double().mean()) if certified.numel() else 0.0


RATIO_DENOMINATORS = ("uniform", "nonuniform")
"""The kinds the asymmetric width is compared with (summary.json's width ratios), in reporting order."""


def width_ratios(mean_widths: Mapping[str, float]) -> dict[str, float]:
    """Ratios of the asymmetric mean width to the symmetric kinds' ("volume ratio" between two kinds).

    Args:
        mean_widths: Kind -> mean certified width (e.g. from :func:`mean_width_over_certified`).

    Returns:
        ``{other: asymmetric / other}`` for each ``other`` in :data:`RATIO_DENOMINATORS` present with a positive
        width, when ``"asymmetric"`` is present; in that order.

    Example:
        >>> width_ratios({"uniform": 0.25, "asymmetric": 0.5, "nonuniform": 0.0})
        {'uniform': 2.0}
    """
    if "asymmetric" not in mean_widths:
        return {}
    return {other: mean_widths["asymmetric"] / mean_widths[other] for other in RATIO_DENOMINATORS
            if other in mean_widths and mean_widths[other] > 0}


def explorer_map(cert: Certificate) -> Tensor:
    """The Explorer map ``eps_upper - eps_lower`` (``eps2 - eps1``), shaped like the inputs."""
    return cert.eps_upper - cert.eps_lower


def bound_heatmap(cert: Certificate) -> Tensor:
    """The heatmap ``1 - (eps_lower + eps_upper)`` of Section 4.3 (Figure 4), shaped like the inputs."""
    return 1 - (cert.eps_lower + cert.eps_upper)


def _flat_maps(maps: Tensor) -> Tensor:
    if maps.dim() < 2:
        raise ValueError(f"maps must be (N, ...) with one map per example, got shape {tuple(maps.shape)}")
    if maps.shape[0] < 2:
        raise ValueError(f"pairwise statistics need at least two maps, got {maps.shape[0]}")
    return maps.flatten(1).double()


def pairwise_cosine_similarity(maps: Tensor) -> float:
    """Mean cosine similarity over pairs ``i < j`` of flattened maps (Table 3, "Average Cosine").

    Args:
        maps: ``(N, ...)`` with ``N >= 2``. A zero map has cosine ``0`` with every map.

    Returns:
        The mean over the ``N (N - 1) / 2`` pairs.
    """
    flat = _flat_maps(maps)
    norms = flat.norm(dim=1, keepdim=True)
    unit = torch.where(norms > 0, flat / norms.clamp(min=torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    sims = unit @ unit.T
    i, j = torch.triu_indices(flat.shape[0], flat.shape[0], offset=1)
    return float(sims[i, j].mean())


def pairwise_wasserstein_distance(maps: Tensor, chunk: int = 64) -> float:
    """Mean 1-D Wasserstein distance over pairs ``i < j`` of the maps' value distributions (Table 3).

    Each map's ``n`` entries form an empirical distribution with equal weights; for two such
    distributions of the same size the distance is ``mean_k |sort(a)_k - sort(b)_k|``, which equals
    ``scipy.stats.wasserstein_distance(a, b)``. Computed batched on sorted values.

    Args:
        maps: ``(N, ...)`` with ``N >= 2``.
        chunk: Rows compared at once (memory ``chunk * N * n``).

    Returns:
        The mean over the ``N (N - 1) / 2`` pairs.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    values = _flat_maps(maps).sort(dim=1).values
    count = values.shape[0]
    total = values.new_zeros(())
    for begin in range(0, count, chunk):
        rows = values[begin:begin + chunk]
        dist = (rows[:, None, :] - values[None, :, :]).abs().mean(2)  # (chunk, N)
        index = torch.arange(begin, begin + rows.shape[0], device=values.device)
        upper = torch.arange(count, device=values.device)[None, :] > index[:, None]
        total = total + dist[upper].sum()
    return float(total / (count * (count - 1) / 2))
