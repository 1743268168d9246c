"""A mask as a list of lesions: its connected components with area, centroid, box and probability.

Connected components are labelled here with torch alone (8-connectivity, label propagation by 3x3
max-pooling until nothing changes) so that the core package needs no scipy or scikit-image; it
takes as many passes as the longest component is wide, a few milliseconds for lesion-sized masks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Lesion", "label_components", "lesions"]


@dataclass
class Lesion:
    """One connected component. ``centroid`` (row, col) and ``bbox`` (row0, col0, row1, col1,
    end-exclusive) in pixels; ``area_mm2`` when the pixel spacing is known; ``max_probability``, its
    highest probability, is the score that ranks lesions in the evaluation's FROC."""

    label: int
    area_px: int
    area_mm2: float | None
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]
    mean_probability: float | None
    max_probability: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a 2-D boolean mask -> (labels (H, W) int64, 0 = background, count)."""
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))
    if m.dim() != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {tuple(m.shape)}")
    try:
        from scipy import ndimage
    except ImportError:  # the core needs torch only: propagate labels with max-pooling below
        ndimage = None
    if ndimage is not None:
        # scipy labels in raster order of each component's first pixel, as the fallback does
        labels, n = ndimage.label(m.numpy(), structure=np.ones((3, 3), dtype=bool))
        return labels.astype(np.int64), int(n)
    fg = m.float()[None, None]
    # start from a unique id per foreground pixel (1..HW), then spread the largest id over each component
    ids = (torch.arange(1, m.numel() + 1, dtype=torch.float64).view(1, 1, *m.shape)) * fg.double()
    while True:
        grown = F.max_pool2d(ids, kernel_size=3, stride=1, padding=1) * fg.double()
        if torch.equal(grown, ids):
            break
        ids = grown
    raw = ids[0, 0].long().numpy().ravel()
    uniq, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    # number the components 1..n in raster order of their first pixel; background (0) stays 0
    rank = np.zeros(len(uniq), dtype=np.int64)
    fg_ids = np.nonzero(uniq > 0)[0]
    rank[fg_ids[np.argsort(first[fg_ids])]] = np.arange(1, len(fg_ids) + 1)
    return rank[inverse].reshape(mask.shape), len(fg_ids)


def lesions(
    mask: np.ndarray, *, probability: np.ndarray | None = None, spacing: tuple[float, float] | None = None
) -> list[Lesion]:
    """The connected components of ``mask`` (H, W) as :class:`Lesion` records, largest first.

    Args:
        probability: (H, W) probabilities, for each lesion's mean and highest probability.
        spacing: (row, col) pixel size in mm, for areas in mm^2.
    """
    if probability is not None and probability.shape != mask.shape:
        raise ValueError(f"probability has shape {probability.shape} but the mask {mask.shape}")
    labels, n = label_components(mask)
    out = []
    for k in range(1, n + 1):
        rows, cols = np.nonzero(labels == k)
        area = int(rows.size)
        out.append(
            Lesion(
                label=k,
                area_px=area,
                area_mm2=float(area * spacing[0] * spacing[1]) if spacing is not None else None,
                centroid=(float(rows.mean()), float(cols.mean())),
                bbox=(int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1),
                mean_probability=float(probability[rows, cols].mean()) if probability is not None else None,
                max_probability=float(probability[rows, cols].max()) if probability is not None else None,
            )
        )
    return sorted(out, key=lambda lesion: -lesion.area_px)
