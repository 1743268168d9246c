"""Per-sample records (:class:`SampleRecord`) and :func:`summarize`, the report dict of a list of them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from boltzformer.evaluate.boundary import NSD_TOLERANCE, summarize_boundary
from boltzformer.evaluate.confidence import POOR_DICE, confidence_vs_dice
from boltzformer.evaluate.detection import LesionOutcome, summarize_lesions
from boltzformer.evaluate.metrics import SIZE_BUCKETS, _mean, _std


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
