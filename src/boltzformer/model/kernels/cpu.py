"""Cache-blocked CPU kernels for sampled attention and sorted draws: the Python side (checks,
outputs, thread counts) of the C functions in ``csrc/``, which :mod:`.cpu_build` compiles on first use.

Sampled attention touches, for every (query, head) row r, the rows ``rows[r, 0..n)`` of a feature
matrix X (M, C): scores ``A[r] . X[rows[r, t]]`` (a sampled dense-dense product, "SDDMM"), their
softmax over the row, weighted sums ``sum_t W[r, t] X[rows[r, t]]`` ("SpMM") and, in backward, the
transposed scatter. PyTorch has these as ``torch.sparse.sampled_addmm`` and ``F.embedding_bag``,
which walk the rows one by one and read X from memory at random; with 808 rows x 1,638 draws over
16,384 tokens that is memory-bound.

The kernels here first make a :class:`Plan`: every row's valid draws regrouped block by block,
a block being ``BLOCK_BYTES`` of X's rows (small enough to stay in L2). Every kernel then walks the
plan in order, so X is read one block at a time and the draws' indices, scores and weights
sequentially. The scores, the softmax and the weighted sums all stay in plan order; nothing goes
back to the row-major layout. One plan serves the forward and backward passes of one attention.

The C is plain C (OpenMP, AVX-512 intrinsics where the CPU has them): ``csrc/sampled_attention.c``
(plans and attention) and ``csrc/draws.c`` (sorted draws, counter-based exponentials). Where it
cannot be built (no compiler: one warning names the reason), or with ``BOLTZFORMER_CPU_KERNELS=0``,
:func:`available` is False and callers use the PyTorch operations above, which give the same
results and the same random draws (tested). Every function checks its tensors (dtype, device,
layout, shape) and raises TypeError or ValueError naming the argument: the C reads raw pointers.
"""

from __future__ import annotations

import ctypes
import operator
import os
from typing import NamedTuple

import torch
from torch import Tensor

from boltzformer.model.kernels import cpu_build

__all__ = [
    "BLOCK_BYTES", "Plan", "available", "plan", "plan_sddmm", "plan_softmax", "plan_softmax_backward",
    "plan_spmm", "plan_spmm_t", "weighted_draws", "exponentials",
]

#: bytes of X per block: a block and the rows of A or of the output it meets stay in a 1.25 MB L2
#: (512 KB-1 MB measured fastest at paper size; smaller blocks mean more, shorter runs per row)
BLOCK_BYTES = 512 * 1024


def _block(C: int) -> int:
    return max(1, BLOCK_BYTES // (4 * C))


def available(*tensors: Tensor) -> bool:
    """Whether the kernels are built and apply to these tensors (CPU, no autograd through them).
    The first call builds them (see :mod:`.cpu_build`)."""
    if os.environ.get("BOLTZFORMER_CPU_KERNELS", "1") == "0":
        return False
    return all(t.device.type == "cpu" for t in tensors) and cpu_build.library() is not None


def _lib() -> ctypes.CDLL:
    lib = cpu_build.library()
    if lib is None:
        raise RuntimeError(f"the CPU kernels are not available ({cpu_build.failure()}); check "
                           "boltzformer.model.kernels.cpu.available() before calling them")
    return lib


def _threads(work: int) -> int:
    """torch's thread count, or 1 for calls too small to repay waking the other threads."""
    return torch.get_num_threads() if work >= 1 << 20 else 1


def _layout(name: str, t: Tensor) -> None:
    if t.device.type != "cpu":
        raise ValueError(f"{name}: the CPU kernels take CPU tensors, got one on {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: the CPU kernels take contiguous tensors, got shape {tuple(t.shape)} "
                         f"strides {t.stride()}")


def _check(name: str, t: object, dtype: torch.dtype, shape: tuple[int | None, ...]) -> None:
    """Raises unless ``t`` is a contiguous CPU tensor of ``dtype`` and ``shape`` (None: any size).
    Real checks, not asserts (gone under ``python -O``): the C reads ``t``'s memory as that array."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got {t.dtype}")
    _layout(name, t)
    if t.dim() != len(shape) or any(want is not None and got != want for got, want in zip(t.shape, shape)):
        wanted = str(tuple("*" if want is None else want for want in shape)).replace("'", "")
        raise ValueError(f"{name} must have shape {wanted}, got {tuple(t.shape)}")


def _int(name: str, value: object, low: int | None = None) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        value = operator.index(value)  # ints, numpy and 0-d torch integers; not floats
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _ptr(t: Tensor | None, name: str = "tensor") -> int | None:
    """The address the C reads ``t`` at (None for None), after the layout checks: a CUDA pointer or a
    strided view would be read as a contiguous CPU array."""
    if t is None:
        return None
    _layout(name, t)
    return t.data_ptr()


class Plan(NamedTuple):
    """Every row's valid draws, block by block: the draws of row r in block b are
    ``k in [off[b * rows + r], off[b * rows + r + 1])``, and ``idx[k]`` is the row of X each reads.
    Draws that are not valid (repeats) are not in it."""

    off: Tensor  # int64 (blocks * rows + 1)
    idx: Tensor  # int32 (valid draws,)
    rows: int  # R
    blocks: int  # nb
    num_rows: int  # M, rows of X
    channels: int  # C, channels of X (the block size depends on it)


def _check_plan(p: object) -> None:
    if not isinstance(p, Plan):
        raise TypeError(f"p must be a Plan (from plan()), got {type(p).__name__}")


def plan(
    draws: Tensor, valid: Tensor, num_rows: int, channels: int, *, heads: int = 1, per_batch: int | None = None,
    stride: int = 0,
) -> Plan:
    """The plan of draws (R, n) int64, ascending in each row, into X (num_rows, channels). Row r's
    draw d reads X's row ``(d + (r // per_batch) * stride) * heads + r % heads`` (by default, d);
    draws where ``valid`` (R, n) bool is False are left out. The draws must lie in ``[0, num_rows)``
    once mapped (not checked: that would read every draw)."""
    _check("draws", draws, torch.int64, (None, None))
    R, n = draws.shape
    _check("valid", valid, torch.bool, (R, n))
    num_rows, channels = _int("num_rows", num_rows, 1), _int("channels", channels, 1)
    heads, stride = _int("heads", heads, 1), _int("stride", stride, 0)
    if num_rows >= 2**31:
        raise ValueError(f"num_rows must be < 2**31 (the kernels index X with int32), got {num_rows}")
    per_batch = _int("per_batch", per_batch, 1) if per_batch is not None else max(R, 1)
    bs = _block(channels)
    nb = -(-num_rows // bs)
    threads = _threads(R * n * 4)
    first = torch.empty(nb * R, dtype=torch.int64)  # where each (block, row) run starts among the row's draws
    counts = torch.empty(nb * R + 1, dtype=torch.int64)  # its valid draws
    counts[0] = 0
    lib = _lib()
    lib.plan_runs(_ptr(draws), _ptr(valid), R, n, heads, per_batch, stride, bs, nb, _ptr(first),
                  counts[1:].data_ptr(), threads)
    off = counts.cumsum_(0)
    idx = torch.empty(int(off[-1]), dtype=torch.int32)
    lib.plan_fill(_ptr(draws), _ptr(valid), R, n, heads, per_batch, stride, nb, _ptr(off), _ptr(first), _ptr(idx),
                  threads)
    return Plan(off, idx, R, nb, num_rows, channels)


def _work(p: Plan, C: int) -> int:
    return _threads(p.idx.numel() * C)


def _check_row_max(row_max: Tensor | None, p: Plan) -> None:
    if row_max is not None:
        _check("row_max", row_max, torch.float32, (p.rows,))


def plan_sddmm(A: Tensor, X: Tensor, p: Plan, *, row_max: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Scores in plan order: ``S[k] = A[r] . X[idx[k]]``. A (R, C), X (M, C) float32. With
    ``row_max``, also each row's largest score (R,), found while the scores are computed."""
    _check_plan(p)
    _check("X", X, torch.float32, (p.num_rows, None))
    C = X.shape[1]
    _check("A", A, torch.float32, (p.rows, C))
    out, threads = torch.empty(p.idx.numel(), dtype=torch.float32), _work(p, C)
    top = torch.empty(threads, p.rows, dtype=torch.float32) if row_max else None
    _lib().plan_sddmm(_ptr(A), _ptr(X), _ptr(p.off), _ptr(p.idx), p.rows, p.blocks, C, _ptr(out), _ptr(top), threads)
    return (out, top.amax(0)) if row_max else out


def plan_softmax(S: Tensor, p: Plan, *, row_max: Tensor | None = None) -> Tensor:
    """Each row's softmax over its draws, in plan order; ``row_max`` (R,), the rows' largest
    scores where known (:func:`plan_sddmm`), saves a pass."""
    _check_plan(p)
    _check("S", S, torch.float32, (p.idx.numel(),))
    _check_row_max(row_max, p)
    out, threads = torch.empty_like(S), _work(p, 8)
    part = torch.empty(threads + 1, p.rows, dtype=torch.float32)  # per-thread row maxima and sums
    _lib().plan_softmax(_ptr(S), _ptr(p.off), p.rows, p.blocks, _ptr(row_max), _ptr(out), _ptr(part), threads)
    return out


def plan_softmax_backward(P: Tensor, dP: Tensor, p: Plan) -> Tensor:
    """The scores' gradient from the softmax ``P`` and its gradient ``dP``, in plan order."""
    _check_plan(p)
    _check("P", P, torch.float32, (p.idx.numel(),))
    _check("dP", dP, torch.float32, (p.idx.numel(),))
    out, threads = torch.empty_like(P), _work(p, 8)
    part = torch.empty(threads + 1, p.rows, dtype=torch.float32)
    _lib().plan_softmax_backward(_ptr(P), _ptr(dP), _ptr(p.off), p.rows, p.blocks, _ptr(out), _ptr(part), threads)
    return out


def plan_spmm(W: Tensor, X: Tensor, p: Plan, *, row_max: Tensor | None = None) -> Tensor:
    """(R, C): ``out[r] = sum_k W[k] X[idx[k]]`` over row r's draws. With ``row_max`` (R,), W holds
    scores and their softmax (:func:`plan_softmax`) is made on the fly: the softmax and the weighted
    sum in one pass."""
    _check_plan(p)
    _check("W", W, torch.float32, (p.idx.numel(),))
    _check("X", X, torch.float32, (p.num_rows, None))
    _check_row_max(row_max, p)
    C = X.shape[1]
    out, threads = torch.zeros(p.rows, C, dtype=torch.float32), _work(p, C)
    sums = None if row_max is None else torch.zeros(threads, p.rows, dtype=torch.float32)
    _lib().plan_spmm(_ptr(W), _ptr(X), _ptr(p.off), _ptr(p.idx), p.rows, p.blocks, C, _ptr(row_max), _ptr(sums),
                     _ptr(out), threads)
    return out


def plan_spmm_t(W: Tensor, A: Tensor, p: Plan, W2: Tensor | None = None, A2: Tensor | None = None) -> Tensor:
    """(M, C): ``out[idx[k]] += W[k] A[r]``, the transpose of :func:`plan_spmm`; with ``W2`` and
    ``A2``, ``+= W[k] A[r] + W2[k] A2[r]``, the sum of two such products in one pass."""
    if (W2 is None) != (A2 is None):
        raise ValueError("plan_spmm_t: give both W2 and A2, or neither")
    _check_plan(p)
    _check("W", W, torch.float32, (p.idx.numel(),))
    _check("A", A, torch.float32, (p.rows, None))
    C = A.shape[1]
    if W2 is not None:
        _check("W2", W2, torch.float32, (p.idx.numel(),))
        _check("A2", A2, torch.float32, (p.rows, C))
    out = torch.empty(p.num_rows, C, dtype=torch.float32)  # the kernel zeroes it block by block
    _lib().plan_spmm_t(_ptr(W), _ptr(A), _ptr(W2), _ptr(A2), _ptr(p.off), _ptr(p.idx), p.rows, p.blocks, C,
                       _block(p.channels), p.num_rows, _ptr(out), _work(p, C))
    return out


def weighted_draws(weights: Tensor, exponentials: Tensor | None = None, *, sets: int = 1, n: int = 0,
                   seed: int = 0) -> tuple[Tensor, Tensor]:
    """Sorted draws for weights (R, N) float32 (a distribution up to normalisation): ``(indices,
    valid)``, int64 and bool (R, k, n). What ``sampling._weighted_draws`` computes with PyTorch, in
    one pass per row, without its (R, N) and (R, k, n) float64 intermediates. The standard
    exponentials behind the draws are ``exponentials`` (R, k, n + 1) float64 when given, else
    ``sets`` x (n + 1) per row made in the kernel from ``seed`` (see :func:`exponentials`)."""
    _check("weights", weights, torch.float32, (None, None))
    R, N = weights.shape
    if N < 1:
        raise ValueError(f"weights must have at least one column (token), got shape {tuple(weights.shape)}")
    if exponentials is not None:
        _check("exponentials", exponentials, torch.float64, (R, None, None))
        sets, n = exponentials.shape[1], exponentials.shape[2] - 1
        if n < 0:
            raise ValueError(f"exponentials must have shape (R, k, n + 1), got {tuple(exponentials.shape)}")
    elif _int("sets", sets, 0) < 1 or _int("n", n, 0) < 1:
        raise ValueError(f"weighted_draws: without exponentials, sets and n must be >= 1, got sets={sets}, n={n}")
    seed = _int("seed", seed)
    threads = _threads(R * (N + sets * n) * 4)
    idx = torch.empty(R, sets, n, dtype=torch.int64)
    valid = torch.empty(R, sets, n, dtype=torch.bool)
    slots = max(threads, torch.get_num_threads())
    work = torch.empty(slots, N + n + 1, dtype=torch.float64)
    fwork = torch.empty(slots, n + 1, dtype=torch.float32)
    _lib().weighted_draws(_ptr(weights), _ptr(exponentials), seed & (2**64 - 1), R, N, sets, n, _ptr(idx), _ptr(valid),
                          _ptr(work), _ptr(fwork), threads)
    return idx, valid


def exponentials(seed: int, count: int, first: int = 0) -> Tensor:
    """float32 (count,): numbers ``first .. first + count - 1`` of the kernels' standard exponentials
    for ``seed`` (SplitMix64 counters, -log of a 24-bit uniform in (0, 1]): what
    :func:`weighted_draws` uses without ``exponentials``."""
    seed, count, first = _int("seed", seed), _int("count", count, 0), _int("first", first, 0)
    out = torch.empty(count, dtype=torch.float32)
    _lib().exponentials(seed & (2**64 - 1), first, count, _ptr(out))
    return out
