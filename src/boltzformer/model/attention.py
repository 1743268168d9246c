"""Multi-head attention, dense or over a sampled set of keys.

:class:`MultiHeadAttention` has the parameter layout of ``torch.nn.MultiheadAttention``
(``in_proj_weight`` (3C, C), ``in_proj_bias`` (3C,), ``out_proj``), so checkpoints of the reference
code load into it unchanged. It is batch-first and runs in one of three forms:

- dense: every key (``F.scaled_dot_product_attention``, which picks a fused kernel);
- dense with a boolean ``keep`` mask (True = attended);
- sampled: each (batch, head, query) attends only to the keys at ``indices`` (repeats ignored).
  Only the drawn keys are touched, so the cost is O(Q n d) instead of O(Q N d), and nothing of size
  n x d is materialised per query. On CPU the C kernels of :mod:`boltzformer.model.kernels.cpu` do it:
  the draws are regrouped by blocks of keys once (a plan), then scores, softmax, weighted sum and
  their backward walk the plan in order. On CUDA the Triton kernels of
  :mod:`boltzformer.model.kernels.triton_attention` do it (without Triton, PyTorch's fused attention with
  the set as a mask). Elsewhere (or without a C compiler) PyTorch's
  ``torch.sparse.sampled_addmm`` forms the scores and ``F.embedding_bag`` the weighted sum. All
  give the same result as the dense form with the same set masked in (tested).

The sampled form is put together by hand because no maintained library offers attention over a
different key set per query and head on CPU.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from boltzformer.model.kernels import cpu as cpu_kernels
from boltzformer.model.kernels import triton_usable

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
        self, query: Tensor, key: Tensor, value: Tensor, *, indices: Tensor, valid: Tensor,
        value_shift: Tensor | None = None, keys_from_values: bool = False,
    ) -> Tensor:
        """Attention of each (batch, head, query) over the keys at ``indices`` only.

        Args:
            query: (B, Q, C); key, value: (B, N, C).
            indices: int64 (B, heads, Q, n), token indices into N, sorted ascending in each row
                (repeats allowed; a transposed view of a (B, Q, heads, n) tensor, as the sampler
                returns, costs no copy).
            valid: bool (B, heads, Q, n), False on repeats; each distinct token counts once.
            value_shift: optional (C,) added to every value row before its projection, without
                materialising ``value + value_shift`` (a decoder's level embedding): the attention
                weights sum to 1, so it adds ``W_v value_shift`` to every output.
            keys_from_values: ``key`` is ``value`` plus terms whose gradient through it is not wanted
                (fixed positions) or is zero (a shift shared by every token cancels in the softmax):
                key's gradient is then added to value's and not passed to ``key``. With the CPU
                kernels and folded projections the two are made in one pass over the value rows.

        Returns:
            (B, Q, C), equal to :meth:`forward` with ``keep`` the set of valid indices (and value
            ``value + value_shift``).

        With the CPU or Triton kernels and few enough draws (see :func:`_fold`), the key and value
        projections are folded away: ``q . (W_k x + b_k) = (W_k^T q) . x + q . b_k``, whose last
        term is the same for every key of a row and cancels in the softmax, and, the weights summing
        to 1, ``sum_j a_j (W_v x_j + b_v) = W_v (sum_j a_j x_j) + b_v``. The drawn tokens' raw
        features are then read directly, and the N x C x 2C projections of every token are never
        computed: at 10 % of the tokens with 101 queries and 8 heads that is about a sixth of the
        multiply-adds. Otherwise keys and values are projected and attended with PyTorch's kernels.
        """
        B, Q, C = query.shape
        N = key.shape[1]
        H, d = self.num_heads, self.head_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        idx = indices.transpose(1, 2)  # B x Q x H x n
        n = idx.shape[-1]
        valid = valid.transpose(1, 2).reshape(B * Q * H, n)
        if _masked_fallback(query):
            # CUDA without Triton: PyTorch's fused attention with the set as a mask (O(Q N d), no host sync)
            keep = torch.zeros((B, H, Q, N), dtype=torch.bool, device=query.device).scatter_(-1, indices, True)
            return self(query, key, value if value_shift is None else value + value_shift, keep=keep)
        q = F.linear(query, w[:C], b[:C]).view(B, Q, H, d)
        draws = idx.reshape(B * Q * H, n)  # rows (batch, query, head); tokens of image b at b * N
        if _fold(query, Q * H * n, N, C, d):
            wk, wv = w[C : 2 * C].view(H, d, C), w[2 * C :].view(H, d, C)
            # B x Q x H x d . H x d x C -> (B*Q*H) x C: each row's query in the input space of the keys
            folded = torch.einsum("bqhd,hdc->bqhc", q, wk).reshape(B * Q * H, C)
            # the C kernels read float32 (under bf16 autocast the maps may be bfloat16); Triton reads either
            cast = (lambda t: t.float()) if query.device.type == "cpu" else (lambda t: t)  # noqa: E731
            mixed = sampled_attention_rows(
                cast(folded), cast(key.reshape(B * N, C)), cast(value.reshape(B * N, C)), rows=draws,
                valid=valid, scale=d**-0.5, per_batch=Q * H, stride=N, tied=keys_from_values,
            )
            if value_shift is not None:
                mixed = mixed + value_shift
            out = torch.einsum("bqhc,hdc->bqhd", mixed.view(B, Q, H, C), wv) + b[2 * C :].view(H, d)
            return self.out_proj(out.reshape(B, Q, C))
        # rows are (batch, query, head) for queries and (batch, token, head) for keys and values:
        # B x T x C -> (B*T*H) x d, a view, no transpose
        k = F.linear(key, w[C : 2 * C], b[C : 2 * C]).reshape(B * N * H, d)
        bv = b[2 * C :] if value_shift is None else b[2 * C :] + w[2 * C :] @ value_shift
        v = F.linear(value, w[2 * C :], bv).reshape(B * N * H, d)
        # projected keys and values are not tied (their projections differ): the caller's graph adds
        # key's gradient to value's
        out = sampled_attention_rows(q.reshape(B * Q * H, d), k, v, rows=draws, valid=valid, heads=H, per_batch=Q * H,
                                     stride=N)
        return self.out_proj(out.view(B, Q, C))  # (B*Q*H) x d -> B x Q x C


def _masked_fallback(query: Tensor) -> bool:
    """CUDA tensors without Triton (or ``BOLTZFORMER_TRITON=0``): the sampled form is dense
    attention with the set as a mask, PyTorch's fused kernels being faster there than its sparse
    operations (which also synchronise with the host)."""
    return query.is_cuda and not triton_usable(query)


def _fold(query: Tensor, draws: int, N: int, C: int, d: int) -> bool:
    """Whether to attend over the raw tokens with folded projections (``draws`` = Q H n in all).

    CPU kernels: folded, 2 Q H n C multiply-adds on raw rows; projected, 4 N C^2 of GEMMs (about
    3x the throughput per multiply-add on CPU) + 2 Q H n d. Triton: a GPU's GEMMs cost next to
    nothing and its gathers are memory traffic: folded gathers Q H n C values, projected
    Q H n d plus writing and reading the projected keys and values (4 N C). Elsewhere never."""
    if cpu_kernels.available(query):
        return 3 * draws < N * C
    if triton_usable(query):
        return draws * (C - d) < 4 * N * C
    return False


def _sddmm(a: Tensor, x: Tensor, rows: Tensor) -> Tensor:
    """(R, n): ``a[r] . x[rows[r, t]]``."""
    R, n = rows.shape
    crow = torch.arange(0, R * n + 1, n, device=rows.device)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": sampled_addmm is what we use of it
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(
            crow, rows.reshape(-1), a.new_zeros(R * n), size=(R, x.shape[0]), check_invariants=False
        )
    return torch.sparse.sampled_addmm(pattern, a, x.t(), beta=0.0).values().view(R, n)


def _spmm(weights: Tensor, x: Tensor, rows: Tensor) -> Tensor:
    """(R, C): ``sum_t weights[r, t] x[rows[r, t]]``."""
    return F.embedding_bag(rows, x, mode="sum", per_sample_weights=weights)


def _spmm_t(weights: Tensor, a: Tensor, rows: Tensor, like: Tensor) -> Tensor:
    """``like``-shaped (M, C): ``out[rows[r, t]] += weights[r, t] a[r]``: the weight gradient of the
    bag ``_spmm(weights, like)``, which embedding_bag's backward computes without materialising the
    (R n, C) products."""
    with torch.enable_grad():
        leaf = like.detach().requires_grad_()
        (out,) = torch.autograd.grad(F.embedding_bag(rows, leaf, mode="sum", per_sample_weights=weights), leaf, a)
    return out


class _SampledAttention(torch.autograd.Function):
    """softmax over each row's valid draws of ``a[r] . k[rows[r, t]]``, then the weighted sum of
    ``v[rows[r, t]]``; backward by the same three products, transposed where needed. PyTorch's
    sparse operations on the row-major draws."""

    @staticmethod
    def forward(ctx, a: Tensor, k: Tensor, v: Tensor, rows: Tensor, valid: Tensor, tied: bool) -> Tensor:
        scores = _sddmm(a, k, rows)  # R x n
        attn = torch.softmax(scores.masked_fill_(~valid, float("-inf")), dim=-1)
        ctx.tied = tied
        ctx.save_for_backward(a, k, v, rows, attn)
        return _spmm(attn, v, rows)  # R x C

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, k, v, rows, attn = ctx.saved_tensors
        grad = grad.contiguous()
        dattn = _sddmm(grad, v, rows)
        dscores = attn * (dattn - (attn * dattn).sum(-1, keepdim=True))  # softmax backward
        da = _spmm(dscores, k, rows) if ctx.needs_input_grad[0] else None
        if ctx.tied:  # key's gradient goes to value
            dv = _spmm_t(dscores, a, rows, k) + _spmm_t(attn, grad, rows, v) if ctx.needs_input_grad[2] else None
            return da, None, dv, None, None, None
        dk = _spmm_t(dscores, a, rows, k) if ctx.needs_input_grad[1] else None
        dv = _spmm_t(attn, grad, rows, v) if ctx.needs_input_grad[2] else None
        return da, dk, dv, None, None, None


class _PlannedAttention(torch.autograd.Function):
    """The same with the CPU kernels: the draws regrouped by blocks of keys once
    (:func:`cpu_kernels.plan`), then scores, softmax, weighted sum and their backward all in that
    order."""

    @staticmethod
    def plan(k: Tensor, rows: Tensor, valid: Tensor, mapping: tuple) -> cpu_kernels.Plan:
        heads, per_batch, stride = mapping
        return cpu_kernels.plan(rows.contiguous(), valid.contiguous(), k.shape[0], k.shape[1], heads=heads,
                                per_batch=per_batch, stride=stride)

    @staticmethod
    def forward(ctx, a: Tensor, k: Tensor, v: Tensor, rows: Tensor, valid: Tensor, mapping: tuple, tied: bool) -> Tensor:
        a, k, v = a.contiguous(), k.contiguous(), v.contiguous()
        plan = _PlannedAttention.plan(k, rows, valid, mapping)
        ctx.tied = tied
        scores, top = cpu_kernels.plan_sddmm(a, k, plan, row_max=True)
        attn = cpu_kernels.plan_softmax(scores, plan, row_max=top)
        ctx.plan = plan
        ctx.save_for_backward(a, k, v, attn)
        return cpu_kernels.plan_spmm(attn, v, plan)  # R x C

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, k, v, attn = ctx.saved_tensors
        plan = ctx.plan
        grad = grad.contiguous()
        dscores = cpu_kernels.plan_softmax_backward(attn, cpu_kernels.plan_sddmm(grad, v, plan), plan)
        da = cpu_kernels.plan_spmm(dscores, k, plan) if ctx.needs_input_grad[0] else None
        if ctx.tied:  # key's gradient goes to value: both scatters in one pass over value's rows
            dv = cpu_kernels.plan_spmm_t(dscores, a, plan, attn, grad) if ctx.needs_input_grad[2] else None
            return da, None, dv, None, None, None, None
        dk = cpu_kernels.plan_spmm_t(dscores, a, plan) if ctx.needs_input_grad[1] else None
        dv = cpu_kernels.plan_spmm_t(attn, grad, plan) if ctx.needs_input_grad[2] else None
        return da, dk, dv, None, None, None, None


def sampled_attention_rows(
    q: Tensor, k: Tensor, v: Tensor, *, rows: Tensor, valid: Tensor, scale: float | None = None,
    heads: int = 1, per_batch: int | None = None, stride: int = 0, tied: bool = False,
) -> Tensor:
    """Scaled dot-product attention of each row of ``q`` over the rows of ``k``/``v`` it drew.

    Args:
        q: (R, c) one row per (batch, query, head); k, v: (M, c) keys and values.
        rows: int64 (R, n), for each query row the rows of k and v it attends, ascending
            (repeats allowed).
        valid: bool (R, n), False on repeats (each distinct key counts once); every row must have
            at least one True.
        scale: score scale, ``1 / sqrt(c)`` by default.
        heads, per_batch, stride: ``rows`` may instead hold token draws, row r's draw t then
            reading the row ``(rows[r, t] + (r // per_batch) * stride) * heads + r % heads`` of k and
            v: a decoder's draws for keys laid out as (batch x tokens x heads) rows of one head's
            channels, without forming that (R, n) array. By default the rows themselves.
        tied: k's gradient is added to v's and not returned to k (k is v plus terms whose gradient
            through it is not wanted; see :meth:`MultiHeadAttention.forward_sampled`).

    Returns:
        (R, c). Cost O(R n c); the only saved activations of its own are the (R, n) weights and
        the draws' order.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if cpu_kernels.available(q) and q.dtype == k.dtype == v.dtype == torch.float32:
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            return _PlannedAttention.apply(q * scale, k, v, rows, valid, (heads, per_batch, stride), tied)
        # no backward: the softmax is made inside the weighted sum, from the scores' row maxima
        plan = _PlannedAttention.plan(k, rows, valid, (heads, per_batch, stride))
        scores, top = cpu_kernels.plan_sddmm((q * scale).contiguous(), k.contiguous(), plan, row_max=True)
        return cpu_kernels.plan_spmm(scores, v.contiguous(), plan, row_max=top)
    if triton_usable(q, k, v):
        from boltzformer.model.kernels import triton_attention

        out = triton_attention.sampled_attention(q * scale, k, v, draws=rows, valid=valid, heads=heads,
                                                 per_batch=per_batch, stride=stride, tied=tied)
        return out.to(q.dtype)
    if heads != 1 or stride:
        r = torch.arange(rows.shape[0], device=rows.device)[:, None]
        rows = (rows + (r // (per_batch or rows.shape[0])) * stride) * heads + r % heads
    return _SampledAttention.apply(q * scale, k, v, rows, valid, tied)


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
