"""CNN backbones that turn a batch of images into a feature map for RoIAlign.

The built-in backbone is the ImageNet-1k EfficientNet-Lite0 (`imagebert.runtime.backbone`, the one loader and
preprocessing rule shared with LAIT): the output of its last 1x1 conv head, 1280 channels at stride 32, on
`(pixel - 127) / 128` of 0..255 RGB, the rule the weights were trained with.

A backbone is any `nn.Module` with `name`, `feature_dim`, `stride`, `pixel_mean` / `pixel_std` (0..255 units,
used for letterbox padding) and `forward(images [B, 3, H, W] float 0..255) -> [B, feature_dim, H/stride, W/stride]`.
Register more with `register_backbone`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from imagebert.config_utils import ConfigError
from imagebert.runtime.backbone import EfficientNetLite0Backbone

__all__ = ["BACKBONES", "EfficientNetLite0Backbone", "load_backbone", "register_backbone"]


BACKBONES: dict[str, Callable[..., nn.Module]] = {"efficientnet-lite0": EfficientNetLite0Backbone}


def register_backbone(name: str, factory: Callable[..., nn.Module]) -> None:
    """Make `factory(weights_path=None)` available as `--backbone name`."""
    BACKBONES[name] = factory


def load_backbone(
    name: str = "efficientnet-lite0", device: str | torch.device = "cpu", weights_path=None
) -> nn.Module:
    """Build a registered backbone on `device`, frozen and in eval mode."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
    model = BACKBONES[name](weights_path=weights_path)
    return model.to(device).eval()
