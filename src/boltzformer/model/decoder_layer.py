"""One layer of the Boltzmann decoder, and the speed helpers beside it.

Layer l works on feature level l % 3 (strides 32, 16, 8): the queries cross-attend to the tokens the
sampler drew for them at that level, then self-attend over [queries ; text tokens] (the existence
head's state takes its step there), then pass an FFN. :class:`DecoderLayer` is that computation over
the layer's three sublayers; the parameters stay in the decoder's lists
(``transformer_cross_attention_layers.l``, ``transformer_self_attention_layers.l``,
``transformer_ffn_layers.l``), the reference code's layout, so its checkpoints load key for key.

The speed helpers compute what ``einsum`` and ``F.interpolate`` compute, faster where the decoder
needs them: :func:`mask_logits` (mask logits of token-major maps with a cheap backward) and
:func:`resize_bilinear` (exact halving shrinks as strided means).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from boltzformer.model.existence import ExistenceHead
from boltzformer.model.layers import CrossAttentionLayer, FFNLayer, SelfAttentionLayer

__all__ = ["AttendedSet", "DecoderLayer", "LevelTokens", "PromptContext", "mask_logits", "resize_bilinear"]


@dataclass(frozen=True)
class LevelTokens:
    """One feature level's tokens, as every layer on that level attends to them (N = h*w tokens)."""

    values: Tensor  # B x N x C: the projected map, without the level embedding
    keys: Tensor  # B x N x C: values + level embedding + position (made once per forward)
    level_embedding: Tensor  # C: added to the attention's output (the values' shift) instead of to every token


@dataclass(frozen=True)
class PromptContext:
    """What every layer's self-attention over [queries ; text tokens] shares (L text tokens)."""

    query_pos: Tensor  # B x Q x C, the queries' positions
    both_pos: Tensor  # B x (Q + L) x C: query positions, then the text tokens' initial embedding (detached)
    both_padding: Tensor  # bool B x (Q + L), True = padding token

    def self_attend(self, layer: SelfAttentionLayer, queries: Tensor, text_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``layer`` over [queries ; text tokens]: (B, Q, C) and (B, L, C) back."""
        Q = queries.shape[1]
        both = layer(torch.cat((queries, text_tokens), dim=1), pos=self.both_pos, key_padding_mask=self.both_padding)
        return both[:, :Q], both[:, Q:]


@dataclass(frozen=True)
class AttendedSet:
    """The tokens a layer's queries attend to: drawn ``indices`` (B, heads, Q, n) with their ``valid``
    flags, or a ``keep`` mask (B, heads, Q, N); all None = every token."""

    keep: Tensor | None = None
    indices: Tensor | None = None
    valid: Tensor | None = None


@dataclass(frozen=True)
class DecoderLayer:
    """Decoder layer ``index``'s computation over its sublayers (owned by the decoder, see the module
    docstring) and the existence head, if any."""

    index: int
    cross_attention: CrossAttentionLayer
    self_attention: SelfAttentionLayer
    ffn: FFNLayer
    existence: ExistenceHead | None = None

    def __call__(
        self, queries: Tensor, text_tokens: Tensor, cls_state: Tensor, tokens: LevelTokens, prompt: PromptContext,
        attended: AttendedSet,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """queries (B, Q, C), text tokens (B, L, C) and the existence state (B, 1, C), or (B, 0, C)
        without a head, after the layer."""
        queries = self.cross_attention(
            queries, tokens.values, pos=None, memory_pos=tokens.keys, query_pos=prompt.query_pos, keep=attended.keep,
            indices=attended.indices, valid=attended.valid, value_shift=tokens.level_embedding,
            # the keys are the values plus the fixed position and the level embedding, whose
            # gradient through the keys is zero (the same shift for every token cancels in
            # the softmax): the keys' gradient goes to the values, in one pass with theirs
            keys_from_values=True,
        )
        queries, text_tokens = prompt.self_attend(self.self_attention, queries, text_tokens)
        if self.existence is not None:
            both = torch.cat((queries, text_tokens), dim=1)
            cls_state = self.existence.step(self.index, cls_state, both, prompt.both_pos, prompt.both_padding)
        return self.ffn(queries), text_tokens, cls_state


class _TokenLogits(torch.autograd.Function):
    """(B, T, Q) = tokens (B, T, C) . embedding (B, Q, C)^T, with the embedding's gradient made as
    (B, Q, C) = grad^T . tokens. Autograd's bmm backward makes it as tokens^T . grad, a (B, C, Q)
    product whose inner dimension is the 65536 tokens of a 1024 x 1024 input: 1.6-2.5x slower in
    BLAS than the same product the other way round (0.07 s alone and 0.11 s profiled in a train
    step, against 0.045 s, on 2 threads)."""

    @staticmethod
    def forward(ctx, tokens: Tensor, embedding: Tensor) -> Tensor:
        ctx.save_for_backward(tokens, embedding)
        return torch.bmm(tokens, embedding.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: Tensor):
        tokens, embedding = ctx.saved_tensors
        d_tokens = torch.bmm(grad, embedding) if ctx.needs_input_grad[0] else None
        d_embedding = torch.bmm(grad.transpose(1, 2), tokens) if ctx.needs_input_grad[1] else None
        return d_tokens, d_embedding


def mask_logits(embedding: Tensor, features: Tensor, *, flat: bool = False) -> Tensor:
    """(B, Q, h, w) = ``einsum("bqc,bchw->bqhw", embedding, features)``, or with ``flat`` its
    contiguous (B, Q, hw) form.

    For the channels-last maps of the paper-size presets, einsum's backward makes the map's
    gradient as (B, C, hw) and then copies it into the map's channels-last layout (128 MB at
    1024 x 1024, ~0.12 s of a train step). Here the token-major view is multiplied instead,
    (B, hw, C) . (B, C, Q), whose gradient is channels-last as it is made; the logits are then a
    (B, Q, h, w) view with the queries innermost.
    """
    B, C, h, w = features.shape
    if C > 1 and features.is_contiguous(memory_format=torch.channels_last):
        tokens = features.permute(0, 2, 3, 1).reshape(B, h * w, C)  # a view
        if flat:  # (B, Q, C) . (B, C, hw): contiguous logits; BLAS reads the tokens transposed
            return torch.bmm(embedding, tokens.transpose(1, 2))
        return _TokenLogits.apply(tokens, embedding).view(B, h, w, -1).permute(0, 3, 1, 2)
    out = torch.einsum("bqc,bchw->bqhw", embedding, features)
    return out.flatten(2) if flat else out


def resize_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` for (B, C, H, W) maps.

    Shrinking by an even integer factor f, bilinear sampling (no antialiasing) lands halfway between
    pixels f*i + f/2 - 1 and f*i + f/2: the result is the mean of those 2 x 2 pixels, read with
    strides. Same values (up to rounding), without the general kernel's cost on 512-channel maps
    (it was a fifth of the decoder's time at 1024 x 1024). Other sizes use ``F.interpolate``.
    """
    H, W = x.shape[-2:]
    h, w = size
    if (H, W) == (h, w):
        return x
    if H % h or W % w or H // h != W // w or (H // h) % 2:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    f = H // h
    o = f // 2 - 1
    # four strided B x C x h x w views: ((a + b) + (c + d)) / 4, summed in place where add's backward
    # allows it, so no intermediate outlives its line
    out = x[..., o::f, o::f] + x[..., o::f, o + 1 :: f]
    return out.add_(x[..., o + 1 :: f, o::f] + x[..., o + 1 :: f, o + 1 :: f]).mul_(0.25)
