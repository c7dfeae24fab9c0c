import pytest
import torch

from bounds.windows import window_columns

CASES = [((3, 3), (1, 1), (1, 1), (5, 6)), ((2, 3), (2, 1), (0, 2), (3, 4)), ((4, 4), (3, 2), (2, 0), (4, 2)),
         ((5, 5), (1, 1), (0, 0), (2, 3))]  # (kernel, stride, padding, count): padded, cropped, both


@pytest.mark.parametrize("kernel,stride,padding,count", CASES)
def test_window_columns_hold_each_windows_entries_and_zero_outside_the_map(kernel, stride, padding, count) -> None:
    values = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    columns = window_columns(values, kernel, stride, padding, count)
    assert columns.shape == (2, 3 * kernel[0] * kernel[1], count[0] * count[1])
    windows = columns.view(2, 3, kernel[0], kernel[1], count[0], count[1])
    for i in range(count[0]):
        for j in range(count[1]):
            for a in range(kernel[0]):
                for b in range(kernel[1]):
                    row, col = i * stride[0] - padding[0] + a, j * stride[1] - padding[1] + b
                    inside = 0 <= row < 6 and 0 <= col < 7
                    expected = values[:, :, row, col] if inside else torch.zeros(2, 3, dtype=torch.float64)
                    assert torch.equal(windows[:, :, a, b, i, j], expected)
