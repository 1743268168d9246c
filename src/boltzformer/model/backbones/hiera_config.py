"""Settings of SAM2's Hiera image encoder (:mod:`.hiera`): :class:`HieraConfig` and the presets
``HIERA_S`` and ``HIERA_BP`` (BoltzFormer hiera-s / hiera-bp, SAM2 S / B+)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FPN_INTERP_MODES", "FUSE_TYPES", "HIERA_BP", "HIERA_S", "HieraConfig"]

FPN_INTERP_MODES = ("nearest", "bilinear", "bicubic")
FUSE_TYPES = ("sum", "avg")


@dataclass(frozen=True)
class HieraConfig:
    """Sizes of the Hiera trunk and its FPN neck; the defaults are SAM2 Hiera-S (``HIERA_S``).

    Blocks are numbered over the whole trunk (0 .. sum(stages) - 1). Like SAM2, the window size of
    a block lags by one block: the first block of a stage uses the previous stage's window.
    """

    # trunk
    embed_dim: int = 96  # channels of stage 1 (stride 4)
    num_heads: int = 1  # attention heads of stage 1
    stages: tuple[int, ...] = (1, 2, 11, 2)  # blocks per stage
    global_att_blocks: tuple[int, ...] = (7, 10, 13)  # blocks that attend over the whole map
    window_spec: tuple[int, ...] = (8, 4, 14, 7)  # attention window side per stage, in tokens
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)  # background pos-embed grid
    q_pool: int = 3  # number of stage transitions that pool the queries (downsample)
    q_stride: tuple[int, int] = (2, 2)  # query max-pool kernel and stride (square)
    mlp_ratio: float = 4.0  # MLP hidden width / block width
    dim_mul: float = 2.0  # channel factor at each stage transition
    head_mul: float = 2.0  # head factor at each stage transition
    drop_path_rate: float = 0.0  # stochastic depth, rising linearly to this over the blocks
    # neck
    d_model: int = 256  # channels of every output level
    backbone_channel_list: tuple[int, ...] | None = None  # trunk channels, coarsest first (None: derived)
    fpn_top_down_levels: tuple[int, ...] = (2, 3)  # levels (0 = finest) that get the top-down path
    fpn_interp_model: str = "nearest"  # upsampling of the top-down path
    fuse_type: str = "sum"  # lateral + top-down: "sum" or "avg"
    scalp: int = 0  # coarsest levels dropped from the output

    def __post_init__(self) -> None:
        for name in ("stages", "global_att_blocks", "window_spec", "window_pos_embed_bkg_spatial_size",
                     "q_stride", "fpn_top_down_levels", "backbone_channel_list"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(int(v) for v in value))
        n = len(self.stages)
        if n < 1 or any(s < 1 for s in self.stages):
            raise ValueError(f"stages must be a non-empty list of positive block counts, got {self.stages}")
        if len(self.window_spec) != n:
            raise ValueError(f"window_spec needs one window per stage ({n}), got {self.window_spec}")
        if not 0 <= self.q_pool <= n - 1:
            raise ValueError(f"q_pool must be in [0, {n - 1}] (stage transitions), got {self.q_pool}")
        if len(self.q_stride) != 2 or self.q_stride[0] != self.q_stride[1] or self.q_stride[0] < 1:
            raise ValueError(f"q_stride must be two equal positive ints, got {self.q_stride}")
        if len(self.window_pos_embed_bkg_spatial_size) != 2:
            raise ValueError(
                f"window_pos_embed_bkg_spatial_size must be (h, w), got {self.window_pos_embed_bkg_spatial_size}"
            )
        if self.window_spec[0] < 1:
            raise ValueError(f"window_spec[0] sizes the window position table and must be >= 1, got {self.window_spec}")
        depth = sum(self.stages)
        bad = [b for b in self.global_att_blocks if not 0 <= b < depth]
        if bad:
            raise ValueError(f"global_att_blocks must index blocks 0..{depth - 1}, got {self.global_att_blocks}")
        if self.fpn_interp_model not in FPN_INTERP_MODES:
            raise ValueError(f"fpn_interp_model must be one of {FPN_INTERP_MODES}, got {self.fpn_interp_model!r}")
        if self.fuse_type not in FUSE_TYPES:
            raise ValueError(f"fuse_type must be one of {FUSE_TYPES}, got {self.fuse_type!r}")
        if any(not 0 <= lvl < n for lvl in self.fpn_top_down_levels):
            raise ValueError(f"fpn_top_down_levels must be levels in 0..{n - 1}, got {self.fpn_top_down_levels}")
        if not 0 <= self.scalp < n:
            raise ValueError(f"scalp must be in [0, {n - 1}], got {self.scalp}")
        channels = self.trunk_channels[::-1]
        if self.backbone_channel_list is not None and self.backbone_channel_list != channels:
            raise ValueError(
                f"backbone_channel_list must equal the trunk's channels, coarsest first, {channels}; "
                f"got {self.backbone_channel_list}"
            )
        for dim, heads in zip(self.trunk_channels, self.stage_heads):
            if heads < 1 or dim % heads:
                raise ValueError(f"each stage's channels must divide by its heads, got {dim} channels, {heads} heads")

    @property
    def trunk_channels(self) -> tuple[int, ...]:
        """Channels of the trunk's stage outputs, finest (stride 4) first."""
        dims = [self.embed_dim]
        for _ in self.stages[1:]:
            dims.append(int(dims[-1] * self.dim_mul))
        return tuple(dims)

    @property
    def stage_heads(self) -> tuple[int, ...]:
        heads = [self.num_heads]
        for _ in self.stages[1:]:
            heads.append(int(heads[-1] * self.head_mul))
        return tuple(heads)


# SAM2 (2.0 and 2.1) sam2_hiera_s.yaml / sam2_hiera_b+.yaml, and BoltzFormer's configs/backbone/hiera*.yaml
HIERA_S = HieraConfig(
    embed_dim=96,
    num_heads=1,
    stages=(1, 2, 11, 2),
    global_att_blocks=(7, 10, 13),
    window_pos_embed_bkg_spatial_size=(7, 7),
    backbone_channel_list=(768, 384, 192, 96),
)
HIERA_BP = HieraConfig(
    embed_dim=112,
    num_heads=2,
    stages=(2, 3, 16, 3),
    global_att_blocks=(12, 16, 20),
    window_pos_embed_bkg_spatial_size=(14, 14),
    backbone_channel_list=(896, 448, 224, 112),
)
