"""Tests of boltzformer.evaluate.metrics: Dice on hand-made masks and its empty-target rules."""

from __future__ import annotations

import pytest
import torch

from boltzformer.evaluate import dice_per_sample
from tests.evaluate.evaluate_helpers import masks

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
