"""Tests of boltzformer.evaluate: Dice on hand-made masks, empty-target rules, size buckets, reports on disk."""

from __future__ import annotations

import json

import pytest
import torch

from boltzformer.evaluate import (
    SampleRecord,
    SegmentationReport,
    dice_per_sample,
    report_to_markdown,
    size_bucket,
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
    }
    # plain Python values only
    json.dumps(r, allow_nan=False)
    scalars = [v for v in r.values() if not isinstance(v, (dict, list))]
    scalars += [x for v in r.values() if isinstance(v, dict) for x in v.values()]
    assert scalars and all(type(x) in (int, float, type(None)) for x in scalars)


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
