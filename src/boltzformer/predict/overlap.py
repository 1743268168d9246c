"""Several prompts on one volume: one label per voxel, as BiomedParse v2 resolves them.

BiomedParse v2's 3D inference (its ``utils.py``: ``slice_nms``, ``nms_masks_batch_iou``; its evaluator's
``merge_multiclass_masks``; read in public copies of the v2 inference code) does, per slice:

1. non-maximum suppression across prompts: prompts in decreasing existence probability; stop at the
   first below the existence threshold (0.5: this is the existence gating); skip empty masks
   (probability > 0.5); keep a prompt and drop every later one whose mask overlaps it with IoU > 0.5;
2. the probability maps of the dropped prompts are set to 0, a background map of constant 0.5 is put
   first, and each voxel takes the argmax: the most probable kept prompt, if above 0.5.

Written here in torch because no maintained library does mask NMS across prompts with this stopping rule
(torchvision's ``nms`` is for boxes, and torchvision is not installable on this machine's torch).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["nms_across_prompts", "exclusive_masks"]


def nms_across_prompts(masks: Tensor, scores: Tensor, *, iou_threshold: float = 0.5, score_threshold: float = 0.5) -> list[int]:
    """Indices of the prompts kept on one slice.

    Args:
        masks: bool (P, H, W), each prompt's binary mask.
        scores: (P,) existence probabilities.
        iou_threshold: a later prompt is dropped when its IoU with a kept one is above this.
        score_threshold: prompts below this are dropped (the existence gate).
    """
    P = masks.shape[0]
    if scores.shape != (P,):
        raise ValueError(f"scores must have shape ({P},), got {tuple(scores.shape)}")
    flat = masks.reshape(P, -1).bool()
    area = flat.sum(1)
    keep: list[int] = []
    dropped = torch.zeros(P, dtype=torch.bool)
    for i in scores.argsort(descending=True, stable=True).tolist():
        if float(scores[i]) < score_threshold:
            break
        if dropped[i] or area[i] == 0:
            continue
        keep.append(i)
        inter = (flat & flat[i]).sum(1).float()
        union = (flat | flat[i]).sum(1).float().clamp(min=1)
        dropped |= inter / union > iou_threshold
    return keep


def exclusive_masks(
    probs: Tensor, existence: Tensor, *, iou_threshold: float = 0.5, threshold: float = 0.5, existence_threshold: float = 0.5
) -> Tensor:
    """One label per voxel: bool (P, D, H, W) masks that never overlap.

    Args:
        probs: (P, D, H, W) mask probabilities of P prompts on D slices.
        existence: (P, D) existence probabilities (for a model without an existence head, pass each
            prompt's largest probability on the slice).
        iou_threshold, existence_threshold: of :func:`nms_across_prompts`.
        threshold: the constant background probability each voxel's winner must exceed.
    """
    P, D = probs.shape[:2]
    if existence.shape != (P, D):
        raise ValueError(f"existence must have shape ({P}, {D}), got {tuple(existence.shape)}")
    out = torch.zeros(probs.shape, dtype=torch.bool)
    for d in range(D):
        keep = nms_across_prompts(probs[:, d] > threshold, existence[:, d], iou_threshold=iou_threshold,
                                  score_threshold=existence_threshold)
        if not keep:
            continue
        kept = torch.zeros_like(probs[:, d])
        kept[keep] = probs[keep, d]
        # background first: a tie at the threshold stays background, as torch.argmax takes the first
        stacked = torch.cat([torch.full_like(kept[:1], threshold), kept])  # (1 + P) x H x W
        label = stacked.argmax(0)
        out[:, d] = label[None] == torch.arange(1, P + 1)[:, None, None]
    return out
