"""Boundary distances: HD95 and NSD of one mask pair (via MONAI), their checks, and their summary over records."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from boltzformer.evaluate.metrics import SIZE_BUCKETS, _as_bool_2d, _mean, _std

if TYPE_CHECKING:
    from boltzformer.evaluate.records import SampleRecord

NSD_TOLERANCE = 2.0  # default NSD tolerance, in the distance unit (mm with a known spacing, else pixels)


# ----------------------------------------------------------------------------------- boundary distances


def _check_spacing(spacing: Any, name: str = "spacing") -> tuple[float, float] | None:
    if spacing is None:
        return None
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{name} must be None or (row, col) pixel sizes in mm, two positive numbers; got {spacing!r}")
    return values  # type: ignore[return-value]


def _check_tolerance(tolerance: float) -> None:
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"nsd_tolerance must be a positive number (mm, or pixels without spacing), got {tolerance!r}")


def boundary_metrics(
    pred: Any, target: Any, *, spacing: tuple[float, float] | None = None, tolerance: float = NSD_TOLERANCE
) -> tuple[float | None, float | None]:
    """HD95 and NSD of one predicted and one true mask, with MONAI's ``compute_hausdorff_distance``
    (``percentile=95``, symmetric) and ``compute_surface_dice``.

    HD95 is the larger of the two directed 95th percentiles: of the distances from each boundary pixel
    of the prediction to the target's boundary, and from the target's to the prediction's. NSD (Nikolov
    et al. 2021) is the fraction of both boundaries that lies within ``tolerance`` of the other
    boundary, in [0, 1].

    Args:
        pred: (H, W) predicted mask, bool or 0/1 (numpy or torch).
        target: (H, W) true mask, bool or 0/1.
        spacing: (row, col) pixel size in mm; distances and ``tolerance`` are then in mm, else in pixels.
        tolerance: NSD tolerance, in the same unit.

    Returns:
        ``(hd95, nsd)``; ``hd95`` is ``None`` when either mask is empty, ``nsd`` is ``None`` when both are
        and 0.0 when exactly one is (see the package docstring, :mod:`boltzformer.evaluate`).

    Raises:
        ValueError: masks not 2-D, of different shapes or not binary; a bad ``spacing`` or ``tolerance``.
        ImportError: MONAI or SciPy (MONAI's distance transform) is missing: ``pip install 'boltzformer[train]'``.

    Example:
        >>> t = np.zeros((20, 20), bool); t[5:11, 5:11] = True
        >>> p = np.roll(t, 3, axis=1)  # the same square, 3 pixels to the right
        >>> hd95, nsd = boundary_metrics(p, t)  # 14 of the 20 boundary pixels of each are within 2 px
        >>> hd95, round(nsd, 3)
        (3.0, 0.7)
    """
    pred, target = _as_bool_2d("pred", pred), _as_bool_2d("target", target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {pred.shape} and {target.shape}")
    spacing = _check_spacing(spacing)
    _check_tolerance(tolerance)
    pred_empty, target_empty = not pred.any(), not target.any()
    if pred_empty and target_empty:
        return None, None
    if pred_empty or target_empty:
        return None, 0.0
    try:
        from monai.metrics import compute_hausdorff_distance, compute_surface_dice
    except ImportError as e:
        raise ImportError("boundary_metrics needs MONAI: pip install 'boltzformer[train]'") from e
    p = torch.from_numpy(pred)[None, None].float()  # HxW -> 1x1xHxW
    t = torch.from_numpy(target)[None, None].float()
    with warnings.catch_warnings():
        # MONAI 1.5+ passes a deprecated argument to its own get_mask_edges: not ours to act on
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing)
        nsd = compute_surface_dice(p, t, [float(tolerance)], include_background=True, spacing=spacing)
    return float(hd95.item()), float(nsd.item())


def _hd95_missing_reason(r: SampleRecord) -> str:
    pred_empty = r.pred_area_fraction == 0.0
    if r.target_empty and pred_empty:
        return "both_empty"
    return "empty_target" if r.target_empty else "empty_prediction"


def _boundary_stats(records: Sequence[SampleRecord]) -> dict[str, Any]:
    hd = [r.hd95 for r in records if r.hd95 is not None]
    nsd = [r.nsd for r in records if r.nsd is not None]
    missing = {k: 0 for k in ("empty_prediction", "empty_target", "both_empty")}
    for r in records:
        if r.hd95 is None:
            missing[_hd95_missing_reason(r)] += 1
    return {
        "hd95": _mean(hd),
        "hd95_median": float(np.median(hd)) if hd else None,
        "hd95_std": _std(hd),
        "n_hd95": len(hd),
        "n_hd95_missing": len(records) - len(hd),
        "hd95_missing": missing,
        "nsd": _mean(nsd),
        "nsd_std": _std(nsd),
        "n_nsd": len(nsd),
        "n_nsd_missing": len(records) - len(nsd),
    }


def summarize_boundary(records: Sequence[SampleRecord], *, tolerance: float = NSD_TOLERANCE) -> dict[str, Any]:
    """HD95 and NSD over records (means over the samples where each is defined, with the count of those
    where it is not, by reason), overall and ``"by_size"`` of the target."""
    units = sorted({r.distance_unit for r in records})
    return {
        "unit": units[0] if len(units) == 1 else ("px" if not units else "mixed"),
        "nsd_tolerance": float(tolerance),
        **_boundary_stats(records),
        "by_size": {b: _boundary_stats([r for r in records if r.bucket == b]) for b in SIZE_BUCKETS},
    }
