"""The counter-based stream in PyTorch: the C kernel's numbers bit for bit, from a seed tensor."""

from __future__ import annotations

import math

import pytest
import torch

from boltzformer.model.kernels import cpu as cpu_kernels
from boltzformer.model.kernels import counter_rng


@pytest.mark.parametrize("seed", [0, 77, 2**63 - 1, 2**64 - 5, 12345678901234567])
def test_torch_stream_equals_the_c_kernels_bit_for_bit(seed):
    if not cpu_kernels.available(torch.zeros(1)):
        pytest.skip("no C compiler: the CPU kernels are not built")
    for first, count in ((0, 1 << 16), (10**12, 1000)):
        ours = counter_rng.exponentials(seed, count, first=first)
        assert ours.dtype == torch.float32
        assert torch.equal(ours, cpu_kernels.exponentials(seed, count, first=first))


def test_seed_tensor_gives_the_int_seeds_numbers_without_leaving_the_device():
    g = torch.Generator().manual_seed(4)
    seed = counter_rng.seed_tensor(g, "cpu")
    assert seed.dtype == torch.int64 and seed.dim() == 0 and 0 <= int(seed) < 2**63
    # the same draw as the one the CPU kernels' caller makes from the same generator state
    assert int(seed) == int(torch.empty((), dtype=torch.int64).random_(generator=torch.Generator().manual_seed(4)))
    assert torch.equal(counter_rng.exponentials(seed, 500, first=3), counter_rng.exponentials(int(seed), 500, first=3))
    with pytest.raises(ValueError, match="count and first"):
        counter_rng.exponentials(1, -1)


def test_torch_stream_is_standard_exponential():
    """Mean 1 and P(E > t) = exp(-t) within 4.5 standard errors of 2^18 numbers (fixed seed), and
    bounded by -log(2^-24) (with or without a C compiler)."""
    m = 1 << 18
    e = counter_rng.exponentials(2024, m).double()
    assert bool((e >= 0).all()) and float(e.max()) < 17.0
    assert abs(float(e.mean()) - 1.0) < 4.5 / math.sqrt(m)
    for t in (0.5, 2.0, 6.0):
        p = math.exp(-t)
        assert abs(float((e > t).double().mean()) - p) < 4.5 * math.sqrt(p * (1 - p) / m), t
