"""Text encoder: prompts -> token embeddings the decoder's queries attend to.

The built-in encoder is a CLIP-style causal transformer trained from scratch (the reference code
trains its 12-layer, width-512 one from scratch too) fed by one of two tokenizers
(``TextConfig.tokenizer``): :class:`HashTokenizer`, which needs no vocabulary file (words are mapped
to ids by a stable hash; the ``tiny`` preset), or CLIP's BPE tokenizer
(:class:`~boltzformer.model.clip_tokenizer.ClipTokenizer`), which the official text weights were
trained with (the paper-size presets and BiomedParse v2). Any encoder that subclasses
:class:`TextEncoder` (for example a pretrained HuggingFace model) can be plugged in instead.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from boltzformer.model.attention import MultiHeadAttention

__all__ = ["HashTokenizer", "TextEncoder", "TextFeatures", "BuiltinTextEncoder", "check_prompts"]

MAX_PROMPT_CHARS = 1000


def check_prompts(prompts: Sequence[str], *, name: str = "prompts") -> list[str]:
    """Validate a list of prompts: each a non-empty string of at most 1000 characters."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(f"{name} must be a list of strings, got {type(prompts).__name__}")
    out = []
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"{name}[{i}] must be a string, got {type(p).__name__}")
        if not p.strip():
            raise ValueError(f"{name}[{i}] is empty: a prompt must name the target, e.g. 'lung nodule in CT scan'")
        if len(p) > MAX_PROMPT_CHARS:
            raise ValueError(f"{name}[{i}] has {len(p)} characters; at most {MAX_PROMPT_CHARS} are allowed")
        out.append(p)
    return out


class HashTokenizer:
    """Word-level tokenizer that needs no vocabulary file.

    Lower-cases the text, splits it into words, numbers and single punctuation marks, and maps
    each piece to ``3 + crc32(piece) % (vocab_size - 3)``. Ids 0, 1, 2 are padding, start and end.
    The same text gives the same ids on every machine. Collisions between words are possible but
    rare at the default vocabulary size; the model learns around them.
    """

    name = "hash"
    PAD, BOS, EOS = 0, 1, 2
    _pattern = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")

    def __init__(self, *, vocab_size: int = 8192, context_length: int = 32) -> None:
        if vocab_size < 16:
            raise ValueError(f"vocab_size must be >= 16, got {vocab_size}")
        if context_length < 3:
            raise ValueError(f"context_length must be >= 3, got {context_length}")
        self.vocab_size = vocab_size
        self.context_length = context_length

    def pieces(self, text: str) -> list[str]:
        return self._pattern.findall(text.lower())

    def encode(self, text: str) -> list[int]:
        ids = [3 + zlib.crc32(p.encode("utf-8")) % (self.vocab_size - 3) for p in self.pieces(text)]
        return [self.BOS] + ids[: self.context_length - 2] + [self.EOS]

    def __call__(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Returns ``(input_ids, attention_mask)``, both int64 (B, L), L the longest in the batch."""
        encoded = [self.encode(t) for t in texts]
        L = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), L), self.PAD, dtype=torch.long)
        mask = torch.zeros((len(encoded), L), dtype=torch.long)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = torch.tensor(e)
            mask[i, : len(e)] = 1
        return ids, mask


@dataclass
class TextFeatures:
    """``tokens``: (B, L, C) token embeddings in the decoder's width; ``padding_mask``: bool (B, L),
    True on padding (never attended); ``pooled``: (B, C), the sentence embedding (end token)."""

    tokens: Tensor
    padding_mask: Tensor
    pooled: Tensor


class TextEncoder(nn.Module):
    """Interface of a text encoder: ``forward(prompts, device) -> TextFeatures``.

    Subclasses set ``out_dim`` (C of the returned features) and implement ``forward``.
    """

    out_dim: int

    def forward(self, prompts: Sequence[str], device: torch.device) -> TextFeatures:  # pragma: no cover
        raise NotImplementedError


def quick_gelu(x: Tensor) -> Tensor:
    """CLIP's GELU approximation ``x * sigmoid(1.702 x)``."""
    return x * torch.sigmoid(1.702 * x)


_ACTIVATIONS = {"gelu": F.gelu, "quick_gelu": quick_gelu}


class _MLP(nn.Module):
    def __init__(self, width: int, activation: str) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)
        self.act = _ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class _ResidualBlock(nn.Module):
    """Pre-norm causal transformer block (CLIP text layout: attn, ln_1, mlp, ln_2)."""

    def __init__(self, width: int, heads: int, activation: str, ln_eps: float) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width, eps=ln_eps)
        self.mlp = _MLP(width, activation)
        self.ln_2 = nn.LayerNorm(width, eps=ln_eps)

    def forward(self, x: Tensor, causal: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, keep=causal)
        return x + self.mlp(self.ln_2(x))


class CausalTextTransformer(nn.Module):
    """CLIP-style text transformer: token + position embeddings, causal blocks, final LayerNorm.

    ``activation="quick_gelu"`` with ``ln_eps=1e-12`` is the reference code's (X-Decoder's) text
    transformer exactly (checked against its outputs in ``tests/model/test_golden_decoder.py``).
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        context_length: int,
        width: int,
        layers: int,
        heads: int,
        activation: str = "gelu",
        ln_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.resblocks = nn.ModuleList(_ResidualBlock(width, heads, activation, ln_eps) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width, eps=ln_eps)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)

    def forward(self, input_ids: Tensor) -> Tensor:
        """input_ids (B, L), L <= context_length -> last hidden state (B, L, width).

        Causal: position t sees positions <= t only, so padding after the end token changes
        nothing before it.
        """
        B, L = input_ids.shape
        x = self.token_embedding(input_ids) + self.positional_embedding[:L]
        causal = torch.ones(L, L, dtype=torch.bool, device=input_ids.device).tril()
        for block in self.resblocks:
            x = block(x, causal)
        return self.ln_final(x)


class BuiltinTextEncoder(TextEncoder):
    """A tokenizer + :class:`CausalTextTransformer`, projected to ``out_dim``.

    Args:
        out_dim: width of the returned features (the decoder's hidden size).
        vocab_size, context_length, width, layers, heads: the transformer's sizes.
        activation, ln_eps: "gelu" / 1e-5 (default) or the reference code's "quick_gelu" / 1e-12.
        tokenizer: called on a list of prompts, returns ``(input_ids, attention_mask)`` (B, L) with
            a ``name`` ("hash", "clip"); None: a :class:`HashTokenizer` of ``vocab_size`` buckets.
    """

    def __init__(
        self,
        *,
        out_dim: int,
        vocab_size: int,
        context_length: int,
        width: int,
        layers: int,
        heads: int,
        activation: str = "gelu",
        ln_eps: float = 1e-5,
        tokenizer=None,
    ) -> None:
        super().__init__()
        self.out_dim = out_dim
        if tokenizer is None:
            tokenizer = HashTokenizer(vocab_size=vocab_size, context_length=context_length)
        if getattr(tokenizer, "vocab_size", vocab_size) > vocab_size:
            raise ValueError(f"the {tokenizer.name} tokenizer has {tokenizer.vocab_size} ids but text.vocab_size is {vocab_size}")
        self.tokenizer = tokenizer
        self.encoder_transformer = CausalTextTransformer(
            vocab_size=vocab_size,
            context_length=context_length,
            width=width,
            layers=layers,
            heads=heads,
            activation=activation,
            ln_eps=ln_eps,
        )
        self.lang_proj = nn.Parameter(torch.empty(width, out_dim))
        nn.init.normal_(self.lang_proj, std=width**-0.5)

    def encode_ids(self, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        """Token ids (B, L) and attention mask (B, L, 1 = real token) -> :class:`TextFeatures`."""
        hidden = self.encoder_transformer(input_ids)  # B x L x width
        tokens = hidden @ self.lang_proj  # B x L x C
        # the end token is the last real one (CLIP pools at the end token)
        last = attention_mask.sum(-1) - 1
        pooled = tokens[torch.arange(tokens.shape[0], device=tokens.device), last]
        return TextFeatures(tokens=tokens, padding_mask=attention_mask == 0, pooled=pooled)

    def forward(self, prompts: Sequence[str], device: torch.device) -> TextFeatures:
        input_ids, attention_mask = self.tokenizer(prompts)  # on the CPU
        # CLIP pads every prompt to 77 tokens (as the official code); the columns after the batch's
        # longest prompt are padding everywhere: never attended by the decoder and, the transformer
        # being causal, without effect on the real tokens, so they are dropped here, on the CPU.
        L = int(attention_mask.sum(-1).max())
        input_ids, attention_mask = input_ids[:, :L], attention_mask[:, :L]
        # non-blocking: no host synchronisation on a GPU (the token arrays are this call's own)
        return self.encode_ids(input_ids.to(device, non_blocking=True), attention_mask.to(device, non_blocking=True))
