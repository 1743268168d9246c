"""Native-resolution training patches that keep tiny targets whole, and the window grid they share
with sliding-window inference.

Resizing a 512 x 512 CT slice to the model's 256 x 256 input halves a 6-pixel nodule. Training on
native-resolution patches of the model's input size keeps every target at the resolution it was
scanned at; inference then slides the same window over the image (:mod:`boltzformer.predict.engine`,
MONAI's ``sliding_window_inference``), so train and test see targets at one scale.

Patch positions lie on the sliding window's grid (:func:`window_starts`: MONAI's scan positions for
a window and a step), so that a frozen encoder's cached features of a window serve training and
inference alike. Tiny targets are seen often in two ways: most patches are drawn around the target
(``target_fraction``), and :func:`size_weights` gives tiny-target images more draws per epoch.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from boltzformer.data.loading import _LATERAL

__all__ = ["PatchDataset", "SIZE_WEIGHTS", "size_weights", "window_starts", "window_step"]

#: draws per image, relative, by the target's area fraction: tiny < 0.1 %, small 0.1-1 %, large >= 1 %
SIZE_WEIGHTS = {"tiny": 4.0, "small": 2.0, "large": 1.0, "empty": 1.0}


def window_step(window: int, overlap: float) -> int:
    """The step between windows of side ``window`` that overlap by ``overlap`` in [0, 1), as MONAI's
    ``sliding_window_inference`` computes it."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return max(1, int(window * (1 - overlap)))


def window_starts(length: int, window: int, step: int) -> list[int]:
    """Start offsets of windows of side ``window`` every ``step`` pixels along a side of ``length``,
    the last one flush with the end: the positions MONAI's sliding window visits (``step`` =
    ``window * (1 - overlap)``). A side shorter than the window gives one start, 0 (it is padded)."""
    if window < 1 or step < 1:
        raise ValueError(f"window and step must be >= 1, got window={window}, step={step}")
    if length <= window:
        return [0]
    n = math.ceil((length - window) / step) + 1
    return sorted({min(i * step, length - window) for i in range(n)})


def size_weights(area_fractions: Sequence[float], weights: dict[str, float] = SIZE_WEIGHTS) -> list[float]:
    """A sampling weight per image from its target's area fraction (see :data:`SIZE_WEIGHTS`)."""
    out = []
    for a in area_fractions:
        bucket = "empty" if a <= 0 else "tiny" if a < 1e-3 else "small" if a < 1e-2 else "large"
        out.append(float(weights[bucket]))
    return out


class PatchDataset(Dataset):
    """Square patches of side ``size`` cut from images at their native resolution.

    Args:
        base: items with "image" (3, H, W) 0-255, "mask" (1, H, W), "prompt", "id" (a folder dataset).
        size: patch side (the model's input size, a multiple of 32).
        step: patch starts lie on the grid of :func:`window_starts` with this step (default ``size // 2``,
            the grid of a sliding window with overlap 0.5); 1 allows any position.
        target_fraction: probability that a patch is drawn among those that hold the whole target
            (those that hold most of it when none does); otherwise any grid position.
        flips: random horizontal / vertical flips (never for prompts naming a side). Leave them off
            with a feature cache and let the model flip its features (``TrainConfig.feature_flips``).
        seed: with ``seed`` set, item ``i`` always gives the same patch (validation); without it,
            draws come from torch's global generator, which Lightning seeds in every worker.

    Items: {"image": (3, size, size) 0-255, "mask": (1, size, size) 0/1, "prompt", "id", "present"
    (1.0 when the patch holds some of the target, else 0.0), "box": (top, left) of the patch in the image}. Images smaller than the patch are padded with zeros
    at the bottom and right, as :func:`~boltzformer.io.transforms.to_model_input` pads.

    Why not MONAI's ``RandFlipd`` / ``RandSpatialCropd``: they draw from a NumPy ``RandomState`` of their
    own, not from ``seed``'s torch generator or torch's global one, so the patches (and the native-resolution
    runs of docs/results.md trained on them) would change; the patch grid and the target-covering choice
    are not MONAI crops either.
    """

    def __init__(self, base: Dataset, size: int, *, step: int | None = None, target_fraction: float = 0.8,
                 flips: bool = False, seed: int | None = None) -> None:
        if size < 32 or size % 32:
            raise ValueError(f"size must be a positive multiple of 32, got {size}")
        if not 0.0 <= target_fraction <= 1.0:
            raise ValueError(f"target_fraction must be in [0, 1], got {target_fraction}")
        self.base = base
        self.size = size
        self.step = step or size // 2
        if self.step < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        self.target_fraction = target_fraction
        self.flips = flips
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def area_fractions(self) -> list[float]:
        """The target's area fraction of every image (reads the masks once)."""
        return [float(self.base[i]["mask"].mean()) for i in range(len(self))]

    def _rand(self, generator: torch.Generator | None) -> float:
        return float(torch.rand((), generator=generator))

    def _choose(self, starts: list[int], generator: torch.Generator | None) -> int:
        return starts[int(torch.randint(len(starts), (), generator=generator))]

    def patch_start(self, mask: Tensor, generator: torch.Generator | None = None) -> tuple[int, int]:
        """(top, left) of a patch for a mask (1, H, W): on the grid, around the target with probability
        ``target_fraction``."""
        _, H, W = mask.shape
        tops, lefts = window_starts(H, self.size, self.step), window_starts(W, self.size, self.step)
        ys, xs = torch.nonzero(mask[0] > 0.5, as_tuple=True)
        if len(ys) and self._rand(generator) < self.target_fraction:
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
            tops = _covering(tops, y0, y1, self.size)
            lefts = _covering(lefts, x0, x1, self.size)
        return self._choose(tops, generator), self._choose(lefts, generator)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.base[index]
        # Item ``index``'s own stream. Not numpy's SeedSequence: the native-resolution models of
        # docs/results.md were trained on the patches this seed mixing draws; a new mixing would change them.
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index) if self.seed is not None else None
        image, mask = s["image"], s["mask"]
        _, H, W = image.shape
        if H < self.size or W < self.size:  # pad small images to one window (bottom / right)
            pad = (0, max(0, self.size - W), 0, max(0, self.size - H))
            image, mask = F.pad(image, pad), F.pad(mask, pad)
        top, left = self.patch_start(mask, generator)
        image = image[:, top : top + self.size, left : left + self.size]
        mask = mask[:, top : top + self.size, left : left + self.size]
        if self.flips and not _LATERAL.search(s["prompt"]):
            flips = torch.rand(2, generator=generator) < 0.5
            dims = [d for d, f in zip((-1, -2), flips.tolist()) if f]
            if dims:
                image, mask = image.flip(dims), mask.flip(dims)
        # "present" is the patch's, not the image's: a patch drawn away from the target shows none of it, and
        # the existence head must learn "absent" there (the mask losses skip it)
        present = float(s.get("present", 1.0)) * float(bool((mask > 0).any()))
        return {"image": image.contiguous(), "mask": mask.contiguous(), "prompt": s["prompt"], "id": s["id"],
                "present": present, "box": (top, left)}


def _covering(starts: list[int], lo: int, hi: int, size: int) -> list[int]:
    """The starts whose window [s, s + size) holds [lo, hi); if none, those that hold most of it."""
    overlap = [min(s + size, hi) - max(s, lo) for s in starts]
    best = max(overlap)
    return [s for s, o in zip(starts, overlap) if o == best]
