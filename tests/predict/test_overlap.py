"""Several prompts on one volume: NMS across prompts and one label per voxel, on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import boltzformer
from boltzformer.predict.files import segment_volume
from boltzformer.predict.overlap import exclusive_masks, nms_across_prompts


def _box(r0, r1, c0, c1, size=10):
    m = torch.zeros(size, size, dtype=torch.bool)
    m[r0:r1, c0:c1] = True
    return m


def test_nms_keeps_the_most_certain_of_overlapping_prompts_and_gates_existence():
    a = _box(0, 4, 0, 4)  # 16 pixels
    b = _box(0, 4, 0, 3)  # inside a: IoU 12 / 16 = 0.75 > 0.5
    c = _box(0, 4, 2, 6)  # IoU with a: 8 / 24 = 0.33: kept
    empty = torch.zeros(10, 10, dtype=torch.bool)
    masks = torch.stack([a, b, c, empty, _box(6, 9, 6, 9)])
    scores = torch.tensor([0.8, 0.9, 0.7, 0.95, 0.4])
    # b (0.9) is kept first and drops a (IoU 0.75); the empty mask is skipped; 0.4 < 0.5 stops the loop
    assert nms_across_prompts(masks, scores) == [1, 2]
    assert nms_across_prompts(masks, scores, iou_threshold=0.8) == [1, 0, 2]
    assert nms_across_prompts(masks, scores, score_threshold=0.3) == [1, 2, 4]
    with pytest.raises(ValueError, match=r"scores must have shape \(5,\)"):
        nms_across_prompts(masks, scores[:3])


def test_exclusive_masks_give_each_voxel_to_the_most_probable_kept_prompt():
    probs = torch.zeros(3, 2, 4, 4)
    probs[0, 0, :, :2] = 0.9  # prompt 0: left half, slice 0
    probs[1, 0, :, 1:3] = 0.7  # prompt 1: middle, overlaps prompt 0's column 1 (IoU 4 / 12 = 0.33)
    probs[2, 0] = 0.6  # prompt 2: everywhere, but absent by its existence score
    probs[0, 1, 0, 0] = 0.5  # exactly the background's 0.5: stays background
    existence = torch.tensor([[0.9, 0.9], [0.8, 0.9], [0.3, 0.9]])
    masks = exclusive_masks(probs, existence)
    assert masks.shape == (3, 2, 4, 4) and masks.sum(0).max() <= 1
    assert masks[0, 0, :, :2].all() and not masks[0, 0, :, 2:].any()  # column 1: 0.9 beats 0.7
    assert masks[1, 0, :, 2].all() and not masks[1, 0, :, [0, 1, 3]].any()
    assert not masks[2].any() and not masks[:, 1].any()


def test_segment_volume_applies_the_model_s_overlap_rule_and_slice_context(monkeypatch):
    import boltzformer.io.windows as windows

    contexts = []
    real = windows.volume_slices
    monkeypatch.setattr(windows, "volume_slices", lambda v, *, context: contexts.append(context) or real(v, context=context))
    torch.manual_seed(0)
    model = boltzformer.build_model("tiny", image_size=64, num_layers=2, num_queries=4, existence=True,
                                    prompt_overlap="nms", volume_context="2.5d").eval()
    vol = (np.random.default_rng(0).random((3, 32, 32)) * 255).astype(np.uint8)
    prompts = ["lung nodule", "liver tumor", "kidney cyst"]
    nms = segment_volume(model, vol, prompts, threshold=0.2, existence_threshold=0.01)
    independent = segment_volume(model, vol, prompts, threshold=0.2, existence_threshold=0.01, overlap="independent")
    stacked = np.stack([r.mask for r in nms])
    assert stacked.sum(0).max() <= 1  # one label per voxel
    assert np.stack([r.mask for r in independent]).sum(0).max() > 1  # these masks overlap when independent
    for a, b in zip(nms, independent):
        assert not (a.mask & ~b.mask).any()  # a label is only given where that prompt's own mask is
        np.testing.assert_array_equal(a.probability, b.probability)
    assert contexts == ["2.5d", "2.5d"]  # the model's volume_context
    with pytest.raises(ValueError, match="overlap must be 'independent' or 'nms'"):
        segment_volume(model, vol, prompts, overlap="union")
