"""FocalNet (focal modulation networks), configured the way X-Decoder and BoltzFormer use it.

FocalNet (Yang et al., "Focal Modulation Networks", NeurIPS 2022) replaces self-attention with
*focal modulation*: a stack of depthwise convolutions with growing kernels gathers context at
several ranges, plus one global average. Gates computed from each token mix these levels. The
result modulates a per-token query (``q * h(context)``). Four stages at strides 4, 8, 16 and 32
give BoltzFormer's "res2".."res5" maps. ``FOCAL_L`` is the FocalNet-L of X-Decoder/SEEM:
embed 192, depths 2-2-18-2, 4 focal levels with windows of 3 (kernels 3, 5, 7, 9), overlapping
conv embeddings, post-LN blocks, layerscale and a normalised modulator.

Written in plain PyTorch from a reading of the authors' code, which it follows step by step:
microsoft/BoltzFormer ``modeling/backbone/focal.py`` (read at commit 7626806; ``FocalModulation``,
``FocalModulationBlock``, ``BasicLayer``, ``PatchEmbed``, ``FocalNet``, ``D2FocalNet``). This is
X-Decoder's FocalNet as BoltzFormer carries it. The settings come from ``configs/backbone/d2focal.yaml``.
The details a key layout cannot show follow that file:

- modulation: ``f`` (Linear) -> q, ctx, gates; ``ctx <- GELU(dwconv_l(ctx))`` level by level, each
  level added to the context weighted by its gate; then ``GELU(mean_HW(last ctx))`` weighted by the
  last gate; the sum divided by ``levels + 1`` (``normalize_modulator``, their
  ``scaling_modulator``); ``q * h(ctx_all)`` (1x1 conv); an optional LayerNorm; ``proj``.
- post-LN block: ``x = x + dp(gamma_1 * norm1(mod(x)))``, then ``x = x + dp(gamma_2 * norm2(mlp(x)))``.
  Pre-LN uses ``norm1``/``norm2`` before ``mod``/``mlp``.
- The layerscale starts at 1e-4. The official stage never passes its value down, so that default
  always applies. Stochastic depth grows linearly from 0 to ``drop_path_rate`` over all blocks.
- the stem (7x7, stride 4, padding 2) and the downsamplers (3x3, stride 2, padding 1) first pad the
  right and bottom edges with zeros, up to a multiple of the patch size (4 and 2). Each has a
  LayerNorm. The output of stage i goes through its own LayerNorm ``norm{i}``, taken before that
  stage's downsampler.
- Weight init: ``FocalNet.init_weights`` (Linear trunc-normal std 0.02 with zero bias, LayerNorm 1/0,
  convs left at PyTorch's default).

Parameter and module names equal the official ones, so the ``backbone.*`` entries of BoltzFormer
focal-l and X-Decoder Focal-L checkpoints load strictly (see :func:`xdecoder_state_dict_to_backbone`).
Internally the token maps stay channels-last, (B, H, W, C). The official code carries (B, H*W, C)
and views it as (B, H, W, C). The computation is the same. The settings and the preset are in
:mod:`.focalnet_config` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from boltzformer.model.backbones.focalnet_config import FOCAL_L, FocalNetConfig

__all__ = ["FOCAL_L", "FocalNetBackbone", "FocalNetConfig", "xdecoder_state_dict_to_backbone"]


class _DropPath(nn.Module):
    """Stochastic depth: while training, zero a sample's whole branch with probability ``p`` and rescale."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class _PatchEmbed(nn.Module):
    """Stem (``is_stem``) or downsampler: pad to a multiple of the patch, conv, LayerNorm.

    Takes (B, C_in, H, W) and returns the channels-last map (B, H', W', C_out).
    """

    def __init__(
        self, *, in_chans: int, embed_dim: int, patch_size: int, use_conv_embed: bool, is_stem: bool, norm: bool
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        if use_conv_embed:
            kernel, stride, padding = (7, 4, 2) if is_stem else (3, 2, 1)
        else:
            kernel, stride, padding = patch_size, patch_size, 0
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        p = self.patch_size
        if H % p or W % p:  # zeros on the right and bottom only, as the official PatchEmbed
            x = F.pad(x, (0, (-W) % p, 0, (-H) % p))
        x = self.proj(x).permute(0, 2, 3, 1)  # B x C x H' x W' -> B x H' x W' x C
        return x if self.norm is None else self.norm(x)


class _Mlp(nn.Module):
    """Linear -> GELU -> dropout -> Linear -> dropout, on the last dimension."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class _FocalModulation(nn.Module):
    """``proj(q * h(sum_l gate_l * ctx_l + gate_L * global))`` on a (B, H, W, C) map."""

    def __init__(
        self,
        *,
        dim: int,
        focal_level: int,
        focal_window: int,
        focal_factor: int,
        use_postln_in_modulation: bool,
        normalize_modulator: bool,
        proj_drop: float,
    ) -> None:
        super().__init__()
        self.focal_level = focal_level
        self.normalize_modulator = normalize_modulator
        self.f = nn.Linear(dim, 2 * dim + focal_level + 1)  # query, context, one gate per level + global
        self.h = nn.Conv2d(dim, dim, kernel_size=1)
        self.act = nn.GELU()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.focal_layers = nn.ModuleList()
        for k in range(focal_level):
            kernel = focal_factor * k + focal_window
            self.focal_layers.append(
                nn.Sequential(
                    nn.Conv2d(dim, dim, kernel_size=kernel, padding=kernel // 2, groups=dim, bias=False),
                    nn.GELU(),
                )
            )
        self.ln = nn.LayerNorm(dim) if use_postln_in_modulation else None

    def forward(self, x: Tensor) -> Tensor:
        C = x.shape[-1]  # x: B x H x W x C
        L = self.focal_level
        # B x H x W x C -> B x H x W x (2C + L + 1) -> B x (2C + L + 1) x H x W
        x = self.f(x).permute(0, 3, 1, 2)
        q, ctx, gates = torch.split(x, (C, C, L + 1), dim=1)

        ctx_all = 0
        for level, layer in enumerate(self.focal_layers):
            ctx = layer(ctx)  # each level convolves the previous level's context
            ctx_all = ctx_all + ctx * gates[:, level : level + 1]
        ctx_global = self.act(ctx.mean(2, keepdim=True).mean(3, keepdim=True))  # B x C x 1 x 1, last level
        ctx_all = ctx_all + ctx_global * gates[:, L:]
        if self.normalize_modulator:
            ctx_all = ctx_all / (L + 1)

        out = (q * self.h(ctx_all)).permute(0, 2, 3, 1)  # B x C x H x W -> B x H x W x C
        if self.ln is not None:
            out = self.ln(out)
        return self.proj_drop(self.proj(out))


class _FocalBlock(nn.Module):
    """Focal modulation and MLP, each a residual branch with layerscale and stochastic depth."""

    def __init__(self, *, dim: int, config: FocalNetConfig, stage: int, drop_path: float) -> None:
        super().__init__()
        self.use_postln = config.use_postln
        self.norm1 = nn.LayerNorm(dim)
        self.modulation = _FocalModulation(
            dim=dim,
            focal_level=config.focal_levels[stage],
            focal_window=config.focal_windows[stage],
            focal_factor=config.focal_factor,
            use_postln_in_modulation=config.use_postln_in_modulation,
            normalize_modulator=config.normalize_modulator,
            proj_drop=config.drop_rate,
        )
        self.drop_path = _DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * config.mlp_ratio), config.drop_rate)
        if config.use_layerscale:
            self.gamma_1 = nn.Parameter(torch.full((dim,), config.layerscale_value))
            self.gamma_2 = nn.Parameter(torch.full((dim,), config.layerscale_value))
        else:
            self.gamma_1 = self.gamma_2 = 1.0

    def forward(self, x: Tensor) -> Tensor:
        # x: B x H x W x C throughout
        if self.use_postln:
            x = x + self.drop_path(self.gamma_1 * self.norm1(self.modulation(x)))
            x = x + self.drop_path(self.gamma_2 * self.norm2(self.mlp(x)))
        else:
            x = x + self.drop_path(self.gamma_1 * self.modulation(self.norm1(x)))
            x = x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))
        return x


class _Stage(nn.Module):
    """A stage's blocks, then (except for the last stage) a stride-2 downsampler to twice the channels."""

    def __init__(
        self, *, dim: int, config: FocalNetConfig, stage: int, drop_paths: list[float], downsample: bool
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            _FocalBlock(dim=dim, config=config, stage=stage, drop_path=p) for p in drop_paths
        )
        self.downsample = (
            _PatchEmbed(
                in_chans=dim, embed_dim=2 * dim, patch_size=2, use_conv_embed=config.use_conv_embed,
                is_stem=False, norm=True,
            )
            if downsample
            else None
        )

    def forward(self, x: Tensor, *, use_checkpoint: bool = False) -> tuple[Tensor, Tensor]:
        """(B, H, W, C) -> (stage output (B, H, W, C), input of the next stage (B, H/2, W/2, 2C))."""
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if use_checkpoint else block(x)
        if self.downsample is None:
            return x, x
        return x, self.downsample(x.permute(0, 3, 1, 2))  # B x H x W x C -> B x C x H x W


class FocalNetBackbone(nn.Module):
    """FocalNet image encoder: (B, 3, H, W) normalised images -> {"res2".."res5"}.

    Args:
        config: sizes and switches; ``FOCAL_L`` for the X-Decoder / BoltzFormer FocalNet-L.

    Attributes:
        out_channels: channels of the returned maps, in res2..res5 order ((192, 384, 768, 1536) for L).
        gradient_checkpointing: recompute each block in the backward pass while training (saves memory).

    Raises:
        TypeError: if ``config`` is not a :class:`FocalNetConfig` (the config itself checks its values).

    Example:
        >>> from dataclasses import replace
        >>> net = FocalNetBackbone(replace(FOCAL_L, embed_dim=24, depths=(1, 1, 2, 1)))
        >>> {k: tuple(v.shape) for k, v in net(torch.randn(1, 3, 64, 96)).items()}["res5"]
        (1, 192, 2, 3)
    """

    def __init__(self, config: FocalNetConfig = FOCAL_L) -> None:
        super().__init__()
        if not isinstance(config, FocalNetConfig):
            raise TypeError(f"config must be a FocalNetConfig, got {type(config).__name__}")
        self.config = config
        self.gradient_checkpointing = False
        dims = config.num_features
        self.out_channels = tuple(dims[i] for i in config.out_indices)
        self.out_indices = tuple(config.out_indices)

        self.patch_embed = _PatchEmbed(
            in_chans=config.in_chans, embed_dim=config.embed_dim, patch_size=config.patch_size,
            use_conv_embed=config.use_conv_embed, is_stem=True, norm=config.patch_norm,
        )
        self.pos_drop = nn.Dropout(config.drop_rate)

        # stochastic depth rates, linear from 0 to drop_path_rate over all blocks (plain floats, so
        # that the model can be built on the meta device)
        n = sum(config.depths)
        rates = [config.drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        starts = [sum(config.depths[:i]) for i in range(len(config.depths))]
        self.layers = nn.ModuleList(
            _Stage(
                dim=dims[i], config=config, stage=i, drop_paths=rates[starts[i] : starts[i] + depth],
                downsample=i < len(config.depths) - 1,
            )
            for i, depth in enumerate(config.depths)
        )
        for i in config.out_indices:  # one output LayerNorm per returned stage: norm0..norm3
            self.add_module(f"norm{i}", nn.LayerNorm(dims[i]))
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """
        Args:
            x: (B, in_chans, H, W) normalised images. Any H, W works; multiples of 32 give maps of
                exactly H/s x W/s. Otherwise the edges are zero-padded at every stride, as in the
                official code, and the sizes round up.

        Returns:
            ``{"res{i+2}": (B, embed_dim * 2**i, H / 2**(i+2), W / 2**(i+2))}`` for i in
            ``out_indices``, each after its output LayerNorm.

        Raises:
            ValueError: if ``x`` is not (B, in_chans, H, W).
        """
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(f"x must be (B, {self.config.in_chans}, H, W), got {tuple(x.shape)}")
        use_checkpoint = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        x = self.pos_drop(self.patch_embed(x))  # B x 3 x H x W -> B x H/4 x W/4 x C
        outs = {}
        for i, stage in enumerate(self.layers):
            y, x = stage(x, use_checkpoint=use_checkpoint)
            if i in self.out_indices:
                y = getattr(self, f"norm{i}")(y)
                outs[f"res{i + 2}"] = y.permute(0, 3, 1, 2).contiguous()  # B x H x W x C -> B x C x H x W
        return outs


def _init_weights(m: nn.Module) -> None:
    """The official ``FocalNet.init_weights``: Linear trunc-normal(0.02) with zero bias, LayerNorm 1/0."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def xdecoder_state_dict_to_backbone(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The FocalNet weights of an X-Decoder / SEEM / BoltzFormer checkpoint, keyed for :class:`FocalNetBackbone`.

    Keeps the ``backbone.*`` entries and removes that prefix. A leading ``model.`` (as some saved
    checkpoints have) is removed first. All other entries are dropped. The values are not copied.

    Args:
        state_dict: a flat ``{name: tensor}`` dict, e.g. ``torch.load(path, weights_only=True)``
            (unwrap a ``"state_dict"`` / ``"model"`` entry first).

    Raises:
        TypeError: if ``state_dict`` is not a mapping.
        ValueError: if it has no ``backbone.*`` entries, or names a backbone key twice (with and
            without ``model.``).
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        name = key.removeprefix("model.")
        if not name.startswith("backbone."):
            continue
        name = name.removeprefix("backbone.")
        if name in out:
            raise ValueError(f"state_dict names backbone key {name!r} twice (with and without the 'model.' prefix)")
        out[name] = value
    if not out:
        first = list(state_dict)[:5]
        raise ValueError(
            f"state_dict has no 'backbone.*' keys (with or without a 'model.' prefix); its first keys are {first}"
        )
    return out
