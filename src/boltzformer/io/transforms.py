"""Geometry between an input image and the model's square input, both ways.

Images are padded with zeros to a square (at the bottom and right, or, with ``center=True``, equally on
both sides as BiomedParse v2's ``pad_and_resize``: ``ModelConfig.pad``), then resized to the model's
side; predictions go back the same way, so a mask has exactly the input's size and alignment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Geometry", "to_model_input", "resize_mask_to_input", "from_model_output", "image_to_tensor", "pads_center"]


@dataclass(frozen=True)
class Geometry:
    """``height`` x ``width`` of the original image, padded to ``side`` (``top`` rows above it and
    ``left`` columns before it; 0 when padded at the bottom and right) then resized to ``size``."""

    height: int
    width: int
    size: int
    top: int = 0
    left: int = 0

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


def pads_center(model) -> bool:
    """Whether ``model`` (its ``config.pad``) takes inputs padded equally on both sides."""
    return getattr(getattr(model, "config", None), "pad", "corner") == "center"


def to_model_input(image: Tensor, size: int, *, center: bool = False) -> tuple[Tensor, Geometry]:
    """image (3, H, W) 0-255 -> (3, size, size) and the :class:`Geometry` to map back.

    ``center``: pad equally on both sides (the odd pixel after), else at the bottom and right."""
    _, H, W = image.shape
    side = max(H, W)
    geom = Geometry(H, W, size, (side - H) // 2 if center else 0, (side - W) // 2 if center else 0)
    padded = F.pad(image, (geom.left, side - W - geom.left, geom.top, side - H - geom.top))
    if side != size:
        padded = F.interpolate(padded[None], size=(size, size), mode="bilinear", align_corners=False, antialias=side > size)[0]
    return padded, geom


def resize_mask_to_input(mask: Tensor, geom: Geometry) -> Tensor:
    """A binary mask (1, H, W) -> soft mask (1, size, size): the covered fraction of each pixel.

    Area interpolation keeps tiny targets (a few pixels) as partial values instead of losing them.
    """
    side = geom.side
    padded = F.pad(mask, (geom.left, side - geom.width - geom.left, geom.top, side - geom.height - geom.top))
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
    x = x[..., geom.top : geom.top + geom.height, geom.left : geom.left + geom.width]
    return x.reshape(*lead, geom.height, geom.width)
