"""The Triton kernels, run by Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``) at small
sizes, against the PyTorch path: the same random numbers, the same attention values and gradients."""

from __future__ import annotations

import pytest
import torch

from boltzformer.model.kernels import counter_rng
from boltzformer.model.attention import MultiHeadAttention, sampled_attention_rows
from boltzformer.model.sampling import AttentionSelection, sample_token_indices

pytest.importorskip("triton", reason="triton is not installed (pip install triton, or the [gpu] extra)")


@pytest.fixture
def triton_attention(monkeypatch):
    """The kernels module, run by Triton's interpreter on CPU tensors (tests/conftest.py sets
    TRITON_INTERPRET=1 where there is no GPU), with the C kernels off so that CPU tensors go to
    Triton."""
    from boltzformer.model.kernels import triton_attention as module

    if not module.INTERPRET:
        pytest.skip("triton was imported without TRITON_INTERPRET=1 (a GPU is present): the kernels run on it "
                    "through benchmarks/gpu_check.py")
    monkeypatch.setenv("BOLTZFORMER_TRITON", "interpret")
    monkeypatch.setenv("BOLTZFORMER_CPU_KERNELS", "0")
    return module


def test_triton_stream_equals_the_torch_stream(triton_attention):
    for seed, first in ((0, 0), (2**63 - 1, 5), (987654321, 10**11)):
        s = torch.tensor(seed)
        assert torch.equal(triton_attention.exponentials(s, 3000, first=first),
                           counter_rng.exponentials(seed, 3000, first=first))


class _Spy:
    """Counts the kernels' autograd calls."""

    def __init__(self, fn, calls: list) -> None:
        self.fn, self.calls = fn, calls

    def apply(self, *args):
        self.calls.append(args[0].shape)
        return self.fn.apply(*args)


def _rows(R, M, n, g):
    rows = torch.sort(torch.randint(M, (R, n), generator=g), -1).values
    valid = torch.ones(R, n, dtype=torch.bool)
    valid[:, 1:] = rows[:, 1:] != rows[:, :-1]
    return rows, valid


@pytest.mark.parametrize("tied", [False, True])
def test_triton_rows_equal_the_torch_rows_with_gradients(tied, triton_attention, monkeypatch):
    """Rows mapped with heads, a batch stride and more draws than one tile (n > BLOCK_N)."""
    g = torch.Generator().manual_seed(3)
    B, H, P, N, n, c = 2, 2, 3, 90, 150, 16  # R = B * P * H rows; X holds B * N * H rows
    draws, valid = _rows(B * P * H, N, n, g)
    valid[4, 1:] = False  # a row with one valid draw
    q, k, v = (torch.randn(m, c, generator=g) for m in (B * P * H, B * N * H, B * N * H))
    weights = torch.randn(B * P * H, c, generator=g)
    calls = []
    monkeypatch.setattr(triton_attention, "_SampledAttention", _Spy(triton_attention._SampledAttention, calls))
    results = []
    for impl in ("torch", "triton"):
        monkeypatch.setenv("BOLTZFORMER_TRITON", "interpret" if impl == "triton" else "0")
        xs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = sampled_attention_rows(*xs, rows=draws, valid=valid, heads=H, per_batch=P * H, stride=N, tied=tied)
        (out * weights).sum().backward()
        results.append([out.detach()] + [x.grad for x in xs])
    assert len(calls) == 1  # the second run went through the kernels
    for a, b in zip(*results):
        assert (a is None) == (b is None) == (tied and a is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # bfloat16 inputs are read as such and computed in float32: within bfloat16's rounding
    out16 = triton_attention.sampled_attention((q * c**-0.5).bfloat16(), k.bfloat16(), v.bfloat16(), draws=draws,
                                               valid=valid, heads=H, per_batch=P * H, stride=N)
    assert out16.dtype == torch.float32
    torch.testing.assert_close(out16, results[0][0], atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("fold", [True, False])
def test_multihead_attention_on_triton_equals_dense_attention_with_the_set(fold, triton_attention, monkeypatch):
    """forward_sampled through the Triton kernels (folded projections, or projected keys): the
    dense form's values and gradients, with keys made from the values (their gradient tied)."""
    import boltzformer.model.attention as attention

    monkeypatch.setattr(attention, "_fold", lambda *args: fold)
    calls = []
    monkeypatch.setattr(triton_attention, "_SampledAttention", _Spy(triton_attention._SampledAttention, calls))
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4)
    g = torch.Generator().manual_seed(1)
    q, v = torch.randn(2, 5, 32, generator=g), torch.randn(2, 60, 32, generator=g)
    pos, shift = torch.randn(2, 60, 32, generator=g), torch.randn(32, generator=g)
    idx, valid = sample_token_indices(torch.randn(2, 4, 5, 60, generator=g), 0.5, 0.2, generator=g)
    keep = AttentionSelection(indices=idx, valid=valid).as_keep_mask(60)
    grads = []
    for form in ("sampled", "dense"):
        attn.zero_grad()
        qs, vs = q.clone().requires_grad_(), v.clone().requires_grad_()
        ks = vs + pos + shift
        if form == "sampled":
            out = attn.forward_sampled(qs, ks, vs, indices=idx, valid=valid, value_shift=shift, keys_from_values=True)
        else:
            out = attn(qs, ks, vs + shift, keep=keep)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        grads.append([out.detach(), qs.grad, vs.grad, attn.in_proj_weight.grad.clone()])
    assert len(calls) == 1
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
