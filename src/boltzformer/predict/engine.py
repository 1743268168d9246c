"""Inference: numpy image + prompt in, numpy mask out, on the input's own pixel grid.

:class:`Predictor` is separate from the ``nn.Module``: it pre-processes (pad to square, resize),
caches the image features so that several prompts on one image encode it once, seeds the sampled
attention (the same seed gives the same mask) and maps the prediction back to the input's size.

Native resolution (``window_overlap``): instead of resizing the whole image to the model's input, a
window of the input's size slides over the image at its own resolution (MONAI's
``sliding_window_inference``), and the windows' mask logits are blended with Gaussian weights
(:func:`window_passes`), so that a tiny target is seen at the scale of native-resolution training
(:class:`~boltzformer.data.patches.PatchDataset`). Every caller (Predictor, evaluation) goes through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from boltzformer.model import BoltzFormer, ImageFeatures
from boltzformer.model.text import check_prompts
from boltzformer.io.transforms import Geometry, from_model_output, image_to_tensor, pads_center, to_model_input

__all__ = ["Prediction", "Predictor", "predict_probabilities", "window_passes"]


@dataclass
class Prediction:
    """One prompt's result on one image, on the image's own pixel grid.

    ``probability``: (H, W) float32 mask probability (the mean of the passes when ``samples`` > 1);
    ``mask``: (H, W) bool, probability > threshold, and empty when the existence head says the target
    is absent; ``existence``: probability that the target is in the image (None without the head);
    ``std`` and ``agreement``: the spread of K sampling passes (None for one pass).
    """

    prompt: str
    probability: np.ndarray
    mask: np.ndarray
    existence: float | None = None
    std: np.ndarray | None = None
    agreement: float | None = None

    @property
    def present(self) -> bool:
        """The target is reported present: the existence head says so (or there is none) and the mask is not empty."""
        return bool(self.mask.any())


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
    inputs, geoms = zip(*(to_model_input(img, image_size, center=pads_center(model)) for img in images))
    batch = torch.stack(inputs).to(model.device)
    logits = model(batch, list(prompts), generator=generator).logits.float()
    return [from_model_output(lg[0], g).sigmoid().cpu() for lg, g in zip(logits, geoms)]


@torch.inference_mode()
def window_passes(
    model: BoltzFormer,
    image: Tensor,
    prompt: str,
    *,
    window: int,
    overlap: float,
    generators: Sequence[torch.Generator],
    sw_batch_size: int = 4,
) -> tuple[Tensor, Tensor | None]:
    """K sampled passes of a window of side ``window`` slid over one image (3, H, W) 0-255 at its own
    resolution, with Gaussian blending of the windows' mask logits (MONAI's ``sliding_window_inference``,
    ``mode="gaussian"``). Each window is encoded once and decoded once per generator.

    Returns:
        ``(probabilities, existence)``: (K, H, W) on the image's grid, on the CPU; and (K,) the highest
        probability over the windows that the target is there, or None without an existence head.
    """
    from monai.inferers import sliding_window_inference

    if window % 32:
        raise ValueError(f"window must be a multiple of 32, got {window}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    existence: list[Tensor] = []

    def predict(x: Tensor) -> Tensor:  # n windows (n, 3, w, w) -> (n, K, w/2, w/2) logits
        features = model.encode_image(x)
        outs = [model.decode(features, [prompt] * x.shape[0], generator=g) for g in generators]
        if outs[0].existence_logits is not None:
            existence.append(torch.stack([o.existence_logits.float() for o in outs], 1))  # n x K
        return torch.cat([o.logits.float() for o in outs], 1)

    _, H, W = image.shape
    logits = sliding_window_inference(image[None].float().to(model.device), window, sw_batch_size, predict,
                                      overlap=overlap, mode="gaussian")
    logits = torch.as_tensor(logits)  # MONAI may return a MetaTensor
    if logits.shape[-2:] != (H, W):
        logits = torch.nn.functional.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
    exist = torch.cat(existence).amax(0).sigmoid().cpu() if existence else None
    return logits[0].sigmoid().cpu(), exist


class Predictor:
    """Segments what a prompt names in an image.

    Args:
        model: a trained :class:`~boltzformer.model.BoltzFormer` (see ``load_checkpoint``).
        image_size: the model's input side; default: the size it was trained at.
        threshold: probability above which a pixel is in the mask.
        seed: seed of the sampled attention; the same seed gives the same mask.
        bf16: run the model under bf16 autocast (less memory and, on CPUs with AVX-512 BF16 or GPUs,
            less time; probabilities differ from float32 by about 1e-2).
        existence_threshold: with an existence head, masks are empty when the probability that the
            target is in the image is below this (BiomedParse v2 gates at 0.5).
        window_overlap: native resolution: slide a window of ``image_size`` over the image (not resized)
            with this overlap in [0, 1), blending with Gaussian weights (:func:`window_passes`); for
            models trained on native-resolution patches. None: pad and resize the whole image.

    Example:
        >>> predictor = Predictor(boltzformer.load_checkpoint("run/last.ckpt"))
        >>> mask = predictor.predict(image, "lung nodule in CT scan")  # (H, W) bool
    """

    def __init__(
        self,
        model: BoltzFormer,
        *,
        image_size: int | None = None,
        threshold: float = 0.5,
        seed: int = 0,
        bf16: bool = False,
        existence_threshold: float = 0.5,
        window_overlap: float | None = None,
    ) -> None:
        if window_overlap is not None and not 0.0 <= window_overlap < 1.0:
            raise ValueError(f"window_overlap must be in [0, 1) or None, got {window_overlap}")
        for name, value in (("threshold", threshold), ("existence_threshold", existence_threshold)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        if image_size is None:
            image_size = model.config.image_size if model.config is not None else 256
        if image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {image_size}")
        self.model = model.eval()
        self.image_size = image_size
        self.threshold = threshold
        self.existence_threshold = existence_threshold
        self.seed = seed
        self.bf16 = bf16
        self.window_overlap = window_overlap
        self._image: Tensor | None = None  # native-resolution mode: the image, (3, H, W) 0-255
        self._features: ImageFeatures | None = None
        self._geometry: Geometry | None = None

    def _generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator(device=self.model.device).manual_seed(self.seed + offset)

    def _autocast(self):
        return torch.autocast(device_type=self.model.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    @property
    def has_existence(self) -> bool:
        """Whether the model has an existence head (it then says if the target is in the image)."""
        return getattr(self.model.decoder, "existence", None) is not None

    @torch.inference_mode()
    def set_image(self, image: np.ndarray) -> None:
        """Encode an image (H, W) or (H, W, 3); 8-bit values are used as they are. In native-resolution
        mode (``window_overlap``) the image is kept and its windows are encoded when a prompt comes."""
        if self.window_overlap is not None:
            self._image = image_to_tensor(image)
            self._features, self._geometry = None, Geometry(*self._image.shape[-2:], self.image_size)
            return
        tensor, geom = to_model_input(image_to_tensor(image), self.image_size, center=pads_center(self.model))
        with self._autocast():
            self._features = self.model.encode_image(tensor[None].to(self.model.device))
        self._geometry = geom

    def _use_image(self, image: np.ndarray | None) -> None:
        if image is not None:
            self.set_image(image)
        if (self._features is None and self._image is None) or self._geometry is None:
            raise RuntimeError("no image: call set_image(image) first or pass image=...")

    @torch.inference_mode()
    def _decode(self, prompt: str, offset: int = 0) -> tuple[Tensor, float | None]:
        """(probability map (H, W) on the input's grid, existence probability or None) for one pass."""
        if self.window_overlap is not None:
            assert self._image is not None
            with self._autocast():
                probs, exist = window_passes(self.model, self._image, prompt, window=self.image_size,
                                             overlap=self.window_overlap, generators=[self._generator(offset)])
            return probs[0], None if exist is None else float(exist[0])
        assert self._features is not None and self._geometry is not None
        with self._autocast():
            out = self.model.decode(self._features, [prompt], generator=self._generator(offset))
        prob = from_model_output(out.logits[0, 0].float(), self._geometry).sigmoid()
        existence = None if out.existence_logits is None else float(out.existence_logits[0].float().sigmoid())
        return prob, existence

    @torch.inference_mode()
    def predict_proba(self, image: np.ndarray | None, prompt: str) -> np.ndarray:
        """Probability map (H, W) float32 of the target ``prompt`` names in ``image`` (None: the
        image given to :meth:`set_image` last, encoded once for any number of prompts). The map is
        not gated by the existence head; :meth:`predict` and :meth:`segment` are."""
        self._use_image(image)
        check_prompts([prompt], name="prompt")
        return self._decode(prompt)[0].cpu().numpy()

    @torch.inference_mode()
    def existence_probability(self, prompt: str, image: np.ndarray | None = None) -> float | None:
        """Probability that the target ``prompt`` names is in the image; None without an existence head."""
        if not self.has_existence:
            return None
        self._use_image(image)
        check_prompts([prompt], name="prompt")
        return self._decode(prompt)[1]

    @torch.inference_mode()
    def predict_samples(self, image: np.ndarray | None, prompt: str, samples: int) -> dict[str, np.ndarray | float]:
        """``samples`` stochastic passes with the sampling seeds ``seed, seed + 1, ...`` (the image is
        encoded once) turned into a confidence measure.

        Returns:
            ``"mean"``: (H, W) mean probability; ``"std"``: (H, W) its pixel-wise standard deviation;
            ``"mask"``: (H, W) bool, mean > threshold (empty when the mean existence probability is
            below ``existence_threshold``); ``"agreement"``: mean pairwise Dice of the ``samples``
            thresholded masks (1.0: every pass agrees; two empty masks agree); ``"existence"``: the
            mean existence probability, or None without an existence head.
        """
        if samples < 2:
            raise ValueError(f"samples must be >= 2 to measure agreement, got {samples}")
        self._use_image(image)
        check_prompts([prompt], name="prompt")
        probs, existences = [], []
        for k in range(samples):
            prob, existence = self._decode(prompt, k)
            probs.append(prob)
            existences.append(existence)
        stack = torch.stack(probs)  # K x H x W
        masks = (stack > self.threshold).flatten(1).float()  # K x HW
        inter = masks @ masks.T
        sizes = masks.sum(1)
        denom = sizes[:, None] + sizes[None, :]
        dice = torch.where(denom > 0, 2 * inter / denom.clamp(min=1), torch.ones_like(denom))
        pairs = ~torch.eye(samples, dtype=torch.bool)
        mean = stack.mean(0)
        existence = None if existences[0] is None else float(np.mean(existences))
        mask = (mean > self.threshold).cpu().numpy()
        if existence is not None and existence < self.existence_threshold:
            mask = np.zeros_like(mask)
        return {
            "mean": mean.cpu().numpy(),
            "std": stack.std(0, unbiased=False).cpu().numpy(),
            "mask": mask,
            "agreement": float(dice[pairs].mean()),
            "existence": existence,
        }

    @torch.inference_mode()
    def segment(self, image: np.ndarray | None, prompts: str | Sequence[str], *, samples: int = 1) -> list[Prediction]:
        """Segment every prompt's target in one image, encoded once (the decoder runs per prompt, each
        with the predictor's seed, so a prompt's mask does not depend on the others).

        Args:
            image: (H, W) or (H, W, 3); None: the image of the last :meth:`set_image`.
            prompts: one prompt or several.
            samples: K > 1 adds the uncertainty of K sampling passes (see :meth:`predict_samples`).

        Returns:
            One :class:`Prediction` per prompt, in order.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        check_prompts(prompts, name="prompt")
        self._use_image(image)
        results = []
        for prompt in prompts:
            if samples > 1:
                s = self.predict_samples(None, prompt, samples)
                results.append(
                    Prediction(prompt, s["mean"], s["mask"], s["existence"], s["std"], s["agreement"])  # type: ignore[arg-type]
                )
                continue
            prob, existence = self._decode(prompt)
            mask = (prob > self.threshold).cpu().numpy()
            if existence is not None and existence < self.existence_threshold:
                mask = np.zeros_like(mask)
            results.append(Prediction(prompt, prob.cpu().numpy(), mask, existence))
        return results

    def predict(self, image: np.ndarray | None, prompt: str) -> np.ndarray:
        """Binary mask (H, W) bool of the target ``prompt`` names; ``image=None`` reuses the last one.
        Empty when the model's existence head says the target is absent."""
        return self.segment(image, [prompt])[0].mask
