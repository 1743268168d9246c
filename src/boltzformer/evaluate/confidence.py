"""Confidence as a failure signal: agreement of K sampled passes, AUROC, confidence against Dice, and the
existence head's summary."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from boltzformer.evaluate.metrics import _mean, _ratio, _std
from boltzformer.predict.results import agreement

POOR_DICE = 0.5  # a mask with Dice below this is "poor": the event agreement should predict
AGREEMENT_BANDS = (0.0, 0.5, 0.8, 0.95, 1.0)  # edges of the score bands of the report (last band closed)


# ---------------------------------------------------------------------------- agreement as a failure signal


def pairwise_agreement(masks: Any) -> float:
    """Mean pairwise Dice of K binary masks (K, H, W): 1.0 when every pass agrees, two empty masks agree.

    The predictor's own score (:func:`boltzformer.predict.results.agreement`, what ``segment(...,
    samples=K)`` returns), with the input checked; equal to the mean of the report's Dice
    (:func:`~boltzformer.evaluate.metrics.dice_per_sample`) over the pairs (tested).

    Raises:
        ValueError: not (K, H, W) with K >= 2, or not binary.
    """
    m = torch.as_tensor(masks)
    if m.dim() != 3 or m.shape[0] < 2:
        raise ValueError(f"masks must have shape (K, H, W) with K >= 2, got {tuple(m.shape)}")
    if m.dtype != torch.bool and bool(((m != 0) & (m != 1)).any()):
        raise ValueError("masks must be binary (bool or 0/1); threshold probabilities first")
    return agreement(m.bool())


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
