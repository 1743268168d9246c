"""What the inference engine returns, and the one rule that turns sampled passes into a mask.

- :class:`Passes`: K sampled passes of one prompt on one image, as the model gave them (probabilities on
  the image's own grid, and the existence head's probabilities).
- :class:`Prediction` (an image) and :class:`VolumePrediction` (a volume, slice by slice): the mean
  probability, the mask, the existence probability and, for K > 1 passes, their spread.
- :func:`summarize`: passes -> prediction (mean of the passes above ``threshold``, then :func:`gate`);
  :func:`gate`: the one existence gate (a mask is empty where the target is judged absent);
  :func:`agreement`: mean pairwise Dice of the passes' masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Passes", "Prediction", "VolumePrediction", "agreement", "gate", "summarize"]


@dataclass
class Passes:
    """K sampled passes of one prompt on one image, on the image's own grid.

    ``probabilities``: (K, H, W) float32 on the CPU; ``existence``: (K,) probabilities that the target is
    in the image, or None for a model without an existence head.
    """

    prompt: str
    probabilities: Tensor
    existence: Tensor | None = None

    @property
    def samples(self) -> int:
        """K, the number of passes."""
        return int(self.probabilities.shape[0])


@dataclass
class Prediction:
    """One prompt's result on one image, on the image's own pixel grid.

    ``probability``: (H, W) float32 mask probability (the mean of the passes when ``samples`` > 1);
    ``mask``: (H, W) bool, probability > threshold, and empty when the existence head says the target
    is absent; ``existence``: probability that the target is in the image (the mean of the passes; None
    without the head); ``std`` and ``agreement``: the spread of K sampling passes (None for one pass).
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


@dataclass
class VolumePrediction:
    """One prompt's result on a (D, H, W) volume, slice by slice, on the volume's own grid.

    ``probability``: (D, H, W) float32 (the mean of the passes); ``mask``: (D, H, W) bool, empty on the
    slices where the target is judged absent (and one label per voxel with ``overlap="nms"``);
    ``existence``: (D,) per slice, None without an existence head; ``std`` (D, H, W) and ``agreement``
    (D,): the spread of K sampling passes per slice (None for one pass).
    """

    prompt: str
    probability: np.ndarray
    mask: np.ndarray
    existence: np.ndarray | None = None
    std: np.ndarray | None = None
    agreement: np.ndarray | None = None

    @property
    def present(self) -> bool:
        return bool(self.mask.any())


def gate(mask: np.ndarray | Tensor, existence: float | np.ndarray | Tensor | None, existence_threshold: float) -> np.ndarray | Tensor:
    """The existence gate: ``mask`` where the target is judged present (existence >= ``existence_threshold``),
    empty elsewhere. ``existence`` is one value for a (H, W) mask or one per leading index of ``mask``
    ((D,) for (D, H, W), (P, D) for (P, D, H, W)); None (no existence head) leaves the mask as it is.
    A torch mask is gated with torch (on its device), a numpy mask with numpy."""
    if existence is None:
        return mask
    if isinstance(mask, Tensor):  # training's validation: stays on the mask's device, no host copy
        keep = torch.as_tensor(existence, device=mask.device) >= existence_threshold
    else:
        keep = np.asarray(existence) >= existence_threshold
    return mask & keep.reshape(keep.shape + (1,) * (mask.ndim - keep.ndim))


def agreement(masks: Tensor) -> float:
    """Mean pairwise Dice of K >= 2 binary masks (K, H, W): 1.0 when every pass agrees; two empty masks agree.

    Written in torch rather than with MONAI's Dice (the report's, :mod:`boltzformer.evaluate.metrics`)
    because predicting needs no MONAI (the base install); equal to it pair by pair (tested in
    ``tests/evaluate/test_confidence.py``)."""
    K = masks.shape[0]
    flat = masks.flatten(1).float()  # K x HW
    inter = flat @ flat.T
    sizes = flat.sum(1)
    denom = sizes[:, None] + sizes[None, :]
    dice = torch.where(denom > 0, 2 * inter / denom.clamp(min=1), torch.ones_like(denom))
    pairs = ~torch.eye(K, dtype=torch.bool)
    return float(dice[pairs].mean())


def summarize(passes: Passes, *, threshold: float, existence_threshold: float) -> Prediction:
    """The prediction of K passes: the mean probability, above ``threshold``, gated by the mean existence
    probability (:func:`gate`); for K > 1 also the pixel-wise standard deviation and the :func:`agreement`
    of the passes' own thresholded masks."""
    stack = passes.probabilities  # K x H x W
    K = passes.samples
    mean = stack[0] if K == 1 else stack.mean(0)
    existence = None if passes.existence is None else float(passes.existence.mean())
    mask = gate((mean > threshold).numpy(), existence, existence_threshold)
    if K == 1:
        return Prediction(passes.prompt, mean.numpy(), mask, existence)
    return Prediction(passes.prompt, mean.numpy(), mask, existence, stack.std(0, unbiased=False).numpy(),
                      agreement(stack > threshold))
