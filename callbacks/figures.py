"""Figures of certified boxes: Figure 4 heatmaps ``1 - (eps1 + eps2)`` and Explorer maps ``eps2 - eps1``.

Shared by ``certify.py`` (PNG files and TensorBoard) and :class:`callbacks.AmoebaBoundCallback` (TensorBoard).
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def _to_2d(image: torch.Tensor) -> np.ndarray:
    """A ``(C, H, W)`` map as ``(H, W)`` (mean over channels) or an RGB ``(H, W, 3)`` image for C == 3."""
    array = image.detach().float().cpu().numpy()
    if array.ndim == 3 and array.shape[0] == 1:
        return array[0]
    if array.ndim == 3:
        return array.mean(axis=0)
    return array


def map_rows_figure(
    images: torch.Tensor,
    rows: dict[str, torch.Tensor],
    input_range: tuple[float, float] = (-1.0, 1.0),
    diverging: tuple[str, ...] = (),
) -> Figure:
    """Draw one column per example: the input on top, then one row per map.

    Args:
        images: Inputs ``(N, C, H, W)``.
        rows: Row title -> maps ``(N, C, H, W)`` (channels are averaged for display).
        input_range: Range of the inputs, to display them in grey levels.
        diverging: Row titles drawn with a symmetric diverging colour map (Explorer maps).

    Returns:
        The matplotlib figure (close it with ``plt.close(fig)``).
    """
    count = images.shape[0]
    fig, axes = plt.subplots(1 + len(rows), count, figsize=(1.3 * count + 1.2, 1.4 * (1 + len(rows))), squeeze=False)
    low, high = input_range
    for col in range(count):
        picture = images[col].detach().float().cpu()
        picture = ((picture - low) / (high - low)).clamp(0, 1)
        axes[0, col].imshow(picture.permute(1, 2, 0).numpy() if picture.shape[0] == 3 else picture[0].numpy(),
                            cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_ylabel("input", fontsize=8)
    for r, (title, maps) in enumerate(rows.items(), start=1):
        values = np.stack([_to_2d(m) for m in maps])
        if title in diverging:
            bound = float(np.abs(values).max()) or 1.0
            kwargs = {"cmap": "coolwarm", "vmin": -bound, "vmax": bound}
        else:
            kwargs = {"cmap": "magma", "vmin": float(values.min()), "vmax": float(values.max())}
        for col in range(count):
            shown = axes[r, col].imshow(values[col], **kwargs)
        axes[r, 0].set_ylabel(title, fontsize=8)
        fig.colorbar(shown, ax=axes[r, :].tolist(), fraction=0.02, pad=0.01)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a PNG (creating folders) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def colormap_grid(maps: torch.Tensor, cmap: str = "magma", symmetric: bool = False, nrow: int = 8) -> torch.Tensor:
    """Colour-map a batch of maps into one RGB image grid ``(3, H', W')`` in [0, 1] for TensorBoard.

    Args:
        maps: ``(N, C, H, W)`` maps (channels averaged).
        cmap: Matplotlib colour map name.
        symmetric: Scale to ``[-m, m]`` with ``m = max |value|`` (Explorer maps) instead of ``[min, max]``.
        nrow: Images per grid row.

    Returns:
        The grid as a float tensor.
    """
    from torchvision.utils import make_grid

    values = maps.detach().float().cpu().mean(dim=1)
    if symmetric:
        bound = values.abs().max().clamp_min(1e-12)
        scaled = (values / bound + 1) / 2
    else:
        low, high = values.min(), values.max()
        scaled = (values - low) / (high - low).clamp_min(1e-12)
    rgb = torch.from_numpy(plt.get_cmap(cmap)(scaled.numpy())[..., :3]).permute(0, 3, 1, 2).float()
    return make_grid(rgb, nrow=nrow, padding=1, pad_value=1.0)
