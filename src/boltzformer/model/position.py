"""Sine position encoding of a 2-D feature map (DETR / Mask2Former form, normalised)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["sine_position_encoding", "sine_position_parts"]


def sine_position_parts(
    height: int,
    width: int,
    num_pos_feats: int,
    *,
    temperature: float = 10000.0,
    device: torch.device | None = None,
) -> tuple[Tensor, Tensor]:
    """The two halves of :func:`sine_position_encoding` before broadcasting: (H, F) for y and
    (W, F) for x, float32. Channel c < F of the encoding at (i, j) is ``pos_y[i, c]``, channel
    F + c is ``pos_x[j, c]``."""
    scale = 2 * math.pi
    eps = 1e-6
    # positions 1..H and 1..W, normalised to (0, 2*pi]
    y = torch.arange(1, height + 1, device=device, dtype=torch.float32)
    x = torch.arange(1, width + 1, device=device, dtype=torch.float32)
    y = y / (height + eps) * scale
    x = x / (width + eps) * scale
    dim_t = torch.arange(num_pos_feats, device=device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos_y = y[:, None] / dim_t  # H x F
    pos_x = x[:, None] / dim_t  # W x F
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
    return pos_y, pos_x


def sine_position_encoding(
    height: int,
    width: int,
    num_pos_feats: int,
    *,
    temperature: float = 10000.0,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Normalised sine/cosine encoding of an H x W grid.

    Returns:
        (1, 2 * num_pos_feats, H, W): the first half encodes y, the second x; within each half,
        even channels are sines and odd channels cosines.
    """
    pos_y, pos_x = sine_position_parts(height, width, num_pos_feats, temperature=temperature, device=device)
    # H x F and W x F -> H x W x 2F -> 1 x 2F x H x W
    pos = torch.cat(
        (pos_y[:, None, :].expand(height, width, -1), pos_x[None, :, :].expand(height, width, -1)),
        dim=-1,
    )
    return pos.permute(2, 0, 1).unsqueeze(0).to(dtype)
