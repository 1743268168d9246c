"""Multi-head attention, dense or over a sampled set of keys.

:class:`MultiHeadAttention` has the parameter layout of ``torch.nn.MultiheadAttention``
(``in_proj_weight`` (3C, C), ``in_proj_bias`` (3C,), ``out_proj``), so checkpoints of the reference
code load into it unchanged. It is batch-first and runs in one of three forms:

- dense: every key (``F.scaled_dot_product_attention``, which picks a fused kernel);
- dense with a boolean ``keep`` mask (True = attended);
- sampled: each (batch, head, query) attends only to the keys at ``indices`` (repeats ignored).
  Only those keys are gathered, so the cost of the scores and the weighted sum follows the number
  of draws n, not the number of tokens N. It gives the same result as the dense form with the same
  set masked in (tested).

The sampled form is written by hand because no maintained library offers attention over a
different, variable key set per query and head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiHeadAttention", "sampled_attention"]


class MultiHeadAttention(nn.Module):
    """Batch-first multi-head attention with ``nn.MultiheadAttention``'s parameters.

    Args:
        embed_dim: channels C of queries, keys and values.
        num_heads: heads; ``embed_dim`` must divide by it.
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _project(self, x: Tensor, which: int) -> Tensor:
        """Project x (B, T, C) with the q (0), k (1) or v (2) slice -> (B, heads, T, d)."""
        B, T, C = x.shape
        w = self.in_proj_weight[which * C : (which + 1) * C]
        b = self.in_proj_bias[which * C : (which + 1) * C]
        # B x T x C -> B x T x heads x d -> B x heads x T x d
        return F.linear(x, w, b).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge(self, out: Tensor) -> Tensor:
        # B x heads x Q x d -> B x Q x C
        B, H, Q, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, Q, H * d))

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        *,
        keep: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Dense attention.

        Args:
            query: (B, Q, C); key, value: (B, N, C).
            keep: optional bool mask broadcastable to (B, heads, Q, N), True = may attend. Every
                row must keep at least one key.
            key_padding_mask: optional bool (B, N), True = padding, never attended.

        Returns:
            (B, Q, C)
        """
        q = self._project(query, 0)
        k = self._project(key, 1)
        v = self._project(value, 2)
        mask = keep
        if key_padding_mask is not None:
            pad_keep = ~key_padding_mask[:, None, None, :]  # B x 1 x 1 x N
            mask = pad_keep if mask is None else mask & pad_keep
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self._merge(out)

    def forward_sampled(
        self, query: Tensor, key: Tensor, value: Tensor, *, indices: Tensor, valid: Tensor
    ) -> Tensor:
        """Attention of each (batch, head, query) over the keys at ``indices`` only.

        Args:
            query: (B, Q, C); key, value: (B, N, C).
            indices: int64 (B, heads, Q, n), token indices into N (repeats allowed).
            valid: bool (B, heads, Q, n), False on repeats; each distinct token counts once.

        Returns:
            (B, Q, C), equal to :meth:`forward` with ``keep`` the set of valid indices.
        """
        q = self._project(query, 0)  # B x H x Q x d
        k = self._project(key, 1)  # B x H x N x d
        v = self._project(value, 2)
        return self._merge(sampled_attention(q, k, v, indices=indices, valid=valid))


def sampled_attention(q: Tensor, k: Tensor, v: Tensor, *, indices: Tensor, valid: Tensor) -> Tensor:
    """Scaled dot-product attention of each (batch, head, query) over the keys at ``indices``.

    Args:
        q: (B, H, Q, d); k, v: (B, H, N, d), already projected.
        indices: int64 (B, H, Q, n) into N; valid: bool (B, H, Q, n), False on repeats.

    Returns:
        (B, H, Q, d). Only the n drawn keys and values are gathered: the scores and the weighted
        sum cost O(Q n d) instead of O(Q N d).
    """
    B, H, N, d = k.shape
    Q, n = indices.shape[-2:]
    # flat row index of every drawn token in (B*H*N, d): gather K and V rows only there
    base = torch.arange(B * H, device=indices.device).view(B, H, 1, 1) * N
    flat = (indices + base).reshape(-1)  # B*H*Q*n
    k_s = k.reshape(B * H * N, d).index_select(0, flat).view(B, H, Q, n, d)
    v_s = v.reshape(B * H * N, d).index_select(0, flat).view(B, H, Q, n, d)
    scores = torch.einsum("bhqd,bhqnd->bhqn", q, k_s) * (1.0 / math.sqrt(d))  # B x H x Q x n
    attn = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1)
    return torch.einsum("bhqn,bhqnd->bhqd", attn, v_s)
