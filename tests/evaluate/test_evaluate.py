"""Tests of boltzformer.evaluate: Dice on hand-made masks, empty-target rules, size buckets, reports on disk."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from boltzformer.evaluate import (
    SampleRecord,
    SegmentationReport,
    boundary_metrics,
    confidence_vs_dice,
    dice_per_sample,
    failure_auroc,
    match_lesions,
    pairwise_agreement,
    predict_passes,
    report_to_markdown,
    size_bucket,
    summarize,
    write_report,
)


def masks(*coords_per_sample, size=(10, 10)) -> torch.Tensor:
    """(B, 1, H, W) 0/1 float masks with the given (row, col) pixels set."""
    out = torch.zeros(len(coords_per_sample), 1, *size)
    for b, coords in enumerate(coords_per_sample):
        for r, c in coords:
            out[b, 0, r, c] = 1
    return out


# ------------------------------------------------------------------------------------------------- Dice


def test_monai_empty_target_behaviour():
    # the convention we rely on, straight from MONAI; dice_per_sample enforces it either way
    from monai.metrics import compute_dice

    empty, dot = masks([]), masks([(0, 0)])
    assert compute_dice(empty, empty, include_background=True, ignore_empty=False).item() == 1.0
    assert compute_dice(dot, empty, include_background=True, ignore_empty=False).item() == 0.0
    assert torch.isnan(compute_dice(empty, empty, include_background=True, ignore_empty=True)).all()


def test_dice_known_values():
    target = masks([(0, 0), (0, 1), (0, 2), (0, 3)], [(5, 5), (5, 6)], [(1, 1)])
    pred = masks(
        [(0, 0), (0, 1)],  # 2 of 4 px: 2*2/(4+2)
        [(5, 5), (5, 6), (9, 9), (9, 8)],  # 2 px overlap, 2 extra: 2*2/(2+4)
        [(7, 7)],  # disjoint
    )
    got = dice_per_sample(pred, target)
    assert got.shape == (3,) and got.dtype == torch.float32
    assert got.tolist() == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert torch.equal(dice_per_sample(pred.bool(), target.bool()), got)
    assert dice_per_sample(target, target).tolist() == [1.0, 1.0, 1.0]


def test_dice_empty_targets():
    empty, dot = masks([], []), masks([(3, 3)], [])
    # empty target & empty pred -> 1; empty target & non-empty pred -> 0
    assert dice_per_sample(empty, empty).tolist() == [1.0, 1.0]
    assert dice_per_sample(dot, empty).tolist() == [0.0, 1.0]
    # non-empty target & empty pred -> 0
    assert dice_per_sample(empty, dot).tolist() == [0.0, 1.0]
    assert dice_per_sample(torch.zeros(0, 1, 4, 4), torch.zeros(0, 1, 4, 4)).shape == (0,)


def test_dice_rejects_bad_inputs():
    m = masks([(0, 0)])
    with pytest.raises(ValueError, match=r"pred must have shape \(B, 1, H, W\)"):
        dice_per_sample(m[0], m)
    with pytest.raises(ValueError, match="target must have shape"):
        dice_per_sample(m, torch.zeros(1, 2, 10, 10))
    with pytest.raises(ValueError, match="same shape"):
        dice_per_sample(m, masks([(0, 0)], size=(10, 11)))
    with pytest.raises(ValueError, match="pred must be binary.*0.3"):
        dice_per_sample(m * 0.3, m)


# ------------------------------------------------------------------------------------------------ buckets


@pytest.mark.parametrize(
    "area, bucket",
    [(0.0, "tiny"), (0.000999, "tiny"), (0.001, "small"), (0.00999, "small"), (0.01, "large"), (1.0, "large")],
)
def test_size_bucket_boundaries(area, bucket):
    assert size_bucket(area) == bucket


@pytest.mark.parametrize("area", [-0.1, 1.5, float("nan"), float("inf")])
def test_size_bucket_rejects(area):
    with pytest.raises(ValueError, match="area_fraction"):
        size_bucket(area)


# ------------------------------------------------------------------------------------------------ reports


def _square(r0, c0, h, w):
    return [(r, c) for r in range(r0, r0 + h) for c in range(c0, c0 + w)]


@pytest.fixture
def report() -> SegmentationReport:
    """4 samples on 100x100 images: tiny hit, tiny miss, small half-found, empty target with empty prediction."""
    size = (100, 100)
    tiny = _square(0, 0, 1, 5)  # 5 px = 0.0005
    small = _square(50, 50, 5, 10)  # 50 px = 0.005
    target = masks(tiny, tiny, small, [], size=size)
    pred = masks(tiny, _square(90, 90, 1, 5), _square(50, 50, 5, 5), [], size=size)
    rep = SegmentationReport()
    new = rep.update(pred, target, ids=["a", "b", "c", "d"], prompts=["dot"] * 4)
    assert len(new) == 4 and len(rep) == 4
    return rep


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
        "true_lesions": [{"area_px": 5, "area_fraction": 0.0005, "bucket": "tiny", "matched": False}],
        "pred_lesions": [{"area_px": 5, "area_fraction": 0.0005, "bucket": "tiny", "matched": False}],
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


def test_records_round_trip_through_dicts(report):
    r = report.compute()
    again = [SampleRecord.from_dict(json.loads(json.dumps(d))) for d in r["samples"]]
    assert again == report.records
    assert summarize(again) == r


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


# ------------------------------------------------------------------------------------------ lesion detection


def _mask(size, *boxes):
    """A (H, W) bool mask with the given (row0, col0, height, width) boxes set."""
    m = np.zeros(size, bool)
    for r, c, h, w in boxes:
        m[r : r + h, c : c + w] = True
    return m


def test_match_lesions_two_true_one_found_one_false_positive():
    target = _mask((100, 100), (10, 10, 3, 3), (60, 60, 9, 9))  # 9 px (tiny) and 81 px (small)
    pred = _mask((100, 100), (11, 11, 4, 4), (90, 0, 2, 2))  # overlaps the first; a stray 4 px blob
    true, found = match_lesions(pred, target)
    assert [(x.area_px, x.bucket, x.matched) for x in true] == [(9, "tiny", True), (81, "small", False)]
    assert [(x.area_px, x.bucket, x.matched) for x in found] == [(16, "small", True), (4, "tiny", False)]
    assert true[1].area_fraction == 0.0081 and found[1].area_fraction == 0.0004


def test_match_lesions_iou_option_and_one_prediction_over_two_lesions():
    target = _mask((20, 20), (0, 0, 2, 2), (0, 4, 2, 2))  # two 4 px lesions, 2 px apart
    pred = _mask((20, 20), (0, 0, 2, 6))  # one 12 px lesion covering both
    true, found = match_lesions(pred, target)
    assert [x.matched for x in true] == [True, True] and [x.matched for x in found] == [True]  # not one-to-one
    # IoU of each pair: 4 / 12 = 0.333
    true, found = match_lesions(pred, target, iou_threshold=0.3)
    assert [x.matched for x in true] == [True, True]
    true, found = match_lesions(pred, target, iou_threshold=1 / 3)  # IoU > t is strict
    assert [x.matched for x in true] == [False, False] and [x.matched for x in found] == [False]
    # a 1 px touch is a detection under "any overlap", not under IoU > 0.1 (1 / 7)
    touch = _mask((20, 20), (1, 1, 1, 4))
    assert [x.matched for x in match_lesions(touch, target)[0]] == [True, True]
    assert [x.matched for x in match_lesions(touch, target, iou_threshold=0.2)[0]] == [False, False]


def test_match_lesions_uses_8_connectivity_and_handles_empty_masks():
    diagonal = np.zeros((5, 5), bool)
    diagonal[0, 0] = diagonal[1, 1] = True  # one 8-connected lesion (two 4-connected ones)
    true, found = match_lesions(diagonal, diagonal)
    assert len(true) == 1 and true[0].area_px == 2
    empty = np.zeros((5, 5), bool)
    assert match_lesions(empty, empty) == ([], [])
    true, found = match_lesions(empty, diagonal)
    assert [x.matched for x in true] == [False] and found == []
    assert match_lesions(torch.from_numpy(diagonal), torch.from_numpy(diagonal).float())[0] == true[:0] + [
        true[0].__class__(2, 2 / 25, "large", True)
    ]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pred": np.zeros((4, 4)), "target": np.zeros((4, 5))}, "same shape"),
        ({"pred": np.zeros((1, 4, 4)), "target": np.zeros((1, 4, 4))}, r"pred must be a 2-D \(H, W\) mask"),
        ({"pred": np.full((4, 4), 0.5), "target": np.zeros((4, 4))}, "pred must be binary"),
        ({"pred": np.zeros((4, 4)), "target": np.zeros((4, 4)), "iou_threshold": 1.0}, r"lesion_iou .* \[0, 1\)"),
    ],
)
def test_match_lesions_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        match_lesions(**kwargs)


def test_report_lesion_detection_overall_and_by_size():
    size = (100, 100)
    target = torch.from_numpy(np.stack([
        _mask(size, (10, 10, 3, 3), (60, 60, 9, 9)),  # image 0: tiny (found), small (missed)
        _mask(size, (0, 0, 20, 20)),  # image 1: large (found)
        _mask(size),  # image 2: empty
    ]))[:, None]  # fmt: skip
    pred = torch.from_numpy(np.stack([
        _mask(size, (10, 10, 3, 3), (90, 0, 2, 2)),  # tiny TP (the same 9 px), tiny FP
        _mask(size, (5, 5, 5, 5), (50, 50, 20, 20)),  # small TP (25 px), large FP (400 px)
        _mask(size, (0, 90, 1, 1)),  # tiny FP
    ]))[:, None]  # fmt: skip
    rep = SegmentationReport()
    rep.update(pred, target, ids=["a", "b", "c"], prompts=["x"] * 3)
    det = rep.compute()["lesion_detection"]
    assert det["connectivity"] == 8 and det["match"] == "any overlap" and det["n_images"] == 3
    assert (det["n_true"], det["n_detected"], det["n_pred"], det["n_false_positive"]) == (3, 2, 5, 3)
    assert det["sensitivity"] == pytest.approx(2 / 3)
    assert det["precision"] == pytest.approx(2 / 5) and det["fp_per_image"] == 1.0
    by = det["by_size"]
    assert (by["tiny"]["n_true"], by["tiny"]["sensitivity"]) == (1, 1.0)
    assert (by["small"]["n_true"], by["small"]["sensitivity"]) == (1, 0.0)
    assert (by["large"]["n_true"], by["large"]["sensitivity"]) == (1, 1.0)
    # predicted lesions by their own size: tiny 1 TP + 2 FP, small 1 TP, large 1 FP
    assert (by["tiny"]["n_pred"], by["tiny"]["n_false_positive"], by["tiny"]["precision"]) == (3, 2, pytest.approx(1 / 3))
    assert by["tiny"]["fp_per_image"] == pytest.approx(2 / 3) and by["small"]["n_pred"] == 1
    assert (by["small"]["precision"], by["large"]["precision"], by["large"]["fp_per_image"]) == (1.0, 0.0, pytest.approx(1 / 3))
    strict = SegmentationReport(lesion_iou=0.5)
    strict.update(pred, target, ids=["a", "b", "c"], prompts=["x"] * 3)
    det = strict.compute()["lesion_detection"]
    # IoU: tiny 9/9 -> found; large vs the 25 px blob 25/400 -> missed
    assert det["match"] == "IoU > 0.5" and det["n_detected"] == 1 and det["n_false_positive"] == 4


# ----------------------------------------------------------------------------------------- HD95 and NSD


def test_monai_surface_metrics_on_empty_masks():
    # what MONAI does where a mask is empty; boundary_metrics maps it to None (missing), never 0 for HD95
    import warnings

    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    square, empty = torch.from_numpy(_mask((12, 12), (3, 3, 4, 4)))[None, None].float(), torch.zeros(1, 1, 12, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p, t in ((empty, square), (square, empty), (empty, empty)):
            hd = compute_hausdorff_distance(p, t, include_background=True, percentile=95).item()
            assert not math.isfinite(hd)
        assert compute_surface_dice(empty, square, [2.0], include_background=True).item() == 0.0
        assert compute_surface_dice(square, empty, [2.0], include_background=True).item() == 0.0
        assert math.isnan(compute_surface_dice(empty, empty, [2.0], include_background=True).item())


def test_boundary_metrics_of_two_squares_3_px_apart():
    t = _mask((20, 20), (5, 5, 6, 6))
    p = _mask((20, 20), (5, 8, 6, 6))
    # boundary pixels of the target (20): top and bottom rows lie 3, 2, 1, 0, 0, 0 px from the
    # prediction's boundary, the left column 3, 3, 3, 3 px, the right column 1, 2, 2, 1 px (to the
    # prediction's left column or its top / bottom row); the same for the prediction, mirrored.
    # HD95: the 95th percentile of 20 distances of which six are 3 -> 3
    hd95, nsd = boundary_metrics(p, t)
    assert hd95 == pytest.approx(3.0)
    assert nsd == pytest.approx((5 + 5 + 0 + 4) / 20)  # within 2 px: 14 of 20 on each side
    assert boundary_metrics(p, t, tolerance=1.99)[1] == pytest.approx((4 + 4 + 0 + 2) / 20)
    assert boundary_metrics(p, t, tolerance=3)[1] == pytest.approx(1.0)
    assert boundary_metrics(t, t) == (0.0, 1.0)
    # with a pixel spacing, distances and the tolerance are in mm
    hd95, nsd = boundary_metrics(p, t, spacing=(0.5, 0.5), tolerance=1.0)
    assert hd95 == pytest.approx(1.5) and nsd == pytest.approx(0.7)
    assert boundary_metrics(p, t, spacing=(1.0, 2.0))[0] == pytest.approx(6.0)  # the shift is along columns


def test_boundary_metrics_with_empty_masks():
    square, empty = _mask((12, 12), (3, 3, 4, 4)), _mask((12, 12))
    assert boundary_metrics(empty, square) == (None, 0.0)
    assert boundary_metrics(square, empty) == (None, 0.0)
    assert boundary_metrics(empty, empty) == (None, None)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spacing": (1.0,)}, r"spacing must be None or \(row, col\)"),
        ({"spacing": (1.0, -1.0)}, "two positive numbers"),
        ({"tolerance": 0}, "nsd_tolerance must be a positive number"),
        ({"tolerance": float("nan")}, "nsd_tolerance"),
    ],
)
def test_boundary_metrics_rejects(kwargs, match):
    m = _mask((8, 8), (2, 2, 2, 2))
    with pytest.raises(ValueError, match=match):
        boundary_metrics(m, m, **kwargs)


def test_report_boundary_counts_missing_values_and_never_averages_them():
    size = (40, 40)
    square = _mask(size, (5, 5, 6, 6))
    target = torch.from_numpy(np.stack([square, square, _mask(size), _mask(size)]))[:, None]
    pred = torch.from_numpy(np.stack([np.roll(square, 3, axis=1), _mask(size), _mask(size), square]))[:, None]
    rep = SegmentationReport()
    rep.update(pred, target, ids=list("abcd"), prompts=["x"] * 4, spacings=[None] * 4)
    bd = rep.compute()["boundary"]
    assert bd["unit"] == "px" and bd["nsd_tolerance"] == 2.0
    assert bd["hd95"] == pytest.approx(3.0) and bd["n_hd95"] == 1 and bd["n_hd95_missing"] == 3
    assert bd["hd95_missing"] == {"empty_prediction": 1, "empty_target": 1, "both_empty": 1}
    # NSD: 0.7 for a, 0 for the missed b and for the false alarm d, missing for c (both empty)
    assert bd["nsd"] == pytest.approx(0.7 / 3) and bd["n_nsd"] == 3 and bd["n_nsd_missing"] == 1
    # 36 px of 1600 = 0.0225: "large"; empty targets belong to no bucket
    assert bd["by_size"]["large"]["n_hd95"] == 1 and bd["by_size"]["large"]["n_hd95_missing"] == 1
    assert bd["by_size"]["tiny"]["hd95"] is None and bd["by_size"]["tiny"]["n_hd95"] == 0
    samples = rep.compute()["samples"]
    assert [s["hd95"] for s in samples][1:] == [None, None, None]
    # the spacing of a sample makes its distances mm
    rep2 = SegmentationReport(nsd_tolerance=1.0)
    rep2.update(pred[:1], target[:1], ids=["a"], prompts=["x"], spacings=[(0.5, 0.5)])
    assert rep2.compute()["boundary"]["unit"] == "mm" and rep2.records[0].hd95 == pytest.approx(1.5)
    with pytest.raises(ValueError, match=r"spacings\[0\] must be None or \(row, col\)"):
        rep2.update(pred[:1], target[:1], ids=["a"], prompts=["x"], spacings=[(0.5,)])


# ------------------------------------------------------------------------------------ agreement vs failure


def test_pairwise_agreement_known_values():
    a = torch.zeros(4, 4, dtype=torch.bool)
    a[0, :] = True  # 4 px
    b = torch.zeros(4, 4, dtype=torch.bool)
    b[0, :2] = True  # 2 px inside a: Dice(a, b) = 2 * 2 / 6
    assert pairwise_agreement(torch.stack([a, a, b])) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert pairwise_agreement(torch.stack([a, ~a])) == 0.0
    empty = torch.zeros(4, 4, dtype=torch.bool)
    assert pairwise_agreement(torch.stack([empty, empty])) == 1.0  # two empty masks agree
    assert pairwise_agreement(torch.stack([empty, a]).float()) == 0.0
    with pytest.raises(ValueError, match=r"K >= 2"):
        pairwise_agreement(a[None])
    with pytest.raises(ValueError, match="binary"):
        pairwise_agreement(torch.full((2, 4, 4), 0.5))


def _rank_auroc(scores, failed):
    """The Mann-Whitney form, by hand: P(score of a failure > score of a success), ties 1/2."""
    pos = [s for s, f in zip(scores, failed) if f]
    neg = [s for s, f in zip(scores, failed) if not f]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def test_failure_auroc_hand_example():
    scores = [0.1, 0.4, 0.35, 0.8, 0.4]
    failed = [False, False, True, True, True]
    # pairs (failure, success): 0.35 > 0.1, 0.35 < 0.4, 0.8 > both, 0.4 > 0.1, 0.4 = 0.4 -> (1 + 0 + 2 + 1 + 0.5) / 6
    assert failure_auroc(scores, failed) == pytest.approx(4.5 / 6)
    assert _rank_auroc(scores, failed) == pytest.approx(4.5 / 6)
    assert failure_auroc([0.1, 0.2, 0.9], [True, True, False]) == 0.0  # perfectly inverted
    assert failure_auroc([0.1, 0.2], [True, True]) is None
    assert failure_auroc([0.1, 0.2], [False, False]) is None
    with pytest.raises(ValueError, match="one length"):
        failure_auroc([0.1], [True, False])


def test_failure_auroc_matches_the_rank_formula_on_random_scores():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40) / 4  # many ties
    failed = rng.random(40) < 0.3
    assert failure_auroc(scores, failed) == pytest.approx(_rank_auroc(scores, failed))


def test_confidence_vs_dice_statistics_and_bands():
    agreement = [0.3, 0.6, 0.85, 0.97, 1.0]
    dice = [0.1, 0.4, 0.8, 0.9, 0.0]
    u = confidence_vs_dice(agreement, dice)
    assert u["n"] == 5 and u["n_poor"] == 3 and u["missing"] == {}
    assert u["pearson"] == pytest.approx(float(np.corrcoef(agreement, dice)[0, 1]))
    # Spearman: Pearson of the ranks (1..5 and 2, 3, 4, 5, 1): sum d^2 = 20 -> 1 - 6 * 20 / (5 * 24) = 0
    assert u["spearman"] == pytest.approx(0.0, abs=1e-12)
    # 1 - agreement flags the poor masks (0.3, 0.6 and the confident miss 1.0) against 0.85 and 0.97
    assert u["auroc"] == pytest.approx(_rank_auroc([0.7, 0.4, 0.15, 0.03, 0.0], [True, True, False, False, True]))
    assert u["auroc"] == pytest.approx(4 / 6)
    assert [(r["band"], r["n"]) for r in u["by_band"]] == [("[0, 0.5)", 1), ("[0.5, 0.8)", 1), ("[0.8, 0.95)", 1), ("[0.95, 1]", 2)]
    last = u["by_band"][-1]
    assert last["dice"] == pytest.approx(0.45) and last["poor_rate"] == 0.5 and last["failure_rate"] == 0.5
    # quarters by rank of 5 samples: 2, 1, 1, 1 (lowest scores first)
    q = u["by_quartile"]
    assert [(r["quartile"], r["n"], r["score_min"], r["score_max"]) for r in q] == [
        (1, 2, 0.3, 0.6), (2, 1, 0.85, 0.85), (3, 1, 0.97, 0.97), (4, 1, 1.0, 1.0)]  # fmt: skip
    assert q[0]["dice"] == pytest.approx(0.25) and q[0]["poor_rate"] == 1.0 and q[3]["poor_rate"] == 1.0


def test_confidence_vs_dice_degenerate_cases_say_why():
    u = confidence_vs_dice([0.9, 0.8, 0.7], [0.1, 0.2, 0.3])
    assert u["auroc"] is None and "every sample has Dice < 0.5" in u["missing"]["auroc"]
    assert u["pearson"] == pytest.approx(-1.0) and u["spearman"] == pytest.approx(-1.0)
    u = confidence_vs_dice([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
    assert u["auroc"] is None and "no sample has Dice < 0.5" in u["missing"]["auroc"]
    u = confidence_vs_dice([1.0, 1.0, 1.0], [0.9, 0.0, 0.7])
    assert u["pearson"] is None and "the score is the same" in u["missing"]["pearson"]
    assert u["auroc"] == 0.5  # all scores tie
    u = confidence_vs_dice([0.9, 0.1], [0.9, 0.1])
    assert u["spearman"] is None and "fewer than 3" in u["missing"]["spearman"]
    with pytest.raises(ValueError, match=r"confidence values must lie in \[0, 1\]"):
        confidence_vs_dice([1.5], [0.5])


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


@pytest.fixture(scope="module")
def tiny():
    import boltzformer

    torch.manual_seed(0)
    model = boltzformer.build_model("tiny", image_size=64, num_layers=3, num_queries=4).eval()
    return model


@pytest.fixture(scope="module")
def synthetic():
    from boltzformer.data.synthetic import SyntheticConfig, SyntheticDataset

    return SyntheticDataset("test", SyntheticConfig(image_size=64, seed=0))


def test_predict_passes_are_the_single_passes_with_seeds_seed_to_seed_plus_k(tiny, synthetic):
    from boltzformer.predict.engine import predict_probabilities

    items = [synthetic[i] for i in range(3)]
    images, prompts = [s["image"] for s in items], [s["prompt"] for s in items]
    gens = [torch.Generator().manual_seed(5 + k) for k in range(3)]
    passes, existence = predict_passes(tiny, images, prompts, image_size=64, generators=gens)
    assert [p.shape for p in passes] == [(3, 64, 64)] * 3 and existence is None
    for k in range(3):
        single = predict_probabilities(tiny, images, prompts, image_size=64, generator=torch.Generator().manual_seed(5 + k))
        for p, s in zip(passes, single):
            assert torch.equal(p[k], s)
    assert not torch.equal(passes[0][0], passes[0][1])  # other seeds draw other attention sets


def test_evaluate_model_with_k_samples_is_reproducible_and_records_agreement(tiny, synthetic):
    from boltzformer.evaluate import evaluate_model

    a = evaluate_model(tiny, synthetic, batch_size=2, seed=7, samples=3, limit=4)
    b = evaluate_model(tiny, synthetic, batch_size=2, seed=7, samples=3, limit=4)
    assert json.dumps(a) == json.dumps(b)  # bit-identical
    assert a["sampling_passes"] == 3 and a["pass_seeds"] == [7, 8, 9] and a["seed"] == 7
    assert all(0.0 <= s["agreement"] <= 1.0 for s in a["samples"])
    assert a["uncertainty"]["agreement"]["n"] == 4 and "lesion_detection" in a and "boundary" in a
    # the scored mask is the mean of the passes; the agreement is that of their thresholded masks
    items = [synthetic[i] for i in range(2)]
    gens = [torch.Generator().manual_seed(7 + k) for k in range(3)]
    probs, _ = predict_passes(tiny, [s["image"] for s in items], [s["prompt"] for s in items], image_size=64, generators=gens)
    for s, p, rec in zip(items, probs, a["samples"]):
        dice = dice_per_sample((p.mean(0) > 0.5)[None, None], (s["mask"] >= 0.5)[None]).item()
        mean = p.mean(0)
        assert rec["dice"] == dice and rec["agreement"] == pairwise_agreement(p > 0.5)
        assert rec["mask_probability"] == (float(mean[mean > 0.5].mean()) if (mean > 0.5).any() else None)
    # one pass: as before (a generator seeded `seed` over the batches), no agreement
    one = evaluate_model(tiny, synthetic, batch_size=2, seed=7, limit=4)
    assert one["uncertainty"]["agreement"] is None and one["sampling_passes"] == 1
    assert all(s["agreement"] is None for s in one["samples"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"samples": 0}, r"samples must be an integer >= 1"),
        ({"samples": 2.0}, "samples must be an integer"),
        ({"batch_size": 0}, "batch_size"),
        ({"threshold": 1.0}, r"threshold must be in \(0, 1\)"),
        ({"lesion_iou": -0.1}, "lesion_iou"),
        ({"nsd_tolerance": -1}, "nsd_tolerance"),
        ({"limit": 0}, "empty"),
    ],
)
def test_evaluate_model_rejects(tiny, synthetic, kwargs, match):
    from boltzformer.evaluate import evaluate_model

    with pytest.raises(ValueError, match=match):
        evaluate_model(tiny, synthetic, **kwargs)


def test_cli_evaluate_with_samples(tiny, tmp_path, capsys):
    import boltzformer
    from boltzformer.cli import main

    ckpt = boltzformer.save_checkpoint(tiny, tmp_path / "m.ckpt")
    out = tmp_path / "r.json"
    argv = ["evaluate", "--checkpoint", str(ckpt), "--data", "synthetic", "--out", str(out), "--limit", "3"]
    assert main([*argv, "--samples", "2", "--lesion-iou", "0.25", "--nsd-tolerance", "1.5"]) == 0
    report = json.loads(out.read_text())
    assert report["sampling_passes"] == 2 and report["uncertainty"]["agreement"]["n"] == 3
    assert report["lesion_detection"]["match"] == "IoU > 0.25" and report["boundary"]["nsd_tolerance"] == 1.5
    assert "### Agreement of 2 sampled passes" in out.with_suffix(".md").read_text()
    capsys.readouterr()
    assert main([*argv, "--samples", "0"]) == 2
    err = capsys.readouterr().err
    assert "--samples must be >= 1" in err and len(err.strip().splitlines()) == 1


def test_evaluate_model_gates_masks_with_an_existence_head(synthetic):
    import boltzformer
    from boltzformer.evaluate import evaluate_model

    torch.manual_seed(0)
    model = boltzformer.build_model("tiny", image_size=64, num_layers=3, num_queries=4, existence=True).eval()
    with torch.no_grad():
        model.decoder.existence.classifier.weight.zero_()
        model.decoder.existence.classifier.bias.fill_(30.0)  # "present" everywhere: no gating
    present = evaluate_model(model, synthetic, batch_size=2, seed=1, samples=2, limit=2)
    with torch.no_grad():
        model.decoder.existence.classifier.bias.fill_(-30.0)  # "absent" everywhere: every mask empty
    absent = evaluate_model(model, synthetic, batch_size=2, seed=1, samples=2, limit=2)
    assert present["existence_threshold"] == 0.5
    assert any(s["pred_area_fraction"] > 0 for s in present["samples"])  # the random model paints something
    assert all(s["pred_area_fraction"] == 0 and s["dice"] == 0 for s in absent["samples"])
    assert all(s["mask_probability"] is None for s in absent["samples"]) and absent["uncertainty"]["mask_probability"] is None
    assert absent["boundary"]["hd95_missing"]["empty_prediction"] == 2
    # the agreement is that of the passes' own masks, as Predictor.predict_samples reports it
    assert [s["agreement"] for s in absent["samples"]] == [s["agreement"] for s in present["samples"]]
