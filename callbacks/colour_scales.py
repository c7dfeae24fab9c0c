"""Robust colour scales of heatmaps and Explorer maps: percentile ranks, clipped or full linear ranges.

The scales :mod:`callbacks.figures` draws with (see its docstring for why they are robust); plain numpy and
matplotlib ``Normalize`` objects, no figure.
"""

from typing import Literal

import numpy as np
import torch
from matplotlib.colors import Normalize

Scaling = Literal["rank", "clip", "full"]
CLIP_PERCENTILES: tuple[float, float] = (2.0, 98.0)
"""Percentiles (lower, upper) that ``scaling="clip"`` spans linearly; colours saturate beyond them."""
TICK_PERCENTILES: tuple[float, ...] = (0.0, 25.0, 50.0, 75.0, 100.0)
"""Percentiles of the values marked on the ``rank`` colourbars (diverging rows: 0 and ``+-`` the median and maximum
of ``|value|``); evenly spaced along them."""
_LEVELS = 513


class RankNorm(Normalize):
    """Map a value to its percentile rank among reference values, in [0, 1] (histogram equalisation).

    Piecewise linear between the reference values' quantiles at ``levels`` evenly spaced percentiles; a value that
    many reference values share (a flat region) maps to the middle of their ranks, except the smallest and the
    largest value, which keep ranks 0 and 1 so the whole colour map is used. With ``symmetric`` the map is
    ``0.5 + 0.5 * sign(v) * rank(|v|)`` among the reference ``|values|``: 0 maps to 0.5 and ``-v`` mirrors ``v``.
    Values outside the reference range map to 0 or 1. ``inverse`` maps ranks back to values (for colourbars).

    Args:
        values: Reference values (any shape; non-finite ones are ignored).
        symmetric: Signed rank of ``|value|`` (diverging maps).
        levels: Number of quantiles the map interpolates between.

    Examples:
        >>> norm = RankNorm(np.array([0.0, 0.01, 0.02, 0.03, 100.0]))
        >>> [round(float(v), 2) for v in norm(np.array([0.0, 0.01, 0.02, 0.03, 100.0]))]
        [0.0, 0.25, 0.5, 0.75, 1.0]
        >>> norm = RankNorm(np.array([-0.1, 0.0, 0.05, 3.0]), symmetric=True)
        >>> [round(float(v), 3) for v in norm(np.array([-3.0, -0.05, 0.0, 0.05, 3.0]))]
        [0.0, 0.333, 0.5, 0.667, 1.0]
    """

    def __init__(self, values: np.ndarray | torch.Tensor, symmetric: bool = False, levels: int = _LEVELS) -> None:
        array = _finite(values)
        if array.size == 0:
            array = np.zeros(1)
        ranks = np.linspace(0.0, 1.0, levels)
        if symmetric:
            magnitudes, mag_ranks = _unique_quantiles(np.abs(array), ranks)
            if magnitudes[0] == 0.0:
                magnitudes, mag_ranks = magnitudes[1:], mag_ranks[1:]
            self._xp = np.concatenate([-magnitudes[::-1], [0.0], magnitudes])
            self._fp = np.concatenate([0.5 - 0.5 * mag_ranks[::-1], [0.5], 0.5 + 0.5 * mag_ranks])
        else:
            self._xp, self._fp = _unique_quantiles(array, ranks)
        if self._xp.size == 1:  # a constant map: its value in the middle of the scale
            step = max(abs(float(self._xp[0])), 1.0) * 1e-6
            self._xp = np.array([self._xp[0] - step, self._xp[0], self._xp[0] + step])
            self._fp = np.array([0.0, 0.5, 1.0])
        super().__init__(vmin=float(self._xp[0]), vmax=float(self._xp[-1]), clip=True)

    def __call__(self, value: np.ndarray | float, clip: bool | None = None) -> np.ma.MaskedArray:
        """Percentile ranks of ``value`` in [0, 1], masked where it is not finite."""
        result, is_scalar = self.process_value(value)
        data = np.ma.getdata(result)
        finite = np.isfinite(data)
        ranks = np.interp(np.where(finite, data, 0.0), self._xp, self._fp)
        ranks = np.ma.array(ranks, mask=np.ma.getmaskarray(result) | ~finite)
        return ranks[0] if is_scalar else ranks

    def inverse(self, value: np.ndarray | float) -> np.ndarray:
        """The values whose percentile ranks are ``value``."""
        return np.interp(np.asarray(value, dtype=float), self._fp, self._xp)


def _finite(values: np.ndarray | torch.Tensor) -> np.ndarray:
    """The finite entries of ``values`` as a flat float64 array."""
    array = values.detach().double().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, float)
    array = array.ravel()
    return array[np.isfinite(array)]


def _unique_quantiles(array: np.ndarray, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles of ``array`` at ``ranks`` with repeated values merged (keeping the mean of their ranks)."""
    quantiles = np.quantile(array, ranks)
    unique, inverse = np.unique(quantiles, return_inverse=True)
    mean_ranks = np.bincount(inverse, weights=ranks) / np.bincount(inverse)
    if unique.size > 1:  # the extremes keep ranks 0 and 1, so the whole colour map is used
        mean_ranks[0], mean_ranks[-1] = 0.0, 1.0
    return unique, mean_ranks


def colour_limits(
    values: np.ndarray | torch.Tensor,
    symmetric: bool = False,
    percentiles: tuple[float, float] | None = CLIP_PERCENTILES,
) -> tuple[float, float]:
    """Limits ``(low, high)`` of a linear colour scale (``scaling="clip"`` or ``"full"``); non-finite values ignored.

    Args:
        values: The values to be shown (any shape).
        symmetric: Return ``(-m, m)`` with ``m`` the upper percentile of ``|values|`` (diverging maps, 0 in the
            middle) instead of the two percentiles of ``values``.
        percentiles: Lower and upper percentiles in [0, 100]; ``None`` for the full range (min and max). Where the
            percentiles coincide (a nearly constant map with a few other values), the full range is used.

    Returns:
        ``low < high`` (a constant map gets ``low == value`` and a tiny positive span).

    Examples:
        >>> values = np.concatenate([np.linspace(0.0, 1.0, 98), [50.0, -50.0]])
        >>> [round(v, 2) for v in colour_limits(values)]  # the two outliers do not stretch the scale
        [0.01, 0.99]
        >>> colour_limits(values, percentiles=None)
        (-50.0, 50.0)
    """
    array = _finite(values)
    if array.size == 0:
        return (-1.0, 1.0) if symmetric else (0.0, 1.0)
    if symmetric:
        magnitude = np.abs(array)
        bound = float(np.percentile(magnitude, percentiles[1])) if percentiles is not None else 0.0
        if bound <= 0.0:
            bound = float(magnitude.max()) or 1.0
        return -bound, bound
    low = high = 0.0
    if percentiles is not None:
        low, high = (float(v) for v in np.percentile(array, percentiles))
    if high <= low:
        low, high = float(array.min()), float(array.max())
    if high <= low:
        high = low + max(abs(low), 1.0) * 1e-6
    return low, high


def colour_norm(
    values: np.ndarray | torch.Tensor,
    symmetric: bool = False,
    scaling: Scaling = "rank",
    percentiles: tuple[float, float] = CLIP_PERCENTILES,
) -> Normalize:
    """The colour normalisation of maps holding ``values``: a :class:`RankNorm` or a linear ``Normalize``.

    Args:
        values: All the values drawn with this colour scale.
        symmetric: Diverging map, 0 in the middle.
        scaling: ``rank`` (percentile rank, see the module docstring), ``clip`` (linear between ``percentiles``,
            saturating beyond) or ``full`` (linear, min to max).
        percentiles: The percentiles of ``clip``.

    Returns:
        A matplotlib norm mapping values to [0, 1].
    """
    if scaling == "rank":
        return RankNorm(values, symmetric=symmetric)
    if scaling not in ("clip", "full"):
        raise ValueError(f"scaling must be 'rank', 'clip' or 'full', got {scaling!r}")
    low, high = colour_limits(values, symmetric=symmetric, percentiles=percentiles if scaling == "clip" else None)
    return Normalize(vmin=low, vmax=high, clip=True)


def scaling_note(scaling: Scaling = "rank", percentiles: tuple[float, float] = CLIP_PERCENTILES) -> str:
    """One-line description of the colour scaling, as printed in the PNG figures' titles."""
    if scaling == "rank":
        ticks = ", ".join(f"{p:g}" for p in TICK_PERCENTILES)
        return ("colour = percentile rank of the pixel's value among all pixels of its row (histogram-equalised, "
                "robust to the huge border radii; diverging rows: signed rank of |value|, 0 in the middle); "
                f"colourbar ticks: values at the {ticks}th percentiles (diverging: 0, +-median and +-max of |value|)")
    if scaling == "clip":
        low, high = (f"{p:g}" for p in percentiles)
        return (f"colour clipped to the {low}-{high}th percentile of each row's values (diverging rows: +-{high}th "
                "percentile of |value|, 0 in the middle); values beyond saturate (colourbar arrows)")
    return "colour: full range of each row (min to max; diverging rows: -max|value| to max|value|)"
