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
marked by colourbar arrows) and ``scaling="full"`` the plain min-to-max scale. The scales live in
:mod:`callbacks.colour_scales` (re-exported here).
"""

import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

from callbacks.colour_scales import (
    CLIP_PERCENTILES,
    TICK_PERCENTILES,
    RankNorm,
    Scaling,
    colour_limits,
    colour_norm,
    scaling_note,
)

# Figures are built as plain ``matplotlib.figure.Figure`` objects (no pyplot), which render to PNG with the Agg
# canvas whatever backend the user's process has selected: importing this module changes no global state.

# The colour scales are re-exported: figures are drawn with them, and their users import them from here.
__all__ = ["CLIP_PERCENTILES", "TICK_PERCENTILES", "RankNorm", "Scaling", "colormap_grid", "colour_limits",
           "colour_norm", "map_rows_figure", "save_figure", "scaling_note"]


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

    Example:
        >>> grid = colormap_grid(torch.rand(3, 1, 8, 8), nrow=2)  # two rows of 8x8 maps, 1-pixel padding
        >>> tuple(grid.shape), bool(grid.min() >= 0) and bool(grid.max() <= 1)
        ((3, 19, 19), True)
    """
    from torchvision.utils import make_grid

    values = maps.detach().float().cpu().mean(dim=1).numpy()
    norm = colour_norm(values, symmetric=symmetric, scaling=scaling, percentiles=percentiles)
    scaled = np.ma.filled(norm(values), 0.5)
    rgb = torch.from_numpy(matplotlib.colormaps[cmap](np.clip(scaled, 0.0, 1.0))[..., :3]).permute(0, 3, 1, 2).float()
    return make_grid(rgb, nrow=nrow, padding=1, pad_value=1.0)
