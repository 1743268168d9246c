"""Tests of boltzformer.evaluate.boundary: HD95 and NSD via MONAI, missing values where a mask is empty."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from boltzformer.evaluate import SegmentationReport, boundary_metrics
from tests.evaluate.evaluate_helpers import _mask


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

