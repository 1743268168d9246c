"""Fixtures of the tests of boltzformer.evaluate: a small report of four hand-made samples."""

from __future__ import annotations

import pytest

from boltzformer.evaluate import SegmentationReport
from tests.evaluate.evaluate_helpers import _square, masks


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
