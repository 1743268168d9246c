"""A small hierarchical ConvNeXt-style network with outputs at strides 4, 8, 16 and 32.

The ``tiny`` preset's image encoder: fast enough to train on a laptop CPU in minutes. The
paper-size SAM2 Hiera and FocalNet encoders are separate modules with the official layouts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TinyBackbone"]


class _LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: Tensor) -> Tensor:
        # B x C x H x W -> B x H x W x C -> normalise -> back
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _Block(nn.Module):
    """ConvNeXt block: depthwise 7x7, LayerNorm, pointwise MLP (x4), scaled residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # B x C x H x W -> B x H x W x C
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class TinyBackbone(nn.Module):
    """Four stages at strides 4, 8, 16, 32.

    Args:
        channels: channels of the four stages.
        depths: blocks per stage.
    """

    def __init__(self, *, channels: tuple[int, ...] = (32, 64, 128, 192), depths: tuple[int, ...] = (1, 1, 2, 1)) -> None:
        super().__init__()
        if len(channels) != 4 or len(depths) != 4:
            raise ValueError(f"channels and depths need 4 entries each, got {channels} and {depths}")
        self.out_channels = tuple(channels)
        self.stem = nn.Sequential(nn.Conv2d(3, channels[0], kernel_size=4, stride=4), _LayerNorm2d(channels[0]))
        self.downsample = nn.ModuleList(
            nn.Sequential(_LayerNorm2d(channels[i]), nn.Conv2d(channels[i], channels[i + 1], kernel_size=2, stride=2))
            for i in range(3)
        )
        self.stages = nn.ModuleList(nn.Sequential(*(_Block(c) for _ in range(d))) for c, d in zip(channels, depths))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {}
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downsample[i - 1](x)
            x = stage(x)
            out[f"res{i + 2}"] = x
        return out
