"""SAM2's Hiera image encoder (trunk + FPN neck), the BoltzFormer hiera-s / hiera-bp backbone.

Hiera (Ryali et al., ICML 2023, arXiv 2306.00989) as SAM2 uses it (Ravi et al., arXiv 2408.00714):
a 7x7 stride-4 patch embedding; an absolute position embedding made of a bicubic-resized
background table plus a per-window table tiled over the map (Bolya et al., arXiv 2311.05613);
then four stages of pre-norm transformer blocks that attend inside non-overlapping windows (a few
blocks attend globally). The first block of stages 2-4 max-pools its queries 2x2, which halves the
map and doubles the channels and heads. The FPN neck projects the four stage outputs to
``d_model`` channels with 1x1 convs and adds the 2x-upsampled coarser level on the levels in
``fpn_top_down_levels``. BoltzFormer's ``HieraEncoder`` returns the neck outputs, finest first, as
res2..res5 (strides 4, 8, 16, 32, ``d_model`` channels each).

Parameter names and shapes are SAM2's ``image_encoder.*`` without the prefix (``trunk.*`` and
``neck.*``), so an official SAM2 checkpoint loads strictly after :func:`sam2_state_dict_to_backbone`.
The neck's sine position encoding has no parameters and BoltzFormer never reads it: it is not
computed here. The settings and presets are in :mod:`.hiera_config` (re-exported here).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from boltzformer.model.backbones.hiera_config import HIERA_BP, HIERA_S, HieraConfig
from boltzformer.model.layers import check_image_batch

__all__ = ["HIERA_BP", "HIERA_S", "HieraBackbone", "HieraConfig", "sam2_state_dict_to_backbone"]

SAM2_PREFIX = "image_encoder."


def sam2_state_dict_to_backbone(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The ``image_encoder.*`` entries of a SAM2 checkpoint, prefix removed (``trunk.*``, ``neck.*``).

    Args:
        state_dict: the dict a SAM2 ``.pt`` file holds under ``"model"``.

    Raises:
        ValueError: if no key starts with ``image_encoder.``.
    """
    out = {k[len(SAM2_PREFIX):]: v for k, v in state_dict.items() if k.startswith(SAM2_PREFIX)}
    if not out:
        hint = " (pass checkpoint['model'], not the whole checkpoint)" if "model" in state_dict else ""
        raise ValueError(f"state_dict has no '{SAM2_PREFIX}*' keys{hint}; first keys: {list(state_dict)[:5]}")
    return out


def _window_partition(x: Tensor, window: int) -> tuple[Tensor, tuple[int, int]]:
    """Zero-pad the map to multiples of ``window`` and cut it into windows.

    Returns the windows (B * nW, window, window, C) and the padded size (Hp, Wp).
    """
    B, H, W, C = x.shape
    pad_h, pad_w = (-H) % window, (-W) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    # B x Hp x Wp x C -> B x nH x w x nW x w x C -> (B * nH * nW) x w x w x C
    x = x.view(B, Hp // window, window, Wp // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, C), (Hp, Wp)


def _window_unpartition(windows: Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`_window_partition`: windows back to a (B, H, W, C) map, padding cut off."""
    Hp, Wp = padded
    H, W = size
    B = windows.shape[0] // ((Hp // window) * (Wp // window))
    # (B * nH * nW) x w x w x C -> B x nH x nW x w x w x C -> B x Hp x Wp x C
    x = windows.reshape(B, Hp // window, Wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    return x[:, :H, :W, :] if (Hp > H or Wp > W) else x


def _pool_nhwc(x: Tensor, pool: nn.Module) -> Tensor:
    # B x H x W x C -> B x C x H x W -> pool -> B x H' x W' x C
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: zero the residual branch of whole samples with probability ``rate``."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class _PatchEmbed(nn.Module):
    """7x7 stride-4 conv; (B, 3, H, W) -> (B, H/4, W/4, C)."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # B x C x H x W -> B x H x W x C


class _Mlp(nn.Module):
    """Linear -> GELU -> Linear, stored as ``layers.0`` / ``layers.1`` (SAM2's MLP)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, hidden), nn.Linear(hidden, dim)])

    def forward(self, x: Tensor) -> Tensor:
        return self.layers[1](F.gelu(self.layers[0](x)))


class _MultiScaleAttention(nn.Module):
    """Self-attention on (B, H, W, C) tokens; queries optionally max-pooled (stage transitions)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, _ = x.shape
        # B x H x W x C -> B x HW x 3 x heads x d -> 3 x (B x HW x heads x d)
        q, k, v = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).unbind(2)
        if self.q_pool is not None:
            # pool all heads together: B x H x W x (heads * d) -> B x H' x W' x (heads * d)
            q = _pool_nhwc(q.reshape(B, H, W, -1), self.q_pool)
            H, W = q.shape[1:3]
            q = q.reshape(B, H * W, self.num_heads, -1)
        # B x N x heads x d -> B x heads x N x d; scale 1 / sqrt(d)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        # B x heads x N' x d -> B x N' x heads x d -> B x H' x W' x (heads * d)
        out = out.transpose(1, 2).reshape(B, H, W, -1)
        return self.proj(out)


class _MultiScaleBlock(nn.Module):
    """Pre-norm Hiera block: (windowed) attention with optional query pooling, then an MLP."""

    def __init__(
        self,
        *,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float,
        window_size: int,
        q_stride: tuple[int, int] | None,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride) if q_stride else None
        self.attn = _MultiScaleAttention(dim, dim_out, num_heads, self.pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = _Mlp(dim_out, int(dim_out * mlp_ratio))
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        # x: B x H x W x C
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)  # projected from the normalised tokens
        if self.pool is not None:
            shortcut = _pool_nhwc(shortcut, self.pool)  # pooled like the queries
        window = self.window_size
        if window > 0:
            x, padded = _window_partition(x, window)  # (B * nW) x w x w x C
        x = self.attn(x)
        if window > 0:
            H, W = shortcut.shape[1:3]  # the output grid, pooled with the queries
            if self.q_stride:
                # the windows shrank with the queries
                window //= self.q_stride[0]
                padded = (H + (-H) % window, W + (-W) % window)
            x = _window_unpartition(x, window, padded, (H, W))
        x = shortcut + _drop_path(x, self.drop_path, self.training)
        return x + _drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class _Hiera(nn.Module):
    """The trunk: (B, 3, H, W) -> one (B, C_i, H / 2^(i+2), W / 2^(i+2)) map per stage, finest first."""

    def __init__(self, config: HieraConfig) -> None:
        super().__init__()
        c = config
        depth = sum(c.stages)
        self.stage_ends = [sum(c.stages[: i + 1]) - 1 for i in range(len(c.stages))]
        q_pool_blocks = [end + 1 for end in self.stage_ends[:-1]][: c.q_pool]
        self.patch_embed = _PatchEmbed(c.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.embed_dim, *c.window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, c.embed_dim, c.window_spec[0], c.window_spec[0]))
        # plain Python (not torch.linspace) so that the module can be built on the meta device
        rates = [c.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]

        self.blocks = nn.ModuleList()
        dim, heads, stage = c.embed_dim, c.num_heads, 0
        for i in range(depth):
            # the window lags by a block: read it before a stage transition moves `stage` on
            window = 0 if i in c.global_att_blocks else c.window_spec[stage]
            dim_out = dim
            if i - 1 in self.stage_ends:
                dim_out, heads, stage = int(dim * c.dim_mul), int(heads * c.head_mul), stage + 1
            q_stride = c.q_stride if i in q_pool_blocks else None
            if q_stride and window % q_stride[0]:
                raise ValueError(
                    f"window_spec: block {i} pools its queries by {q_stride}, so its window "
                    f"({window}) must divide by the stride; window_spec={c.window_spec}"
                )
            self.blocks.append(
                _MultiScaleBlock(dim=dim, dim_out=dim_out, num_heads=heads, mlp_ratio=c.mlp_ratio,
                                 window_size=window, q_stride=q_stride, drop_path=rates[i])
            )
            dim = dim_out

    def _pos_embed(self, h: int, w: int) -> Tensor:
        """Background table resized (bicubic) to h x w plus the window table tiled; 1 x h x w x C."""
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        ws_h, ws_w = self.pos_embed_window.shape[-2:]
        pos = pos + self.pos_embed_window.tile(1, 1, h // ws_h, w // ws_w)
        return pos.permute(0, 2, 3, 1)  # 1 x C x h x w -> 1 x h x w x C

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.patch_embed(x)  # B x H/4 x W/4 x C
        x = x + self._pos_embed(x.shape[1], x.shape[2])
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))  # B x H x W x C -> B x C x H x W
        return outputs


class _FpnNeck(nn.Module):
    """1x1 lateral convs to ``d_model`` and a top-down path on chosen levels (SAM2's FpnNeck).

    ``convs.0`` takes the coarsest trunk map, ``convs.{n-1}`` the finest. No output convs. The
    top-down path is upsampled in the input's dtype (SAM2 casts it to float32 first: the same in
    float32, and exact for "nearest" in any dtype).
    """

    def __init__(self, config: HieraConfig) -> None:
        super().__init__()
        channels = config.trunk_channels[::-1]  # coarsest first, as SAM2's backbone_channel_list
        self.convs = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(c, config.d_model, kernel_size=1))) for c in channels
        )
        self.top_down_levels = frozenset(config.fpn_top_down_levels)
        self.interp = config.fpn_interp_model
        self.fuse_type = config.fuse_type

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        """Trunk maps, finest first -> ``d_model``-channel maps, finest first."""
        n = len(self.convs) - 1
        align = None if self.interp == "nearest" else False
        out: list[Tensor] = []
        prev: Tensor | None = None
        for i in range(n, -1, -1):  # coarse to fine; level i is trunk stage i + 1
            lateral = self.convs[n - i](xs[i])
            if i in self.top_down_levels and prev is not None:
                prev = lateral + F.interpolate(prev, scale_factor=2.0, mode=self.interp, align_corners=align)
                if self.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = lateral
            out.append(prev)
        return out[::-1]


class HieraBackbone(nn.Module):
    """SAM2 Hiera trunk + FPN neck, as BoltzFormer's ``HieraEncoder`` uses it.

    Args:
        config: sizes; ``HIERA_S`` or ``HIERA_BP`` for the released models.

    Example:
        >>> backbone = HieraBackbone(HIERA_S)
        >>> backbone.load_state_dict(sam2_state_dict_to_backbone(ckpt["model"]))  # doctest: +SKIP
        >>> feats = backbone(torch.randn(1, 3, 1024, 1024))  # doctest: +SKIP
        >>> feats["res2"].shape  # doctest: +SKIP
        torch.Size([1, 256, 256, 256])
    """

    def __init__(self, config: HieraConfig) -> None:
        super().__init__()
        if not isinstance(config, HieraConfig):
            raise TypeError(f"config must be a HieraConfig, got {type(config).__name__}")
        self.config = config
        self.trunk = _Hiera(config)
        self.neck = _FpnNeck(config)
        num_levels = len(config.stages) - config.scalp
        self.out_channels = (config.d_model,) * num_levels
        # H and W must divide by the patch stride (4) times the query pooling, and give whole
        # position-embedding windows at stride 4: 32 for the SAM2 configs
        self.size_divisor = math.lcm(4 * config.q_stride[0] ** config.q_pool, 4 * config.window_spec[0])

    def _check_input(self, x: Tensor) -> None:
        check_image_batch(x, self.size_divisor)

    def forward_trunk(self, x: Tensor) -> list[Tensor]:
        """Trunk outputs (B, C_i, H_i, W_i) of every stage, finest (stride 4) first."""
        self._check_input(x)
        return self.trunk(x)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Normalised images (B, 3, H, W), H and W multiples of ``size_divisor`` (32 for S/B+).

        Returns:
            ``{"res2": (B, d_model, H/4, W/4), "res3": .../8, "res4": .../16, "res5": .../32}``:
            the neck outputs, finest first, minus the ``scalp`` coarsest.
        """
        features = self.neck(self.forward_trunk(x))
        if self.config.scalp:
            features = features[: -self.config.scalp]
        return {f"res{i + 2}": f for i, f in enumerate(features)}
