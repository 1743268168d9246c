"""Reports: :class:`SegmentationReport` (accumulates records over batches), the report as Markdown tables,
and JSON + Markdown on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from boltzformer.io.atomic import atomic_paths
from boltzformer.evaluate.boundary import NSD_TOLERANCE, _check_spacing, _check_tolerance, boundary_metrics
from boltzformer.evaluate.confidence import POOR_DICE
from boltzformer.evaluate.detection import _check_iou_threshold, match_lesions
from boltzformer.evaluate.metrics import (
    EMPTY_BUCKET,
    SIZE_BUCKETS,
    SMALL_MAX,
    TINY_MAX,
    _mean,
    _std,
    dice_per_sample,
    size_bucket,
)
from boltzformer.evaluate.records import SampleRecord, summarize


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
        probabilities: Sequence[Any] | None = None,
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
            probabilities: B (H, W) probability maps the masks were thresholded from (or ``None`` each): they
                score every lesion, for the report's FROC (:func:`~boltzformer.evaluate.detection.froc`).

        Returns:
            The B new records.

        Raises:
            ValueError: as :func:`dice_per_sample`; a per-sample argument not of length B; a bad spacing, or
                an agreement or mask probability outside [0, 1].
        """
        dice = dice_per_sample(pred, target)  # (B,)
        B, _, H, W = target.shape
        per_sample = (("ids", ids), ("prompts", prompts), ("area_fractions", area_fractions), ("spacings", spacings),
                      ("agreements", agreements), ("mask_probabilities", mask_probabilities),
                      ("probabilities", probabilities))  # fmt: skip
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
            true_lesions, pred_lesions = match_lesions(pred_np[i, 0], target_np[i, 0], iou_threshold=self.lesion_iou,
                                                       probability=None if probabilities is None else probabilities[i])
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
          counts ``"by_size"``, and ``"froc"`` where ``update`` was given the probabilities (see
          :func:`summarize_lesions`)
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
    roc = det.get("froc")
    if roc:
        points = ", ".join(f"{s:.3f} at {r:g}" for r, s in zip(roc["fp_rates"], roc["sensitivity"]))
        lines += ["", f"FROC (predicted lesions kept by their highest probability): sensitivity {points} false positives "
                      f"per image; CPM (their mean) {roc['cpm']:.3f}."]
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
    from boltzformer.io.atomic import json_safe

    # fails before anything is written; UTF-8 for any file name (json_safe)
    text_json = json.dumps(json_safe(report), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    text_md = report_to_markdown(report, title=title)
    path_json.parent.mkdir(parents=True, exist_ok=True)
    with atomic_paths(path_json, path_md) as (tmp_json, tmp_md):
        tmp_json.write_text(text_json, encoding="utf-8")
        tmp_md.write_text(text_md, encoding="utf-8")
    return path_json, path_md
