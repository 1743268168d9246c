"""The one Dice (MONAI's, with fixed empty-target rules), binary-mask checks, the size buckets (from
:mod:`boltzformer.sizes`), and the small numeric helpers the other modules share."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from boltzformer.sizes import EMPTY_BUCKET, SIZE_BUCKETS, SMALL_MAX, TINY_MAX, size_bucket

# the size buckets live in boltzformer.sizes (shared with the synthetic benchmark); re-exported here
__all__ = ["EMPTY_BUCKET", "SIZE_BUCKETS", "SMALL_MAX", "TINY_MAX", "dice_per_sample", "size_bucket"]


def _check_binary_masks(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, 1, H, W), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"{name} must have shape (B, 1, H, W), got {tuple(x.shape)}")
    if x.dtype != torch.bool and bool(((x != 0) & (x != 1)).any()):
        bad = x[(x != 0) & (x != 1)].flatten()[0].item()
        raise ValueError(f"{name} must be binary (bool or 0/1), found the value {bad}; threshold probabilities first")


def _as_bool_2d(name: str, x: Any) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) mask, got shape {arr.shape}")
    if arr.dtype != bool:
        if ((arr != 0) & (arr != 1)).any():
            raise ValueError(f"{name} must be binary (bool or 0/1); threshold probabilities first")
        arr = arr.astype(bool)
    return arr


def dice_per_sample(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice of each sample of a batch of binary masks, computed with ``monai.metrics.compute_dice``.

    Empty targets follow fixed rules (also enforced after MONAI, whatever its version does):
    empty target and empty prediction -> 1.0; empty target and non-empty prediction -> 0.0.

    Args:
        pred: (B, 1, H, W) predicted masks, bool or 0/1.
        target: (B, 1, H, W) target masks, bool or 0/1.

    Returns:
        (B,) float32 Dice scores in [0, 1], on ``pred``'s device.

    Raises:
        ValueError: wrong shapes, shapes that differ, or non-binary values.
        ImportError: MONAI is not installed (``pip install boltzformer[train]``).

    Example:
        >>> t = torch.zeros(1, 1, 4, 4); t[0, 0, 0, :2] = 1
        >>> p = torch.zeros(1, 1, 4, 4); p[0, 0, 0, :] = 1
        >>> dice_per_sample(p, t)  # 2 * 2 / (4 + 2)
        tensor([0.6667])
    """
    _check_binary_masks("pred", pred)
    _check_binary_masks("target", target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    B = pred.shape[0]
    if B == 0:
        return torch.zeros(0, dtype=torch.float32, device=pred.device)
    try:
        from monai.metrics import compute_dice
    except ImportError as e:  # MONAI is in the "train" extra, not the core install
        raise ImportError("dice_per_sample needs MONAI: pip install 'boltzformer[train]'") from e

    pred_f, target_f = pred.float(), target.float()
    dice = compute_dice(pred_f, target_f, include_background=True, ignore_empty=False)  # (B, 1)
    dice = dice.reshape(B).float()
    target_empty = target_f.flatten(1).sum(1) == 0  # (B,)
    pred_empty = pred_f.flatten(1).sum(1) == 0  # (B,)
    return torch.where(target_empty, pred_empty.float(), dice)


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _std(values: Sequence[float]) -> float | None:
    return float(np.std(values)) if len(values) else None  # population std (ddof=0)
