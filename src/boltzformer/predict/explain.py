"""What the decoder looked at: per-layer Boltzmann distributions and sampled tokens over the image.

For one image and prompt, as the :class:`~boltzformer.predict.engine.Predictor` encoded it (its cached
features are reused, not encoded again), each decoder layer's sampling distribution (summed over queries and
heads) and the tokens it attended to (how many query-head pairs drew each token), at the layer's
own resolution, with the layer's temperature. :func:`save_sampling_grid` draws them as a PNG grid
(one row per layer: distribution | sampled tokens, over the image), in the spirit of the paper's
figure 4; :func:`sampling_maps` returns the raw arrays for further analysis (saved as ``.npz`` by
the CLI).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from boltzformer.io.transforms import from_model_output, image_to_tensor, to_model_input
from boltzformer.predict.engine import Predictor
from boltzformer.predict.visualize import heat_colors

__all__ = ["SamplingMaps", "sampling_maps", "save_sampling_grid"]


@dataclass
class SamplingMaps:
    """``distributions[l]``, ``sampled[l]``: (h_l, w_l) float arrays on the model's square input
    grid (distribution summed over queries and heads; sampled = number of query-head pairs that
    attended each token); ``temperatures[l]``; ``probability``: (H, W) the final mask probability on
    the image's own grid."""

    distributions: list[np.ndarray]
    sampled: list[np.ndarray]
    temperatures: list[float]
    probability: np.ndarray

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        out = {"probability": self.probability, "temperatures": np.array(self.temperatures)}
        for i, (d, s) in enumerate(zip(self.distributions, self.sampled)):
            out[f"layer{i}_distribution"] = d
            out[f"layer{i}_sampled"] = s
        return out


@torch.inference_mode()
def sampling_maps(predictor: Predictor, image: np.ndarray | None, prompt: str) -> SamplingMaps:
    """Run one prediction (the predictor's seed) and collect every layer's sampling distribution and
    attended tokens. ``image=None`` reuses the image the predictor encoded last (:meth:`Predictor.set_image`)."""
    if image is not None:
        predictor.set_image(image)
    out, geom = predictor.model_output(prompt, return_sampling=True)
    model = predictor.model
    dists, sampled, temps = [], [], []
    for layer in out.sampling:
        h, w = layer.size
        if layer.probs is not None:
            dists.append(layer.probs[0].sum(dim=(0, 1)).reshape(h, w).float().cpu().numpy())
        else:  # not a Boltzmann layer (full / masked / uniform attention)
            dists.append(np.zeros((h, w), np.float32))
        if layer.keep is not None:
            sampled.append(layer.keep[0].sum(dim=(0, 1)).reshape(h, w).float().cpu().numpy())
        else:  # dense attention: every token by every query and head
            sampled.append(np.full((h, w), float(out.query_logits.shape[1] * model.decoder.num_heads), np.float32))
        temps.append(float(layer.temperature) if layer.temperature is not None else float("nan"))
    prob = from_model_output(out.logits[0, 0].float(), geom).sigmoid().cpu().numpy()
    return SamplingMaps(distributions=dists, sampled=sampled, temperatures=temps, probability=prob)


def _heat(values: np.ndarray, size: int) -> np.ndarray:
    """Values (h, w), min-max scaled -> the heat map (:func:`~boltzformer.predict.visualize.heat_colors`)
    as (size, size, 3) float32, nearest upsampling."""
    v = values.astype(np.float64)
    v = (v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else np.zeros_like(v)
    img = Image.fromarray(heat_colors(v).astype(np.uint8)).resize((size, size), Image.NEAREST)
    return np.asarray(img, dtype=np.float32)


def save_sampling_grid(maps: SamplingMaps, image: np.ndarray, path, *, tile: int = 192) -> Image.Image:
    """A PNG grid, one row per layer: [distribution | sampled tokens], blended over the image."""
    tensor, _ = to_model_input(image_to_tensor(image), tile)
    base = tensor.permute(1, 2, 0).numpy()
    rows = len(maps.distributions)
    grid = Image.new("RGB", (2 * tile, rows * (tile + 14)), (0, 0, 0))
    draw = ImageDraw.Draw(grid)
    for i, (d, s, t) in enumerate(zip(maps.distributions, maps.sampled, maps.temperatures)):
        y = i * (tile + 14)
        h, w = d.shape
        draw.text((2, y), f"layer {i}  tau={t:.3f}  {h}x{w} tokens", fill=(255, 255, 255))
        for j, values in enumerate((d, s)):
            blend = 0.45 * base + 0.55 * _heat(values, tile)
            grid.paste(Image.fromarray(blend.clip(0, 255).astype(np.uint8)), (j * tile, y + 14))
    grid.save(path, format="PNG")
    return grid
