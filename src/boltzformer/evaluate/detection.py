"""Lesion detection: the connected components of a predicted and a true mask, matched and summarised."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from boltzformer.evaluate.metrics import SIZE_BUCKETS, _as_bool_2d, _ratio, size_bucket
from boltzformer.predict.lesions import label_components

if TYPE_CHECKING:
    from boltzformer.evaluate.records import SampleRecord

CONNECTIVITY = 8  # lesions are the 8-connected components of boltzformer.predict.lesions.label_components
# false positives per image at which the FROC is read: LUNA16's seven points (their mean sensitivity is its CPM)
FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


# ------------------------------------------------------------------------------------------ lesion detection


@dataclass(frozen=True)
class LesionOutcome:
    """One connected component of a true or a predicted mask, and whether it was matched."""

    area_px: int  # pixels of the component
    area_fraction: float  # area_px / image pixels
    bucket: str  # size_bucket(area_fraction)
    matched: bool  # a true lesion: detected; a predicted lesion: a true positive (not a false positive)
    # a predicted lesion: its highest probability; a true lesion: the highest score of the predicted lesions
    # that detect it (None: undetected, or the probabilities were not given)
    score: float | None = None


def _check_iou_threshold(iou_threshold: float | None) -> None:
    if iou_threshold is not None and not (isinstance(iou_threshold, (int, float)) and 0.0 <= iou_threshold < 1.0):
        raise ValueError(f"lesion_iou must be None (any overlap) or a number in [0, 1), got {iou_threshold!r}")


def match_lesions(
    pred: Any, target: Any, *, iou_threshold: float | None = None, probability: Any = None
) -> tuple[list[LesionOutcome], list[LesionOutcome]]:
    """Match the lesions (8-connected components) of a predicted and a true mask of one image.

    A true lesion is detected when some predicted lesion overlaps it by one pixel or more (default), or
    has IoU > ``iou_threshold`` with it; a predicted lesion is a true positive when it matches some true
    lesion, else a false positive. Matching is not one-to-one (see the package docstring, :mod:`boltzformer.evaluate`).

    Args:
        pred: (H, W) predicted mask, bool or 0/1 (numpy or torch).
        target: (H, W) true mask, bool or 0/1.
        iou_threshold: ``None`` for "any overlap", or t in [0, 1) for "IoU > t".
        probability: (H, W) probabilities the mask was thresholded from: each predicted lesion is scored by
            its highest one, each detected true lesion by the best score among the lesions that detect it
            (what :func:`froc` ranks).

    Returns:
        ``(true_lesions, predicted_lesions)``, each a list of :class:`LesionOutcome` in the raster order
        of the component's first pixel.

    Raises:
        ValueError: masks not 2-D, of different shapes or not binary; ``iou_threshold`` out of range;
            ``probability`` not of the masks' shape or outside [0, 1].

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
    if probability is not None:
        if hasattr(probability, "detach"):  # a torch tensor
            probability = probability.detach().cpu().numpy()
        probability = np.asarray(probability, dtype=np.float64)
        if probability.shape != pred.shape:
            raise ValueError(f"probability must have the masks' shape {pred.shape}, got {probability.shape}")
        if probability.size and not (0.0 <= probability.min() and probability.max() <= 1.0):
            raise ValueError("probability must be in [0, 1]")
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
    p_score: list[float | None] = [None] * n_p
    t_score: list[float | None] = [None] * n_t
    if probability is not None:
        peak = np.zeros(n_p)
        np.maximum.at(peak, p_lab[p_lab > 0] - 1, probability[p_lab > 0])
        p_score = peak.tolist()
        t_score = [float(peak[row].max()) if row.any() else None for row in match]

    def outcomes(areas: np.ndarray, matched: np.ndarray, scores: list[float | None]) -> list[LesionOutcome]:
        return [
            LesionOutcome(area_px=int(a), area_fraction=float(a / pixels), bucket=size_bucket(float(a / pixels)),
                          matched=bool(m), score=sc)
            for a, m, sc in zip(areas.tolist(), matched.tolist(), scores)
        ]

    return outcomes(t_area, match.any(axis=1), t_score), outcomes(p_area, match.any(axis=0), p_score)


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


def froc(true: Sequence[LesionOutcome], found: Sequence[LesionOutcome], n_images: int,
         fp_rates: Sequence[float] = FROC_FP_RATES) -> dict[str, Any] | None:
    """The free-response ROC of scored lesions: keep the predicted lesions whose score is at least s, for
    every s; read the highest sensitivity reached at no more than each of ``fp_rates`` false positives per
    image, and their mean (LUNA16's CPM with the default rates).

    A true lesion is detected at s when a predicted lesion that detects it scores >= s (its ``score``, from
    :func:`match_lesions` with ``probability``). Only lesions of the thresholded mask are ranked, so the
    curve ends at the mask's own operating point: sensitivity never exceeds the unfiltered one.

    Returns:
        ``{"fp_rates", "sensitivity" (one per rate), "cpm", "score"}``, or None when there is no true
        lesion or some predicted lesion has no score (probabilities not given).

    Example:
        >>> t = [LesionOutcome(9, 0.01, "small", True, 0.9), LesionOutcome(9, 0.01, "small", False)]
        >>> f = [LesionOutcome(9, 0.01, "small", True, 0.9), LesionOutcome(4, 0.004, "small", False, 0.95)]
        >>> froc(t, f, n_images=2, fp_rates=(0.25, 0.5))["sensitivity"]  # at 0.5 FP/image: keep both
        [0.0, 0.5]
    """
    if not true or any(x.score is None for x in found):
        return None
    found_scores = np.array([x.score for x in found], dtype=np.float64)
    false_pos = np.array([not x.matched for x in found], dtype=bool)
    true_scores = np.array([-np.inf if x.score is None else x.score for x in true], dtype=np.float64)
    thresholds = np.unique(found_scores)[::-1]  # every operating point, strictest first
    # counts of scores >= each threshold by binary search (a speckled mask has tens of thousands of lesions)
    fp_scores, t_sorted = np.sort(found_scores[false_pos]), np.sort(true_scores)
    fp = (len(fp_scores) - np.searchsorted(fp_scores, thresholds, side="left")) / n_images
    sens = (len(t_sorted) - np.searchsorted(t_sorted, thresholds, side="left")) / len(t_sorted)
    sens, fp = np.concatenate([[0.0], sens]), np.concatenate([[0.0], fp])
    at = [float(sens[fp <= r].max()) for r in fp_rates]
    return {"fp_rates": [float(r) for r in fp_rates], "sensitivity": at, "cpm": float(np.mean(at)),
            "score": "highest probability of each predicted lesion"}


def summarize_lesions(records: Sequence[SampleRecord], *, iou_threshold: float | None = None) -> dict[str, Any]:
    """Lesion-level detection over records: overall, ``"by_size"`` (true lesions by their own size for
    sensitivity; predicted lesions by theirs for precision and false positives per image), and ``"froc"``
    (:func:`froc`; None where the records' lesions carry no scores)."""
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
        "froc": froc(true, found, n),
    }
