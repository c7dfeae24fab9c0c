"""Heatmap and Explorer figures: robust colour scales that a few huge border radii cannot flatten (issue 11 item 5)."""

import doctest

import matplotlib
import numpy as np
import pytest
import torch

import callbacks.figures as figures
from callbacks.figures import colormap_grid, map_rows_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SIZE = 16
COUNT = 4


def _structured_maps(background: float, stroke: float, outlier: float) -> torch.Tensor:
    """``(COUNT, 1, SIZE, SIZE)`` maps: a ``stroke`` cross on a ``background``, and two ``outlier`` border pixels each.

    Like the heatmaps of a robust LeNet: the interior structure spans a small range, and a few border pixels whose
    unclipped radii are huge lie far outside it (8 of 1024 values, under 1%).
    """
    maps = torch.full((COUNT, 1, SIZE, SIZE), background)
    maps[:, :, SIZE // 2 - 1:SIZE // 2 + 1, 3:-3] = stroke
    maps[:, :, 3:-3, SIZE // 2 - 1:SIZE // 2 + 1] = stroke
    maps[:, :, 0, 0] = outlier
    maps[:, :, -1, -1] = outlier
    return maps


STROKE_PIXEL = (SIZE // 2, 4)
BACKGROUND_PIXEL = (2, 2)


def _grid_pixel(grid: torch.Tensor, example: int, pixel: tuple[int, int]) -> torch.Tensor:
    """RGB colour of ``pixel`` of ``example`` in a one-row ``make_grid`` grid with padding 1."""
    row, col = pixel
    return grid[:, 1 + row, 1 + example * (SIZE + 1) + col]


def _figure_image(fig: plt.Figure, row: int, col: int) -> matplotlib.image.AxesImage:
    """The image drawn in panel (``row``, ``col``) of a :func:`map_rows_figure` figure (row 0: the inputs)."""
    return fig.axes[row * COUNT + col].images[0]


@pytest.mark.parametrize("scaling", ["rank", "clip"])
def test_grid_heatmap_shows_interior_structure_despite_outliers(scaling: str) -> None:
    # 1 - (eps1 + eps2): stroke 0.4, background 0.2, border pixels with widths of 6 -> -5.
    maps = _structured_maps(background=0.2, stroke=0.4, outlier=-5.0)
    grid = colormap_grid(maps, cmap="magma", **({} if scaling == "rank" else {"scaling": scaling}))
    assert grid.shape == (3, SIZE + 2, COUNT * (SIZE + 1) + 1)
    assert 0.0 <= float(grid.min()) and float(grid.max()) <= 1.0
    darkest = torch.tensor(plt.get_cmap("magma")(0.0)[:3], dtype=grid.dtype)
    for example in range(COUNT):
        stroke = _grid_pixel(grid, example, STROKE_PIXEL)
        background = _grid_pixel(grid, example, BACKGROUND_PIXEL)
        assert float((stroke - background).abs().max()) > 0.3, "stroke and background got nearly the same colour"
        # The outliers take the darkest colour (saturated for clip), and the order of the values is kept.
        outlier = _grid_pixel(grid, example, (0, 0))
        assert torch.allclose(outlier, darkest, atol=1e-6)
        assert float(stroke.sum()) > float(background.sum()) >= float(outlier.sum())


@pytest.mark.parametrize("scaling", ["rank", "clip"])
def test_grid_explorer_is_symmetric_and_shows_interior_structure(scaling: str) -> None:
    # eps2 - eps1: stroke -0.05 on 0, a few +0.05 and huge positive outliers only (the scale must stay symmetric).
    maps = _structured_maps(background=0.0, stroke=-0.05, outlier=4.0)
    maps[:, :, 2, 3:6] = 0.05
    grid = colormap_grid(maps, cmap="coolwarm", symmetric=True, **({} if scaling == "rank" else {"scaling": scaling}))
    middle = torch.tensor(plt.get_cmap("coolwarm")(0.5)[:3], dtype=grid.dtype)
    for example in range(COUNT):
        zero = _grid_pixel(grid, example, BACKGROUND_PIXEL)
        negative = _grid_pixel(grid, example, STROKE_PIXEL)
        positive = _grid_pixel(grid, example, (2, 4))
        assert torch.allclose(zero, middle, atol=1e-2), "0 must be the middle colour of the diverging map"
        assert float((negative - zero).abs().max()) > 0.3 and float((positive - zero).abs().max()) > 0.3
        assert negative[2] > negative[0] and positive[0] > positive[2]  # blue below 0, red above
    norm = figures.colour_norm(maps.mean(dim=1).numpy(), symmetric=True, scaling=scaling)
    probe = np.array([0.01, 0.05, 0.5, 4.0])
    np.testing.assert_allclose(norm(probe) + norm(-probe), 1.0, atol=1e-9)  # mirrored around 0
    if scaling == "clip":  # the bound is the 98th percentile of |value| = 0.05: +-0.05 reach the ends
        assert norm.vmax == pytest.approx(0.05) and norm.vmin == pytest.approx(-0.05)


@pytest.mark.parametrize("scaling", ["rank", "clip"])
def test_figure_rows_scale_to_interior_and_say_so(scaling: str) -> None:
    heatmap = _structured_maps(background=0.2, stroke=0.4, outlier=-5.0)
    explorer = _structured_maps(background=0.0, stroke=-0.05, outlier=3.0)
    images = torch.rand(COUNT, 1, SIZE, SIZE) * 2 - 1
    fig = map_rows_figure(images, {"1-(e1+e2) asymmetric": heatmap, "e2-e1": explorer}, (-1.0, 1.0),
                          diverging=("e2-e1",), **({} if scaling == "rank" else {"scaling": scaling}))
    try:
        for col in range(COUNT):
            image = _figure_image(fig, 1, col)
            stroke, background, outlier = image.to_rgba(np.array([0.4, 0.2, -5.0]))[:, :3]
            assert np.abs(stroke - background).max() > 0.3, "stroke and background got nearly the same colour"
            assert np.abs(background - outlier).max() < np.abs(stroke - background).max()

            diverging = _figure_image(fig, 2, col)
            negative, zero, positive = diverging.to_rgba(np.array([-0.05, 0.0, 0.05]))[:, :3]
            assert np.abs(negative - zero).max() > 0.3 and np.abs(positive - zero).max() > 0.3
            np.testing.assert_allclose(zero, plt.get_cmap("coolwarm")(0.5)[:3], atol=1e-2)

        # The figure says how colours were scaled.
        text = " ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        heat_bar = _figure_image(fig, 1, COUNT - 1).colorbar
        explorer_bar = _figure_image(fig, 2, COUNT - 1).colorbar
        if scaling == "rank":
            assert "percentile rank" in text and "histogram-equalised" in text
            ticks = heat_bar.get_ticks()
            assert ticks.min() == pytest.approx(-5.0) and ticks.max() == pytest.approx(0.4)
            assert 0.0 in explorer_bar.get_ticks()
        else:
            assert "percentile" in text and "saturate" in text
            low, high = image.get_clim()
            assert 0.19 <= low and high <= 0.41, (low, high)
            low, high = diverging.get_clim()
            assert low == pytest.approx(-high) and 0.0 < high <= 0.06, (low, high)
            assert heat_bar.extend == "min"  # the colourbars mark the saturated side
            assert explorer_bar.extend == "max"
    finally:
        plt.close(fig)


def test_rank_norm_orders_and_inverts() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.exponential(0.01, 2000), [3.0, 6.0]])  # heavy tail, like unclipped widths
    norm = figures.RankNorm(values)
    ranks = np.asarray(norm(np.sort(values)))
    assert np.all(np.diff(ranks) >= 0) and ranks[0] == 0.0 and ranks[-1] == 1.0
    assert float(norm(np.median(values))) == pytest.approx(0.5, abs=0.01)
    np.testing.assert_allclose(norm.inverse(norm(np.array([0.001, 0.01, 0.05]))), [0.001, 0.01, 0.05], rtol=1e-6)
    assert float(norm(np.array([-1.0]))[0]) == 0.0 and float(norm(np.array([100.0]))[0]) == 1.0
    assert np.ma.is_masked(norm(np.array([np.nan]))[0])
    # A flat region shares one colour, the middle of its ranks.
    flat = figures.RankNorm(np.concatenate([np.zeros(50), np.linspace(1.0, 2.0, 50)]))
    assert float(flat(np.array([0.0]))[0]) == 0.0 and float(flat(np.array([1.5]))[0]) == pytest.approx(0.75, abs=0.02)
    with pytest.raises(ValueError, match="scaling"):
        figures.colour_norm(values, scaling="log")


def test_full_range_on_request() -> None:
    heatmap = _structured_maps(background=0.2, stroke=0.4, outlier=-5.0)
    grid = colormap_grid(heatmap, scaling="full")
    outlier = _grid_pixel(grid, 0, (0, 0))
    assert torch.allclose(outlier, torch.tensor(plt.get_cmap("magma")(0.0)[:3], dtype=grid.dtype), atol=1e-6)
    fig = map_rows_figure(torch.zeros(COUNT, 1, SIZE, SIZE), {"h": heatmap}, scaling="full")
    try:
        assert _figure_image(fig, 1, 0).get_clim() == pytest.approx((-5.0, 0.4))
        text = " ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        assert "full range" in text
    finally:
        plt.close(fig)


def test_colour_limits_degenerate_maps() -> None:
    from callbacks.figures import colour_limits

    low, high = colour_limits(np.full(100, 0.3))
    assert low == pytest.approx(0.3) and high > low
    # Percentiles that coincide (a nearly constant map) fall back to the full range, so the few others show.
    values = np.concatenate([np.zeros(99), [1.0]])
    assert colour_limits(values) == (0.0, 1.0)
    assert colour_limits(values, symmetric=True) == (-1.0, 1.0)
    assert colour_limits(np.zeros(10), symmetric=True) == (-1.0, 1.0)
    # Non-finite values are ignored; an all-zero grid and one with NaN still render.
    assert colour_limits(np.array([0.0, 1.0, np.inf, np.nan]), percentiles=None) == (0.0, 1.0)
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, 0, 0] = float("nan")
    for scaling in ("rank", "clip", "full"):
        for symmetric in (False, True):
            grid = colormap_grid(maps, symmetric=symmetric, scaling=scaling)
            assert torch.isfinite(grid).all()
        # A constant map gets one colour (the middle one for a diverging map: all-zero Explorer maps are grey).
        grid = colormap_grid(torch.zeros(2, 1, 4, 4), cmap="coolwarm", symmetric=True, scaling=scaling)
        middle = torch.tensor(plt.get_cmap("coolwarm")(0.5)[:3], dtype=grid.dtype)
        assert torch.allclose(_grid_pixel(grid, 0, (1, 1)), middle, atol=1e-2)
        plt.close(map_rows_figure(torch.zeros(2, 1, 4, 4), {"h": torch.full((2, 1, 4, 4), 0.7)}, scaling=scaling))


def test_rgb_maps_and_three_channel_inputs() -> None:
    maps = torch.rand(3, 3, 8, 8)
    grid = colormap_grid(maps, nrow=2)
    assert grid.shape[0] == 3 and torch.isfinite(grid).all()
    fig = map_rows_figure(torch.rand(3, 3, 8, 8), {"h": maps}, (0.0, 1.0))
    plt.close(fig)


def test_docstring_examples() -> None:
    result = doctest.testmod(figures, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_colour_scale_docstring_examples() -> None:
    import callbacks.colour_scales as colour_scales

    result = doctest.testmod(colour_scales, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
