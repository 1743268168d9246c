"""boltzformer.predict.results: the existence gate, the agreement of K passes, and summarize with K = 1 and K = 3."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boltzformer.predict.results import Passes, agreement, gate, summarize


def test_gate_empties_the_mask_where_the_target_is_judged_absent():
    mask = np.ones((2, 3, 3), bool)
    assert gate(mask, None, 0.5) is mask  # no existence head: unchanged
    assert gate(mask[0], 0.5, 0.5).all() and not gate(mask[0], 0.49, 0.5).any()  # >= keeps
    per_slice = gate(mask, np.array([0.9, 0.1]), 0.5)
    assert per_slice[0].all() and not per_slice[1].any()
    prompts_slices = gate(np.ones((2, 2, 3, 3), bool), np.array([[0.9, 0.1], [0.2, 0.7]]), 0.5)  # (P, D)
    assert prompts_slices.any(axis=(2, 3)).tolist() == [[True, False], [False, True]]


def test_agreement_known_values():
    a = torch.zeros(4, 4, dtype=torch.bool)
    a[0, :2] = True  # 2 px
    b = torch.zeros(4, 4, dtype=torch.bool)
    b[0, 1:4] = True  # 3 px, 1 shared with a
    empty = torch.zeros(4, 4, dtype=torch.bool)
    assert agreement(torch.stack([a, a])) == 1.0
    assert agreement(torch.stack([a, b])) == pytest.approx(2 * 1 / (2 + 3))
    assert agreement(torch.stack([empty, empty])) == 1.0  # two empty masks agree
    assert agreement(torch.stack([a, empty])) == 0.0
    # three passes: the mean of the pairs (a, a) = 1, (a, b) = 0.4, (a, b) = 0.4
    assert agreement(torch.stack([a, a, b])) == pytest.approx((1 + 0.4 + 0.4) / 3)


def test_summarize_one_pass_is_the_pass_itself():
    probs = torch.tensor([[[0.2, 0.6], [0.9, 0.5]]])
    pred = summarize(Passes("dot", probs, torch.tensor([0.8])), threshold=0.5, existence_threshold=0.5)
    assert pred.prompt == "dot" and pred.existence == pytest.approx(0.8)
    np.testing.assert_array_equal(pred.probability, probs[0].numpy())
    assert pred.mask.tolist() == [[False, True], [True, False]]  # strictly above the threshold
    assert pred.std is None and pred.agreement is None and pred.present
    absent = summarize(Passes("dot", probs, torch.tensor([0.3])), threshold=0.5, existence_threshold=0.5)
    assert not absent.mask.any() and not absent.present
    no_head = summarize(Passes("dot", probs), threshold=0.5, existence_threshold=0.99)
    assert no_head.existence is None and no_head.mask.sum() == 2


def test_summarize_three_passes_mean_std_agreement_and_mean_existence():
    probs = torch.tensor([[[0.9, 0.1]], [[0.9, 0.9]], [[0.6, 0.2]]])  # K=3 passes of a 1x2 image
    passes = Passes("dot", probs, torch.tensor([0.9, 0.4, 0.5]))
    assert passes.samples == 3
    pred = summarize(passes, threshold=0.5, existence_threshold=0.55)
    np.testing.assert_allclose(pred.probability, [[0.8, 0.4]], atol=1e-6)
    np.testing.assert_allclose(pred.std, probs.numpy().std(0), atol=1e-6)  # population std
    assert pred.mask.tolist() == [[True, False]] and pred.existence == pytest.approx(0.6)
    # masks [1,0], [1,1], [1,0]: Dice 2/3, 1, 2/3
    assert pred.agreement == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    gated = summarize(passes, threshold=0.5, existence_threshold=0.65)  # the mean existence 0.6 is below
    assert not gated.mask.any() and gated.agreement == pred.agreement


def test_gate_on_torch_masks_equals_the_numpy_gate_and_stays_on_the_device():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 1, 4, 4)) > 0.5  # (B, 1, H, W), as training's validation
    existence = np.array([0.2, 0.5, 0.9], dtype=np.float32)
    expected = gate(masks, existence, 0.5)
    got = gate(torch.from_numpy(masks), torch.from_numpy(existence), 0.5)
    assert isinstance(got, torch.Tensor) and got.device == torch.device("cpu")
    assert np.array_equal(got.numpy(), expected)
    assert not got[0].any() and torch.equal(got[2], torch.from_numpy(masks[2]))
