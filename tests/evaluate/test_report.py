"""Tests of boltzformer.evaluate.report: SegmentationReport's numbers, updates and checks, Markdown, files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from boltzformer.evaluate import SampleRecord, SegmentationReport, report_to_markdown, write_report
from tests.evaluate.evaluate_helpers import _square, masks


def test_report_numbers(report):
    r = report.compute()
    dice = [1.0, 0.0, 2 * 25 / 75, 1.0]
    assert r["n"] == 4 and r["n_empty"] == 1
    assert r["dice"] == pytest.approx(sum(dice) / 4)
    assert r["dice_by_size"] == {"tiny": 0.5, "small": pytest.approx(2 / 3), "large": None}
    assert r["n_by_size"] == {"tiny": 2, "small": 1, "large": 0}
    assert r["failure_rate"] == pytest.approx(1 / 3)  # 1 miss among 3 non-empty targets
    assert r["n_failures"] == 1
    assert r["failures_by_size"] == {"tiny": 0.5, "small": 0.0, "large": None}
    assert r["iou"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)  # IoU of c: 25 / 50
    assert r["dice_std_by_size"]["tiny"] == pytest.approx(0.5)
    assert [s["bucket"] for s in r["samples"]] == ["tiny", "tiny", "small", "empty"]
    b = r["samples"][1]
    assert b == {
        "id": "b",
        "prompt": "dot",
        "area_fraction": 0.0005,
        "bucket": "tiny",
        "dice": 0.0,
        "iou": 0.0,
        "target_empty": False,
        "pred_area_fraction": 0.0005,
        # two parallel 1x5 lines 90 rows and 85-94 columns apart: the 95th percentile of their 5 distances
        "hd95": pytest.approx(float(np.percentile([math.hypot(90, 90 - c) for c in range(5)], 95)), rel=1e-6),
        "nsd": 0.0,
        "distance_unit": "px",
        "true_lesions": [{"area_px": 5, "area_fraction": 0.0005, "bucket": "tiny", "matched": False, "score": None}],
        "pred_lesions": [{"area_px": 5, "area_fraction": 0.0005, "bucket": "tiny", "matched": False, "score": None}],
        "agreement": None,
        "mask_probability": None,
    }
    # plain Python values only, all the way down
    json.dumps(r, allow_nan=False)
    assert _leaves(r) and {type(x) for x in _leaves(r)} <= {int, float, str, bool, type(None)}


def _leaves(x):
    if isinstance(x, dict):
        return [y for v in x.values() for y in _leaves(v)]
    if isinstance(x, list):
        return [y for v in x for y in _leaves(v)]
    return [x]



def test_report_area_override_and_validation(report):
    t = masks(_square(0, 0, 2, 2), size=(10, 10))  # 4 / 100 px would be "large"
    (rec,) = report.update(t, t, ids=["e"], prompts=["dot"], area_fractions=[0.0002])
    assert rec.bucket == "tiny" and rec.area_fraction == 0.0002 and rec.dice == 1.0
    with pytest.raises(ValueError, match=r"ids must have one entry per sample \(B=1\), got 2"):
        report.update(t, t, ids=["e", "f"], prompts=["dot"])
    with pytest.raises(TypeError, match="SampleRecord"):
        report.add({"id": "x"})
    report.add(SampleRecord(id="x", prompt="p", area_fraction=0.5, bucket="large", dice=0.0, iou=0.0,
                            target_empty=False, pred_area_fraction=0.0))  # fmt: skip
    r = report.compute()
    assert r["n_by_size"]["large"] == 1 and r["failures_by_size"]["large"] == 1.0
    report.reset()
    assert len(report) == 0


def test_empty_report():
    r = SegmentationReport().compute()
    assert r["n"] == 0 and r["dice"] is None and r["failure_rate"] is None and r["samples"] == []
    assert "| overall | 0 | – | – |" in report_to_markdown(r)


def test_markdown_contains_the_numbers(report):
    r = report.compute()
    md = report_to_markdown(r, title="LIDC test")
    assert md.startswith("## LIDC test\n")
    assert f"| overall | 4 | {r['dice']:.3f} ± {r['dice_std']:.3f} | 0.333 |" in md
    assert "| tiny | 2 | 0.500 ± 0.500 | 0.500 |" in md
    assert "| small | 1 | 0.667 ± 0.000 | 0.000 |" in md
    assert "| large | 0 | – | – |" in md
    assert "| empty target | 1 | 1.000 ± 0.000 | – |" in md
    assert f"Mean IoU: {r['iou']:.3f}" in md
    # a report without stds (e.g. from an older run) still renders
    slim = {k: v for k, v in r.items() if not k.startswith("dice_std")}
    assert "| tiny | 2 | 0.500 | 0.500 |" in report_to_markdown(slim)
    with pytest.raises(ValueError, match="'dice_by_size'"):
        report_to_markdown({"n": 1, "dice": 1.0})


def test_write_report(tmp_path, report):
    r = report.compute()
    path = tmp_path / "runs" / "eval" / "report.json"
    got = write_report(r, path, title="t")
    assert got == (path, path.with_suffix(".md"))
    assert json.loads(path.read_text()) == r
    assert path.with_suffix(".md").read_text() == report_to_markdown(r, title="t")
    write_report(r, path)  # overwriting works
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json", "report.md"]  # no temp files left


def test_write_report_errors(tmp_path, report):
    with pytest.raises(ValueError, match=r"path_json must end with \.json"):
        write_report(report.compute(), tmp_path / "report.md")
    bad = dict(report.compute(), extra=torch.tensor(1.0))
    with pytest.raises(TypeError):
        write_report(bad, tmp_path / "out" / "report.json")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_report_uncertainty_and_markdown_tables(report):
    t = masks(_square(0, 0, 3, 3), size=(10, 10))
    for i, (pred, agreement, prob) in enumerate([(t, 0.95, 0.9), (masks([(9, 9)], size=(10, 10)), 0.4, 0.95), (t, 0.9, 0.7)]):
        report.update(pred, t, ids=[f"u{i}"], prompts=["dot"], agreements=[agreement], mask_probabilities=[prob])
    r = report.compute()
    u = r["uncertainty"]["agreement"]
    assert u["n"] == 3 and u["n_poor"] == 1 and u["auroc"] == 1.0  # only the scored samples count
    assert r["uncertainty"]["mask_probability"]["auroc"] == 0.0  # the miss had the most confident mask
    r["sampling_passes"] = 4
    md = report_to_markdown(r)
    assert "### Lesion detection (8-connected components; match: any overlap)" in md
    det = r["lesion_detection"]
    assert f"| overall | {det['n_true']} | {det['n_detected']} | {det['sensitivity']:.3f} |" in md
    assert "### Boundary (HD95 in px; NSD at 2 px)" in md
    assert "### Agreement of 4 sampled passes as a predictor of a poor mask (Dice < 0.5)" in md
    assert "AUROC of 1 - agreement for Dice < 0.5: 1.000" in md and "| [0.95, 1] | 1 | 1.000 | 0.000 | 0.000 |" in md
    assert "Pearson r (agreement, Dice): " in md
    assert "### Mean probability inside the mask (masks that are not empty)" in md
    assert "AUROC of 1 - mask probability for Dice < 0.5: 0.000" in md
    assert "| 1 (lowest) | 1 | 0.4000-0.4000 | 0.000 | 1.000 |" in md  # quarters of 3 samples: 1, 1, 1, 0
    assert "| 4 (highest) | 0 | – | – | – |" in md
    no_u = report_to_markdown(dict(r, uncertainty=None))
    assert "Agreement of" not in no_u and "### Boundary" in no_u
    with pytest.raises(ValueError, match=r"agreements\[0\] must be in \[0, 1\]"):
        report.update(t, t, ids=["x"], prompts=["dot"], agreements=[1.2])
    with pytest.raises(ValueError, match=r"mask_probabilities\[0\] must be in \[0, 1\]"):
        report.update(t, t, ids=["x"], prompts=["dot"], mask_probabilities=[-0.1])


def test_write_report_refuses_nan(tmp_path, report):
    with pytest.raises(ValueError):
        write_report(dict(report.compute(), dice=float("nan")), tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


# --------------------------------------------------------------------------------- the model, K passes
