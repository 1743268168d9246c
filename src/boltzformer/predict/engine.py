"""The one inference engine: images in, typed results on each image's own pixel grid out.

:class:`Predictor` is separate from the ``nn.Module`` (as SAM2's image predictor): it pre-processes (pad
to square, resize), encodes a batch of images once and keeps the features (:meth:`~Predictor.set_image_batch`,
:meth:`~Predictor.set_image`), decodes any number of prompts on them with K sampled passes
(:meth:`~Predictor.predict_batch`), gates masks with the existence head, and maps every prediction back
to its image's size. Volumes go slice by slice with 2.5D context (:meth:`~Predictor.segment_volume`,
:mod:`.volumes`). Files and folders, evaluation, the sampling maps, the app and the CLI all call it.

Seeding, the one rule: pass k draws from a ``torch.Generator`` seeded ``seed + k`` (:meth:`~Predictor.generators`);
a request decodes each prompt with fresh generators, so a prompt's mask does not depend on the other
prompts; a run over several batches (the slices of a volume, a dataset) passes the same generators to
every batch, so they carry on from batch to batch. The same seed and batch size give the same masks.

Native resolution (``window_overlap``): instead of resizing the whole image to the model's input, a
window of the input's size slides over the image at its own resolution (MONAI's
``sliding_window_inference``), and the windows' mask logits are blended with Gaussian weights
(:func:`window_passes`), so that a tiny target is seen at the scale of native-resolution training
(:class:`~boltzformer.data.patches.PatchDataset`).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from boltzformer.io.transforms import Geometry, from_model_output, image_to_tensor, pads_center, to_model_input
from boltzformer.model import BoltzFormer, BoltzFormerOutput, ImageFeatures
from boltzformer.model.text import check_prompts
from boltzformer.predict import volumes
from boltzformer.predict.results import Passes, Prediction, VolumePrediction, summarize

__all__ = ["Passes", "Prediction", "Predictor", "VolumePrediction", "predict_probabilities", "window_passes"]


@torch.inference_mode()
def predict_probabilities(
    model: BoltzFormer,
    images: Sequence[Tensor],
    prompts: Sequence[str],
    *,
    image_size: int,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """Probability maps (H_i, W_i) for a batch of images (3, H_i, W_i) 0-255 of any sizes, one pass
    (:meth:`Predictor.predict_batch` with one generator)."""
    predictor = Predictor(model, image_size=image_size)
    predictor.set_image_batch(images)
    return [p.probabilities[0] for p in predictor.predict_batch(prompts, generators=[generator])]


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
    """Segments what a prompt names in an image, a batch of images or a volume.

    Args:
        model: a trained :class:`~boltzformer.model.BoltzFormer` (see ``load_checkpoint``), or any model
            with its ``encode_image`` / ``decode`` (the MONAI peer of :mod:`boltzformer.train.peer`).
        image_size: the model's input side; default: the size it was trained at.
        threshold: probability above which a pixel is in the mask.
        seed: seed of the sampled attention; the same seed gives the same mask (the module docstring
            gives the rule).
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
        >>> predictor.set_image_batch([a, b])  # encoded once
        >>> passes = predictor.predict_batch(["nodule", "cyst"], samples=4)  # one prompt per image
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
        self._images: list[Tensor] | None = None  # native-resolution mode: the images, (3, H, W) 0-255
        self._features: ImageFeatures | None = None  # B images encoded at once
        self._geometries: list[Geometry] = []

    def generators(self, samples: int = 1) -> list[torch.Generator]:
        """Fresh generators of K = ``samples`` passes: pass k's is seeded ``seed + k`` (the seeding rule)."""
        return [torch.Generator(device=self.model.device).manual_seed(self.seed + k) for k in range(samples)]

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.model.device.type, dtype=torch.bfloat16)

    @property
    def has_existence(self) -> bool:
        """Whether the model has an existence head (it then says if the target is in the image)."""
        return getattr(getattr(self.model, "decoder", None), "existence", None) is not None

    @property
    def num_images(self) -> int:
        """How many images the last :meth:`set_image_batch` set (0: none yet)."""
        return len(self._geometries)

    # ------------------------------------------------------------------------------------ images

    @torch.inference_mode()
    def set_image_batch(self, images: Sequence[np.ndarray | Tensor]) -> None:
        """Encode a batch of images once and keep the features for any number of prompts.

        Args:
            images: numpy (H, W) or (H, W, 3) (8-bit values are used as they are; other ranges are scaled
                to 0-255), or tensors (3, H, W) with values 0-255; sizes may differ. In native-resolution
                mode (``window_overlap``) the images are kept and their windows are encoded when a prompt comes.
        """
        if len(images) == 0:
            raise ValueError("images must hold at least one image")
        tensors = [self._as_tensor(img, i) for i, img in enumerate(images)]
        if self.window_overlap is not None:
            self._images, self._features = tensors, None
            self._geometries = [Geometry(*t.shape[-2:], self.image_size) for t in tensors]
            return
        inputs, geoms = zip(*(to_model_input(t, self.image_size, center=pads_center(self.model)) for t in tensors))
        with self._autocast():
            self._features = self.model.encode_image(torch.stack(inputs).to(self.model.device))
        self._images, self._geometries = None, list(geoms)

    @staticmethod
    def _as_tensor(image: np.ndarray | Tensor, i: int) -> Tensor:
        if isinstance(image, Tensor):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"images[{i}] must be a (3, H, W) tensor with values 0-255, got shape {tuple(image.shape)}")
            return image
        return image_to_tensor(image)

    def set_image(self, image: np.ndarray) -> None:
        """Encode one image (H, W) or (H, W, 3) for the single-image methods (:meth:`segment`, ...)."""
        self.set_image_batch([image])

    def _use_image(self, image: np.ndarray | None) -> None:
        if image is not None:
            self.set_image(image)
        if not self._geometries:
            raise RuntimeError("no image: call set_image(image) first or pass image=...")
        if len(self._geometries) != 1:
            raise RuntimeError(f"{len(self._geometries)} images are set (set_image_batch): use predict_batch, "
                               "or call set_image(image) or pass image=... for one image")

    # ----------------------------------------------------------------------------------- decoding

    @torch.inference_mode()
    def predict_batch(
        self, prompts: Sequence[str], *, samples: int = 1, generators: Sequence[torch.Generator | None] | None = None
    ) -> list[Passes]:
        """K sampled passes of one prompt per image of the last :meth:`set_image_batch`, not gated.

        Args:
            prompts: one per image, in order.
            samples: K; pass k draws from a generator seeded ``seed + k``.
            generators: the K generators to draw from instead (K = their number): a run over several
                batches passes the same ones to every batch, so that they carry on.

        Returns:
            One :class:`~boltzformer.predict.results.Passes` per image: (K, H_i, W_i) probabilities on its
            own grid, and (K,) existence probabilities (None without an existence head);
            :func:`~boltzformer.predict.results.summarize` turns it into a mask.
        """
        if not self._geometries:
            raise RuntimeError("no image: call set_image_batch(images) or set_image(image) first")
        prompts = check_prompts(list(prompts), name="prompt")
        if len(prompts) != len(self._geometries):
            raise ValueError(f"prompts must hold one prompt per image: {len(self._geometries)} images are set, "
                             f"got {len(prompts)} prompts")
        if generators is None:
            if not isinstance(samples, int) or samples < 1:
                raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
            generators = self.generators(samples)
        if self._images is not None:  # native resolution: the window slides over each image
            runs = []
            for image, prompt in zip(self._images, prompts):
                with self._autocast():
                    probs, exist = window_passes(self.model, image, prompt, window=self.image_size,
                                                 overlap=self.window_overlap, generators=generators)  # type: ignore[arg-type]
                runs.append(Passes(prompt, probs, exist))
            return runs
        assert self._features is not None
        with self._autocast():
            outs = [self.model.decode(self._features, prompts, generator=g) for g in generators]
        logits = torch.stack([o.logits.float() for o in outs], 1)[:, :, 0]  # K x (B, 1, h, w) -> B x K x h x w
        existence = None
        if getattr(outs[0], "existence_logits", None) is not None:
            existence = torch.stack([o.existence_logits.float() for o in outs], 1).sigmoid().cpu()  # K x (B,) -> B x K
        return [Passes(prompt, from_model_output(lg, geom).sigmoid().cpu(), None if existence is None else existence[i])
                for i, (prompt, lg, geom) in enumerate(zip(prompts, logits, self._geometries))]

    @torch.inference_mode()
    def model_output(self, prompt: str, *, return_sampling: bool = False) -> tuple[BoltzFormerOutput, Geometry]:
        """The model's own output for ``prompt`` on the one image set last (the first pass's generator),
        with the :class:`~boltzformer.io.transforms.Geometry` that maps it back to the image: the
        per-layer sampling maps (:mod:`.explain`) read it from the cached features."""
        self._use_image(None)
        if self._features is None:
            raise RuntimeError("model_output needs the whole image encoded: not available with window_overlap")
        check_prompts([prompt], name="prompt")
        with self._autocast():
            out = self.model.decode(self._features, [prompt], generator=self.generators(1)[0], return_sampling=return_sampling)
        return out, self._geometries[0]

    # --------------------------------------------------------------------------- one image, volumes

    @torch.inference_mode()
    def segment(self, image: np.ndarray | None, prompts: str | Sequence[str], *, samples: int = 1) -> list[Prediction]:
        """Segment every prompt's target in one image, encoded once (the decoder runs per prompt, each
        with fresh generators, so a prompt's mask does not depend on the others).

        Args:
            image: (H, W) or (H, W, 3); None: the image of the last :meth:`set_image`.
            prompts: one prompt or several.
            samples: K > 1 adds the uncertainty of K sampling passes (mean, std, agreement).

        Returns:
            One :class:`~boltzformer.predict.results.Prediction` per prompt, in order.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        check_prompts(prompts, name="prompt")
        self._use_image(image)
        return [summarize(self.predict_batch([prompt], samples=samples)[0], threshold=self.threshold,
                          existence_threshold=self.existence_threshold) for prompt in prompts]

    def segment_volume(
        self,
        volume: np.ndarray,
        prompts: Sequence[str],
        *,
        context: str | None = None,
        batch_size: int = 8,
        samples: int = 1,
        overlap: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[VolumePrediction]:
        """Every prompt in every slice of a (D, H, W) uint8 volume, ``batch_size`` slices encoded at once,
        optionally 2.5D; see :func:`boltzformer.predict.volumes.segment_volume` for the arguments."""
        return volumes.segment_volume(self, volume, prompts, context=context, batch_size=batch_size, samples=samples,
                                      overlap=overlap, progress=progress)

    def predict(self, image: np.ndarray | None, prompt: str) -> np.ndarray:
        """Binary mask (H, W) bool of the target ``prompt`` names; ``image=None`` reuses the last one.
        Empty when the model's existence head says the target is absent."""
        return self.segment(image, [prompt])[0].mask

    @torch.inference_mode()
    def predict_proba(self, image: np.ndarray | None, prompt: str) -> np.ndarray:
        """Probability map (H, W) float32 of the target ``prompt`` names in ``image`` (None: the image
        given to :meth:`set_image` last). Not gated by the existence head; :meth:`predict` and
        :meth:`segment` are."""
        self._use_image(image)
        return self.predict_batch([prompt])[0].probabilities[0].numpy()

    @torch.inference_mode()
    def existence_probability(self, prompt: str, image: np.ndarray | None = None) -> float | None:
        """Probability that the target ``prompt`` names is in the image; None without an existence head."""
        if not self.has_existence:
            return None
        self._use_image(image)
        existence = self.predict_batch([prompt])[0].existence
        return None if existence is None else float(existence[0])

    def predict_samples(self, image: np.ndarray | None, prompt: str, samples: int) -> dict[str, np.ndarray | float | None]:
        """:meth:`segment` with K = ``samples`` >= 2 passes, as a dict (the form of earlier versions):
        ``"mean"``, ``"std"``, ``"mask"``, ``"agreement"``, ``"existence"`` are the
        :class:`~boltzformer.predict.results.Prediction`'s ``probability``, ``std``, ``mask``,
        ``agreement`` and ``existence``."""
        if samples < 2:
            raise ValueError(f"samples must be >= 2 to measure agreement, got {samples}")
        r = self.segment(image, [prompt], samples=samples)[0]
        return {"mean": r.probability, "std": r.std, "mask": r.mask, "agreement": r.agreement, "existence": r.existence}
