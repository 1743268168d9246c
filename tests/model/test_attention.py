"""Sampled cross-attention: equal to dense attention with the same set masked in, cheaper."""

from __future__ import annotations

import math
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from boltzformer.model.kernels import cpu as cpu_kernels
from boltzformer.model.attention import MultiHeadAttention
from boltzformer.model.sampling import AttentionSelection, sample_token_indices


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


@pytest.fixture(params=["kernels", "torch"])
def kernels(request, monkeypatch):
    """Run a test with the CPU kernels (folded projections where they pay) and with PyTorch's ops."""
    if request.param == "torch":
        monkeypatch.setenv("BOLTZFORMER_CPU_KERNELS", "0")
    elif not cpu_kernels.available(torch.zeros(1)):
        pytest.skip("no C compiler: the CPU kernels are not built")
    return request.param


@pytest.mark.parametrize("ratio", [0.02, 0.1, 0.5])
def test_sampled_attention_equals_dense_attention_with_the_set_masked_in(ratio, kernels):
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
    with torch.no_grad():  # without backward the kernels make the softmax inside the weighted sum
        torch.testing.assert_close(attn.forward_sampled(q, k, v, indices=idx, valid=valid), dense, atol=1e-5, rtol=1e-5)
    # gradients agree too: queries, keys, values and the projection weights
    grads = []
    for form in ("sampled", "dense"):
        attn.zero_grad()
        xs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = attn.forward_sampled(*xs, indices=idx, valid=valid) if form == "sampled" else attn(*xs, keep=keep)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        grads.append([x.grad for x in xs] + [attn.in_proj_weight.grad.clone()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # keys made from the values plus a fixed position and a shift shared by every token: the keys'
    # gradient goes to the values (in one pass with theirs on CPU) and the shift's is zero, as in
    # the dense form's graph
    pos = torch.randn(k.shape)
    grads = []
    for form in ("sampled", "dense"):
        attn.zero_grad()
        qs, vs, shift = q.clone().requires_grad_(), v.clone().requires_grad_(), torch.randn(32).requires_grad_()
        ks = vs + pos + shift
        if form == "sampled":
            out = attn.forward_sampled(qs, ks, vs, indices=idx, valid=valid, keys_from_values=True)
        else:
            out = attn(qs, ks, vs, keep=keep)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        grads.append([qs.grad, vs.grad, torch.zeros(32) if shift.grad is None else shift.grad,
                      attn.in_proj_weight.grad.clone()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_tied_rows_give_the_key_gradient_to_the_values(kernels):
    """``sampled_attention_rows(tied=True)`` returns k's gradient added to v's, and none for k."""
    from boltzformer.model.attention import sampled_attention_rows

    g = torch.Generator().manual_seed(3)
    R, M, n, c = 12, 300, 25, 16
    rows = torch.sort(torch.randint(M, (R, n), generator=g), -1).values
    valid = torch.ones(R, n, dtype=torch.bool)
    valid[:, 1:] = rows[:, 1:] != rows[:, :-1]
    q, k, v = (torch.randn(m, c, generator=g) for m in (R, M, M))
    weights = torch.randn(R, c, generator=g)
    grads = []
    for tied in (False, True):
        xs = [t.clone().requires_grad_() for t in (q, k, v)]
        (sampled_attention_rows(*xs, rows=rows, valid=valid, tied=tied) * weights).sum().backward()
        grads.append([x.grad for x in xs])
    (dq, dk, dv), (tq, tk, tv) = grads
    assert tk is None
    torch.testing.assert_close(tq, dq)
    torch.testing.assert_close(tv, dk + dv, atol=1e-6, rtol=1e-5)


class _AttentionWork(TorchDispatchMode):
    """Multiply-adds of the ops that form scores and weighted sums (not the projections)."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0
        self.dense_scores = 0  # bmm / SDPA calls: a sampled form must make none

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.__name__
        if name.startswith("sparse_sampled_addmm"):
            pattern, mat1 = args[0], args[1]
            self.macs += pattern._nnz() * mat1.shape[1]
        elif name.startswith("_embedding_bag"):
            weight, indices = args[0], args[1]
            self.macs += indices.numel() * weight.shape[1]
        elif name.startswith(("bmm", "_scaled_dot_product")):
            self.dense_scores += 1
        return func(*args, **kwargs)


def test_sampled_attention_cost_follows_the_number_of_draws(monkeypatch):
    monkeypatch.setenv("BOLTZFORMER_CPU_KERNELS", "0")  # PyTorch's ops, which the check can see
    attn = MultiHeadAttention(32, 4)
    B, H, Q, N, d = 1, 4, 10, 4096, 8
    q, k, v = _inputs(B=B, Q=Q, N=N)
    macs = {}
    for ratio in (0.05, 0.1, 0.2):
        idx, valid = sample_token_indices(torch.randn(B, H, Q, N), 1.0, ratio, generator=torch.Generator().manual_seed(0))
        n = idx.shape[-1]
        with _AttentionWork() as work:
            attn.forward_sampled(q, k, v, indices=idx, valid=valid)
        # scores (Q x n x d) and weighted sum (Q x n x d), never a Q x N product
        assert work.macs == 2 * B * H * Q * n * d
        assert work.dense_scores == 0
        macs[ratio] = work.macs
    dense = 2 * B * H * Q * N * d
    assert macs[0.1] <= 0.1 * dense < macs[0.2]
    assert macs[0.05] < macs[0.1] < macs[0.2]
    with _AttentionWork() as work:
        attn(q, k, v)
    assert work.dense_scores == 1  # the check sees dense attention


@pytest.mark.parametrize("C", [64, 80, 20])  # 64: the unrolled path; 80: AVX-512 groups; 20: plain C
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("blocks", [1, 7])  # with 3 threads: they split the rows, or the blocks
def test_kernels_equal_pytorch_ops(C, threads, blocks, monkeypatch):
    if not cpu_kernels.available(torch.zeros(1)):
        pytest.skip("no C compiler: the CPU kernels are not built")
    monkeypatch.setattr(cpu_kernels, "_threads", lambda work: threads)
    g = torch.Generator().manual_seed(0)
    R, n = 30, 40
    M = cpu_kernels._block(C) * (blocks - 1) + 50
    rows = torch.sort(torch.randint(M, (R, n), generator=g), -1).values
    valid = torch.ones(R, n, dtype=torch.bool)
    valid[:, 1:] = rows[:, 1:] != rows[:, :-1]
    valid[3, 7:] = False  # a row with few draws
    plan = cpu_kernels.plan(rows, valid, M, C)
    assert plan.blocks == blocks
    a, x = torch.randn(R, C, generator=g), torch.randn(M, C, generator=g)
    s = torch.randn(R, n, generator=g)
    s[1] *= 300  # a cold row: most weights underflow (flushed to 0, not denormals)
    s = s.masked_fill(~valid, float("-inf"))
    w = torch.softmax(s, -1)
    # plan order: blocks, then rows, then the draws in order, repeats left out; as positions in the
    # row-major (R, n)
    key = (rows.flatten() // cpu_kernels._block(C)) * R + torch.arange(R).repeat_interleave(n)
    perm = torch.sort(key, stable=True).indices
    perm = perm[valid.flatten()[perm]]
    assert torch.equal(plan.idx.long(), rows.flatten()[perm])
    assert plan.idx.numel() == int(valid.sum())  # no repeat is in the plan
    gathered = x[rows]  # R x n x C, the naive form
    scores = (a[:, None] * gathered).sum(-1)
    torch.testing.assert_close(cpu_kernels.plan_sddmm(a, x, plan), scores.flatten()[perm])
    torch.testing.assert_close(cpu_kernels.plan_softmax(s.flatten()[perm], plan), w.flatten()[perm])
    # the scores' row maxima, found with them, save the softmax a pass, or make it inside the sum
    s2, top = cpu_kernels.plan_sddmm(a, x, plan, row_max=True)
    assert torch.equal(top, torch.full((R,), float("-inf")).scatter_reduce(0, perm // n, s2, "amax"))
    w2 = torch.softmax(scores.masked_fill(~valid, float("-inf")), -1)
    torch.testing.assert_close(cpu_kernels.plan_softmax(s2, plan, row_max=top), w2.flatten()[perm])
    torch.testing.assert_close(cpu_kernels.plan_spmm(s2, x, plan, row_max=top), (w2[..., None] * gathered).sum(1),
                               atol=1e-5, rtol=1e-5)
    wn = w.clone()
    wn[0, :5] = 1e-35  # negligible weights may be skipped
    torch.testing.assert_close(cpu_kernels.plan_spmm(wn.flatten()[perm], x, plan),
                               (wn[..., None] * gathered).sum(1), atol=1e-5, rtol=1e-5)
    scattered = torch.zeros(M, C).index_add_(0, rows.flatten(), (w[..., None] * a[:, None]).reshape(-1, C))
    torch.testing.assert_close(cpu_kernels.plan_spmm_t(w.flatten()[perm], a, plan), scattered, atol=1e-5, rtol=1e-5)
    dp = torch.randn(R, n, generator=g)
    ds = w * (dp - (w * dp).sum(-1, keepdim=True))
    # two scatters into one output, in one pass (a key's and a value's gradient when they are tied)
    a2 = torch.randn(R, C, generator=g)
    scattered2 = scattered.index_add(0, rows.flatten(), (ds.masked_fill(~valid, 0)[..., None] * a2[:, None]).reshape(-1, C))
    torch.testing.assert_close(cpu_kernels.plan_spmm_t(w.flatten()[perm], a, plan, ds.flatten()[perm], a2), scattered2,
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="both W2 and A2"):
        cpu_kernels.plan_spmm_t(w.flatten()[perm], a, plan, ds.flatten()[perm])
    torch.testing.assert_close(cpu_kernels.plan_softmax_backward(w.flatten()[perm], dp.flatten()[perm], plan),
                               ds.flatten()[perm])


def test_plan_maps_token_draws_to_head_rows():
    """A decoder's token draws, with heads interleaved in X's rows and a batch of images, plan the
    same as the explicit rows they stand for."""
    if not cpu_kernels.available(torch.zeros(1)):
        pytest.skip("no C compiler: the CPU kernels are not built")
    g = torch.Generator().manual_seed(1)
    B, Q, H, N, n, d = 2, 5, 4, 3000, 30, 64
    draws = torch.sort(torch.randint(N, (B, Q, H, n), generator=g), -1).values
    valid = torch.rand(B, Q, H, n, generator=g) > 0.1
    rows = (draws + torch.arange(B).view(B, 1, 1, 1) * N) * H + torch.arange(H).view(1, 1, H, 1)
    explicit = cpu_kernels.plan(rows.view(-1, n), valid.view(-1, n), B * N * H, d)
    mapped = cpu_kernels.plan(draws.view(-1, n), valid.view(-1, n), B * N * H, d, heads=H, per_batch=Q * H, stride=N)
    assert explicit.blocks > 1
    assert torch.equal(explicit.off, mapped.off) and torch.equal(explicit.idx, mapped.idx)


def test_draws_kernel_equals_pytorch(monkeypatch):
    if not cpu_kernels.available(torch.zeros(1)):
        pytest.skip("no C compiler: the CPU kernels are not built")
    g = torch.Generator().manual_seed(0)
    R, n, M = 30, 40, 900
    # draws: the kernel and the PyTorch form map the same exponentials to the same draws, including
    # for a row without candidates (all zero: uniform) and very peaked rows
    from boltzformer.model.sampling import _exponentials, _weighted_draws

    weights = torch.rand(R, M, generator=g) ** 8
    weights[1] = 0.0
    weights[2, :-1] = 1e-12
    for sets in (None, 3):
        k = sets or 1
        spacings = _exponentials((R, k), n, "cpu", torch.Generator().manual_seed(4))
        kernel = cpu_kernels.weighted_draws(weights, spacings)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("BOLTZFORMER_CPU_KERNELS", "0")
            plain = _weighted_draws(weights, n, torch.Generator().manual_seed(4), sets=sets)  # the same numbers
        assert torch.equal(kernel[0].view(plain[0].shape), plain[0]) and torch.equal(kernel[1].view(plain[1].shape), plain[1])
        assert int(kernel[0].max()) < M and bool((kernel[0].diff(dim=-1) >= 0).all())
        # without given numbers the kernel makes them from a seed: exactly cpu_kernels.exponentials,
        # whatever the number of threads
        own = cpu_kernels.exponentials(77, R * k * (n + 1)).double().view(R, k, n + 1)
        expected = cpu_kernels.weighted_draws(weights, own)
        for threads in (1, 3):
            monkeypatch.setattr(cpu_kernels, "_threads", lambda work: threads)
            seeded = cpu_kernels.weighted_draws(weights, sets=k, n=n, seed=77)
            assert torch.equal(seeded[0], expected[0]) and torch.equal(seeded[1], expected[1])
        monkeypatch.undo()
        # and the sampler seeds it from the generator: the same generator state, the same draws
        first = _weighted_draws(weights, n, torch.Generator().manual_seed(4), sets=sets)
        again = _weighted_draws(weights, n, torch.Generator().manual_seed(4), sets=sets)
        other = _weighted_draws(weights, n, torch.Generator().manual_seed(5), sets=sets)
        assert torch.equal(first[0], again[0]) and not torch.equal(first[0], other[0])
    with pytest.raises(ValueError, match="sets and n must be >= 1"):
        cpu_kernels.weighted_draws(weights, seed=1)  # no numbers given and none asked for


def test_kernel_exponentials_are_standard_exponentials():
    """The kernels' own random numbers (SplitMix64 counters, -log of a 24-bit uniform): mean 1,
    P(E > t) = exp(-t), no correlation between neighbours, to within 4.5 standard errors of 2^20
    draws; and number i depends on i alone."""
    if not cpu_kernels.available(torch.zeros(1)):
        pytest.skip("no C compiler: the CPU kernels are not built")
    m = 1 << 20
    e = cpu_kernels.exponentials(2024, m).double()
    assert bool((e >= 0).all()) and float(e.max()) < 17.0  # -log(2^-24) = 16.6
    assert abs(float(e.mean()) - 1.0) < 4.5 / m**0.5  # variance 1
    for t in (0.1, 1.0, 3.0, 8.0):
        p = math.exp(-t)
        assert abs(float((e > t).double().mean()) - p) < 4.5 * (p * (1 - p) / m) ** 0.5, t
    corr = float(((e[1:] - 1) * (e[:-1] - 1)).mean())
    assert abs(corr) < 4.5 / m**0.5
    assert torch.equal(cpu_kernels.exponentials(2024, 100, first=500), e[500:600].float())
    assert not torch.equal(cpu_kernels.exponentials(2025, 100), e[:100].float())


def test_plan_refuses_keys_beyond_int32():
    if not cpu_kernels.available(torch.zeros(1)):
        pytest.skip("no C compiler: the CPU kernels are not built")
    draws = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="int32"):
        cpu_kernels.plan(draws, torch.ones(2, 3, dtype=torch.bool), 2**31, 64)


def test_cuda_without_triton_attends_densely_with_the_set_as_a_mask(monkeypatch):
    """The form CUDA tensors take without Triton (forced here on CPU tensors): dense attention with
    the drawn set as a mask, the same values and gradients as the sampled form."""
    import boltzformer.model.attention as attention

    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4)
    q, k, v = _inputs()
    idx, valid = sample_token_indices(torch.randn(2, 4, 5, 200), 0.5, 0.1, generator=torch.Generator().manual_seed(1))
    shift = torch.randn(32)
    results = []
    for masked in (False, True):
        monkeypatch.setattr(attention, "_masked_fallback", lambda query: masked)
        attn.zero_grad()
        xs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = attn.forward_sampled(*xs, indices=idx, valid=valid, value_shift=shift)
        out.square().sum().backward()
        results.append([out.detach()] + [x.grad for x in xs] + [attn.in_proj_weight.grad.clone()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_kernels_refuse_tensors_they_cannot_read():
    """Real checks (not asserts): a tensor that is not on the CPU, or not contiguous, is refused."""
    with pytest.raises(ValueError, match="CPU tensors, got one on meta"):
        cpu_kernels._ptr(torch.empty(4, device="meta"))
    with pytest.raises(ValueError, match="contiguous"):
        cpu_kernels._ptr(torch.zeros(4, 4).t())
    assert not cpu_kernels.available(torch.empty(4, device="meta"))
