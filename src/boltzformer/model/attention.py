"""Multi-head attention, dense or over a sampled set of keys.

:class:`MultiHeadAttention` has the parameter layout of ``torch.nn.MultiheadAttention``
(``in_proj_weight`` (3C, C), ``in_proj_bias`` (3C,), ``out_proj``), so checkpoints of the reference
code load into it unchanged. It is batch-first and runs in one of three forms:

- dense: every key (``F.scaled_dot_product_attention``, which picks a fused kernel);
- dense with a boolean ``keep`` mask (True = attended);
- sampled: each (batch, head, query) attends only to the keys at ``indices`` (repeats ignored).
  Only the drawn keys are touched: the scores are a sampled dense-dense product
  (``torch.sparse.sampled_addmm``) and the weighted sum a weighted bag of value rows
  (``F.embedding_bag``, FBGEMM's kernel on CPU), so both cost O(Q n d) instead of O(Q N d) and
  nothing of size n x d is materialised per query. It gives the same result as the dense form with
  the same set masked in (tested).

The sampled form is put together by hand from those two kernels because no maintained library
offers attention over a different key set per query and head on CPU.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiHeadAttention", "sampled_attention", "sampled_attention_rows"]


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
            indices: int64 (B, heads, Q, n), token indices into N (repeats allowed; a transposed
                view of a (B, Q, heads, n) tensor, as the sampler returns, costs no copy).
            valid: bool (B, heads, Q, n), False on repeats; each distinct token counts once.

        Returns:
            (B, Q, C), equal to :meth:`forward` with ``keep`` the set of valid indices.
        """
        B, Q, C = query.shape
        N = key.shape[1]
        H, d = self.num_heads, self.head_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        # rows are (batch, query, head) for queries and (batch, token, head) for keys and values:
        # B x T x C -> (B*T*H) x d, a view, no transpose
        q = F.linear(query, w[:C], b[:C]).view(B * Q * H, d)
        k = F.linear(key, w[C : 2 * C], b[C : 2 * C]).view(B * N * H, d)
        v = F.linear(value, w[2 * C :], b[2 * C :]).view(B * N * H, d)
        idx = indices.transpose(1, 2)  # B x Q x H x n
        n = idx.shape[-1]
        batch = torch.arange(B, device=idx.device).view(B, 1, 1, 1) * N
        head = torch.arange(H, device=idx.device).view(1, 1, H, 1)
        rows = ((idx + batch) * H + head).reshape(B * Q * H, n)  # row of each drawn key in k and v
        out = sampled_attention_rows(q, k, v, rows=rows, valid=valid.transpose(1, 2).reshape(B * Q * H, n))
        return self.out_proj(out.view(B, Q, C))  # (B*Q*H) x d -> B x Q x C


class _SampledScores(torch.autograd.Function):
    """``s[r, t] = q[r] . k[rows[r, t]]`` for every drawn (row, key) pair: a sampled dense-dense
    matrix product. Backward: dq is a weighted bag of key rows, dk the transposed bag."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, rows: Tensor) -> Tensor:
        R, n = rows.shape
        crow = torch.arange(0, R * n + 1, n, device=rows.device)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": sampled_addmm is what we use of it
            warnings.simplefilter("ignore", UserWarning)
            pattern = torch.sparse_csr_tensor(
                crow, rows.reshape(-1), q.new_zeros(R * n), size=(R, k.shape[0]), check_invariants=False
            )
        ctx.save_for_backward(q, k, rows)
        return torch.sparse.sampled_addmm(pattern, q, k.t(), beta=0.0).values().view(R, n)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        q, k, rows = ctx.saved_tensors
        grad = grad.contiguous()
        dq = dk = None
        if ctx.needs_input_grad[0]:
            dq = F.embedding_bag(rows, k, mode="sum", per_sample_weights=grad)
        if ctx.needs_input_grad[1]:
            # dk[j] = sum over (r, t) with rows[r, t] == j of grad[r, t] q[r]: the weight gradient
            # of the bag above, which embedding_bag's backward computes without materialising it
            with torch.enable_grad():
                leaf = k.detach().requires_grad_()
                bag = F.embedding_bag(rows, leaf, mode="sum", per_sample_weights=grad)
                (dk,) = torch.autograd.grad(bag, leaf, q)
        return dq, dk, None


def sampled_attention_rows(q: Tensor, k: Tensor, v: Tensor, *, rows: Tensor, valid: Tensor) -> Tensor:
    """Scaled dot-product attention of each row of ``q`` over the rows of ``k``/``v`` it drew.

    Args:
        q: (R, d) one row per (batch, query, head); k, v: (M, d) projected keys and values.
        rows: int64 (R, n), for each query row the rows of k and v it attends (repeats allowed).
        valid: bool (R, n), False on repeats (each distinct key counts once); every row must have
            at least one True.

    Returns:
        (R, d). Cost O(R n d); the only saved activations are the (R, n) weights.
    """
    scores = _SampledScores.apply(q, k, rows) * (1.0 / math.sqrt(q.shape[-1]))  # R x n
    attn = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1)
    return F.embedding_bag(rows, v, mode="sum", per_sample_weights=attn)  # R x d


def sampled_attention(q: Tensor, k: Tensor, v: Tensor, *, indices: Tensor, valid: Tensor) -> Tensor:
    """Scaled dot-product attention of each (batch, head, query) over the keys at ``indices``.

    Args:
        q: (B, H, Q, d); k, v: (B, H, N, d), already projected.
        indices: int64 (B, H, Q, n) into N; valid: bool (B, H, Q, n), False on repeats.

    Returns:
        (B, H, Q, d), computed by :func:`sampled_attention_rows`.
    """
    B, H, N, d = k.shape
    Q, n = indices.shape[-2:]
    base = torch.arange(B * H, device=indices.device).view(B, H, 1, 1) * N
    rows = (indices + base).reshape(B * H * Q, n)
    out = sampled_attention_rows(
        q.reshape(B * H * Q, d), k.reshape(B * H * N, d), v.reshape(B * H * N, d), rows=rows, valid=valid.reshape(-1, n)
    )
    return out.view(B, H, Q, d)
