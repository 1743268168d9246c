"""Overlays, example panels and the heat map (Pillow and numpy only)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["heat_colors", "overlay", "panel", "uncertainty_image"]

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


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H, W) (clipped) -> RGB (H, W, 3) in 0-255, black-red-yellow-white, in the
    values' float dtype: the one heat map (sampling maps, uncertainty)."""
    v = np.clip(values, 0, 1)[..., None]
    return np.concatenate([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], -1) * 255


def uncertainty_image(image: np.ndarray, std: np.ndarray) -> Image.Image:
    """The standard deviation of K passes as a heat map (0 black -> 0.5 white) over the dimmed image."""
    grey = image.astype(np.float32) if image.ndim == 2 else image[..., :3].astype(np.float32).mean(-1)
    out = 0.35 * grey[..., None] + 0.65 * heat_colors(std / 0.5)
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))
