"""Triton kernels of the sampled attention and its random stream, for CUDA tensors.

What :mod:`boltzformer.model.kernels.cpu` does on the CPU, written for a GPU:

- :func:`exponentials`: the counter-based stream of :mod:`.counter_rng` (SplitMix64 at counter i,
  top 24 bits -> v in (0, 1], -log v with Cephes' float32 polynomial), bit for bit the C kernel's
  and PyTorch's numbers: the kernel is launched with ``enable_fp_fusion=False`` so that no
  multiply-add is fused (one IEEE float32 operation per step, as in the other two).
- :func:`sampled_attention`: for every row r (one (batch, query, head)), the scores of its query
  row ``a[r]`` against the rows of X it drew, their softmax over the valid draws (repeats left
  out), and the weighted sum of the same rows of V; backward gives a's gradient per row and
  scatters X's and V's with atomic adds (in one pass when they are tied: the keys are the values
  plus terms whose gradient is not wanted). Draw ``t`` of row ``r`` reads the row
  ``(draws[r, t] + (r // per_batch) * stride) * heads + r % heads`` of X and V, the mapping of
  the C kernels' plans: with ``heads = 1`` the folded projections (raw token rows, C channels),
  with ``heads = H`` the projected keys (token x head rows of d channels).

Unlike the CPU kernels there is no block plan: a plan's size is the number of valid draws, known
only after reading ``valid`` (a host synchronisation and a data-dependent shape), and the point of
the plan, keeping the rows of X that a stretch of draws reads in cache, is served on a GPU by its
L2 (50 MB on an H100), which holds a whole level's feature map (16,384 tokens x 512 channels in
bf16 is 16 MB). Rows are walked in the draws' own (ascending) order. Inputs may be float32 or
bfloat16 (read as such, computed in float32); outputs and gradients are float32 (the gradients of
bfloat16 inputs are cast back by autograd).

Scatter-adds with atomics make the order of the float32 additions in X's and V's gradients vary
from run to run (differences at rounding level); the forward pass is deterministic.

Import this module only where ``triton`` is installed; Triton reads ``TRITON_INTERPRET`` when the
kernels below are defined, so set it before the first import to run them on CPU tensors (the
tests do).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from boltzformer.model.kernels.counter_rng import GOLDEN, LOG_POLY

__all__ = ["INTERPRET", "exponentials", "sampled_attention"]

#: whether the kernels were defined for Triton's interpreter (CPU tensors) rather than a GPU
INTERPRET = bool(triton.knobs.runtime.interpret)

_GOLDEN_U = GOLDEN + (1 << 64)


@triton.jit
def _log_poly(x, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, P3: tl.constexpr, P4: tl.constexpr,
              P5: tl.constexpr, P6: tl.constexpr, P7: tl.constexpr, P8: tl.constexpr):
    y = tl.full(x.shape, P0, tl.float32)
    y = y * x + P1
    y = y * x + P2
    y = y * x + P3
    y = y * x + P4
    y = y * x + P5
    y = y * x + P6
    y = y * x + P7
    y = y * x + P8
    return y


@triton.jit
def _exponentials_kernel(seed_ptr, out_ptr, first, count, BLOCK: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr,
                         P2: tl.constexpr, P3: tl.constexpr, P4: tl.constexpr, P5: tl.constexpr, P6: tl.constexpr,
                         P7: tl.constexpr, P8: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < count
    seed = tl.load(seed_ptr).to(tl.uint64, bitcast=True)
    ctr = (offs + first + 1).to(tl.uint64, bitcast=True)
    z = seed + ctr * 0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    z = z ^ (z >> 31)
    bits = ((z >> 40) + 1).to(tl.int32)  # 1 .. 2^24
    u = bits.to(tl.float32).to(tl.int32, bitcast=True)
    e = (u >> 23) - (127 + 24)
    x = ((u & 0x007FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    big = x > 1.41421356
    x = tl.where(big, x * 0.5, x)
    fe = (e + big.to(tl.int32)).to(tl.float32)
    x = x - 1.0
    z2 = x * x
    y = _log_poly(x, P0, P1, P2, P3, P4, P5, P6, P7, P8)
    y = y * x * z2 - 2.12194440e-4 * fe - 0.5 * z2
    tl.store(out_ptr + offs, -((x + y) + 0.693359375 * fe), mask=mask)


def exponentials(seed: Tensor, count: int, *, first: int = 0) -> Tensor:
    """float32 (count,) on ``seed``'s device: the stream's numbers ``first ..`` for the int64 0-dim
    ``seed`` tensor (see :func:`boltzformer.model.kernels.counter_rng.exponentials`, which they equal)."""
    out = torch.empty(count, dtype=torch.float32, device=seed.device)
    if count:
        block = 1024
        _exponentials_kernel[(triton.cdiv(count, block),)](
            seed.reshape(1), out, first, count, BLOCK=block, **{f"P{i}": c for i, c in enumerate(LOG_POLY)},
            enable_fp_fusion=False,
        )
    return out


@triton.jit
def _rows_of(draws_ptr, valid_ptr, r, t0, n, base, h, heads, BLOCK_N: tl.constexpr):
    """The X rows and validity of draws t0 .. t0 + BLOCK_N of row r."""
    offs = t0 + tl.arange(0, BLOCK_N)
    inside = offs < n
    d = tl.load(draws_ptr + r * n + offs, mask=inside, other=0)
    ok = (tl.load(valid_ptr + r * n + offs, mask=inside, other=0) != 0) & inside
    return (d + base) * heads + h, ok


@triton.jit
def _forward_kernel(a_ptr, x_ptr, v_ptr, draws_ptr, valid_ptr, out_ptr, lse_ptr, n, C, per_batch, stride, heads,
                    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    cs = tl.arange(0, BLOCK_C)
    cm = cs < C
    a = tl.load(a_ptr + r * C + cs, mask=cm, other=0.0).to(tl.float32)
    base = (r // per_batch) * stride
    h = r % heads
    top = tl.full((), -1e30, tl.float32)  # finite: a chunk of repeats only gives exp(-inf) = 0, not NaN
    total = tl.full((), 0.0, tl.float32)
    acc = tl.full((BLOCK_C,), 0.0, tl.float32)
    for t0 in range(0, n, BLOCK_N):
        rows, ok = _rows_of(draws_ptr, valid_ptr, r, t0, n, base, h, heads, BLOCK_N)
        m2 = ok[:, None] & cm[None, :]
        x = tl.load(x_ptr + rows[:, None] * C + cs[None, :], mask=m2, other=0.0).to(tl.float32)
        s = tl.where(ok, tl.sum(x * a[None, :], axis=1), float("-inf"))
        new_top = tl.maximum(top, tl.max(s, axis=0))
        rescale = tl.exp(top - new_top)
        p = tl.exp(s - new_top)
        v = tl.load(v_ptr + rows[:, None] * C + cs[None, :], mask=m2, other=0.0).to(tl.float32)
        acc = acc * rescale + tl.sum(p[:, None] * v, axis=0)
        total = total * rescale + tl.sum(p, axis=0)
        top = new_top
    tl.store(out_ptr + r * C + cs, acc / total, mask=cm)
    tl.store(lse_ptr + r, top + tl.log(total))


@triton.jit
def _backward_kernel(a_ptr, x_ptr, v_ptr, draws_ptr, valid_ptr, out_ptr, lse_ptr, grad_ptr, da_ptr, dx_ptr, dv_ptr,
                     n, C, per_batch, stride, heads, TIED: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    cs = tl.arange(0, BLOCK_C)
    cm = cs < C
    a = tl.load(a_ptr + r * C + cs, mask=cm, other=0.0).to(tl.float32)
    g = tl.load(grad_ptr + r * C + cs, mask=cm, other=0.0).to(tl.float32)
    # softmax backward: ds_t = p_t (dp_t - sum_t p_t dp_t), and sum_t p_t dp_t = grad . out
    row_dot = tl.sum(g * tl.load(out_ptr + r * C + cs, mask=cm, other=0.0), axis=0)
    lse = tl.load(lse_ptr + r)
    base = (r // per_batch) * stride
    h = r % heads
    da = tl.full((BLOCK_C,), 0.0, tl.float32)
    for t0 in range(0, n, BLOCK_N):
        rows, ok = _rows_of(draws_ptr, valid_ptr, r, t0, n, base, h, heads, BLOCK_N)
        m2 = ok[:, None] & cm[None, :]
        x = tl.load(x_ptr + rows[:, None] * C + cs[None, :], mask=m2, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + rows[:, None] * C + cs[None, :], mask=m2, other=0.0).to(tl.float32)
        p = tl.where(ok, tl.exp(tl.sum(x * a[None, :], axis=1) - lse), 0.0)
        ds = p * (tl.sum(v * g[None, :], axis=1) - row_dot)
        da += tl.sum(ds[:, None] * x, axis=0)
        dv = p[:, None] * g[None, :]
        dx = ds[:, None] * a[None, :]
        if TIED:  # the keys' gradient goes to the values, in the same atomic add
            tl.atomic_add(dv_ptr + rows[:, None] * C + cs[None, :], dv + dx, mask=m2)
        else:
            tl.atomic_add(dx_ptr + rows[:, None] * C + cs[None, :], dx, mask=m2)
            tl.atomic_add(dv_ptr + rows[:, None] * C + cs[None, :], dv, mask=m2)
    tl.store(da_ptr + r * C + cs, da, mask=cm)


def _blocks(C: int) -> tuple[int, int]:
    block_c = triton.next_power_of_2(C)
    return max(16, min(128, 8192 // block_c)), block_c  # BLOCK_N x BLOCK_C tiles of at most 8192 values


class _SampledAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, x: Tensor, v: Tensor, draws: Tensor, valid: Tensor, mapping: tuple, tied: bool):
        heads, per_batch, stride = mapping
        a, x, v = a.contiguous(), x.contiguous(), v.contiguous()
        draws, valid = draws.contiguous(), valid.contiguous().view(torch.uint8)
        R, n = draws.shape
        C = a.shape[1]
        out = torch.empty(R, C, dtype=torch.float32, device=a.device)
        lse = torch.empty(R, dtype=torch.float32, device=a.device)
        block_n, block_c = _blocks(C)
        if R:
            _forward_kernel[(R,)](a, x, v, draws, valid, out, lse, n, C, per_batch, stride, heads,
                                  BLOCK_N=block_n, BLOCK_C=block_c)
        ctx.mapping, ctx.tied = mapping, tied
        ctx.save_for_backward(a, x, v, draws, valid, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, x, v, draws, valid, out, lse = ctx.saved_tensors
        heads, per_batch, stride = ctx.mapping
        R, n = draws.shape
        C = a.shape[1]
        da = torch.empty(R, C, dtype=torch.float32, device=a.device)
        dv = torch.zeros(v.shape, dtype=torch.float32, device=a.device)
        dx = dv if ctx.tied else torch.zeros(x.shape, dtype=torch.float32, device=a.device)
        block_n, block_c = _blocks(C)
        if R:
            _backward_kernel[(R,)](a, x, v, draws, valid, out, lse, grad.float().contiguous(), da, dx, dv, n, C,
                                   per_batch, stride, heads, TIED=ctx.tied, BLOCK_N=block_n, BLOCK_C=block_c)
        if ctx.tied:
            return da.to(a.dtype), None, dv.to(v.dtype), None, None, None, None
        return da.to(a.dtype), dx.to(x.dtype), dv.to(v.dtype), None, None, None, None


def sampled_attention(a: Tensor, x: Tensor, v: Tensor, *, draws: Tensor, valid: Tensor, heads: int = 1,
                      per_batch: int | None = None, stride: int = 0, tied: bool = False) -> Tensor:
    """Softmax attention of each row of ``a`` (R, C), already scaled, over the rows of ``x`` and
    ``v`` (M, C) it drew: ``draws`` int64 (R, n) mapped to rows as the module docstring says,
    ``valid`` bool (R, n) False on repeats (every row needs one True). Returns float32 (R, C); with
    ``tied``, x's gradient is added to v's and none is returned for x. The arguments are those of
    ``boltzformer.model.attention.sampled_attention_rows``, which calls this for CUDA tensors."""
    if not (a.device == x.device == v.device == draws.device == valid.device):
        raise ValueError(f"sampled_attention: all tensors must be on one device, got {a.device}, {x.device}, "
                         f"{v.device}, {draws.device}, {valid.device}")
    if x.shape != v.shape or x.shape[1] != a.shape[1] or draws.shape != valid.shape or draws.shape[0] != a.shape[0]:
        raise ValueError(f"sampled_attention: expected a (R, C), x and v (M, C), draws and valid (R, n); got "
                         f"a {tuple(a.shape)}, x {tuple(x.shape)}, v {tuple(v.shape)}, draws {tuple(draws.shape)}, "
                         f"valid {tuple(valid.shape)}")
    return _SampledAttention.apply(a, x, v, draws, valid, (heads, per_batch or a.shape[0], stride), tied)
