"""Figures of certified boxes: Figure 4 heatmaps ``1 - (eps1 + eps2)`` and Explorer maps ``eps2 - eps1``.

Shared by ``certify.py`` (PNG files and TensorBoard) and :class:`callbacks.AmoebaBoundCallback` (TensorBoard).

Colour scales are robust. Unclipped radii are heavy-tailed: on a PGD-trained LeNet the interior pixels' widths are
about 0.002-0.02, the border's 0.01-0.3 and a few reach several input ranges, so a min-to-max scale (and even one
clipped to the 2nd-98th percentile) leaves the digit one flat colour. By default (``scaling="rank"``) a pixel's
colour is the percentile rank of its value among all the pixels of its row (PNG figures) or grid (TensorBoard):
histogram equalisation, so each colour holds as many pixels and the order of the values, hence the digit's outline
as in the Amoeba paper's Figures 4 and 6, is visible whatever the tail. Diverging maps (Explorer) use the signed
rank of ``|value|``: 0 is the middle colour and ``v`` and ``-v`` get mirrored colours. Colours then say which
pixels have larger values, not by how much: the PNG colourbars are ticked with the values at the 0, 25, 50, 75 and
100th percentiles and the figure's title says how colours were scaled. ``scaling="clip"`` is the linear scale
clipped to :data:`CLIP_PERCENTILES` (diverging: ``+-`` that upper percentile of ``|value|``; values beyond saturate,
marked by colourbar arrows) and ``scaling="full"`` the plain min-to-max scale.
"""

import textwrap
from pathlib import Path
from typing import Literal

import matplotlib
import numpy as np
import torch
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

# Figures are built as plain ``matplotlib.figure.Figure`` objects (no pyplot), which render to PNG with the Agg
# canvas whatever backend the user's process has selected: importing this module changes no global state.

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


def _to_2d(image: torch.Tensor) -> np.ndarray:
    """A ``(C, H, W)`` map as ``(H, W)`` (mean over channels) or an RGB ``(H, W, 3)`` image for C == 3."""
    array = image.detach().float().cpu().numpy()
    if array.ndim == 3 and array.shape[0] == 1:
        return array[0]
    if array.ndim == 3:
        return array.mean(axis=0)
    return array


def _extend(values: np.ndarray, low: float, high: float) -> str:
    """Matplotlib colourbar ``extend`` marking the sides where ``values`` go beyond ``[low, high]``."""
    finite = values[np.isfinite(values)]
    below = bool(finite.size) and bool(finite.min() < low)
    above = bool(finite.size) and bool(finite.max() > high)
    return {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[below, above]


def _rank_ticks(values: np.ndarray, symmetric: bool) -> list[float]:
    """Colourbar ticks of a ``rank`` row: values at :data:`TICK_PERCENTILES` (signed ``|value|`` ones if diverging)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return []
    if symmetric:
        magnitudes = np.percentile(np.abs(finite), (50.0, 100.0))
        return sorted({0.0, *(float(m) for m in magnitudes), *(-float(m) for m in magnitudes)})
    return sorted({float(v) for v in np.percentile(finite, TICK_PERCENTILES)})


def map_rows_figure(
    images: torch.Tensor,
    rows: dict[str, torch.Tensor],
    input_range: tuple[float, float] = (-1.0, 1.0),
    diverging: tuple[str, ...] = (),
    scaling: Scaling = "rank",
    percentiles: tuple[float, float] = CLIP_PERCENTILES,
) -> Figure:
    """Draw one column per example: the input on top, then one row per map.

    Each row has one colour scale (and colourbar) over its maps, robust to a heavy tail (:func:`colour_norm`); the
    figure's title says which (:func:`scaling_note`) and each colourbar's label gives the row's full range.

    Args:
        images: Inputs ``(N, C, H, W)``.
        rows: Row title -> maps ``(N, C, H, W)`` (channels are averaged for display).
        input_range: Range of the inputs, to display them in grey levels.
        diverging: Row titles drawn with a symmetric diverging colour map (Explorer maps).
        scaling: ``rank`` (percentile rank), ``clip`` (linear between ``percentiles``) or ``full`` (min to max).
        percentiles: The percentiles of ``scaling="clip"``.

    Returns:
        The matplotlib figure (not registered with pyplot: nothing to close).
    """
    count = images.shape[0]
    fig = Figure(figsize=(1.3 * count + 1.4, 1.4 * (1 + len(rows)) + 0.3))
    axes = fig.subplots(1 + len(rows), count, squeeze=False)
    low, high = input_range
    for col in range(count):
        picture = images[col].detach().float().cpu()
        picture = ((picture - low) / (high - low)).clamp(0, 1)
        axes[0, col].imshow(picture.permute(1, 2, 0).numpy() if picture.shape[0] == 3 else picture[0].numpy(),
                            cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_ylabel("input", fontsize=8)
    for r, (title, maps) in enumerate(rows.items(), start=1):
        values = np.stack([_to_2d(m) for m in maps])
        symmetric = title in diverging
        norm = colour_norm(values, symmetric=symmetric, scaling=scaling, percentiles=percentiles)
        for col in range(count):
            shown = axes[r, col].imshow(values[col], cmap="coolwarm" if symmetric else "magma", norm=norm,
                                        interpolation="nearest")
        axes[r, 0].set_ylabel(textwrap.fill(title, 14), fontsize=8)
        finite = values[np.isfinite(values)]
        full = f"all {finite.min():.3g} to {finite.max():.3g}" if finite.size else "no finite values"
        if scaling == "rank":
            colourbar = fig.colorbar(shown, ax=axes[r, :].tolist(), fraction=0.02, pad=0.01)
            colourbar.set_ticks(_rank_ticks(values, symmetric))
            colourbar.ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
            label = f"percentile rank\n{full}"
        else:
            colourbar = fig.colorbar(shown, ax=axes[r, :].tolist(), fraction=0.02, pad=0.01,
                                     extend=_extend(values, norm.vmin, norm.vmax))
            label = (f"{percentiles[0]:g}-{percentiles[1]:g}th pct" if scaling == "clip" else "full range") + \
                f"\n{full}"
        colourbar.ax.tick_params(labelsize=6)
        colourbar.set_label(label, fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(scaling_note(scaling, percentiles), fontsize=7, wrap=True)
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a PNG (creating folders) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def colormap_grid(
    maps: torch.Tensor,
    cmap: str = "magma",
    symmetric: bool = False,
    nrow: int = 8,
    scaling: Scaling = "rank",
    percentiles: tuple[float, float] = CLIP_PERCENTILES,
) -> torch.Tensor:
    """Colour-map a batch of maps into one RGB image grid ``(3, H', W')`` in [0, 1] for TensorBoard.

    One colour scale for the whole grid, robust as in the PNG figures; there is no room for a colourbar, so the
    scaling is fixed and documented here. By default (``scaling="rank"``) a pixel's colour is the percentile rank
    of its value among all the grid's pixels (histogram equalisation: the darkest colour is the smallest value, the
    middle one the median, the brightest the largest; a few huge values cannot flatten the rest). With
    ``symmetric`` (Explorer maps) it is the signed rank of ``|value|``: 0 is the middle colour, ``v`` and ``-v``
    mirrored. ``scaling="clip"`` is linear between :data:`CLIP_PERCENTILES` (``+-`` the upper percentile of
    ``|value|`` if ``symmetric``), saturating beyond; ``"full"`` is linear from min to max (``+-max |value|``).

    Args:
        maps: ``(N, C, H, W)`` maps (channels averaged).
        cmap: Matplotlib colour map name.
        symmetric: Scale symmetrically around 0 (Explorer maps) instead of over ``[min, max]``.
        nrow: Images per grid row.
        scaling: ``rank``, ``clip`` or ``full`` (e.g. for inputs already in [0, 1]).
        percentiles: The percentiles of ``scaling="clip"``.

    Returns:
        The grid as a float tensor.
    """
    from torchvision.utils import make_grid

    values = maps.detach().float().cpu().mean(dim=1).numpy()
    norm = colour_norm(values, symmetric=symmetric, scaling=scaling, percentiles=percentiles)
    scaled = np.ma.filled(norm(values), 0.5)
    rgb = torch.from_numpy(matplotlib.colormaps[cmap](np.clip(scaled, 0.0, 1.0))[..., :3]).permute(0, 3, 1, 2).float()
    return make_grid(rgb, nrow=nrow, padding=1, pad_value=1.0)
