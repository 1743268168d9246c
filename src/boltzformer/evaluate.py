"""Segmentation metrics and reports, broken down by target size (tiny / small / large objects).

- :func:`size_bucket`: target area fraction -> ``"tiny"`` (< 0.1 %), ``"small"`` (0.1-1 %), ``"large"`` (>= 1 %)
- :func:`dice_per_sample`: binary masks (B, 1, H, W) -> Dice (B,), via MONAI, with fixed empty-target rules
- :class:`SegmentationReport`: accumulates one :class:`SampleRecord` per sample; ``compute()`` gives the
  report dict (overall and per-size Dice, failure rate, IoU, the per-sample records)
- :func:`report_to_markdown`, :func:`write_report`: the report as a Markdown table, and JSON + Markdown on disk

Conventions: a sample whose target is empty scores Dice 1 when the prediction is empty too and 0 otherwise;
such samples count in the overall numbers but in no size bucket (their bucket is ``"empty"``). A *failure*
is a sample with a non-empty target and Dice exactly 0 (the object was missed entirely).

Model inference is not here: a caller runs the model and feeds binary masks to :class:`SegmentationReport`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from boltzformer.atomic import atomic_paths

__all__ = [
    "SIZE_BUCKETS",
    "SampleRecord",
    "SegmentationReport",
    "dice_per_sample",
    "report_to_markdown",
    "size_bucket",
    "summarize",
    "write_report",
    "evaluate_model",
]

SIZE_BUCKETS = ("tiny", "small", "large")
TINY_MAX = 0.001  # area fraction below which a target is "tiny" (< 0.1 % of the image)
SMALL_MAX = 0.01  # area fraction below which a target is "small" (< 1 % of the image)
EMPTY_BUCKET = "empty"  # bucket of samples whose target mask is empty


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


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _std(values: Sequence[float]) -> float | None:
    return float(np.std(values)) if len(values) else None  # population std (ddof=0)


def _failure_rate(records: Sequence[SampleRecord]) -> float | None:
    with_target = [r for r in records if not r.target_empty]
    if not with_target:
        return None
    return sum(1 for r in with_target if r.dice == 0.0) / len(with_target)


def summarize(records: Sequence[SampleRecord]) -> dict[str, Any]:
    """The report dict of a list of records (see :meth:`SegmentationReport.compute` for its keys)."""
    by_size = {b: [r for r in records if r.bucket == b] for b in SIZE_BUCKETS}
    with_target = [r for r in records if not r.target_empty]
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
        "samples": [asdict(r) for r in records],
    }


class SegmentationReport:
    """Accumulates per-sample results over batches and summarises them by target size.

    Example:
        >>> report = SegmentationReport()
        >>> t = torch.zeros(2, 1, 8, 8); t[:, 0, :2, :2] = 1
        >>> report.update(t.clone(), t, ids=["a", "b"], prompts=["nodule", "nodule"])  # doctest: +ELLIPSIS
        [...]
        >>> report.compute()["dice"]
        1.0
    """

    def __init__(self) -> None:
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
    ) -> list[SampleRecord]:
        """Score one batch and add its records.

        Args:
            pred: (B, 1, H, W) predicted masks, bool or 0/1 (threshold the model's probabilities first).
            target: (B, 1, H, W) target masks, bool or 0/1.
            ids: B sample ids.
            prompts: B text prompts.
            area_fractions: B target area fractions at the original resolution, when ``target`` was resized;
                by default they are computed from ``target``.

        Returns:
            The B new records.

        Raises:
            ValueError: as :func:`dice_per_sample`, or ``ids`` / ``prompts`` / ``area_fractions`` not of length B.
        """
        dice = dice_per_sample(pred, target)  # (B,)
        B, _, H, W = target.shape
        for name, values in (("ids", ids), ("prompts", prompts), ("area_fractions", area_fractions)):
            if values is not None and len(values) != B:
                raise ValueError(f"{name} must have one entry per sample (B={B}), got {len(values)}")
        target_pixels = target.float().flatten(1).sum(1)  # (B,)
        pred_pixels = pred.float().flatten(1).sum(1)  # (B,)
        new = []
        for i, (d, t_px, p_px) in enumerate(zip(dice.tolist(), target_pixels.tolist(), pred_pixels.tolist())):
            target_empty = t_px == 0
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
        - ``"samples"``: the per-sample records as dicts (fields of :class:`SampleRecord`)
        """
        return summarize(self.records)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def report_to_markdown(report: dict[str, Any], *, title: str | None = None) -> str:
    """A Markdown table of a report: rows overall / tiny / small / large (and empty targets when there are any),
    columns n, Dice (mean ± std) and failure rate; numbers with 3 decimals, "–" where undefined.

    Args:
        report: a dict from :meth:`SegmentationReport.compute`; ``dice_std*`` keys are optional.
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
    if title:
        lines += [f"## {title}", ""]
    lines += ["| subset | n | Dice (mean ± std) | failure rate |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {n} | {dice} | {fail} |" for name, n, dice, fail in rows]
    lines += [
        "",
        f"Mean IoU: {_fmt(report.get('iou'))}. Size buckets by target area: tiny < {TINY_MAX:g}, "
        f"small < {SMALL_MAX:g}, large >= {SMALL_MAX:g}. Failure: non-empty target with Dice 0.",
    ]
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
        ValueError: ``path_json`` does not end with ``.json``.
        TypeError: the report holds values JSON cannot encode (nothing is written then).
    """
    path_json = Path(path_json)
    if path_json.suffix.lower() != ".json":
        raise ValueError(f"path_json must end with .json, got {str(path_json)!r}")
    path_md = path_json.with_suffix(".md")
    text_json = json.dumps(report, indent=2) + "\n"  # fails before anything is written
    text_md = report_to_markdown(report, title=title)
    path_json.parent.mkdir(parents=True, exist_ok=True)
    with atomic_paths(path_json, path_md) as (tmp_json, tmp_md):
        tmp_json.write_text(text_json, encoding="utf-8")
        tmp_md.write_text(text_md, encoding="utf-8")
    return path_json, path_md


def evaluate_model(
    model: Any,
    dataset: Any,
    *,
    batch_size: int = 16,
    seed: int = 0,
    threshold: float = 0.5,
    limit: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run ``model`` over ``dataset`` and score every sample at its original resolution.

    Each image is padded to a square and resized to the model's input, and the prediction is mapped
    back to the image's own grid, so Dice is measured against the original mask. The sampled
    attention is seeded with ``seed``: the same seed gives the same report.

    Returns:
        The report dict of :meth:`SegmentationReport.compute`, plus ``"seed"``.
    """
    from boltzformer.predict import predict_probabilities

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise ValueError("the dataset to evaluate is empty")
    image_size = model.config.image_size
    generator = torch.Generator(device=model.device).manual_seed(seed)
    report = SegmentationReport()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="evaluate", unit="img")
    model.eval()
    for start in range(0, n, batch_size):
        samples = [dataset[i] for i in range(start, min(n, start + batch_size))]
        probs = predict_probabilities(
            model, [s["image"] for s in samples], [s["prompt"] for s in samples], image_size=image_size, generator=generator
        )
        for s, p in zip(samples, probs):
            target = s["mask"] >= 0.5
            report.update((p > threshold)[None, None], target[None], ids=[s["id"]], prompts=[s["prompt"]])
        if bar is not None:
            bar.update(len(samples))
    if bar is not None:
        bar.close()
    result = report.compute()
    result["seed"] = seed
    return result
