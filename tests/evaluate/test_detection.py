"""Tests of boltzformer.evaluate.detection: lesions matched between masks, and detection by size in a report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boltzformer.evaluate import SegmentationReport, match_lesions
from boltzformer.evaluate.detection import FROC_FP_RATES, froc
from tests.evaluate.evaluate_helpers import _mask



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


def test_lesion_scores_are_peaks_and_a_true_lesion_takes_its_best_detector():
    target = _mask((12, 12), (0, 0, 3, 3), (8, 8, 2, 2))
    pred = _mask((12, 12), (0, 0, 2, 2), (1, 2, 2, 2), (6, 0, 2, 2))  # two blobs over lesion 1, one FP
    prob = np.where(pred, 0.6, 0.1)
    prob[0, 0], prob[2, 3], prob[7, 1] = 0.7, 0.9, 0.8
    true, found = match_lesions(pred, target, probability=prob)
    # 8-connected: the first two blobs touch, so one predicted lesion (peak 0.9) over lesion 1
    assert [(x.matched, x.score) for x in found] == [(True, pytest.approx(0.9)), (False, pytest.approx(0.8))]
    assert [(x.matched, x.score) for x in true] == [(True, pytest.approx(0.9)), (False, None)]
    assert all(x.score is None for x in match_lesions(pred, target)[1])  # no probabilities, no scores
    with pytest.raises(ValueError, match="shape"):
        match_lesions(pred, target, probability=prob[:5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        match_lesions(pred, target, probability=prob * 2)


def test_froc_reads_the_best_sensitivity_within_each_false_positive_rate():
    # 4 images, 4 true lesions; predicted (score, matches true k): found in descending score order
    size = (20, 20)
    target = torch.from_numpy(np.stack([_mask(size, (0, 0, 2, 2)), _mask(size, (0, 0, 2, 2)),
                                        _mask(size, (0, 0, 2, 2)), _mask(size, (0, 0, 2, 2))]))[:, None]
    pred = torch.from_numpy(np.stack([_mask(size, (0, 0, 2, 2), (10, 10, 2, 2)), _mask(size, (0, 0, 2, 2)),
                                      _mask(size, (10, 10, 2, 2)), _mask(size, (0, 0, 2, 2))]))[:, None]
    probs = [np.where(pred[i, 0].numpy(), 0.0, 0.0) for i in range(4)]
    probs[0][0:2, 0:2], probs[0][10:12, 10:12] = 0.95, 0.9  # TP 0.95, FP 0.9
    probs[1][0:2, 0:2] = 0.7  # TP 0.7
    probs[2][10:12, 10:12] = 0.8  # FP 0.8 (its true lesion is missed)
    probs[3][0:2, 0:2] = 0.6  # TP 0.6
    rep = SegmentationReport()
    rep.update(pred, target, ids=list("abcd"), prompts=["x"] * 4, probabilities=probs)
    roc = rep.compute()["lesion_detection"]["froc"]
    # thresholds 0.95 (sens 1/4, fp 0), 0.9 (1/4, 1/4), 0.8 (1/4, 2/4), 0.7 (2/4, 2/4), 0.6 (3/4, 2/4)
    assert roc["fp_rates"] == list(FROC_FP_RATES)
    assert roc["sensitivity"] == [0.25, 0.25, 0.75, 0.75, 0.75, 0.75, 0.75]
    assert roc["cpm"] == pytest.approx((0.25 * 2 + 0.75 * 5) / 7)
    plain = SegmentationReport()
    plain.update(pred, target, ids=list("abcd"), prompts=["x"] * 4)
    assert plain.compute()["lesion_detection"]["froc"] is None  # no probabilities: no ranking
    assert froc([], [], 4) is None


# ----------------------------------------------------------------------------------------- HD95 and NSD
