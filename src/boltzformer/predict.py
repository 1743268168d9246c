"""Inference: numpy image + prompt in, numpy mask out, on the input's own pixel grid.

:class:`Predictor` is separate from the ``nn.Module``: it pre-processes (pad to square, resize),
caches the image features so that several prompts on one image encode it once, seeds the sampled
attention (the same seed gives the same mask) and maps the prediction back to the input's size.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from boltzformer.model import BoltzFormer, ImageFeatures
from boltzformer.model.text import check_prompts
from boltzformer.transforms import Geometry, from_model_output, image_to_tensor, to_model_input

__all__ = ["Predictor", "predict_probabilities"]


@torch.inference_mode()
def predict_probabilities(
    model: BoltzFormer,
    images: Sequence[Tensor],
    prompts: Sequence[str],
    *,
    image_size: int,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """Probability maps (H_i, W_i) for a batch of images (3, H_i, W_i) 0-255 of any sizes."""
    inputs, geoms = zip(*(to_model_input(img, image_size) for img in images))
    batch = torch.stack(inputs).to(model.device)
    logits = model(batch, list(prompts), generator=generator).logits.float()
    return [from_model_output(lg[0], g).sigmoid().cpu() for lg, g in zip(logits, geoms)]


class Predictor:
    """Segments what a prompt names in an image.

    Args:
        model: a trained :class:`~boltzformer.model.BoltzFormer` (see ``load_checkpoint``).
        image_size: the model's input side; default: the size it was trained at.
        threshold: probability above which a pixel is in the mask.
        seed: seed of the sampled attention; the same seed gives the same mask.
        bf16: run the model under bf16 autocast (less memory and, on CPUs with AVX-512 BF16 or GPUs,
            less time; probabilities differ from float32 by about 1e-2).

    Example:
        >>> predictor = Predictor(boltzformer.load_checkpoint("run/last.ckpt"))
        >>> mask = predictor.predict(image, "lung nodule in CT scan")  # (H, W) bool
    """

    def __init__(
        self, model: BoltzFormer, *, image_size: int | None = None, threshold: float = 0.5, seed: int = 0, bf16: bool = False
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if image_size is None:
            image_size = model.config.image_size if model.config is not None else 256
        if image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {image_size}")
        self.model = model.eval()
        self.image_size = image_size
        self.threshold = threshold
        self.seed = seed
        self.bf16 = bf16
        self._features: ImageFeatures | None = None
        self._geometry: Geometry | None = None

    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self.model.device).manual_seed(self.seed)

    def _autocast(self):
        return torch.autocast(device_type=self.model.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    @torch.inference_mode()
    def set_image(self, image: np.ndarray) -> None:
        """Encode an image (H, W) or (H, W, 3); 8-bit values are used as they are."""
        tensor, geom = to_model_input(image_to_tensor(image), self.image_size)
        with self._autocast():
            self._features = self.model.encode_image(tensor[None].to(self.model.device))
        self._geometry = geom

    @torch.inference_mode()
    def predict_proba(self, image: np.ndarray | None, prompt: str) -> np.ndarray:
        """Probability map (H, W) float32 of the target ``prompt`` names in ``image`` (None: the
        image given to :meth:`set_image` last, encoded once for any number of prompts)."""
        if image is not None:
            self.set_image(image)
        if self._features is None or self._geometry is None:
            raise RuntimeError("no image: call set_image(image) first or pass image=...")
        check_prompts([prompt], name="prompt")
        with self._autocast():
            out = self.model.decode(self._features, [prompt], generator=self._generator())
        prob = from_model_output(out.logits[0, 0].float(), self._geometry).sigmoid()
        return prob.cpu().numpy()

    @torch.inference_mode()
    def predict_samples(self, image: np.ndarray | None, prompt: str, samples: int) -> dict[str, np.ndarray | float]:
        """``samples`` stochastic passes with the sampling seeds ``seed, seed + 1, ...`` (the image is
        encoded once) turned into a confidence measure.

        Returns:
            ``"mean"``: (H, W) mean probability; ``"std"``: (H, W) its pixel-wise standard deviation;
            ``"mask"``: (H, W) bool, mean > threshold; ``"agreement"``: mean pairwise Dice of the
            ``samples`` thresholded masks (1.0: every pass agrees; two empty masks agree).
        """
        if samples < 2:
            raise ValueError(f"samples must be >= 2 to measure agreement, got {samples}")
        if image is not None:
            self.set_image(image)
        if self._features is None or self._geometry is None:
            raise RuntimeError("no image: call set_image(image) first or pass image=...")
        check_prompts([prompt], name="prompt")
        probs = []
        for k in range(samples):
            generator = torch.Generator(device=self.model.device).manual_seed(self.seed + k)
            with self._autocast():
                out = self.model.decode(self._features, [prompt], generator=generator)
            probs.append(from_model_output(out.logits[0, 0].float(), self._geometry).sigmoid())
        stack = torch.stack(probs)  # K x H x W
        masks = (stack > self.threshold).flatten(1).float()  # K x HW
        inter = masks @ masks.T
        sizes = masks.sum(1)
        denom = sizes[:, None] + sizes[None, :]
        dice = torch.where(denom > 0, 2 * inter / denom.clamp(min=1), torch.ones_like(denom))
        pairs = ~torch.eye(samples, dtype=torch.bool)
        mean = stack.mean(0)
        return {
            "mean": mean.cpu().numpy(),
            "std": stack.std(0, unbiased=False).cpu().numpy(),
            "mask": (mean > self.threshold).cpu().numpy(),
            "agreement": float(dice[pairs].mean()),
        }

    def predict(self, image: np.ndarray | None, prompt: str) -> np.ndarray:
        """Binary mask (H, W) bool of the target ``prompt`` names; ``image=None`` reuses the last one."""
        return self.predict_proba(image, prompt) > self.threshold
