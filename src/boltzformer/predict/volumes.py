"""Volumes slice by slice: :meth:`Predictor.segment_volume <boltzformer.predict.engine.Predictor.segment_volume>`.

A (D, H, W) uint8 volume becomes D model inputs (:func:`~boltzformer.io.windows.volume_slices`: each slice
alone, or 2.5D with its neighbours as the RGB channels); ``batch_size`` slices at a time are encoded once
(:meth:`~boltzformer.predict.engine.Predictor.set_image_batch`) and decoded for every prompt
(:meth:`~boltzformer.predict.engine.Predictor.predict_batch`). Several prompts give independent masks or,
with ``overlap="nms"``, one label per voxel (:func:`~boltzformer.predict.overlap.exclusive_masks`).

Seeding (the engine's one rule): pass k of a prompt draws from a generator seeded ``seed + k`` that
carries on from batch to batch of slices, so the same seed and batch size give the same masks, and a
prompt's masks do not depend on the other prompts asked with it.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from boltzformer.io import windows
from boltzformer.model.text import check_prompts
from boltzformer.predict.overlap import exclusive_masks
from boltzformer.predict.results import Passes, VolumePrediction, gate, summarize

__all__ = ["SlicePredictor", "segment_volume"]

OVERLAPS = ("independent", "nms")


class SlicePredictor(Protocol):
    """What :func:`segment_volume` uses of a :class:`~boltzformer.predict.engine.Predictor` (which imports
    this module, so it is named here by what it does)."""

    model: Any
    threshold: float
    existence_threshold: float

    @property
    def has_existence(self) -> bool: ...

    def generators(self, samples: int = 1) -> list[torch.Generator]: ...

    def set_image_batch(self, images: Sequence[np.ndarray]) -> None: ...

    def predict_batch(self, prompts: Sequence[str], *, samples: int = 1,
                      generators: Sequence[torch.Generator | None] | None = None) -> list[Passes]: ...


def segment_volume(
    predictor: SlicePredictor,
    volume: np.ndarray,
    prompts: Sequence[str],
    *,
    context: str | None = None,
    batch_size: int = 8,
    samples: int = 1,
    overlap: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[VolumePrediction]:
    """Segment every prompt in every slice of a (D, H, W) uint8 volume with ``predictor``.

    Args:
        context: ``"2d"`` or ``"2.5d"`` (RGB = slice, previous, next); None: the model's ``volume_context``
            (``"2.5d"`` for ``biomedparse-v2``).
        batch_size: slices per forward pass of the image encoder.
        samples: K sampling passes per slice (K > 1: the mean is thresholded and the spread is returned).
        overlap: several prompts: ``"independent"`` masks, or ``"nms"``: one label per voxel (per-slice NMS
            across prompts at IoU 0.5, then the most probable prompt above the threshold); None: the
            model's ``prompt_overlap`` (``"nms"`` for ``biomedparse-v2``).
        progress: called with (slices done, slices) after each batch.

    Returns:
        One :class:`~boltzformer.predict.results.VolumePrediction` per prompt, in order; with an existence
        head, the slices where the target is judged absent have an empty mask.

    Raises:
        ValueError: not a (D, H, W) uint8 volume, ``batch_size`` or ``samples`` < 1, an empty prompt, or an
            unknown ``context`` / ``overlap``.
    """
    if volume.ndim != 3 or volume.dtype != np.uint8:
        raise ValueError(f"volume must be a (D, H, W) uint8 array, got {volume.dtype} {volume.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    prompts = check_prompts(prompts, name="prompt")
    cfg = predictor.model.config
    context = context or (cfg.volume_context if cfg is not None else "2d")
    overlap = overlap or (cfg.prompt_overlap if cfg is not None else "independent")
    if overlap not in OVERLAPS:
        raise ValueError(f"overlap must be 'independent' or 'nms', got {overlap!r}")
    slices = windows.volume_slices(volume, context=context)
    D, H, W = volume.shape
    P = len(prompts)
    probs = np.zeros((P, D, H, W), dtype=np.float32)
    std = np.zeros((P, D, H, W), dtype=np.float32) if samples > 1 else None
    agreement = np.ones((P, D), dtype=np.float64) if samples > 1 else None
    existence = np.ones((P, D), dtype=np.float32) if predictor.has_existence else None
    streams = [predictor.generators(samples) for _ in prompts]  # one per prompt, carried from batch to batch
    for start in range(0, D, batch_size):
        idx = range(start, min(D, start + batch_size))
        predictor.set_image_batch([slices[d] for d in idx])  # encoded once for every prompt
        for p, prompt in enumerate(prompts):
            for d, passes in zip(idx, predictor.predict_batch([prompt] * len(idx), generators=streams[p])):
                r = summarize(passes, threshold=predictor.threshold, existence_threshold=predictor.existence_threshold)
                probs[p, d] = r.probability
                if existence is not None and r.existence is not None:
                    existence[p, d] = r.existence
                if std is not None and agreement is not None:
                    std[p, d], agreement[p, d] = r.std, r.agreement
        if progress is not None:
            progress(idx[-1] + 1, D)
    if overlap == "nms" and P > 1:
        # without an existence head, a prompt's score on a slice is its largest probability there
        scores = existence if existence is not None else probs.max(axis=(2, 3))
        masks = exclusive_masks(torch.from_numpy(probs), torch.from_numpy(scores), threshold=predictor.threshold,
                                existence_threshold=predictor.existence_threshold).numpy()
    else:
        masks = gate(probs > predictor.threshold, existence, predictor.existence_threshold)
    return [
        VolumePrediction(prompt, probability=probs[p], mask=masks[p], existence=None if existence is None else existence[p],
                         std=None if std is None else std[p], agreement=None if agreement is None else agreement[p])
        for p, prompt in enumerate(prompts)
    ]
