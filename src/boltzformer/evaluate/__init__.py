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
- Lesions are 8-connected components (:func:`boltzformer.predict.lesions.label_components`). A true lesion is
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

Modules: :mod:`~boltzformer.evaluate.metrics` (the one Dice, mask checks; the size buckets come from
:mod:`boltzformer.sizes`), :mod:`~boltzformer.evaluate.detection`
(lesions), :mod:`~boltzformer.evaluate.boundary` (HD95, NSD), :mod:`~boltzformer.evaluate.confidence` (agreement,
AUROC, existence head), :mod:`~boltzformer.evaluate.records` (:class:`SampleRecord`, :func:`summarize`),
:mod:`~boltzformer.evaluate.report` (:class:`SegmentationReport`, Markdown, files), :mod:`~boltzformer.evaluate.runner`
(model inference). Every name of ``__all__`` is importable from ``boltzformer.evaluate``.
"""

from boltzformer.evaluate.boundary import NSD_TOLERANCE, boundary_metrics, summarize_boundary
from boltzformer.evaluate.confidence import (
    AGREEMENT_BANDS,
    POOR_DICE,
    confidence_vs_dice,
    existence_summary,
    failure_auroc,
    pairwise_agreement,
)
from boltzformer.evaluate.detection import LesionOutcome, match_lesions, summarize_lesions
from boltzformer.evaluate.metrics import SIZE_BUCKETS, dice_per_sample, size_bucket
from boltzformer.evaluate.records import SampleRecord, summarize
from boltzformer.evaluate.report import SegmentationReport, report_to_markdown, write_report
from boltzformer.evaluate.runner import evaluate_model, predict_passes

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
