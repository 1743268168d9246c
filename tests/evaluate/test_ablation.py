"""The ablation summary: the crossed bootstrap on hand-made cases with known answers, the paired
difference to the default, and the files it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from boltzformer.evaluate.ablation import bootstrap_ci, summarize_cells, summary_markdown, write_summary


def test_bootstrap_known_answers():
    # no spread: the interval is the value
    assert bootstrap_ci(np.full((3, 10), 0.7)) == pytest.approx((0.7, 0.7, 0.7))
    # two seeds, one scoring 0 on every image and one 1: the resampled mean is 0, 0.5 or 1 with
    # probabilities 1/4, 1/2, 1/4, so the 95 % interval is [0, 1]
    assert bootstrap_ci([[0.0] * 8, [1.0] * 8]) == (0.5, 0.0, 1.0)
    # one seed, 400 images half 0 half 1: the normal approximation 0.5 +- 1.96 * 0.5 / sqrt(400)
    mean, lo, hi = bootstrap_ci([[0.0, 1.0] * 200], n_boot=8000)
    assert mean == 0.5
    assert lo == pytest.approx(0.5 - 1.96 * 0.025, abs=0.006) and hi == pytest.approx(0.5 + 1.96 * 0.025, abs=0.006)
    # seeded: the same seed, the same interval
    x = np.random.default_rng(1).random((3, 20))
    assert bootstrap_ci(x, seed=5) == bootstrap_ci(x, seed=5)
    with pytest.raises(ValueError, match="matrix"):
        bootstrap_ci([1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([[np.nan]])


def _cell(setting, seed, dice):
    buckets = ["tiny", "small", "large"]
    return {"format": 1, "complete": True, "setting": setting, "axis": None, "value": None, "seed": seed,
            "config": {"model": "boltzformer"}, "wall_seconds": {"total": 60.0}, "commit": "abc", "dirty": False,
            "images": [{"id": f"i{j}", "bucket": buckets[j % 3], "dice": float(d)} for j, d in enumerate(dice)]}


def _cells():
    rng = np.random.default_rng(0)
    cells = []
    for seed in (0, 1, 2):
        base = rng.random(30) * 0.8
        cells.append(_cell("default", seed, base))
        # +0.1 on tiny images only, same seed and image: the paired difference is exactly that
        cells.append(_cell("better-tiny", seed, base + np.array([0.1 if j % 3 == 0 else 0.0 for j in range(30)])))
    return cells


def test_paired_difference_to_the_default():
    rows = summarize_cells(_cells(), order=["default", "better-tiny"], n_boot=500)
    assert [r["setting"] for r in rows] == ["default", "better-tiny"]
    default, better = rows
    assert default["delta"] == {} and default["seeds"] == [0, 1, 2] and default["n_images"] == 30
    assert default["dice"]["tiny"]["n"] == 10 and default["dice"]["all"]["n"] == 30
    d = better["delta"]
    assert (d["tiny"]["mean"], d["tiny"]["lo"], d["tiny"]["hi"]) == pytest.approx((0.1, 0.1, 0.1))
    assert (d["small"]["mean"], d["small"]["lo"], d["small"]["hi"]) == pytest.approx((0.0, 0.0, 0.0))
    assert d["all"]["mean"] == pytest.approx(0.1 / 3)
    # the unpaired intervals are wide (images differ a lot), the paired one is not
    t = better["dice"]["tiny"]
    assert t["hi"] - t["lo"] > 0.1
    md = summary_markdown(rows)
    assert "| better-tiny | 3 | +0.100 [+0.100, +0.100] |" in md


def test_write_summary_files(tmp_path):
    (tmp_path / "cells").mkdir()
    for c in _cells():
        (tmp_path / "cells" / f"{c['setting']}__seed{c['seed']}.json").write_text(json.dumps(c))
    (tmp_path / "cells" / "broken__seed0.json").write_text("{")
    result = write_summary(tmp_path, n_boot=200)
    assert result["cells"] == 6 and result["skipped"] == ["broken__seed0.json"]
    for name in ("summary.md", "summary.json", "summary.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "broken__seed0.json" in (tmp_path / "summary.md").read_text()
