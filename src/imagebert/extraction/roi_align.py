"""RoIAlign in plain torch, so region features need no torchvision (whose compiled ops break beside CPU torch).

Two entry points with the same sampling rule (Mask R-CNN's RoIAlign with torchvision's `aligned` semantics):

- `roi_align` returns the pooled bins `[K, C, out_h, out_w]`, computed with `grid_sample`.
- `roi_align_mean` returns the mean over all bins `[K, C]`, which is what a region feature is. Bilinear
  sampling on a Cartesian grid of points is separable, so the mean over the grid is one row weight vector times
  one column weight vector; this turns pooling into a single small matmul per image (no per-sample tensor).

Sampling rule (as torchvision): a box (x1, y1, x2, y2) in image pixels is scaled by `spatial_scale`; with
`aligned=True` it is shifted by -0.5 so that pixel centres sit on integer coordinates. Each of the
`out_h x out_w` bins averages `sampling_ratio x sampling_ratio` regularly spaced bilinear samples. A sample
further than one cell outside the map contributes 0; a sample within one cell outside is clamped to the border.
`sampling_ratio` must be a positive integer here (torchvision's adaptive `<= 0` varies the count per box).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["roi_align", "roi_align_mean", "rois_from_boxes"]


def rois_from_boxes(boxes: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Turn a `[K, 5]` tensor (batch index, x1, y1, x2, y2) or a list of per-image `[n_i, 4]` boxes into `[K, 5]`."""
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"rois must be [K, 5] (batch index, x1, y1, x2, y2), got {tuple(boxes.shape)}")
        return boxes
    parts = []
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes of image {i} must be [n, 4], got {tuple(b.shape)}")
        parts.append(torch.cat([torch.full_like(b[:, :1], float(i)), b], dim=1))
    if not parts:
        return torch.zeros(0, 5)
    return torch.cat(parts, dim=0)


def _sample_coords(
    rois: torch.Tensor, out_h: int, out_w: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample coordinates in feature-map pixel units: ys `[K, out_h*sr]`, xs `[K, out_w*sr]`."""
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    x2 = rois[:, 3] * spatial_scale - offset
    y2 = rois[:, 4] * spatial_scale - offset
    roi_w = x2 - x1
    roi_h = y2 - y1
    if not aligned:  # legacy behaviour: boxes are at least one cell wide
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    ty = (torch.arange(out_h * sampling_ratio, device=rois.device, dtype=rois.dtype) + 0.5) / (
        out_h * sampling_ratio
    )
    tx = (torch.arange(out_w * sampling_ratio, device=rois.device, dtype=rois.dtype) + 0.5) / (
        out_w * sampling_ratio
    )
    ys = y1[:, None] + ty[None, :] * roi_h[:, None]
    xs = x1[:, None] + tx[None, :] * roi_w[:, None]
    return ys, xs


def _check(
    features: torch.Tensor, output_size: int | tuple[int, int], sampling_ratio: int
) -> tuple[int, int]:
    if features.dim() != 4:
        raise ValueError(f"features must be [B, C, H, W], got {tuple(features.shape)}")
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    if output_size[0] < 1 or output_size[1] < 1:
        raise ValueError(f"output_size must be positive, got {output_size}")
    if int(sampling_ratio) < 1:
        raise ValueError(f"sampling_ratio must be a positive integer, got {sampling_ratio}")
    return int(output_size[0]), int(output_size[1])


def roi_align(
    features: torch.Tensor,
    boxes: torch.Tensor | Sequence[torch.Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> torch.Tensor:
    """RoIAlign of `boxes` on `features [B, C, H, W]` -> `[K, C, out_h, out_w]` (differentiable, any device)."""
    out_h, out_w = _check(features, output_size, sampling_ratio)
    rois = rois_from_boxes(boxes).to(device=features.device, dtype=features.dtype)
    _, c, h, w = features.shape
    k = rois.shape[0]
    out = features.new_zeros(k, c, out_h, out_w)
    if k == 0:
        return out
    sr = int(sampling_ratio)
    ys, xs = _sample_coords(rois, out_h, out_w, spatial_scale, sr, aligned)
    # Beyond one cell outside the map a sample is 0; within it, `padding_mode="border"` clamps like torchvision.
    valid = ((ys >= -1.0) & (ys <= h))[:, :, None] & ((xs >= -1.0) & (xs <= w))[:, None, :]  # [K, ph, pw]
    gy = 2.0 * ys / max(h - 1, 1) - 1.0
    gx = 2.0 * xs / max(w - 1, 1) - 1.0
    ph, pw = ys.shape[1], xs.shape[1]
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # [K, ph, pw, 2]
    batch_idx = rois[:, 0].long()
    for b in torch.unique(batch_idx).tolist():
        sel = (batch_idx == b).nonzero(as_tuple=True)[0]
        g = grid[sel].reshape(1, sel.numel() * ph, pw, 2)
        s = F.grid_sample(features[b : b + 1], g, mode="bilinear", padding_mode="border", align_corners=True)
        s = s.reshape(c, sel.numel(), ph, pw).permute(1, 0, 2, 3) * valid[sel][:, None].to(s.dtype)
        s = s.reshape(sel.numel(), c, out_h, sr, out_w, sr).mean(dim=(3, 5))
        out = out.index_copy(0, sel, s)
    return out


def _axis_weights(coords: torch.Tensor, size: int) -> torch.Tensor:
    """Mean bilinear weight of each map row (or column) over a box's samples: `[K, n] -> [K, size]`."""
    valid = ((coords >= -1.0) & (coords <= size)).to(coords.dtype)
    c = coords.clamp(0.0, size - 1)
    grid = torch.arange(size, device=coords.device, dtype=coords.dtype)
    tent = (1.0 - (c[:, :, None] - grid[None, None, :]).abs()).clamp(min=0.0)  # bilinear weights per sample
    return (tent * valid[:, :, None]).mean(dim=1)


def roi_align_mean(
    features: torch.Tensor,
    boxes: torch.Tensor | Sequence[torch.Tensor],
    output_size: int | tuple[int, int] = 4,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> torch.Tensor:
    """Mean of `roi_align(...)` over its bins, `[K, C]`, computed as one weighted sum per box (fast, exact)."""
    out_h, out_w = _check(features, output_size, sampling_ratio)
    rois = rois_from_boxes(boxes).to(device=features.device, dtype=features.dtype)
    _, c, h, w = features.shape
    k = rois.shape[0]
    if k == 0:
        return features.new_zeros(0, c)
    ys, xs = _sample_coords(rois, out_h, out_w, spatial_scale, int(sampling_ratio), aligned)
    wy = _axis_weights(ys, h)  # [K, H]
    wx = _axis_weights(xs, w)  # [K, W]
    weights = (wy[:, :, None] * wx[:, None, :]).reshape(k, h * w)
    batch_idx = rois[:, 0].long()
    out = features.new_zeros(k, c)
    for b in torch.unique(batch_idx).tolist():
        sel = (batch_idx == b).nonzero(as_tuple=True)[0]
        out = out.index_copy(0, sel, weights[sel] @ features[b].reshape(c, h * w).transpose(0, 1))
    return out
