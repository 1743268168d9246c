"""Geometry between an input image and the model's square input, both ways.

Images are padded (bottom and right, with zeros) to a square, then resized to the model's side;
predictions go back the same way, so a mask has exactly the input's size and alignment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Geometry", "to_model_input", "resize_mask_to_input", "from_model_output", "image_to_tensor"]


@dataclass(frozen=True)
class Geometry:
    """``height`` x ``width`` of the original image, padded to ``side`` then resized to ``size``."""

    height: int
    width: int
    size: int

    @property
    def side(self) -> int:
        return max(self.height, self.width)


def image_to_tensor(image: np.ndarray, *, name: str = "image") -> Tensor:
    """A numpy image (H, W) or (H, W, 1|3|4), any numeric dtype, -> float (3, H, W) values 0-255.

    8-bit images are used as they are; other ranges are scaled linearly from their min-max to 0-255
    (medical windowing is the I/O layer's job).
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
        image = image[..., :3] if image.shape[-1] != 1 else image[..., 0]
    if image.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (H, W) or (H, W, 3), got {image.shape}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"{name} is empty: shape {image.shape}")
    if image.dtype == np.uint8:
        arr = image.astype(np.float32)
    else:
        arr = image.astype(np.float32)
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 255 or (image.dtype.kind == "f" and hi <= 1.0):
            arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dim() == 2:
        t = t[None].expand(3, -1, -1)
    else:
        t = t.permute(2, 0, 1)
    return t.contiguous()


def to_model_input(image: Tensor, size: int) -> tuple[Tensor, Geometry]:
    """image (3, H, W) 0-255 -> (3, size, size) and the :class:`Geometry` to map back."""
    _, H, W = image.shape
    geom = Geometry(H, W, size)
    side = geom.side
    padded = F.pad(image, (0, side - W, 0, side - H))
    if side != size:
        padded = F.interpolate(padded[None], size=(size, size), mode="bilinear", align_corners=False, antialias=side > size)[0]
    return padded, geom


def resize_mask_to_input(mask: Tensor, geom: Geometry) -> Tensor:
    """A binary mask (1, H, W) -> soft mask (1, size, size): the covered fraction of each pixel.

    Area interpolation keeps tiny targets (a few pixels) as partial values instead of losing them.
    """
    side = geom.side
    padded = F.pad(mask, (0, side - geom.width, 0, side - geom.height))
    if side == geom.size:
        return padded
    mode = "area" if side > geom.size else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(padded[None], size=(geom.size, geom.size), mode=mode, **kwargs)[0].clamp(0, 1)


def from_model_output(logits: Tensor, geom: Geometry) -> Tensor:
    """Logits (..., h, w) on the model's square input -> (..., H, W) on the original image grid."""
    lead = logits.shape[:-2]
    x = logits.reshape(-1, 1, *logits.shape[-2:])
    x = F.interpolate(x, size=(geom.side, geom.side), mode="bilinear", align_corners=False)
    x = x[..., : geom.height, : geom.width]
    return x.reshape(*lead, geom.height, geom.width)
