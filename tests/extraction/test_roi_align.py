"""RoIAlign against a by-hand bilinear computation (torchvision's documented sampling rule, written in numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from imagebert.extraction.roi_align import roi_align, roi_align_mean


def _bilinear(fm: np.ndarray, y: float, x: float) -> np.ndarray:
    """One bilinear sample of fm [C, H, W] at (y, x), torchvision's border rule."""
    _, h, w = fm.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(fm.shape[0])
    y = max(y, 0.0)
    x = max(x, 0.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * fm[:, y0, x0]
        + (1 - ly) * lx * fm[:, y0, x1]
        + ly * (1 - lx) * fm[:, y1, x0]
        + ly * lx * fm[:, y1, x1]
    )


def _reference(fm, box, out, scale, sr, aligned):
    off = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (v * scale - off for v in box)
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = max(rw, 1.0), max(rh, 1.0)
    bw, bh = rw / out, rh / out
    res = np.zeros((fm.shape[0], out, out))
    for i in range(out):
        for j in range(out):
            acc = np.zeros(fm.shape[0])
            for iy in range(sr):
                for ix in range(sr):
                    yy = y1 + i * bh + (iy + 0.5) * bh / sr
                    xx = x1 + j * bw + (ix + 0.5) * bw / sr
                    acc += _bilinear(fm, yy, xx)
            res[:, i, j] = acc / (sr * sr)
    return res


BOXES = [
    [0.0, 0.0, 40.0, 30.0],  # whole map at scale 1/8 (5 x 4 cells)
    [3.3, 7.1, 17.9, 22.4],  # fractional interior box
    [-10.0, -6.0, 12.0, 9.0],  # hangs off the top-left: clamped border and zero samples
    [30.0, 20.0, 52.0, 41.0],  # hangs off the bottom-right
    [12.0, 12.0, 12.5, 12.2],  # nearly degenerate
]


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sr", [1, 2, 3])
def test_roi_align_matches_hand_computation(aligned: bool, sr: int) -> None:
    rng = np.random.default_rng(0)
    fm = rng.normal(size=(2, 3, 4, 5))  # B=2, C=3, H=4, W=5 (non-square on purpose)
    boxes = torch.tensor(BOXES, dtype=torch.float64)
    rois = torch.cat([torch.tensor([[0.0], [1.0], [0.0], [1.0], [1.0]], dtype=torch.float64), boxes], dim=1)
    got = roi_align(torch.from_numpy(fm), rois, 3, spatial_scale=1 / 8, sampling_ratio=sr, aligned=aligned)
    for k, row in enumerate(rois.tolist()):
        ref = _reference(fm[int(row[0])], row[1:], 3, 1 / 8, sr, aligned)
        np.testing.assert_allclose(got[k].numpy(), ref, atol=1e-12)
    mean = roi_align_mean(
        torch.from_numpy(fm), rois, 3, spatial_scale=1 / 8, sampling_ratio=sr, aligned=aligned
    )
    np.testing.assert_allclose(mean.numpy(), got.mean(dim=(2, 3)).numpy(), atol=1e-12)


def test_box_list_input_and_empty() -> None:
    fm = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    a = roi_align(fm, [torch.tensor([[0.0, 0, 6, 6]]), torch.tensor([[1.0, 1, 4, 5], [0, 0, 2, 2]])], 2)
    b = roi_align(fm, torch.tensor([[0, 0.0, 0, 6, 6], [1, 1, 1, 4, 5], [1, 0, 0, 2, 2]]), 2)
    assert a.shape == (3, 4, 2, 2)
    torch.testing.assert_close(a, b)
    assert roi_align(fm, torch.zeros(0, 5, dtype=torch.float64), 2).shape == (0, 4, 2, 2)
    assert roi_align_mean(fm, [torch.zeros(0, 4)], 2).shape == (0, 4)
    with pytest.raises(ValueError):
        roi_align(fm, torch.zeros(1, 4), 2)
    with pytest.raises(ValueError):
        roi_align(fm, torch.zeros(1, 5), 2, sampling_ratio=0)


def test_uniform_map_whole_image_box() -> None:
    fm = torch.full((1, 7, 16, 16), 2.5)
    box = torch.tensor([[0.0, 0.0, 0.0, 512.0, 512.0]])
    torch.testing.assert_close(roi_align(fm, box, 7, 1 / 32), torch.full((1, 7, 7, 7), 2.5))
    torch.testing.assert_close(roi_align_mean(fm, box, 4, 1 / 32), torch.full((1, 7), 2.5))


def test_gradients_flow_to_features() -> None:
    fm = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0.0, 0.5, 0.5, 3.7, 4.2]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_align(f, rois, 2, 1.0, 2), (fm,))
    assert torch.autograd.gradcheck(lambda f: roi_align_mean(f, rois, 2, 1.0, 2), (fm,))
    # The gradient of the mean-pooled value spreads the bilinear weights, which sum to 1 for an interior box.
    roi_align_mean(fm, rois, 2, 1.0, 2)[0, 0].backward()
    assert fm.grad is not None
    assert fm.grad[0, 0].sum().item() == pytest.approx(1.0)
    assert fm.grad[0, 1].abs().sum().item() == 0.0
