"""How well a robustness score separates attacked from surviving examples (ACTS paper, Section 4.2)."""

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc


def _check(scores: Tensor, attacked: Tensor) -> tuple[Tensor, Tensor]:
    if scores.dim() != 1 or attacked.shape != scores.shape:
        raise ValueError(
            "scores and attacked must both be 1-D of the same length, "
            f"got {tuple(scores.shape)} and {tuple(attacked.shape)}"
        )
    if attacked.dtype != torch.bool:
        raise ValueError(f"attacked must be a bool tensor, got dtype {attacked.dtype}")
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN")
    return scores.detach().double(), attacked


def score_histograms(
    scores: Tensor, attacked: Tensor, bins: int | Tensor = 50, range: tuple[float, float] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Histograms of the attacked and the surviving examples' scores on shared bins.

    Args:
        scores: ``[N]`` scores.
        attacked: Bool ``[N]``: the attack succeeded on the example.
        bins: Number of equal-width bins, or a 1-D tensor of increasing bin edges.
        range: ``(low, high)`` of the equal-width bins; default the scores' min and max. Scores outside
            the edges are counted in the first or last bin.

    Returns:
        ``(attacked_counts, survived_counts, edges)``.

    Raises:
        ValueError: On malformed inputs.
    """
    scores, attacked = _check(scores, attacked)
    if isinstance(bins, Tensor):
        edges = bins.detach().double().cpu()
        if edges.dim() != 1 or edges.numel() < 2 or bool((edges[1:] <= edges[:-1]).any()):
            raise ValueError(f"bin edges must be a 1-D increasing tensor with >= 2 entries, got {bins}")
    else:
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        if range is None:
            low, high = (float(scores.min()), float(scores.max())) if scores.numel() else (0.0, 1.0)
        else:
            low, high = float(range[0]), float(range[1])
        if not low < high:
            low, high = low - 0.5, low + 0.5
        edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    values = scores.cpu().clamp(float(edges[0]), float(edges[-1]))
    # Bin i holds edges[i] <= v < edges[i + 1]; the last bin also holds its right edge.
    index = (torch.bucketize(values, edges, right=True) - 1).clamp(0, edges.numel() - 2)
    counts = torch.zeros(2, edges.numel() - 1, dtype=torch.float64)
    counts.index_put_((attacked.cpu().long(), index), torch.ones_like(values), accumulate=True)
    return counts[1], counts[0], edges


def overlap_percent(
    scores: Tensor, attacked: Tensor, bins: int | Tensor = 50, range: tuple[float, float] | None = None
) -> float:
    """Overlap% of the ACTS paper (Section 4.2, Tables 2, 5 and 7): ``100 * S_o / S_a``.

    The scores of the attacked and of the surviving examples are binned into two histograms on shared bins
    (:func:`score_histograms`). ``S_o``, the size (count) of the overlapping area, is
    ``sum_b min(attacked_b, survived_b)``, the area covered by both histograms drawn on the same axes, and
    ``S_a`` is the total count of all examples. A score that separates the groups perfectly gives 0; two
    identical distributions give 50. Lower is better.

    For ACTS, whose non-attackable examples all get the large constant ``C``, pass ``range`` (or edges) on the
    scale of the finite scores, otherwise a few ``C`` values stretch the bins.

    Args:
        scores: ``[N]`` scores.
        attacked: Bool ``[N]``: the attack succeeded on the example.
        bins: Number of equal-width bins, or bin edges.
        range: ``(low, high)`` of the equal-width bins; default the scores' range.

    Returns:
        The overlap in percent, in ``[0, 50]``; 0 for an empty input or when one group is empty.
    """
    attacked_counts, survived_counts, _ = score_histograms(scores, attacked, bins, range)
    total = float(attacked_counts.sum() + survived_counts.sum())
    if total == 0:
        return 0.0
    return 100.0 * float(torch.minimum(attacked_counts, survived_counts).sum()) / total


def score_auroc(scores: Tensor, attacked: Tensor) -> float:
    """Threshold-free AUROC of a robustness score as a predictor of attack success.

    Orientation: a higher score means more robust, so a low score should predict ``attacked``; the AUROC is
    the probability that a random attacked example scores strictly lower than a random surviving one (ties
    count one half). 1 is a perfect ranking, 0.5 chance level.

    The scores are replaced by their normalised ranks in ``[0, 1]`` before ``binary_auroc``, which would
    otherwise squash values outside ``[0, 1]`` with a sigmoid and merge large scores (such as ACTS's ``C``)
    into ties.

    Args:
        scores: ``[N]`` scores.
        attacked: Bool ``[N]``.

    Returns:
        The AUROC, or NaN when one of the two groups is empty.
    """
    scores, attacked = _check(scores, attacked)
    if bool(attacked.all()) or not bool(attacked.any()):
        return float("nan")
    _, ranks = torch.unique(scores, return_inverse=True)
    top = max(int(ranks.max()), 1)
    predicted_attack = 1.0 - ranks.double() / top
    return float(binary_auroc(predicted_attack.float(), attacked.long()))
