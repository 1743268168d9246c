"""Boltzmann attention sampling: which image tokens each query attends to.

The method of Zhao, Kiblawi et al., "Boltzmann Attention Sampling for Image Analysis with Small
Objects" (CVPR 2025, arXiv 2503.02841). At decoder layer ``l`` every query (and every attention
head) holds a prediction ``logits`` over the ``N`` tokens of that layer's feature level. Its
Boltzmann distribution is

    p_i = exp(sigmoid(logits_i) / tau_l) / sum_j exp(sigmoid(logits_j) / tau_l),
    tau_l = tau0 / (1 + l),

and the query attends to the *distinct* tokens among ``n = floor(ratio * N)`` i.i.d. draws from
``p``, so token ``i`` is attended with probability ``1 - (1 - p_i) ** n``. Early layers are hot
(near-uniform draws: explore), late layers cold (peaked draws: exploit).

The reference code's optional ``threshold`` marks tokens whose sigmoid is ``>= threshold`` as
always attended (Mask2Former's masked attention) and removes them from ``p``; its default 1.1
means no token is.

Everything random takes a ``torch.Generator`` so that the same seed gives the same attended sets.
Nothing in this module has parameters: any decoder can use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from boltzformer.config import ATTENTION_MODES
from boltzformer.model.kernels import cpu as cpu_kernels
from boltzformer.model.kernels import counter_rng, triton_usable

__all__ = [
    "ATTENTION_MODES",
    "AttentionSelection",
    "BoltzmannSampler",
    "boltzmann_distribution",
    "boltzmann_keep_mask",
    "inclusion_probability",
    "layer_temperature",
    "num_draws",
    "sample_token_indices",
]


def layer_temperature(base_temperature: float, layer: int) -> float:
    """Temperature of decoder layer ``layer`` (0-based): ``base_temperature / (1 + layer)``.

    The reference code writes it ``base / (2 + layer_id)`` with ``layer_id`` starting at -1 for the
    prediction made before the first layer; both give 1, 1/2, 1/3, ... for tau0 = 1.
    """
    if layer < 0:
        raise ValueError(f"layer must be >= 0, got {layer}")
    if base_temperature <= 0:
        raise ValueError(f"base_temperature must be > 0, got {base_temperature}")
    return base_temperature / (1 + layer)


def num_draws(num_tokens: int, ratio: float) -> int:
    """Number of i.i.d. draws for ``num_tokens`` tokens: ``floor(ratio * num_tokens)``, at least 1."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    return max(1, int(num_tokens * ratio))


def _check_threshold(threshold: float | None) -> None:
    if threshold is not None and not 0.0 < threshold:
        raise ValueError(f"threshold must be > 0 or None, got {threshold}")


def boltzmann_distribution(
    logits: Tensor, temperature: float, *, threshold: float | None = None
) -> Tensor:
    """Boltzmann distribution over the last axis of ``logits``.

    Args:
        logits: mask logits, any shape (..., N), tokens on the last axis.
        temperature: tau > 0.
        threshold: tokens with ``sigmoid(logits) >= threshold`` get probability 0 (they are
            attended anyway); a row where every token is such gets all zeros.

    Returns:
        Probabilities (..., N) in float32, each row summing to 1 (or all zeros, see above).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    _check_threshold(threshold)
    scores = torch.sigmoid(logits.float()) / temperature
    if threshold is None:
        return torch.softmax(scores, dim=-1)
    candidate = torch.sigmoid(logits.float()) < threshold
    scores = scores.masked_fill(~candidate, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    # rows with no candidate give NaN from softmax over all -inf: make them zero
    return torch.nan_to_num(probs, nan=0.0)


def inclusion_probability(probs: Tensor, n: int) -> Tensor:
    """Chance that ``n`` i.i.d. draws from ``probs`` hit each token at least once: 1 - (1 - p)^n."""
    return 1.0 - (1.0 - probs).pow(n)


def _exponentials(shape: tuple[int, ...], n: int, device, generator: torch.Generator | None) -> Tensor:
    """``n + 1`` i.i.d. standard exponentials per row of ``shape``: float64 (*shape, n + 1).

    They are the counter-based stream of :mod:`boltzformer.model.kernels.counter_rng` (what the C and
    Triton kernels make), for one seed drawn from ``generator``: number ``(row, i)`` is the stream's
    number ``row * (n + 1) + i``. So the same generator state gives the same numbers with the C
    kernels, without them, and on a GPU, bit for bit."""
    seed = counter_rng.seed_tensor(generator, device)
    count = math.prod(shape) * (n + 1)
    if seed.is_cuda and triton_usable(seed):  # one kernel instead of ~50 elementwise passes
        from boltzformer.model.kernels import triton_attention

        e = triton_attention.exponentials(seed, count)
    else:
        e = counter_rng.exponentials(seed, count)
    return e.view(*shape, n + 1).double()


def _order_statistics(exponentials: Tensor) -> Tensor:
    """(..., n + 1) standard exponentials -> (..., n) sorted U(0, 1) values, ascending.

    The normalised partial sums of n + 1 standard exponentials are distributed exactly as the order
    statistics of n uniforms, so sorting is not needed (it costs more than the draws themselves).
    Overwrites ``exponentials``.
    """
    sums = exponentials.cumsum_(-1)
    n = sums.shape[-1] - 1
    return sums[..., :n].mul_(sums[..., n:].reciprocal())  # in place: a (..., n) view


def _sorted_uniforms(shape: tuple[int, ...], n: int, device, generator: torch.Generator | None) -> Tensor:
    """``n`` i.i.d. U(0, 1) values per row of ``shape``, sorted ascending: float64 (*shape, n)."""
    return _order_statistics(_exponentials(shape, n, device, generator))


def _weighted_draws(
    weights: Tensor, n: int, generator: torch.Generator | None, *, sets: int | None = None
) -> tuple[Tensor, Tensor]:
    """``n`` i.i.d. draws per row of ``weights`` (..., N) (probabilities, or any non-negative
    weights: they are normalised), sorted ascending -> ``(indices, valid)``, int64 and bool
    (..., n), ``valid`` False on repeats.

    With ``sets``, ``sets`` independent sets of n draws per row, from the same distribution
    -> (..., sets, n) (every attention head of a query draws its own set). A row of zeros draws
    uniformly (with a threshold, a row may have no candidate; its draws are then irrelevant).

    Inverse-CDF sampling: sorted uniforms (see :func:`_sorted_uniforms`) are mapped to the token
    whose interval of the float64 cumulative distribution holds them (``searchsorted``), which gives
    sorted indices directly. ``torch.multinomial`` followed by a sort gives the same distribution at
    about three times the cost on CPU.

    The CPU kernel (``cpu_kernels.weighted_draws``) does the same in one pass per row, and makes
    its exponentials itself from one seed drawn from ``generator``, with the counter-based stream
    of :mod:`boltzformer.model.kernels.counter_rng` (PyTorch's CPU ``rand`` is one sequential stream and
    was a third of the sampling's time). This PyTorch form (a GPU, or no C compiler) draws the same
    seed and makes the same numbers bit for bit, and both map them to the draws with the same
    float64 operations in the same order (cumulative sums, one reciprocal, a clamp, the search for
    the first CDF value above): on CPU the same generator state gives the same draws with and
    without the C kernels (tested). On a GPU the numbers are the same, but the distribution comes
    from a softmax and sums whose rounding differs from the CPU's by about 1e-7 relative: a draw
    whose point lands that close to a boundary of the cumulative distribution (chance about
    1e-7 N per draw for N tokens) may pick the neighbouring token; every other draw is the same.
    """
    *lead, N = weights.shape
    w = weights.reshape(-1, N).float().contiguous()
    R, k = w.shape[0], 1 if sets is None else sets
    if cpu_kernels.available(w):
        seed = int(counter_rng.seed_tensor(generator, "cpu"))  # in [0, 2^63); the one _exponentials draws
        idx, valid = cpu_kernels.weighted_draws(w, sets=k, n=n, seed=seed)
    else:
        spacings = _exponentials((R, k), n, w.device, generator)  # what _sorted_uniforms draws
        cdf = w.to(torch.float64, copy=True)
        cdf.masked_fill_(cdf.sum(-1, keepdim=True) <= 0, 1.0)
        cdf = cdf.cumsum_(-1)  # R x N, in place: no second R x N float64 buffer
        total = cdf[:, -1:]
        u = _order_statistics(spacings).mul_(total[:, :, None])  # R x k x n, sorted
        # u < total in exact arithmetic; keep it so after rounding, so no zero-probability tail token is hit
        u = u.clamp_(max=torch.nextafter(total, torch.zeros_like(total))[:, :, None]).reshape(R, k * n).contiguous()
        idx = torch.searchsorted(cdf, u, right=True).view(R, k, n)
        valid = torch.ones_like(idx, dtype=torch.bool)
        valid[..., 1:] = idx[..., 1:] != idx[..., :-1]
    shape = (*lead, n) if sets is None else (*lead, sets, n)
    return idx.view(shape), valid.view(shape)


def sample_token_indices(
    logits: Tensor,
    temperature: float,
    ratio: float,
    *,
    uniform: bool = False,
    generator: torch.Generator | None = None,
    sets: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw the attended tokens as indices, for attention that gathers only those tokens.

    Args:
        logits: (..., N) mask logits at the attention level's resolution.
        temperature: Boltzmann temperature.
        ratio: fraction of N drawn (``n = floor(ratio * N)`` draws).
        uniform: draw from the uniform distribution instead (the ``uniform`` ablation).
        generator: makes the draws reproducible.
        sets: draw this many independent sets per row of ``logits`` (one per attention head);
            the distribution is computed once per row.

    Returns:
        ``(indices, valid)``, both (..., n), or (..., sets, n) with ``sets``: the drawn token indices
        sorted ascending, and a bool mask that is False on repeats, so that ``indices[valid]`` is the
        set of distinct tokens drawn (the attended set).
    """
    N = logits.shape[-1]
    n = num_draws(N, ratio)
    if uniform:
        k = 1 if sets is None else sets
        u = _sorted_uniforms((*logits.shape[:-1], k), n, logits.device, generator)
        idx = (u * N).long().clamp_(max=N - 1)  # floor(u N): sorted, uniform over the N tokens
        idx = idx.squeeze(-2) if sets is None else idx
        valid = torch.ones_like(idx, dtype=torch.bool)
        valid[..., 1:] = idx[..., 1:] != idx[..., :-1]
        return idx, valid
    return _weighted_draws(boltzmann_distribution(logits.detach(), temperature), n, generator, sets=sets)


def boltzmann_keep_mask(
    logits: Tensor,
    temperature: float,
    ratio: float,
    *,
    threshold: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The attended set of Boltzmann attention sampling as a boolean mask.

    Args:
        logits: (..., N) mask logits, tokens on the last axis. Each row (every leading index: a
            query, or a query and a head) draws its own set.
        temperature: tau of this layer (see :func:`layer_temperature`).
        ratio: ``n = floor(ratio * N)`` i.i.d. draws per row.
        threshold: tokens with ``sigmoid(logits) >= threshold`` are always attended and excluded
            from the draws (the reference code's ``mask_threshold``); None: no such tokens.
        generator: a ``torch.Generator`` on ``logits``' device for reproducible draws.

    Returns:
        Bool tensor of the same shape as ``logits``: True where the token is attended. Marginally
        token i is True with probability ``1 - (1 - p_i) ** n`` (plus the always-attended tokens).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> keep = boltzmann_keep_mask(torch.randn(2, 10, 1024), 1.0, 0.1, generator=g)
        >>> keep.shape, bool(keep.any(-1).all())
        (torch.Size([2, 10, 1024]), True)
    """
    _check_threshold(threshold)
    N = logits.shape[-1]
    n = num_draws(N, ratio)
    probs = boltzmann_distribution(logits.detach(), temperature, threshold=threshold)
    idx, _ = _weighted_draws(probs, n, generator)
    keep = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    keep.scatter_(-1, idx, True)
    if threshold is not None:
        keep |= torch.sigmoid(logits.detach().float()) >= threshold
    return keep


@dataclass
class AttentionSelection:
    """The image tokens each (batch, head, query) attends to at one decoder layer.

    Exactly one form is set:
    - ``keep is None and indices is None``: every token (dense attention);
    - ``keep``: bool (B, heads, Q, N), True = attended (dense attention with this mask);
    - ``indices`` + ``valid``: int64 / bool (B, heads, Q, n): gather only these tokens, ignoring
      repeats (``valid`` False). Cost follows n, not N.
    ``probs`` (B, heads, Q, N) holds the sampling distribution when it was computed (for
    visualisation); ``temperature`` the layer's temperature.
    """

    keep: Tensor | None = None
    indices: Tensor | None = None
    valid: Tensor | None = None
    probs: Tensor | None = None
    temperature: float | None = None

    @property
    def is_full(self) -> bool:
        return self.keep is None and self.indices is None

    def as_keep_mask(self, num_tokens: int) -> Tensor | None:
        """The attended set as a bool mask (B, heads, Q, N); None for dense attention."""
        if self.keep is not None:
            return self.keep
        if self.indices is None:
            return None
        keep = torch.zeros(
            (*self.indices.shape[:-1], num_tokens), dtype=torch.bool, device=self.indices.device
        )
        # repeats scatter True onto a token already True: no need to filter them
        return keep.scatter_(-1, self.indices, True)


class BoltzmannSampler(torch.nn.Module):
    """Chooses the attended tokens of every decoder layer from the latest mask prediction.

    Args:
        mode: one of :data:`ATTENTION_MODES`.
        ratio: fraction of tokens drawn per query and head (``boltzmann`` and ``uniform``).
        base_temperature: tau0 of the schedule tau_l = tau0 / (1 + l).
        threshold: always-attend threshold on sigmoid (the reference code's ``mask_threshold``);
            None (the default, like the reference's 1.1) for none. With a threshold the sampled set
            has no fixed size and attention falls back to a dense masked form.
        keep_probs: also return the Boltzmann distribution (for sampling maps).

    ``forward(logits, layer, num_heads, generator)`` takes mask logits (B, Q, N) at the layer's
    resolution and returns an :class:`AttentionSelection` for (B, heads, Q, N).
    """

    def __init__(
        self,
        *,
        mode: Literal["boltzmann", "full", "masked", "uniform"] = "boltzmann",
        ratio: float = 0.1,
        base_temperature: float = 1.0,
        threshold: float | None = None,
    ) -> None:
        super().__init__()
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")
        num_draws(1, ratio)  # validates ratio
        layer_temperature(base_temperature, 0)  # validates base_temperature
        _check_threshold(threshold)
        self.mode = mode
        self.ratio = ratio
        self.base_temperature = base_temperature
        self.threshold = threshold

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, ratio={self.ratio}, base_temperature={self.base_temperature}, "
            f"threshold={self.threshold}"
        )

    def forward(
        self,
        logits: Tensor,
        layer: int,
        num_heads: int,
        *,
        generator: torch.Generator | None = None,
        return_probs: bool = False,
    ) -> AttentionSelection:
        B, Q, N = logits.shape
        logits = logits.detach()
        temperature = layer_temperature(self.base_temperature, layer)
        if self.mode == "full":
            return AttentionSelection(temperature=temperature)
        if self.mode == "masked":
            keep = torch.sigmoid(logits) >= 0.5  # B x Q x N
            keep = keep | ~keep.any(-1, keepdim=True)  # a query with no token attends to all
            return AttentionSelection(keep=keep[:, None].expand(B, num_heads, Q, N))
        probs = None
        if return_probs and self.mode == "boltzmann":
            # one distribution per query, shared by its heads: B x Q x N -> B x heads x Q x N (a view)
            probs = boltzmann_distribution(logits, temperature, threshold=self.threshold)
            probs = probs[:, None].expand(B, num_heads, Q, N)
        if self.threshold is not None and self.mode == "boltzmann":
            per_head = logits[:, None].expand(B, num_heads, Q, N)
            keep = boltzmann_keep_mask(
                per_head, temperature, self.ratio, threshold=self.threshold, generator=generator
            )
            return AttentionSelection(keep=keep, probs=probs, temperature=temperature)
        # every head draws its own set: B x Q x heads x n, returned as a B x heads x Q x n view
        idx, valid = sample_token_indices(
            logits,
            temperature,
            self.ratio,
            uniform=self.mode == "uniform",
            generator=generator,
            sets=num_heads,
        )
        return AttentionSelection(
            indices=idx.transpose(1, 2), valid=valid.transpose(1, 2), probs=probs, temperature=temperature
        )
