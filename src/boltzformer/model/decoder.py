"""The Boltzmann decoder: latent queries, a text-conditioned prior, L sampled cross-attention layers.

Data flow (B images, Q queries, L text tokens, N tokens of one feature level):

1. queries: learned content ``query_feat`` (Q, C) plus positions ``query_embed`` (Q, C);
2. text-conditioned prior: self-attention over [queries ; text tokens], then an FFN on the queries;
3. mask embedding e = MLP(LayerNorm(q)); mask logits are ``e . F`` with F the mask features;
4. layer l = 0..L-1 over level l % 3 (strides 32, 16, 8): the sampler draws each query's attended
   tokens from the Boltzmann distribution of the latest logits at this level's resolution, the
   queries cross-attend to those tokens only, then self-attention over [queries ; text], FFN, and
   new mask embeddings.

Mask logits for the sampling distributions are computed at the attention level's resolution from
mask features resized once per forward (bilinear resizing is linear, so ``e . resize(F)`` equals
``resize(e . F)``, at up to 64x less cost). Full-resolution logits are computed only for the output
and, when asked, for deep supervision.

One layer's computation (step 4 after the draws) is :class:`~boltzformer.model.decoder_layer.DecoderLayer`,
with the speed helpers :func:`mask_logits` and :func:`resize_bilinear` beside it; the parameters stay
here, in the reference code's key layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from boltzformer.model.decoder_layer import (
    AttendedSet,
    DecoderLayer,
    LevelTokens,
    PromptContext,
    mask_logits,
    resize_bilinear,
)
from boltzformer.model.existence import ExistenceHead
from boltzformer.model.layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer
from boltzformer.model.position import sine_position_parts
from boltzformer.model.text import TextFeatures
from boltzformer.model.sampling import AttentionSelection, BoltzmannSampler

__all__ = ["BoltzmannDecoder", "DecoderOutput", "LayerSampling", "NUM_LEVELS", "mask_logits", "resize_bilinear"]

NUM_LEVELS = 3


@dataclass
class LayerSampling:
    """What decoder layer ``layer`` attended to, at its level's resolution (``size`` = (h, w)).

    ``keep``: bool (B, heads, Q, h*w), the attended tokens (None for dense attention);
    ``probs``: (B, heads, Q, h*w) the Boltzmann distribution (boltzmann mode only);
    ``temperature``: the layer's temperature.
    """

    layer: int
    size: tuple[int, int]
    keep: Tensor | None
    probs: Tensor | None
    temperature: float | None


@dataclass
class DecoderOutput:
    """``query_logits``: (B, Q, H/4, W/4) mask logits of every query after the last layer.
    ``aux_logits``: query-mean logits (B, 1, H/4, W/4) of the earlier predictions (the prior and
    layers 0..L-2), for deep supervision; empty unless asked for.
    ``sampling``: one :class:`LayerSampling` per layer; empty unless asked for.
    ``existence_logits``: (B,) is-the-target-there logits, or None without an existence head."""

    query_logits: Tensor
    aux_logits: list[Tensor] = field(default_factory=list)
    sampling: list[LayerSampling] = field(default_factory=list)
    existence_logits: Tensor | None = None


class BoltzmannDecoder(nn.Module):
    """Transformer decoder with Boltzmann attention sampling.

    Args:
        in_channels: channels of the pixel decoder's multi-scale maps.
        mask_dim: channels of the mask features.
        hidden_dim: width C of queries and text tokens.
        num_heads: attention heads.
        ffn_dim: FFN hidden size.
        num_layers: decoder layers L.
        num_queries: latent queries Q.
        pre_self_attention: run the text-conditioned prior before the first layer.
        sampler: chooses the attended tokens (mode, ratio, temperatures).
        attention_impl: how sampled sets are attended: "gather" (only the drawn tokens' keys and
            values are gathered; cost follows the draws) or "dense" (dense attention with the set as
            a mask, the reference code's form). Same result.
        existence: build the existence head (BiomedParse v2's classifier; see ``model/existence.py``).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        mask_dim: int,
        hidden_dim: int,
        num_heads: int,
        ffn_dim: int,
        num_layers: int,
        num_queries: int,
        pre_self_attention: bool = True,
        sampler: BoltzmannSampler,
        attention_impl: str = "gather",
        existence: bool = False,
    ) -> None:
        super().__init__()
        if hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even, got {hidden_dim}")
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.num_queries = num_queries
        self.sampler = sampler
        if attention_impl not in ("gather", "dense"):
            raise ValueError(f"attention_impl must be 'gather' or 'dense', got {attention_impl!r}")
        self.attention_impl = attention_impl
        self.gradient_checkpointing = False  # recompute each layer in backward instead of storing it
        self.pre_self_attention = pre_self_attention
        if pre_self_attention:
            self.initial_self_attention_layer = SelfAttentionLayer(hidden_dim, num_heads)
            self.initial_ffn_layer = FFNLayer(hidden_dim, ffn_dim)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, num_heads) for _ in range(num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, num_heads) for _ in range(num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer(hidden_dim, ffn_dim) for _ in range(num_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(NUM_LEVELS, hidden_dim)
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, hidden_dim, kernel_size=1) if in_channels != hidden_dim else nn.Identity()
            for _ in range(NUM_LEVELS)
        )
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.existence = ExistenceHead(hidden_dim, num_heads, ffn_dim, num_layers) if existence else None

    def _mask_embedding(self, queries: Tensor) -> Tensor:
        return self.mask_embed(self.decoder_norm(queries))  # B x Q x mask_dim

    def layer(self, index: int) -> DecoderLayer:
        """Layer ``index``'s computation (see :mod:`boltzformer.model.decoder_layer`)."""
        return DecoderLayer(
            index=index,
            cross_attention=self.transformer_cross_attention_layers[index],
            self_attention=self.transformer_self_attention_layers[index],
            ffn=self.transformer_ffn_layers[index],
            existence=self.existence,
        )

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
        """
        Args:
            multi_scale: 3 maps (B, in_channels, h_i, w_i) at strides 32, 16, 8.
            mask_features: (B, mask_dim, H/4, W/4).
            text: token features (B, L, C) with their padding mask.
            generator: makes the sampled attention sets reproducible.
            return_aux: also return the earlier predictions' query-mean logits.
            return_sampling: also return each layer's attended sets and distributions.
        """
        if len(multi_scale) != NUM_LEVELS:
            raise ValueError(f"expected {NUM_LEVELS} multi-scale maps, got {len(multi_scale)}")
        B = mask_features.shape[0]
        Q, C = self.num_queries, self.hidden_dim

        levels: list[LevelTokens] = []
        level_features, sizes = [], []
        for i, x in enumerate(multi_scale):
            h, w = x.shape[-2:]
            sizes.append((h, w))
            # B x C x h x w -> B x hw x C: a view (no copy) of the channels-last maps of the paper-size
            # presets (ModelConfig.channels_last), contiguous for the gathers. The values are these
            # tokens + the level embedding, which the attention adds to its output (value_shift)
            # instead of to every token
            values = self.input_proj[i](x).flatten(2).transpose(1, 2).contiguous()
            # the keys' input, tokens + level embedding + position, once per level (not once per
            # layer); the position's y and x halves added as broadcasts, never built as a map
            pos_y, pos_x = sine_position_parts(h, w, C // 2, device=x.device)
            if torch.is_grad_enabled() and (values.requires_grad or self.level_embed.weight.requires_grad):
                # in training, one out-of-place sum: in-place adds to the halves would make backward
                # copy the map through as_strided
                pos = torch.cat((pos_y[:, None].expand(h, w, C // 2), pos_x[None].expand(h, w, C // 2)), dim=-1)
                keys = values + (pos.view(h * w, C).to(values.dtype) + self.level_embed.weight[i])
            else:
                keys = values + self.level_embed.weight[i]
                grid = keys.view(B, h, w, C)
                grid[..., : C // 2] += pos_y[:, None].to(keys.dtype)
                grid[..., C // 2 :] += pos_x[None].to(keys.dtype)
            levels.append(LevelTokens(values=values, keys=keys, level_embedding=self.level_embed.weight[i]))
            # mask features at this level's resolution, for the sampling distributions
            level_features.append(resize_bilinear(mask_features, (h, w)))

        query_pos = self.query_embed.weight[None].expand(B, Q, C)
        queries = self.query_feat.weight[None].expand(B, Q, C)
        text_tokens = text.tokens
        # text tokens use their initial embedding (detached) as position, as in the reference
        prompt = PromptContext(
            query_pos=query_pos,
            both_pos=torch.cat((query_pos, text_tokens.detach()), dim=1),  # B x (Q+L) x C
            both_padding=torch.cat((text.padding_mask.new_zeros(B, Q), text.padding_mask), dim=1),
        )

        if self.pre_self_attention:
            queries, text_tokens = prompt.self_attend(self.initial_self_attention_layer, queries, text_tokens)
            queries = self.initial_ffn_layer(queries)
        embedding = self._mask_embedding(queries)
        # the existence head's state (B x 1 x C), or an empty placeholder so the block signature is fixed
        cls_state = self.existence.initial(B) if self.existence is not None else queries.new_zeros(B, 0, C)

        aux_embeddings: list[Tensor] = []
        sampling: list[LayerSampling] = []
        for layer in range(self.num_layers):
            level = layer % NUM_LEVELS
            if return_aux:
                aux_embeddings.append(embedding)
            # B x Q x mask_dim . B x mask_dim x h x w -> B x Q x hw
            # the sampler detaches them: no graph to keep
            with torch.no_grad():
                logits = mask_logits(embedding, level_features[level], flat=True)
            selection: AttentionSelection = self.sampler(
                logits, layer, self.num_heads, generator=generator, return_probs=return_sampling
            )
            if return_sampling:
                sampling.append(
                    LayerSampling(
                        layer=layer,
                        size=sizes[level],
                        keep=selection.as_keep_mask(logits.shape[-1]),
                        probs=selection.probs,
                        temperature=selection.temperature,
                    )
                )
            attended = AttendedSet(keep=selection.keep, indices=selection.indices, valid=selection.valid)
            if attended.indices is not None and self.attention_impl == "dense":
                attended = AttendedSet(keep=selection.as_keep_mask(logits.shape[-1]))

            def block(queries: Tensor, text_tokens: Tensor, cls_state: Tensor, step=self.layer(layer),
                      tokens=levels[level], attended=attended):
                queries, text_tokens, cls_state = step(queries, text_tokens, cls_state, tokens, prompt, attended)
                return queries, text_tokens, cls_state, self._mask_embedding(queries)

            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # the attended sets were drawn above: recomputing the block is deterministic
                queries, text_tokens, cls_state, embedding = checkpoint(block, queries, text_tokens, cls_state, use_reentrant=False)
            else:
                queries, text_tokens, cls_state, embedding = block(queries, text_tokens, cls_state)

        # the query mean of e . F is (mean e) . F: one channel per earlier prediction. All in one
        # product with the final queries' embeddings, so that backward is one GEMM into F's
        # gradient, not one rank-1 outer product of F's size per earlier prediction
        embeddings = torch.cat([embedding] + [e.mean(1, keepdim=True) for e in aux_embeddings], dim=1)
        logits = mask_logits(embeddings, mask_features)
        # split, not slices: backward then puts the parts' gradients together in one tensor
        query_logits, *aux_logits = logits.split([Q] + [1] * len(aux_embeddings), dim=1)
        existence_logits = self.existence.logit(cls_state) if self.existence is not None else None
        return DecoderOutput(
            query_logits=query_logits, aux_logits=aux_logits, sampling=sampling, existence_logits=existence_logits
        )
