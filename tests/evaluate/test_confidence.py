"""Tests of boltzformer.evaluate.confidence: agreement of K passes, AUROC, confidence against Dice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boltzformer.evaluate import confidence_vs_dice, failure_auroc, pairwise_agreement


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



def test_pairwise_agreement_equals_the_reports_dice_over_pairs():
    from boltzformer.evaluate.metrics import dice_per_sample

    g = torch.Generator().manual_seed(0)
    masks = torch.rand(5, 24, 24, generator=g) > torch.rand(5, 1, 1, generator=g)
    masks[3] = False  # an empty pass among them
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    dice = torch.cat([dice_per_sample(masks[i][None, None], masks[j][None, None]) for i, j in pairs])
    assert pairwise_agreement(masks) == pytest.approx(float(dice.mean()), abs=1e-6)
