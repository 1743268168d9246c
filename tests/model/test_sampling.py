"""The Boltzmann sampler: distribution, schedule, inclusion rates, reproducibility."""

from __future__ import annotations

import math

import pytest
import torch

from boltzformer.model.sampling import (
    BoltzmannSampler,
    boltzmann_distribution,
    boltzmann_keep_mask,
    inclusion_probability,
    layer_temperature,
    num_draws,
    sample_token_indices,
)


def test_temperature_schedule_follows_tau0_over_one_plus_l():
    assert [layer_temperature(1.0, l) for l in range(4)] == [1.0, 0.5, 1 / 3, 0.25]
    assert layer_temperature(2.0, 3) == 0.5
    with pytest.raises(ValueError, match="layer"):
        layer_temperature(1.0, -1)
    with pytest.raises(ValueError, match="base_temperature"):
        layer_temperature(0.0, 0)


def test_sampler_uses_the_schedule_per_layer():
    sampler = BoltzmannSampler(mode="boltzmann", ratio=0.1, base_temperature=2.0)
    logits = torch.randn(1, 3, 64)
    temps = [sampler(logits, layer, 2).temperature for layer in range(5)]
    assert temps == pytest.approx([2.0, 1.0, 2 / 3, 0.5, 0.4])


def test_distribution_is_softmax_of_sigmoid_over_temperature():
    logits = torch.randn(3, 50)
    p = boltzmann_distribution(logits, 0.25)
    expected = torch.exp(torch.sigmoid(logits) / 0.25)
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(p, expected)
    assert torch.allclose(p.sum(-1), torch.ones(3))
    # colder is more peaked
    assert boltzmann_distribution(logits, 0.1).max() > boltzmann_distribution(logits, 1.0).max()


def test_num_draws_is_floor_of_ratio_times_tokens():
    assert num_draws(1024, 0.1) == 102
    assert num_draws(4096, 0.1) == 409
    assert num_draws(16384, 0.1) == 1638
    assert num_draws(5, 0.1) == 1
    with pytest.raises(ValueError, match="ratio"):
        num_draws(10, 0.0)


@pytest.mark.parametrize("temperature", [1.0, 0.2])
def test_inclusion_frequencies_match_one_minus_one_minus_p_to_the_n(temperature):
    g = torch.Generator().manual_seed(1234)
    N, R = 40, 20000
    logits = torch.randn(N, generator=g) * 3
    keep = boltzmann_keep_mask(logits.expand(R, N), temperature, 0.1, generator=g)  # n = 4 draws
    freq = keep.double().mean(0)
    p = boltzmann_distribution(logits, temperature).double()
    expected = inclusion_probability(p, num_draws(N, 0.1))
    # binomial standard errors; with 40 tokens a |z| of 4.5 is far beyond chance (fixed seed)
    se = torch.sqrt(expected * (1 - expected) / R)
    z = (freq - expected) / se
    assert z.abs().max() < 4.5, z.abs().max()
    # the mean set size is the sum of inclusion probabilities
    assert keep.sum(-1).double().mean().item() == pytest.approx(expected.sum().item(), rel=0.01)


def test_threshold_tokens_are_always_attended_and_excluded_from_draws():
    logits = torch.full((1, 100), -5.0)
    logits[0, :10] = 5.0  # sigmoid ~ 0.993
    g = torch.Generator().manual_seed(0)
    p = boltzmann_distribution(logits, 1.0, threshold=0.9)
    assert p[0, :10].sum() == 0 and p.sum() == pytest.approx(1.0)
    keep = boltzmann_keep_mask(logits.expand(500, 100), 1.0, 0.1, threshold=0.9, generator=g)
    assert keep[:, :10].all()
    # a row whose every token is above the threshold attends to all of them
    keep = boltzmann_keep_mask(torch.full((2, 30), 6.0), 1.0, 0.1, threshold=0.9, generator=g)
    assert keep.all()


def test_same_generator_seed_gives_the_same_set():
    logits = torch.randn(2, 4, 8, 256)
    a = boltzmann_keep_mask(logits, 0.5, 0.1, generator=torch.Generator().manual_seed(7))
    b = boltzmann_keep_mask(logits, 0.5, 0.1, generator=torch.Generator().manual_seed(7))
    c = boltzmann_keep_mask(logits, 0.5, 0.1, generator=torch.Generator().manual_seed(8))
    assert a.shape == logits.shape and a.dtype == torch.bool
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_indices_and_keep_mask_describe_the_same_distinct_set():
    logits = torch.randn(3, 64)
    idx, valid = sample_token_indices(logits, 0.3, 0.5, generator=torch.Generator().manual_seed(3))
    keep = boltzmann_keep_mask(logits, 0.3, 0.5, generator=torch.Generator().manual_seed(3))
    for row in range(3):
        distinct = set(idx[row][valid[row]].tolist())
        assert len(distinct) == int(valid[row].sum())  # valid marks each token once
        assert distinct == set(torch.nonzero(keep[row]).flatten().tolist())
    assert (idx[:, 1:] >= idx[:, :-1]).all()


def test_every_head_draws_its_own_set():
    sampler = BoltzmannSampler(mode="boltzmann", ratio=0.1)
    sel = sampler(torch.zeros(1, 2, 1024), 0, 4, generator=torch.Generator().manual_seed(0))
    keep = sel.as_keep_mask(1024)
    assert keep.shape == (1, 4, 2, 1024)
    assert not torch.equal(keep[0, 0], keep[0, 1])


def test_modes():
    logits = torch.full((1, 2, 16), -3.0)
    logits[0, 0, :4] = 3.0
    full = BoltzmannSampler(mode="full")(logits, 0, 2)
    assert full.is_full
    masked = BoltzmannSampler(mode="masked")(logits, 0, 2)
    assert masked.keep.shape == (1, 2, 2, 16)
    assert masked.keep[0, :, 0, :4].all() and not masked.keep[0, :, 0, 4:].any()
    assert masked.keep[0, :, 1].all()  # no token >= 0.5: attend to all
    uniform = BoltzmannSampler(mode="uniform", ratio=0.5)(logits, 0, 2, generator=torch.Generator().manual_seed(0))
    assert uniform.indices.shape == (1, 2, 2, 8)
    with pytest.raises(ValueError, match="mode"):
        BoltzmannSampler(mode="sparse")


def test_uniform_mode_is_uniform():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 4000, 20) * 5  # uniform must ignore the logits
    sel = BoltzmannSampler(mode="uniform", ratio=0.1)(logits, 0, 1, generator=g)  # n = 2
    keep = sel.as_keep_mask(20)[0, 0].double()
    expected = 1 - (1 - 1 / 20) ** 2
    se = math.sqrt(expected * (1 - expected) / 4000)
    assert ((keep.mean(0) - expected).abs() / se).max() < 4.5


@pytest.mark.parametrize("kernels", ["1", "0"])
def test_per_head_sets_include_each_token_with_one_minus_one_minus_p_to_the_n(kernels, monkeypatch):
    """Sets drawn per head from one shared distribution (the C kernel's search, and PyTorch's)."""
    monkeypatch.setenv("BOLTZFORMER_CPU_KERNELS", kernels)
    g = torch.Generator().manual_seed(99)
    N, R, heads = 40, 5000, 3
    logits = torch.randn(N, generator=g) * 3
    idx, valid = sample_token_indices(logits.expand(R, N), 0.3, 0.1, generator=g, sets=heads)  # n = 4
    assert idx.shape == (R, heads, 4) and (idx[..., 1:] >= idx[..., :-1]).all()
    keep = torch.zeros(R, heads, N, dtype=torch.bool).scatter_(-1, idx, True)
    assert torch.equal(keep.sum(-1), valid.sum(-1))  # valid marks each distinct token once
    expected = inclusion_probability(boltzmann_distribution(logits, 0.3).double(), 4)
    z = (keep.double().mean(0) - expected) / torch.sqrt(expected * (1 - expected) / R)
    assert z.abs().max() < 4.5, z.abs().max()
    assert not torch.equal(keep[:, 0], keep[:, 1])


def test_a_seed_draws_the_same_sets_with_and_without_the_c_kernels(monkeypatch):
    """One random stream: the PyTorch form (no C compiler, or BOLTZFORMER_CPU_KERNELS=0) makes the
    kernels' counter-based numbers and maps them the same way, so the same generator state gives
    the same sets: per-head indices, keep masks with a threshold, and the uniform mode."""
    from boltzformer.model.kernels import cpu as cpu_kernels

    if not cpu_kernels.available(torch.zeros(1)):
        pytest.skip("no C compiler: the CPU kernels are not built (nothing to compare with)")
    logits = torch.randn(2, 6, 500, generator=torch.Generator().manual_seed(0)) * 4
    logits[0, 0] = -30.0  # a row with no candidate above the threshold: drawn uniformly
    results = {}
    for kernels in ("1", "0"):
        monkeypatch.setenv("BOLTZFORMER_CPU_KERNELS", kernels)
        g = torch.Generator().manual_seed(11)
        results[kernels] = (
            sample_token_indices(logits, 0.25, 0.1, generator=g, sets=4),
            boltzmann_keep_mask(logits, 0.5, 0.1, threshold=0.97, generator=g),
            BoltzmannSampler(mode="uniform", ratio=0.1)(logits, 0, 4, generator=g).indices,
        )
    (idx1, valid1), keep1, uniform1 = results["1"]
    (idx0, valid0), keep0, uniform0 = results["0"]
    assert torch.equal(idx1, idx0) and torch.equal(valid1, valid0)
    assert torch.equal(keep1, keep0) and torch.equal(uniform1, uniform0)
    assert keep1.sum() > 0 and not torch.equal(idx1[..., 0, :], idx1[..., 1, :])
