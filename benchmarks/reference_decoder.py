"""The reference code's decoder formulation, kept as a correctness and speed baseline (benchmarks
and tests only: the package never builds it).

microsoft/BoltzFormer (c68c5f5) computes the same model as :class:`BoltzmannDecoder` in a costlier
form, which this module reproduces step for step:

- after the prior and after every layer, every query's mask logits are computed at full resolution
  (H/4 x W/4) and resized (bilinear) to the next layer's attention resolution, where they give the
  sampling distribution; a last, unused mask is made after the last layer, as in the reference;
- the attended sets are per-head Bernoulli keep masks (:func:`reference_keep_mask`): the
  distribution is computed for every head, and token i is kept when one uniform per (head, query,
  token) falls at or above ``(1 - p_i) ** n``, i.e. with probability ``1 - (1 - p_i) ** n``, the
  chance that n i.i.d. draws hit it. Each token's marginal equals that of our i.i.d. draws; the
  joint law differs (the set size varies);
- cross-attention is dense with the set as a boolean mask; a row that keeps nothing attends to
  every token.

:class:`ReferenceDecoder` is a :class:`BoltzmannDecoder` with this forward: the same parameters,
so one state dict loads into both. :func:`use_reference_decoder` swaps it into a built model (same
weights); :func:`build_model` builds a preset with either decoder (``impl="efficient"`` or ``"reference"``).
Fed the same attended sets (replay them through ``decoder.sampler``), both give the same outputs up
to float32 rounding (``tests/benchmarks/test_reference_decoder.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

import boltzformer
from boltzformer.model.boltzformer import BoltzFormer
from boltzformer.model.decoder import NUM_LEVELS, BoltzmannDecoder, DecoderOutput, LayerSampling
from boltzformer.model.layers import SelfAttentionLayer
from boltzformer.model.position import sine_position_encoding
from boltzformer.model.text import TextFeatures
from boltzformer.model.sampling import AttentionSelection, BoltzmannSampler, layer_temperature, num_draws

__all__ = ["IMPLS", "ReferenceDecoder", "ReferenceSampler", "build_model", "reference_keep_mask", "use_reference_decoder"]

#: the decoder formulations a benchmark compares: the package's, and the reference code's
IMPLS = ("efficient", "reference")


def reference_keep_mask(
    logits: Tensor,
    temperature: float,
    ratio: float,
    num_heads: int,
    *,
    threshold: float | None = None,
    uniform: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The reference code's attended sets: per-head Bernoulli keep masks.

    Args:
        logits: (B, Q, N) mask logits at the attention resolution.
        temperature: the layer's temperature.
        ratio: ``n = floor(ratio * N)``.
        num_heads: heads; each draws its own mask.
        threshold: tokens with sigmoid >= threshold are always kept and have no probability
            (None: no such token, the reference's 1.1).
        uniform: the uniform ablation (p = 1 / candidates).
        generator: for the uniforms.

    Returns:
        ``(keep, probs)``: bool (B, heads, Q, N), True = attended, rows that would keep nothing
        keep everything; and the per-head distribution (B, heads, Q, N).
    """
    B, Q, N = logits.shape
    n = num_draws(N, ratio)
    # the reference repeats the sigmoid over heads before anything else: B x heads x Q x N
    s = torch.sigmoid(logits.detach().float())[:, None].repeat(1, num_heads, 1, 1)
    candidate = s < threshold if threshold is not None else torch.ones_like(s, dtype=torch.bool)
    weights = (torch.ones_like(s) if uniform else torch.exp(s / temperature)) * candidate
    probs = weights / weights.sum(-1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)
    u = torch.rand(s.shape, generator=generator, device=s.device, dtype=s.dtype)
    blocked = candidate & (u < (1.0 - probs).pow(n))
    blocked &= ~blocked.all(-1, keepdim=True)  # a row that blocks everything attends to everything
    return ~blocked, probs


class ReferenceSampler(BoltzmannSampler):
    """The reference code's sampling (:func:`reference_keep_mask`), with BoltzmannSampler's settings.

    Modes: ``boltzmann`` and ``uniform`` draw Bernoulli keep masks; ``masked`` keeps sigmoid >= 0.5
    (every token where none is); ``full`` attends to everything.
    """

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
        temperature = layer_temperature(self.base_temperature, layer)
        if self.mode == "full":
            return AttentionSelection(temperature=temperature)
        if self.mode == "masked":
            keep = torch.sigmoid(logits.detach())[:, None].repeat(1, num_heads, 1, 1) >= 0.5
            return AttentionSelection(keep=keep | ~keep.any(-1, keepdim=True), temperature=temperature)
        keep, probs = reference_keep_mask(
            logits,
            temperature,
            self.ratio,
            num_heads,
            threshold=self.threshold,
            uniform=self.mode == "uniform",
            generator=generator,
        )
        return AttentionSelection(keep=keep, probs=probs if return_probs else None, temperature=temperature)


class ReferenceDecoder(BoltzmannDecoder):
    """:class:`BoltzmannDecoder`'s parameters with the reference code's forward (see the module
    docstring). Takes the same arguments; ``attention_impl`` is ignored (always dense + mask)."""

    def forward(
        self,
        multi_scale: list[Tensor],
        mask_features: Tensor,
        text: TextFeatures,
        *,
        generator: torch.Generator | None = None,
        return_aux: bool = False,
        return_sampling: bool = False,
    ) -> DecoderOutput:
        """Same arguments and outputs as :meth:`BoltzmannDecoder.forward`."""
        if len(multi_scale) != NUM_LEVELS:
            raise ValueError(f"expected {NUM_LEVELS} multi-scale maps, got {len(multi_scale)}")
        B = mask_features.shape[0]
        Q, C = self.num_queries, self.hidden_dim

        src, pos, sizes = [], [], []
        for i, x in enumerate(multi_scale):
            h, w = x.shape[-2:]
            sizes.append((h, w))
            # B x C x h x w -> B x hw x C
            src.append((self.input_proj[i](x).flatten(2) + self.level_embed.weight[i][None, :, None]).transpose(1, 2))
            pos.append(sine_position_encoding(h, w, C // 2, device=x.device, dtype=x.dtype).flatten(2).transpose(1, 2))

        query_pos = self.query_embed.weight[None].expand(B, Q, C)
        queries = self.query_feat.weight[None].expand(B, Q, C)
        text_tokens = text.tokens
        both_pos = torch.cat((query_pos, text_tokens.detach()), dim=1)  # B x (Q+L) x C
        both_padding = torch.cat((text.padding_mask.new_zeros(B, Q), text.padding_mask), dim=1)

        def self_attend(layer: SelfAttentionLayer, queries: Tensor, text_tokens: Tensor) -> tuple[Tensor, Tensor]:
            both = layer(torch.cat((queries, text_tokens), dim=1), pos=both_pos, key_padding_mask=both_padding)
            return both[:, :Q], both[:, Q:]

        def predict(queries: Tensor, level: int) -> tuple[Tensor, Tensor]:
            """The reference's prediction heads: full-resolution logits (B, Q, H/4, W/4), and the
            same resized to ``level``'s resolution for the next sampling distribution (B, Q, h*w)."""
            full = torch.einsum("bqc,bchw->bqhw", self._mask_embedding(queries), mask_features)
            resized = F.interpolate(full, size=sizes[level], mode="bilinear", align_corners=False)
            return full, resized.flatten(2)

        if self.pre_self_attention:
            queries, text_tokens = self_attend(self.initial_self_attention_layer, queries, text_tokens)
            queries = self.initial_ffn_layer(queries)
        full, logits = predict(queries, 0)
        cls_state = self.existence.initial(B) if self.existence is not None else queries.new_zeros(B, 0, C)

        aux_logits: list[Tensor] = []
        sampling: list[LayerSampling] = []
        selection = self.sampler(logits, 0, self.num_heads, generator=generator, return_probs=return_sampling)
        for layer in range(self.num_layers):
            level = layer % NUM_LEVELS
            if return_aux:
                aux_logits.append(full.mean(1, keepdim=True))
            keep = selection.as_keep_mask(logits.shape[-1])
            if return_sampling:
                sampling.append(
                    LayerSampling(layer=layer, size=sizes[level], keep=keep, probs=selection.probs,
                                  temperature=selection.temperature)
                )

            def block(queries: Tensor, text_tokens: Tensor, cls_state: Tensor, layer=layer, level=level, keep=keep):
                queries = self.transformer_cross_attention_layers[layer](
                    queries, src[level], pos=pos[level], query_pos=query_pos, keep=keep
                )
                queries, text_tokens = self_attend(self.transformer_self_attention_layers[layer], queries, text_tokens)
                if self.existence is not None:
                    both = torch.cat((queries, text_tokens), dim=1)
                    cls_state = self.existence.step(layer, cls_state, both, both_pos, both_padding)
                queries = self.transformer_ffn_layers[layer](queries)
                return (queries, text_tokens, cls_state, *predict(queries, (layer + 1) % NUM_LEVELS))

            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                queries, text_tokens, cls_state, full, logits = checkpoint(
                    block, queries, text_tokens, cls_state, use_reentrant=False
                )
            else:
                queries, text_tokens, cls_state, full, logits = block(queries, text_tokens, cls_state)
            # the reference draws the next layer's mask after every layer, the last one included
            # (that one is never used): the cost is part of its forward
            selection = self.sampler(
                logits, layer + 1, self.num_heads, generator=generator, return_probs=return_sampling
            )

        existence_logits = self.existence.logit(cls_state) if self.existence is not None else None
        return DecoderOutput(
            query_logits=full, aux_logits=aux_logits, sampling=sampling, existence_logits=existence_logits
        )


def use_reference_decoder(model: BoltzFormer) -> BoltzFormer:
    """Replaces ``model.decoder`` (and its sampler) by a :class:`ReferenceDecoder` with the same
    settings (``model.config``), parameters (loaded strictly), device, dtype and mode; returns the model."""
    old, dc = model.decoder, model.config.decoder
    sampler = ReferenceSampler(mode=dc.attention, ratio=dc.sample_ratio, base_temperature=dc.base_temperature,
                               threshold=dc.threshold)
    ref = ReferenceDecoder(
        in_channels=model.pixel_decoder.conv_dim,
        mask_dim=model.pixel_decoder.mask_dim,
        hidden_dim=dc.hidden_dim,
        num_heads=dc.num_heads,
        ffn_dim=dc.ffn_dim,
        num_layers=dc.num_layers,
        num_queries=dc.num_queries,
        pre_self_attention=dc.pre_self_attention,
        sampler=sampler,
        attention_impl=dc.attention_impl,
        existence=dc.existence,
    )
    weight = next(old.parameters())
    ref.load_state_dict(old.state_dict(), strict=True)
    ref.to(device=weight.device, dtype=weight.dtype).train(old.training)
    ref.gradient_checkpointing = old.gradient_checkpointing
    model.decoder = ref
    return model


def build_model(preset: str, impl: str = "efficient", **overrides) -> BoltzFormer:
    """``boltzformer.build_model(preset, **overrides)``, with the reference decoder where ``impl`` is
    ``"reference"``."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    model = boltzformer.build_model(preset, **overrides)
    return use_reference_decoder(model) if impl == "reference" else model
