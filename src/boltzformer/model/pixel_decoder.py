"""Pixel decoder: Mask2Former's transformer-encoder FPN.

Transformer encoder layers run on the stride-32 map, then a top-down FPN (1x1 lateral convs and
3x3 output convs with GroupNorm) brings it back to stride 4. Outputs the per-pixel "semantic map"
(mask features, stride 4) and the maps at strides 32, 16 and 8 that the decoder's
cross-attention layers cycle over. Parameter names follow the reference code
(``adapter_1..3``, ``layer_1..4``, ``input_proj``, ``transformer.encoder.layers``,
``mask_features``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from boltzformer.model.attention import MultiHeadAttention
from boltzformer.model.layers import ConvNorm
from boltzformer.model.position import sine_position_encoding

__all__ = ["PixelDecoder", "PixelDecoderOutput"]


class _EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer; position added to queries and keys."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        for lin in (self.linear1, self.linear2):
            nn.init.xavier_uniform_(lin.weight)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        qk = x + pos
        x = self.norm1(x + self.self_attn(qk, qk, x))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class _Encoder(nn.Module):
    def __init__(self, num_layers: int, d_model: int, num_heads: int, dim_ff: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            _EncoderLayer(d_model, num_heads, dim_ff) for _ in range(num_layers)
        )

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x, pos)
        return x


class _Transformer(nn.Module):
    """Holds the encoder under ``transformer.encoder`` as in the reference layout."""

    def __init__(self, num_layers: int, d_model: int, num_heads: int, dim_ff: int) -> None:
        super().__init__()
        self.encoder = _Encoder(num_layers, d_model, num_heads, dim_ff)


@dataclass
class PixelDecoderOutput:
    """``mask_features``: (B, mask_dim, H/4, W/4); ``multi_scale``: 3 maps (B, conv_dim, h, w)
    at strides 32, 16, 8 in that order (the order the decoder layers cycle over)."""

    mask_features: Tensor
    multi_scale: list[Tensor]


class PixelDecoder(nn.Module):
    """Transformer-encoder FPN over backbone maps at strides 4, 8, 16, 32.

    Args:
        in_channels: channels of the backbone maps at strides 4, 8, 16, 32.
        conv_dim: channels of the FPN and of the multi-scale outputs.
        mask_dim: channels of the mask features.
        encoder_layers, encoder_heads, encoder_ffn_dim: the transformer encoder on stride 32.
        norm_groups: GroupNorm groups.
    """

    def __init__(
        self,
        *,
        in_channels: tuple[int, int, int, int],
        conv_dim: int,
        mask_dim: int,
        encoder_layers: int,
        encoder_heads: int,
        encoder_ffn_dim: int,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        if conv_dim % norm_groups:
            raise ValueError(f"conv_dim ({conv_dim}) must be divisible by norm_groups ({norm_groups})")
        if conv_dim % 2:
            raise ValueError(f"conv_dim must be even for the sine position encoding, got {conv_dim}")
        self.conv_dim = conv_dim
        self.mask_dim = mask_dim
        c2, c3, c4, c5 = in_channels
        self.input_proj = nn.Conv2d(c5, conv_dim, kernel_size=1)
        nn.init.kaiming_uniform_(self.input_proj.weight, a=1)
        nn.init.zeros_(self.input_proj.bias)
        self.transformer = _Transformer(encoder_layers, conv_dim, encoder_heads, encoder_ffn_dim)

        def gn() -> nn.GroupNorm:
            return nn.GroupNorm(norm_groups, conv_dim)

        # lateral (adapter_i) and output (layer_i) convs for res2 (i=1) .. res4 (i=3); res5 has
        # only an output conv (layer_4) after the transformer
        for i, c in enumerate((c2, c3, c4), start=1):
            setattr(self, f"adapter_{i}", ConvNorm(c, conv_dim, 1, norm=gn(), bias=False))
            setattr(
                self, f"layer_{i}", ConvNorm(conv_dim, conv_dim, 3, norm=gn(), activation=F.relu_, bias=False)
            )
        self.layer_4 = ConvNorm(conv_dim, conv_dim, 3, norm=gn(), activation=F.relu_, bias=False)
        self.mask_features = ConvNorm(conv_dim, mask_dim, 3)

    def forward(self, features: dict[str, Tensor]) -> PixelDecoderOutput:
        """``features``: {"res2": (B, c2, H/4, W/4), ..., "res5": (B, c5, H/32, W/32)}."""
        x5 = self.input_proj(features["res5"])
        B, C, h, w = x5.shape
        pos = sine_position_encoding(h, w, C // 2, device=x5.device, dtype=x5.dtype)
        # B x C x h x w -> B x hw x C
        tokens = self.transformer.encoder(
            x5.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2)
        )
        y = self.layer_4(tokens.transpose(1, 2).reshape(B, C, h, w))
        multi_scale = [y]
        for i, name in ((3, "res4"), (2, "res3"), (1, "res2")):
            lateral = getattr(self, f"adapter_{i}")(features[name])
            # in place (ReLU above too): the FPN's stride-4 maps are 128 MB each at 1024 x 1024, and
            # neither GroupNorm's nor the sum's backward needs the overwritten tensor
            y = lateral.add_(F.interpolate(y, size=lateral.shape[-2:], mode="nearest"))
            y = getattr(self, f"layer_{i}")(y)
            if len(multi_scale) < 3:
                multi_scale.append(y)
        return PixelDecoderOutput(mask_features=self.mask_features(y), multi_scale=multi_scale)
