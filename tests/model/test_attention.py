"""Sampled cross-attention: equal to dense attention with the same set masked in, cheaper."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from boltzformer.model.attention import MultiHeadAttention
from boltzformer.sampling import AttentionSelection, sample_token_indices


def _inputs(B=2, Q=5, N=200, C=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Q, C, generator=g), torch.randn(B, N, C, generator=g), torch.randn(B, N, C, generator=g))


def test_dense_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    ours = MultiHeadAttention(32, 4)
    ref = nn.MultiheadAttention(32, 4, batch_first=True)
    ref.load_state_dict(ours.state_dict())  # same parameter layout
    q, k, v = _inputs()
    torch.testing.assert_close(ours(q, k, v), ref(q, k, v, need_weights=False)[0], atol=1e-5, rtol=1e-5)
    # a boolean keep mask means the opposite of torch's attn_mask
    keep = torch.rand(2, 4, 5, 200) < 0.3
    keep[..., 0] = True
    torch_mask = (~keep).reshape(8, 5, 200)
    torch.testing.assert_close(
        ours(q, k, v, keep=keep), ref(q, k, v, attn_mask=torch_mask, need_weights=False)[0], atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("ratio", [0.02, 0.1, 0.5])
def test_sampled_attention_equals_dense_attention_with_the_set_masked_in(ratio):
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4)
    q, k, v = _inputs()
    logits = torch.randn(2, 4, 5, 200)
    idx, valid = sample_token_indices(logits, 0.5, ratio, generator=torch.Generator().manual_seed(1))
    keep = AttentionSelection(indices=idx, valid=valid).as_keep_mask(200)
    assert (~valid).any() or ratio < 0.05  # repeats occur and must count once
    sampled = attn.forward_sampled(q, k, v, indices=idx, valid=valid)
    dense = attn(q, k, v, keep=keep)
    torch.testing.assert_close(sampled, dense, atol=1e-5, rtol=1e-5)
    # gradients agree too
    qs, qd = q.clone().requires_grad_(), q.clone().requires_grad_()
    attn.forward_sampled(qs, k, v, indices=idx, valid=valid).sum().backward()
    attn(qd, k, v, keep=keep).sum().backward()
    torch.testing.assert_close(qs.grad, qd.grad, atol=1e-5, rtol=1e-4)


def _attention_flops(fn) -> int:
    """FLOPs of the scores and weighted sum (batched matmuls), not the projections."""
    with FlopCounterMode(display=False) as counter:
        fn()
    counts = counter.get_flop_counts()["Global"]
    return int(sum(v for op, v in counts.items() if "bmm" in str(op)))


def test_sampled_attention_cost_follows_the_number_of_draws():
    attn = MultiHeadAttention(32, 4)
    B, H, Q, N, d = 1, 4, 10, 4096, 8
    q, k, v = _inputs(B=B, Q=Q, N=N)
    flops = {}
    for ratio in (0.05, 0.1, 0.2):
        idx, valid = sample_token_indices(torch.randn(B, H, Q, N), 1.0, ratio, generator=torch.Generator().manual_seed(0))
        n = idx.shape[-1]
        flops[ratio] = _attention_flops(lambda: attn.forward_sampled(q, k, v, indices=idx, valid=valid))
        # scores (Q x n x d) and weighted sum (Q x n x d), 2 FLOPs per multiply-add
        assert flops[ratio] == 2 * 2 * B * H * Q * n * d
    dense = 2 * 2 * B * H * Q * N * d
    assert flops[0.1] <= 0.1 * dense < flops[0.2]
    assert flops[0.05] < flops[0.1] < flops[0.2]
