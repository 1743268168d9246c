"""Segmentation metrics and reports: Dice by target size, lesion detection, boundary distances, and
whether the agreement of K sampled passes predicts a poor mask.

- :func:`size_bucket`: target area fraction -> ``"tiny"`` (< 0.1 %), ``"small"`` (0.1-1 %), ``"large"`` (>= 1 %)
- :func:`dice_per_sample`: binary masks (B, 1, H, W) -> Dice (B,), via MONAI, with fixed empty-target rules
- :func:`match_lesions`: the connected components of a predicted and a true mask of one image, matched
- :func:`boundary_metrics`: HD95 and NSD (normalised surface distance, "surface Dice") of one pair, via MONAI
- :func:`pairwise_agreement`, :func:`failure_auroc`, :func:`confidence_vs_dice`: the agreement of K sampled
  passes (and, for comparison, the mean probability inside the mask) as a predictor of a poor mask
  (correlations with Dice, AUROC, Dice by score band)
- :class:`SegmentationReport`: accumulates one :class:`SampleRecord` per sample; ``compute()`` gives the
  report dict (overall and per-size Dice, failure rate, IoU, lesion detection, boundary metrics, agreement)
- :func:`report_to_markdown`, :func:`write_report`: the report as Markdown tables, and JSON + Markdown on disk
- :func:`evaluate_model`: a model over a dataset, with ``samples=K`` sampled passes per image

Conventions:

- Dice: a sample whose target is empty scores 1 when the prediction is empty too and 0 otherwise; such
  samples count in the overall numbers but in no size bucket (their bucket is ``"empty"``). A *failure* is a
  sample with a non-empty target and Dice exactly 0 (missed entirely); a *poor* mask has Dice < 0.5 (the
  event agreement is asked to predict).
- Lesions are 8-connected components (:func:`boltzformer.lesions.label_components`). A true lesion is
  *detected* when a predicted lesion shares at least one pixel with it (or, with ``lesion_iou=t``, has
  IoU > t with it); a predicted lesion that matches no true lesion is a *false positive*. The matching is
  not one-to-one: one predicted lesion over two true ones detects both. Sensitivity is bucketed by the true
  lesion's own area, precision and false positives per image by the predicted lesion's own area.
- HD95 and NSD are in mm when the sample's pixel spacing is known, else in pixels, measured on the
  image's own grid. Both are defined when both masks are non-empty. With an empty prediction or an empty
  target HD95 has no value (MONAI returns nan or inf): it is recorded as missing (``None``) and counted by
  reason, never averaged as 0. NSD with exactly one empty mask is 0 (none of the other mask's boundary is
  within tolerance; MONAI returns 0 too); with both empty it is missing.

Model inference happens only in :func:`evaluate_model`; everything else takes binary masks.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from boltzformer.atomic import atomic_paths
from boltzformer.lesions import label_components

__all__ = [
    "AGREEMENT_BANDS",
    "LesionOutcome",
    "NSD_TOLERANCE",
    "POOR_DICE",
    "SIZE_BUCKETS",
    "SampleRecord",
    "SegmentationReport",
    "boundary_metrics",
    "confidence_vs_dice",
    "dice_per_sample",
    "evaluate_model",
    "existence_summary",
    "failure_auroc",
    "match_lesions",
    "pairwise_agreement",
    "predict_passes",
    "report_to_markdown",
    "size_bucket",
    "summarize",
    "summarize_boundary",
    "summarize_lesions",
    "write_report",
]

SIZE_BUCKETS = ("tiny", "small", "large")
TINY_MAX = 0.001  # area fraction below which a target is "tiny" (< 0.1 % of the image)
SMALL_MAX = 0.01  # area fraction below which a target is "small" (< 1 % of the image)
EMPTY_BUCKET = "empty"  # bucket of samples whose target mask is empty
CONNECTIVITY = 8  # lesions are the 8-connected components of boltzformer.lesions.label_components
NSD_TOLERANCE = 2.0  # default NSD tolerance, in the distance unit (mm with a known spacing, else pixels)
POOR_DICE = 0.5  # a mask with Dice below this is "poor": the event agreement should predict
AGREEMENT_BANDS = (0.0, 0.5, 0.8, 0.95, 1.0)  # edges of the score bands of the report (last band closed)


def size_bucket(area_fraction: float) -> str:
    """The size bucket of a target: ``"tiny"`` if < 0.001, ``"small"`` if < 0.01, else ``"large"``.

    Raises:
        ValueError: ``area_fraction`` is not a finite number in [0, 1].
    """
    if not (math.isfinite(area_fraction) and 0.0 <= area_fraction <= 1.0):
        raise ValueError(f"area_fraction must be a finite number in [0, 1], got {area_fraction!r}")
    if area_fraction < TINY_MAX:
        return "tiny"
    if area_fraction < SMALL_MAX:
        return "small"
    return "large"


def _check_binary_masks(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, 1, H, W), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"{name} must have shape (B, 1, H, W), got {tuple(x.shape)}")
    if x.dtype != torch.bool and bool(((x != 0) & (x != 1)).any()):
        bad = x[(x != 0) & (x != 1)].flatten()[0].item()
        raise ValueError(f"{name} must be binary (bool or 0/1), found the value {bad}; threshold probabilities first")


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


# ------------------------------------------------------------------------------------------ lesion detection


@dataclass(frozen=True)
class LesionOutcome:
    """One connected component of a true or a predicted mask, and whether it was matched."""

    area_px: int  # pixels of the component
    area_fraction: float  # area_px / image pixels
    bucket: str  # size_bucket(area_fraction)
    matched: bool  # a true lesion: detected; a predicted lesion: a true positive (not a false positive)


def _as_bool_2d(name: str, x: Any) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) mask, got shape {arr.shape}")
    if arr.dtype != bool:
        if ((arr != 0) & (arr != 1)).any():
            raise ValueError(f"{name} must be binary (bool or 0/1); threshold probabilities first")
        arr = arr.astype(bool)
    return arr


def _check_iou_threshold(iou_threshold: float | None) -> None:
    if iou_threshold is not None and not (isinstance(iou_threshold, (int, float)) and 0.0 <= iou_threshold < 1.0):
        raise ValueError(f"lesion_iou must be None (any overlap) or a number in [0, 1), got {iou_threshold!r}")


def match_lesions(
    pred: Any, target: Any, *, iou_threshold: float | None = None
) -> tuple[list[LesionOutcome], list[LesionOutcome]]:
    """Match the lesions (8-connected components) of a predicted and a true mask of one image.

    A true lesion is detected when some predicted lesion overlaps it by one pixel or more (default), or
    has IoU > ``iou_threshold`` with it; a predicted lesion is a true positive when it matches some true
    lesion, else a false positive. Matching is not one-to-one (see the module docstring).

    Args:
        pred: (H, W) predicted mask, bool or 0/1 (numpy or torch).
        target: (H, W) true mask, bool or 0/1.
        iou_threshold: ``None`` for "any overlap", or t in [0, 1) for "IoU > t".

    Returns:
        ``(true_lesions, predicted_lesions)``, each a list of :class:`LesionOutcome` in the raster order
        of the component's first pixel.

    Raises:
        ValueError: masks not 2-D, of different shapes or not binary; ``iou_threshold`` out of range.

    Example:
        >>> t = np.zeros((8, 8), bool); t[0, 0] = t[5, 5] = True  # two true lesions
        >>> p = np.zeros((8, 8), bool); p[0, 0:2] = p[7, 7] = True  # one found, one false positive
        >>> true, found = match_lesions(p, t)
        >>> [x.matched for x in true], [x.matched for x in found]
        ([True, False], [True, False])
    """
    pred, target = _as_bool_2d("pred", pred), _as_bool_2d("target", target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {pred.shape} and {target.shape}")
    _check_iou_threshold(iou_threshold)
    t_lab, n_t = label_components(target)  # (H, W) 0 = background, 1..n_t
    p_lab, n_p = label_components(pred)
    t_area = np.bincount(t_lab.ravel(), minlength=n_t + 1)[1:]  # (n_t,)
    p_area = np.bincount(p_lab.ravel(), minlength=n_p + 1)[1:]  # (n_p,)
    # intersection of every (true, predicted) pair from the pixels where both masks are on
    both = (t_lab > 0) & (p_lab > 0)
    pair = (t_lab[both] - 1) * max(n_p, 1) + (p_lab[both] - 1)
    inter = np.bincount(pair, minlength=n_t * n_p).reshape(n_t, n_p)  # (n_t, n_p)
    if iou_threshold is None:
        match = inter > 0
    else:
        union = t_area[:, None] + p_area[None, :] - inter
        match = inter > iou_threshold * union  # IoU > t, without dividing
    pixels = target.size

    def outcomes(areas: np.ndarray, matched: np.ndarray) -> list[LesionOutcome]:
        return [
            LesionOutcome(area_px=int(a), area_fraction=float(a / pixels), bucket=size_bucket(float(a / pixels)), matched=bool(m))
            for a, m in zip(areas.tolist(), matched.tolist())
        ]

    return outcomes(t_area, match.any(axis=1)), outcomes(p_area, match.any(axis=0))


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _lesion_counts(true: list[LesionOutcome], found: list[LesionOutcome], n_images: int) -> dict[str, Any]:
    n_detected = sum(x.matched for x in true)
    n_tp = sum(x.matched for x in found)
    return {
        "n_true": len(true),
        "n_detected": n_detected,
        "sensitivity": _ratio(n_detected, len(true)),
        "n_pred": len(found),
        "n_false_positive": len(found) - n_tp,
        "precision": _ratio(n_tp, len(found)),
        "fp_per_image": _ratio(len(found) - n_tp, n_images),
    }


def summarize_lesions(records: Sequence[SampleRecord], *, iou_threshold: float | None = None) -> dict[str, Any]:
    """Lesion-level detection over records: overall, and ``"by_size"`` (true lesions by their own size
    for sensitivity; predicted lesions by theirs for precision and false positives per image)."""
    true = [x for r in records for x in r.true_lesions]
    found = [x for r in records for x in r.pred_lesions]
    n = len(records)
    return {
        "connectivity": CONNECTIVITY,
        "match": "any overlap" if iou_threshold is None else f"IoU > {iou_threshold:g}",
        "iou_threshold": iou_threshold,
        "n_images": n,
        **_lesion_counts(true, found, n),
        "by_size": {
            b: _lesion_counts([x for x in true if x.bucket == b], [x for x in found if x.bucket == b], n)
            for b in SIZE_BUCKETS
        },
    }


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
        and 0.0 when exactly one is (see the module docstring).

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


# ---------------------------------------------------------------------------- agreement as a failure signal


def pairwise_agreement(masks: Any) -> float:
    """Mean pairwise Dice of K binary masks (K, H, W): 1.0 when every pass agrees, two empty masks agree.

    The same score as :meth:`boltzformer.predict.Predictor.predict_samples`'s ``"agreement"``.

    Raises:
        ValueError: not (K, H, W) with K >= 2, or not binary.
    """
    m = torch.as_tensor(masks)
    if m.dim() != 3 or m.shape[0] < 2:
        raise ValueError(f"masks must have shape (K, H, W) with K >= 2, got {tuple(m.shape)}")
    if m.dtype != torch.bool and bool(((m != 0) & (m != 1)).any()):
        raise ValueError("masks must be binary (bool or 0/1); threshold probabilities first")
    K = m.shape[0]
    flat = m.flatten(1).double()  # K x HW (float64: exact pixel counts)
    inter = flat @ flat.T  # K x K
    sizes = flat.sum(1)
    denom = sizes[:, None] + sizes[None, :]
    dice = torch.where(denom > 0, 2 * inter / denom.clamp(min=1), torch.ones_like(denom))
    pairs = ~torch.eye(K, dtype=torch.bool)
    return float(dice[pairs].mean())


def failure_auroc(scores: Sequence[float], failed: Sequence[bool]) -> float | None:
    """AUROC of ``scores`` for detecting ``failed`` samples, with ``monai.metrics.compute_roc_auc``: the
    chance that a random failed sample scores higher than a random good one, ties counted 1/2.

    Returns:
        The AUROC in [0, 1], or ``None`` when every sample failed or none did (no pair to rank).

    Raises:
        ValueError: lengths differ, or a score is not finite.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(failed, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores and failed must be 1-D of one length, got shapes {s.shape} and {y.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite numbers")
    if y.all() or not y.any():
        return None
    from monai.metrics import compute_roc_auc

    return float(compute_roc_auc(torch.from_numpy(s), torch.from_numpy(y.astype(np.int64))))


def _correlation(kind: str, x: np.ndarray, y: np.ndarray) -> tuple[float | None, str | None]:
    if len(x) < 3:
        return None, f"fewer than 3 samples ({len(x)})"
    if np.ptp(x) == 0:
        return None, f"the score is the same ({x[0]:g}) for every sample"
    if np.ptp(y) == 0:
        return None, f"Dice is the same ({y[0]:g}) for every sample"
    try:
        from scipy.stats import pearsonr, spearmanr
    except ImportError as e:
        raise ImportError("confidence_vs_dice needs SciPy: pip install 'boltzformer[train]'") from e
    value = pearsonr(x, y).statistic if kind == "pearson" else spearmanr(x, y).statistic
    return float(value), None


def confidence_vs_dice(
    confidence: Sequence[float], dice: Sequence[float], *, poor_dice: float = POOR_DICE
) -> dict[str, Any]:
    """How well a confidence score in [0, 1] (higher: trust the mask more; e.g. the agreement of K
    passes, or the mean probability inside the mask) predicts the quality of the mask, over N samples.

    Returns a dict:

    - ``"n"``, ``"n_poor"``: samples, and those with Dice < ``poor_dice``; ``"poor_dice"``
    - ``"score_mean"``, ``"score_std"``: of the N confidence scores
    - ``"pearson"``, ``"spearman"``: correlation of the score with Dice (SciPy), ``None`` when undefined
    - ``"auroc"``: AUROC of (1 - score) for detecting a poor mask (:func:`failure_auroc`), ``None`` when
      undefined
    - ``"missing"``: for each of the three above that is ``None``, why (e.g. "no sample has Dice < 0.5")
    - ``"by_band"``: one row per score band of :data:`AGREEMENT_BANDS` with ``n``, mean Dice, share of
      poor masks and share of failures (Dice 0)
    - ``"by_quartile"``: the samples ranked by score and cut into four quarters (1: lowest scores), each
      with ``n``, its score range, mean Dice and share of poor masks

    Raises:
        ValueError: lengths differ; a value outside [0, 1].
    """
    a = np.asarray(confidence, dtype=np.float64)
    d = np.asarray(dice, dtype=np.float64)
    if a.shape != d.shape or a.ndim != 1:
        raise ValueError(f"confidence and dice must be 1-D of one length, got shapes {a.shape} and {d.shape}")
    for name, v in (("confidence", a), ("dice", d)):
        if not (np.isfinite(v).all() and (v >= 0).all() and (v <= 1).all()):
            raise ValueError(f"{name} values must lie in [0, 1]")
    if not 0.0 < poor_dice <= 1.0:
        raise ValueError(f"poor_dice must be in (0, 1], got {poor_dice}")
    poor = d < poor_dice
    missing: dict[str, str] = {}
    out: dict[str, Any] = {
        "n": len(a),
        "n_poor": int(poor.sum()),
        "poor_dice": float(poor_dice),
        "score_mean": _mean(a.tolist()),
        "score_std": _std(a.tolist()),
    }
    for kind in ("pearson", "spearman"):
        out[kind], why = _correlation(kind, a, d)
        if why:
            missing[kind] = why
    out["auroc"] = failure_auroc(1.0 - a, poor) if len(a) else None
    if out["auroc"] is None:
        if not len(a):
            missing["auroc"] = "no samples"
        elif poor.all():
            missing["auroc"] = f"every sample has Dice < {poor_dice:g}: no good mask to rank against"
        else:
            missing["auroc"] = f"no sample has Dice < {poor_dice:g}: no poor mask to detect"
    out["missing"] = missing
    rows = []
    for i, (lo, hi) in enumerate(zip(AGREEMENT_BANDS[:-1], AGREEMENT_BANDS[1:])):
        last = i == len(AGREEMENT_BANDS) - 2
        inside = (a >= lo) & ((a <= hi) if last else (a < hi))
        rows.append(
            {
                "band": f"[{lo:g}, {hi:g}{']' if last else ')'}",
                "n": int(inside.sum()),
                "dice": _mean(d[inside].tolist()),
                "poor_rate": _ratio(int((poor & inside).sum()), int(inside.sum())),
                "failure_rate": _ratio(int(((d == 0) & inside).sum()), int(inside.sum())),
            }
        )
    out["by_band"] = rows
    # quarters of the samples ranked by score (ties in the order of the samples): where fixed bands put
    # every sample in one band, these still show whether the least confident quarter is the worst one
    order = np.argsort(a, kind="stable")
    out["by_quartile"] = [
        {
            "quartile": q + 1,
            "n": len(part),
            "score_min": float(a[part].min()) if len(part) else None,
            "score_max": float(a[part].max()) if len(part) else None,
            "dice": _mean(d[part].tolist()),
            "poor_rate": _ratio(int(poor[part].sum()), len(part)),
        }
        for q, part in enumerate(np.array_split(order, 4))
    ]
    return out


# ------------------------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class SampleRecord:
    """The evaluation of one sample; all fields are plain Python values (JSON-serialisable)."""

    id: str  # sample id
    prompt: str  # the text prompt
    area_fraction: float  # target pixels / image pixels
    bucket: str  # size_bucket(area_fraction), or "empty" when the target is empty
    dice: float  # Dice in [0, 1] (empty-target rules in dice_per_sample)
    iou: float  # IoU in [0, 1], equal to dice / (2 - dice) for binary masks
    target_empty: bool  # the target mask has no pixel
    pred_area_fraction: float  # predicted pixels / image pixels
    hd95: float | None = None  # 95th-percentile Hausdorff distance in distance_unit; None when a mask is empty
    nsd: float | None = None  # NSD at the report's tolerance in [0, 1]; None when both masks are empty
    distance_unit: str = "px"  # "mm" when the pixel spacing was known, else "px"
    true_lesions: tuple[LesionOutcome, ...] = ()  # the target's connected components, matched or not
    pred_lesions: tuple[LesionOutcome, ...] = ()  # the prediction's connected components
    agreement: float | None = None  # mean pairwise Dice of the K sampled passes; None with one pass
    mask_probability: float | None = None  # mean probability over the mask's pixels; None: empty mask or unknown

    def to_dict(self) -> dict[str, Any]:
        """The record as a dict of JSON values (lesion tuples become lists of dicts)."""
        d = asdict(self)
        d["true_lesions"] = list(d["true_lesions"])
        d["pred_lesions"] = list(d["pred_lesions"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SampleRecord:
        """The record of a dict from :meth:`to_dict` (e.g. a saved report's ``"samples"``), to summarise
        a subset or pool reports with :func:`summarize`."""
        d = dict(d)
        for key in ("true_lesions", "pred_lesions"):
            d[key] = tuple(LesionOutcome(**x) for x in d.get(key, ()))
        return cls(**d)


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _std(values: Sequence[float]) -> float | None:
    return float(np.std(values)) if len(values) else None  # population std (ddof=0)


def _failure_rate(records: Sequence[SampleRecord]) -> float | None:
    with_target = [r for r in records if not r.target_empty]
    if not with_target:
        return None
    return sum(1 for r in with_target if r.dice == 0.0) / len(with_target)


def summarize(
    records: Sequence[SampleRecord],
    *,
    lesion_iou: float | None = None,
    nsd_tolerance: float = NSD_TOLERANCE,
    poor_dice: float = POOR_DICE,
) -> dict[str, Any]:
    """The report dict of a list of records (see :meth:`SegmentationReport.compute` for its keys).

    ``lesion_iou`` and ``nsd_tolerance`` are the settings the records were made with (they label the
    report); ``poor_dice`` is the Dice below which a mask counts as poor for the agreement statistics.
    """
    by_size = {b: [r for r in records if r.bucket == b] for b in SIZE_BUCKETS}
    with_target = [r for r in records if not r.target_empty]
    scored = [r for r in records if r.agreement is not None]
    confident = [r for r in records if r.mask_probability is not None]
    return {
        "n": len(records),
        "n_empty": sum(1 for r in records if r.target_empty),
        "dice": _mean([r.dice for r in records]),
        "dice_std": _std([r.dice for r in records]),
        "dice_by_size": {b: _mean([r.dice for r in rs]) for b, rs in by_size.items()},
        "dice_std_by_size": {b: _std([r.dice for r in rs]) for b, rs in by_size.items()},
        "n_by_size": {b: len(rs) for b, rs in by_size.items()},
        "failure_rate": _failure_rate(records),
        "n_failures": sum(1 for r in with_target if r.dice == 0.0),
        "failures_by_size": {b: _failure_rate(rs) for b, rs in by_size.items()},
        "iou": _mean([r.iou for r in records]),
        "lesion_detection": summarize_lesions(records, iou_threshold=lesion_iou),
        "boundary": summarize_boundary(records, tolerance=nsd_tolerance),
        "uncertainty": {
            "agreement": (
                confidence_vs_dice([r.agreement for r in scored], [r.dice for r in scored], poor_dice=poor_dice)  # type: ignore[misc]
                if scored
                else None
            ),
            "mask_probability": (
                confidence_vs_dice([r.mask_probability for r in confident], [r.dice for r in confident], poor_dice=poor_dice)  # type: ignore[misc]
                if confident
                else None
            ),
        },
        "samples": [r.to_dict() for r in records],
    }


class SegmentationReport:
    """Accumulates per-sample results over batches and summarises them by target size.

    Args:
        lesion_iou: ``None`` (default): a predicted lesion detects a true one when they overlap; t in
            [0, 1): when their IoU > t.
        nsd_tolerance: NSD tolerance in mm (samples with a pixel spacing) or pixels (without).
        poor_dice: Dice below which a mask counts as poor, for the agreement statistics.

    Example:
        >>> report = SegmentationReport()
        >>> t = torch.zeros(2, 1, 8, 8); t[:, 0, :2, :2] = 1
        >>> report.update(t.clone(), t, ids=["a", "b"], prompts=["nodule", "nodule"])  # doctest: +ELLIPSIS
        [...]
        >>> report.compute()["dice"]
        1.0
    """

    def __init__(
        self, *, lesion_iou: float | None = None, nsd_tolerance: float = NSD_TOLERANCE, poor_dice: float = POOR_DICE
    ) -> None:
        _check_iou_threshold(lesion_iou)
        _check_tolerance(nsd_tolerance)
        if not (isinstance(poor_dice, (int, float)) and 0.0 < poor_dice <= 1.0):
            raise ValueError(f"poor_dice must be a number in (0, 1], got {poor_dice!r}")
        self.lesion_iou = lesion_iou
        self.nsd_tolerance = float(nsd_tolerance)
        self.poor_dice = float(poor_dice)
        self.records: list[SampleRecord] = []

    def __len__(self) -> int:
        return len(self.records)

    def reset(self) -> None:
        """Forget every record."""
        self.records = []

    def add(self, record: SampleRecord) -> None:
        """Add one ready-made record."""
        if not isinstance(record, SampleRecord):
            raise TypeError(f"record must be a SampleRecord, got {type(record).__name__}")
        self.records.append(record)

    def update(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        *,
        ids: Sequence[str],
        prompts: Sequence[str],
        area_fractions: Sequence[float] | None = None,
        spacings: Sequence[tuple[float, float] | None] | None = None,
        agreements: Sequence[float | None] | None = None,
        mask_probabilities: Sequence[float | None] | None = None,
    ) -> list[SampleRecord]:
        """Score one batch and add its records.

        Args:
            pred: (B, 1, H, W) predicted masks, bool or 0/1 (threshold the model's probabilities first).
            target: (B, 1, H, W) target masks, bool or 0/1.
            ids: B sample ids.
            prompts: B text prompts.
            area_fractions: B target area fractions at the original resolution, when ``target`` was resized;
                by default they are computed from ``target``.
            spacings: B (row, col) pixel sizes in mm, or ``None`` where unknown (distances in pixels then).
            agreements: B agreement scores of K sampled passes (see :func:`pairwise_agreement`), or ``None``.
            mask_probabilities: B mean probabilities over each predicted mask's pixels, or ``None`` (empty mask).

        Returns:
            The B new records.

        Raises:
            ValueError: as :func:`dice_per_sample`; a per-sample argument not of length B; a bad spacing, or
                an agreement or mask probability outside [0, 1].
        """
        dice = dice_per_sample(pred, target)  # (B,)
        B, _, H, W = target.shape
        per_sample = (("ids", ids), ("prompts", prompts), ("area_fractions", area_fractions), ("spacings", spacings),
                      ("agreements", agreements), ("mask_probabilities", mask_probabilities))  # fmt: skip
        for name, values in per_sample:
            if values is not None and len(values) != B:
                raise ValueError(f"{name} must have one entry per sample (B={B}), got {len(values)}")
        target_pixels = target.float().flatten(1).sum(1)  # (B,)
        pred_pixels = pred.float().flatten(1).sum(1)  # (B,)
        pred_np = pred.detach().cpu().numpy() != 0  # (B, 1, H, W) bool
        target_np = target.detach().cpu().numpy() != 0
        new = []
        for i, (d, t_px, p_px) in enumerate(zip(dice.tolist(), target_pixels.tolist(), pred_pixels.tolist())):
            target_empty = t_px == 0
            spacing = _check_spacing(spacings[i], f"spacings[{i}]") if spacings is not None else None
            agreement = agreements[i] if agreements is not None else None
            mask_probability = mask_probabilities[i] if mask_probabilities is not None else None
            for name, value in ((f"agreements[{i}]", agreement), (f"mask_probabilities[{i}]", mask_probability)):
                if value is not None and not 0.0 <= value <= 1.0:
                    raise ValueError(f"{name} must be in [0, 1], got {value}")
            true_lesions, pred_lesions = match_lesions(pred_np[i, 0], target_np[i, 0], iou_threshold=self.lesion_iou)
            hd95, nsd = boundary_metrics(pred_np[i, 0], target_np[i, 0], spacing=spacing, tolerance=self.nsd_tolerance)
            # fractions in float64 from exact pixel counts (float32 sums are exact up to 2**24 pixels)
            area = float(t_px / (H * W) if area_fractions is None else area_fractions[i])
            new.append(
                SampleRecord(
                    id=str(ids[i]),
                    prompt=str(prompts[i]),
                    area_fraction=area,
                    bucket=EMPTY_BUCKET if target_empty else size_bucket(area),
                    dice=float(d),
                    iou=float(d / (2.0 - d)),  # IoU = D / (2 - D) for binary masks
                    target_empty=bool(target_empty),
                    pred_area_fraction=float(p_px / (H * W)),
                    hd95=hd95,
                    nsd=nsd,
                    distance_unit="px" if spacing is None else "mm",
                    true_lesions=tuple(true_lesions),
                    pred_lesions=tuple(pred_lesions),
                    agreement=None if agreement is None else float(agreement),
                    mask_probability=None if mask_probability is None else float(mask_probability),
                )
            )
        self.records.extend(new)
        return new

    def compute(self) -> dict[str, Any]:
        """The report, a JSON-serialisable dict (``None`` where a subset has no sample):

        - ``"n"``: number of samples; ``"n_empty"``: how many have an empty target
        - ``"dice"``, ``"dice_std"``: mean and population std of Dice over all samples
        - ``"dice_by_size"``, ``"dice_std_by_size"``, ``"n_by_size"``: the same per bucket
          ``{"tiny", "small", "large"}`` (empty targets are in no bucket)
        - ``"failure_rate"``: among samples with a non-empty target, the fraction with Dice 0;
          ``"n_failures"``: their number; ``"failures_by_size"``: the rate per bucket
        - ``"iou"``: mean IoU over all samples
        - ``"lesion_detection"``: ``connectivity`` (8), ``match``, ``n_images``, ``n_true``, ``n_detected``,
          ``sensitivity``, ``n_pred``, ``n_false_positive``, ``precision``, ``fp_per_image``, and the same
          counts ``"by_size"`` (see :func:`summarize_lesions`)
        - ``"boundary"``: ``unit`` ("px" or "mm"), ``nsd_tolerance``, ``hd95`` (mean), ``hd95_median``,
          ``hd95_std``, ``n_hd95``, ``n_hd95_missing``, ``hd95_missing`` (by reason), ``nsd``, ``nsd_std``,
          ``n_nsd``, ``n_nsd_missing``, and the same ``"by_size"``
        - ``"uncertainty"``: ``"agreement"``: :func:`confidence_vs_dice` of the agreement of K passes over the
          samples that have one (else ``None``); ``"mask_probability"``: the same for the mean probability
          inside the mask, over the samples with a non-empty mask (else ``None``), a baseline to compare with
        - ``"samples"``: the per-sample records as dicts (:meth:`SampleRecord.to_dict`)
        """
        return summarize(self.records, lesion_iou=self.lesion_iou, nsd_tolerance=self.nsd_tolerance, poor_dice=self.poor_dice)


# ------------------------------------------------------------------------------------------------ Markdown


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _lesion_table(det: dict[str, Any]) -> list[str]:
    lines = [
        f"### Lesion detection ({det['connectivity']}-connected components; match: {det['match']})",
        "",
        "| lesion size | true lesions | detected | sensitivity | predicted lesions | false positives | FP / image | precision |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [("overall", det)] + [(b, det["by_size"][b]) for b in SIZE_BUCKETS]
    for name, c in rows:
        lines.append(
            f"| {name} | {c['n_true']} | {c['n_detected']} | {_fmt(c['sensitivity'])} | {c['n_pred']} | "
            f"{c['n_false_positive']} | {_fmt(c['fp_per_image'], 2)} | {_fmt(c['precision'])} |"
        )
    lines += ["", f"{det['n_images']} images. Sensitivity by the true lesion's size; false positives and precision "
                  "by the predicted lesion's size."]  # fmt: skip
    return lines


def _boundary_table(bd: dict[str, Any]) -> list[str]:
    unit, tol = bd["unit"], bd["nsd_tolerance"]
    lines = [
        f"### Boundary (HD95 in {unit}; NSD at {tol:g} {unit})",
        "",
        "| subset | HD95 mean (median) | n | HD95 missing | NSD (mean ± std) | n | NSD missing |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [("overall", bd)] + [(b, bd["by_size"][b]) for b in SIZE_BUCKETS]
    for name, c in rows:
        hd = "–" if c["hd95"] is None else f"{c['hd95']:.2f} ({c['hd95_median']:.2f})"
        nsd = "–" if c["nsd"] is None else f"{_fmt(c['nsd'])} ± {_fmt(c['nsd_std'])}"
        lines.append(f"| {name} | {hd} | {c['n_hd95']} | {c['n_hd95_missing']} | {nsd} | {c['n_nsd']} | {c['n_nsd_missing']} |")
    m = bd["hd95_missing"]
    lines += ["", f"HD95 is missing (not 0) where a mask is empty: {m['empty_prediction']} empty predictions, "
                  f"{m['empty_target']} empty targets, {m['both_empty']} both empty. NSD is 0 where exactly one mask is "
                  "empty and missing where both are."]  # fmt: skip
    return lines


def _confidence_table(u: dict[str, Any], heading: str, score: str) -> list[str]:
    poor = f"Dice < {u['poor_dice']:g}"
    lines = [f"### {heading} as a predictor of a poor mask ({poor})", ""]

    def value(key: str) -> str:
        return _fmt(u[key]) if u[key] is not None else f"– ({u['missing'][key]})"

    lines += [
        f"- samples: {u['n']}, poor masks: {u['n_poor']}; {score}: mean {_fmt(u['score_mean'])} ± {_fmt(u['score_std'])}",
        f"- Pearson r ({score}, Dice): {value('pearson')}; Spearman rho: {value('spearman')}",
        f"- AUROC of 1 - {score} for {poor}: {value('auroc')} (0.5: no better than chance)",
        "",
        f"| {score} | n | Dice | share {poor} | share Dice 0 |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['band']} | {r['n']} | {_fmt(r['dice'])} | {_fmt(r['poor_rate'])} | {_fmt(r['failure_rate'])} |"
              for r in u["by_band"]]  # fmt: skip
    if u.get("by_quartile"):
        lines += ["", f"| quarter by {score} | n | {score} range | Dice | share {poor} |", "|---|---:|---:|---:|---:|"]
        for r in u["by_quartile"]:
            span = "–" if r["score_min"] is None else f"{r['score_min']:.4f}-{r['score_max']:.4f}"
            name = {1: "1 (lowest)", 4: "4 (highest)"}.get(r["quartile"], str(r["quartile"]))
            lines.append(f"| {name} | {r['n']} | {span} | {_fmt(r['dice'])} | {_fmt(r['poor_rate'])} |")
    return lines


def report_to_markdown(report: dict[str, Any], *, title: str | None = None) -> str:
    """The report as Markdown: a table with rows overall / tiny / small / large (and empty targets when
    there are any), columns n, Dice (mean ± std) and failure rate; then, when the report has them, the
    lesion detection, boundary (HD95, NSD) and confidence (agreement, mask probability) tables. Numbers with 3 decimals (distances 2),
    "–" where undefined.

    Args:
        report: a dict from :meth:`SegmentationReport.compute`; ``dice_std*`` and the keys of the later
            tables are optional (reports of older versions render).
        title: an optional heading placed above the table.
    """
    for key in ("n", "dice", "dice_by_size", "n_by_size", "failure_rate", "failures_by_size"):
        if key not in report:
            raise ValueError(f"report has no {key!r} key; pass the dict of SegmentationReport.compute()")

    def dice_cell(mean: float | None, std: float | None) -> str:
        return _fmt(mean) if mean is None or std is None else f"{_fmt(mean)} ± {_fmt(std)}"

    stds = report.get("dice_std_by_size", {})
    rows = [("overall", report["n"], dice_cell(report["dice"], report.get("dice_std")), _fmt(report["failure_rate"]))]
    for b in SIZE_BUCKETS:
        rows.append(
            (
                b,
                report["n_by_size"].get(b, 0),
                dice_cell(report["dice_by_size"].get(b), stds.get(b)),
                _fmt(report["failures_by_size"].get(b)),
            )
        )
    n_empty = report.get("n_empty", 0)
    if n_empty and "samples" in report:
        empty = [s["dice"] for s in report["samples"] if s["target_empty"]]
        rows.append(("empty target", n_empty, dice_cell(_mean(empty), _std(empty)), "–"))

    lines = []
    if report.get("existence"):
        e = report["existence"]
        lines_existence = [
            "",
            f"Existence head ({e['n_present']} with the target, {e['n_absent']} without): AUROC {_fmt(e['auroc'])}, "
            f"sensitivity {_fmt(e['sensitivity'])}, specificity {_fmt(e['specificity'])} at {e['threshold']:g}; "
            f"Dice on the images with the target {_fmt(report.get('dice_with_target'))}.",
        ]
    else:
        lines_existence = []
    if title:
        lines += [f"## {title}", ""]
    lines += ["| subset | n | Dice (mean ± std) | failure rate |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {n} | {dice} | {fail} |" for name, n, dice, fail in rows]
    lines += [
        "",
        f"Mean IoU: {_fmt(report.get('iou'))}. Size buckets by target area: tiny < {TINY_MAX:g}, "
        f"small < {SMALL_MAX:g}, large >= {SMALL_MAX:g}. Failure: non-empty target with Dice 0.",
    ]
    if report.get("lesion_detection"):
        lines += [""] + _lesion_table(report["lesion_detection"])
    if report.get("boundary"):
        lines += [""] + _boundary_table(report["boundary"])
    uncertainty = report.get("uncertainty") or {}
    if uncertainty.get("agreement"):
        k = report.get("sampling_passes")
        heading = f"Agreement of {k} sampled passes" if k else "Agreement of the sampled passes"
        lines += [""] + _confidence_table(uncertainty["agreement"], heading, "agreement")
    if uncertainty.get("mask_probability"):
        heading = "Mean probability inside the mask (masks that are not empty)"
        lines += [""] + _confidence_table(uncertainty["mask_probability"], heading, "mask probability")
    lines += lines_existence
    return "\n".join(lines) + "\n"


def write_report(
    report: dict[str, Any], path_json: str | os.PathLike, *, title: str | None = None
) -> tuple[Path, Path]:
    """Write a report as JSON at ``path_json`` and as Markdown beside it (same stem, ``.md``), atomically.

    Parent directories are created. Each file is written to a temporary file in its directory first,
    then moved into place, so a reader never sees a half-written report.

    Returns:
        ``(json_path, markdown_path)``.

    Raises:
        ValueError: ``path_json`` does not end with ``.json``; the report holds NaN or infinity.
        TypeError: the report holds values JSON cannot encode (nothing is written then).
    """
    path_json = Path(path_json)
    if path_json.suffix.lower() != ".json":
        raise ValueError(f"path_json must end with .json, got {str(path_json)!r}")
    path_md = path_json.with_suffix(".md")
    text_json = json.dumps(report, indent=2, allow_nan=False) + "\n"  # fails before anything is written
    text_md = report_to_markdown(report, title=title)
    path_json.parent.mkdir(parents=True, exist_ok=True)
    with atomic_paths(path_json, path_md) as (tmp_json, tmp_md):
        tmp_json.write_text(text_json, encoding="utf-8")
        tmp_md.write_text(text_md, encoding="utf-8")
    return path_json, path_md


# ---------------------------------------------------------------------------------------- model inference


@torch.inference_mode()
def predict_passes(
    model: Any, images: Sequence[torch.Tensor], prompts: Sequence[str], *, image_size: int, generators: Sequence[torch.Generator]
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Probability maps of K sampled passes, one per generator, for a batch of images (3, H_i, W_i) 0-255.

    The images are encoded once and decoded K times. With one generator the maps are those of
    :func:`boltzformer.predict.predict_probabilities` (same values, bit for bit).

    Returns:
        ``(probabilities, existence)``: one (K, H_i, W_i) float tensor of probabilities per image, on the
        CPU, on the image's own grid; and (B, K) probabilities that the target is in the image, or
        ``None`` for a model without an existence head.
    """
    from boltzformer.transforms import from_model_output, to_model_input

    inputs, geoms = zip(*(to_model_input(img, image_size) for img in images))
    features = model.encode_image(torch.stack(inputs).to(model.device))
    outs = [model.decode(features, list(prompts), generator=g) for g in generators]
    logits = torch.stack([o.logits.float() for o in outs], 1)[:, :, 0]  # K x (B,1,h,w) -> B x K x h x w
    probs = [from_model_output(lg, geom).sigmoid().cpu() for lg, geom in zip(logits, geoms)]
    if getattr(outs[0], "existence_logits", None) is None:
        return probs, None
    existence = torch.stack([o.existence_logits.float() for o in outs], 1).sigmoid().cpu()  # K x (B,) -> B x K
    return probs, existence


def evaluate_model(
    model: Any,
    dataset: Any,
    *,
    batch_size: int = 16,
    seed: int = 0,
    samples: int = 1,
    threshold: float = 0.5,
    existence_threshold: float = 0.5,
    limit: int | None = None,
    lesion_iou: float | None = None,
    nsd_tolerance: float = NSD_TOLERANCE,
    poor_dice: float = POOR_DICE,
    progress: bool = False,
) -> dict[str, Any]:
    """Run ``model`` over ``dataset`` and score every sample at its original resolution.

    Each image is padded to a square and resized to the model's input, and the prediction is mapped
    back to the image's own grid, so every metric is measured against the original mask (distances in
    mm where a sample has a ``"spacing"`` (row, col) in mm, else in pixels).

    With ``samples=K > 1`` every image gets K passes of the sampled attention; pass k draws from a
    generator seeded ``seed + k`` (carried from batch to batch), the mask scored is the mean of the K
    probability maps above ``threshold``, and each sample records the agreement of the K thresholded
    masks (:func:`pairwise_agreement`); the report's ``"uncertainty"`` says how well agreement predicts
    a poor mask, next to the mean probability inside the mask (recorded for any K). ``samples=1`` is the plain single pass with a generator seeded ``seed``. The same
    ``seed``, ``samples`` and ``batch_size`` give a bit-identical report. For a model with an existence
    head the mask is empty where the mean probability that the target is there is below
    ``existence_threshold``, as :class:`~boltzformer.predict.Predictor` does.

    Args:
        model: a :class:`~boltzformer.model.BoltzFormer`.
        dataset: items with ``"image"`` (3, H, W) 0-255, ``"mask"`` (1, H, W), ``"prompt"``, ``"id"``,
            and optionally ``"spacing"``.
        batch_size: images per forward pass.
        seed: seed of the sampled attention.
        samples: K, passes per image.
        threshold: probability above which a pixel is in the mask.
        existence_threshold: with an existence head, the probability of presence below which the mask is empty.
        limit: evaluate the first ``limit`` items only.
        lesion_iou, nsd_tolerance, poor_dice: as in :class:`SegmentationReport`.
        progress: show a progress bar.

    Returns:
        The report dict of :meth:`SegmentationReport.compute`, plus ``"seed"``, ``"sampling_passes"`` (K),
        ``"pass_seeds"``, ``"threshold"`` and ``"existence_threshold"`` (None without an existence head).

    Raises:
        ValueError: a bad argument, or an empty dataset.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1 (passes per image), got {samples!r}")
    for name, value in (("threshold", threshold), ("existence_threshold", existence_threshold)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    report = SegmentationReport(lesion_iou=lesion_iou, nsd_tolerance=nsd_tolerance, poor_dice=poor_dice)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n <= 0:
        raise ValueError("the dataset to evaluate is empty")
    image_size = model.config.image_size
    generators = [torch.Generator(device=model.device).manual_seed(seed + k) for k in range(samples)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="evaluate" if samples == 1 else f"evaluate ({samples} passes)", unit="img")
    model.eval()
    gated = False
    presence: list[tuple[float, bool]] = []  # (mean existence probability, the target is there) per sample
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        probs, existence = predict_passes(
            model, [s["image"] for s in items], [s["prompt"] for s in items], image_size=image_size, generators=generators
        )
        gated = existence is not None
        for i, (s, p) in enumerate(zip(items, probs)):  # p: K x H x W
            agreement = pairwise_agreement(p > threshold) if samples > 1 else None
            mean = p.mean(0)  # H x W
            pred = mean > threshold
            if existence is not None:
                presence.append((float(existence[i].mean()), bool((s["mask"] >= 0.5).any())))
            if existence is not None and float(existence[i].mean()) < existence_threshold:
                pred = torch.zeros_like(pred)  # the existence head says the target is absent
            report.update(
                pred[None, None],
                (s["mask"] >= 0.5)[None],
                ids=[s["id"]],
                prompts=[s["prompt"]],
                spacings=[s.get("spacing")],
                agreements=[agreement],
                mask_probabilities=[float(mean[pred].mean()) if pred.any() else None],
            )
        if bar is not None:
            bar.update(len(items))
    if bar is not None:
        bar.close()
    result = report.compute()
    result["seed"] = seed
    result["sampling_passes"] = samples
    result["pass_seeds"] = [seed + k for k in range(samples)]
    result["threshold"] = threshold
    result["existence_threshold"] = existence_threshold if gated else None  # None: the model has no existence head
    result["existence"] = existence_summary(presence, existence_threshold) if gated else None
    with_target = [x["dice"] for x in result["samples"] if not x["target_empty"]]
    result["dice_with_target"] = _mean(with_target)  # Dice on the images that hold their target
    return result


def existence_summary(presence: Sequence[tuple[float, bool]], threshold: float = 0.5) -> dict[str, Any]:
    """How well the existence head tells images with the target from images without it.

    Args:
        presence: per sample, (probability that the target is there, whether it is).
        threshold: the probability from which the target is reported present.

    Returns:
        ``"auroc"`` (None when every sample, or none, holds its target), ``"accuracy"``,
        ``"sensitivity"`` (targets there and reported), ``"specificity"`` (targets absent and not
        reported), ``"n_present"``, ``"n_absent"``, ``"threshold"``.
    """
    probs = [p for p, _ in presence]
    there = [t for _, t in presence]
    said = [p >= threshold for p in probs]
    n_present, n_absent = sum(there), len(there) - sum(there)
    return {
        "auroc": failure_auroc(probs, there) if presence else None,
        "accuracy": _ratio(sum(a == b for a, b in zip(said, there)), len(there)),
        "sensitivity": _ratio(sum(a and b for a, b in zip(said, there)), n_present),
        "specificity": _ratio(sum(not a and not b for a, b in zip(said, there)), n_absent),
        "n_present": n_present,
        "n_absent": n_absent,
        "threshold": threshold,
    }
