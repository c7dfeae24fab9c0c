"""Cutting a feature map into the windows of a strided kernel, zero outside the map (``F.unfold`` on a padded map).

Windowed CROWN (:mod:`bounds.crown_patches`) and the first block's closed form (:mod:`bounds.crown_first_block`)
both need the entries of a map under a grid of ``n_h x n_w`` windows of size ``k_h x k_w``, window ``(i, j)``
starting at row ``i s_h - p_h`` and column ``j s_w - p_w`` of the map; entries outside the map are zero (they stand
for the zero padding of a convolution).
"""

import torch.nn.functional as F  # noqa: N812
from torch import Tensor


def window_columns(values: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                   count: tuple[int, int]) -> Tensor:
    """The entries of ``values`` under every window, as ``F.unfold`` columns.

    Args:
        values: A map ``(B, C, H, W)``.
        kernel: Window size ``(k_h, k_w)``.
        stride: Step between windows ``(s_h, s_w)``.
        padding: Rows and columns of zeros before the map ``(p_h, p_w)`` (window ``(0, 0)`` starts at ``-p``).
        count: Windows per axis ``(n_h, n_w)``: the map is padded (zeros) or cropped at the far end so that exactly
            these fit.

    Returns:
        ``(B, C k_h k_w, n_h n_w)``: column ``i n_w + j`` holds window ``(i, j)``, channel-major, as ``F.unfold``.
    """
    (kh, kw), (sh, sw), (ph, pw), (nh, nw) = kernel, stride, padding, count
    height, width = values.shape[-2:]
    bottom = max(0, (nh - 1) * sh + kh - ph - height)
    right = max(0, (nw - 1) * sw + kw - pw - width)
    padded = F.pad(values, (pw, right, ph, bottom))
    # Crop what no window reaches, so that unfold yields exactly n_h x n_w windows.
    padded = padded[..., :(nh - 1) * sh + kh, :(nw - 1) * sw + kw]
    return F.unfold(padded, (kh, kw), stride=(sh, sw))
