"""Overlays and example panels (Pillow and numpy only)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["overlay", "panel"]

RED = (255, 40, 40)
GREEN = (40, 220, 40)


def _rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    img = img[..., :3].astype(np.float32)
    if img.max() > 255 or img.min() < 0:
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6) * 255
    return img


def _edge(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(bool)
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


def overlay(image: np.ndarray, mask: np.ndarray, *, color=RED, alpha: float = 0.4, label: str | None = None) -> Image.Image:
    """The image with the mask tinted in ``color`` and outlined; optional caption."""
    img = _rgb(image)
    m = mask.astype(bool)
    c = np.array(color, dtype=np.float32)
    img[m] = (1 - alpha) * img[m] + alpha * c
    img[_edge(m)] = c
    out = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    if label:
        draw = ImageDraw.Draw(out)
        draw.rectangle((0, 0, out.width, 12), fill=(0, 0, 0))
        draw.text((2, 0), label[:80], fill=(255, 255, 255))
    return out


def panel(image: np.ndarray, target: np.ndarray, pred: np.ndarray, caption: str) -> Image.Image:
    """[image | truth (green) | prediction (red)] side by side, with a caption above."""
    tiles = [
        overlay(image, np.zeros(image.shape[:2], bool)),
        overlay(image, target, color=GREEN),
        overlay(image, pred, color=RED),
    ]
    w, h = tiles[0].size
    out = Image.new("RGB", (3 * w, h + 14), (0, 0, 0))
    for i, t in enumerate(tiles):
        out.paste(t, (i * w, 14))
    ImageDraw.Draw(out).text((2, 1), caption[:120], fill=(255, 255, 255))
    return out
