"""Settings of FocalNet as X-Decoder and BoltzFormer configure it (:mod:`.focalnet`):
:class:`FocalNetConfig` and the preset ``FOCAL_L`` (BoltzFormer focal-l)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FOCAL_L", "FocalNetConfig"]


@dataclass(frozen=True)
class FocalNetConfig:
    """Sizes and switches of a FocalNet. The defaults are FocalNet-L as X-Decoder/BoltzFormer use it.

    The official ``D2FocalNet`` argument name is given where ours differs.
    """

    embed_dim: int = 192  # channels of stage 0; stage i has embed_dim * 2**i
    depths: tuple[int, ...] = (2, 2, 18, 2)  # blocks per stage (four stages: res2..res5)
    focal_levels: tuple[int, ...] = (4, 4, 4, 4)  # depthwise-conv levels per stage
    focal_windows: tuple[int, ...] = (3, 3, 3, 3)  # kernel of the first level; level k: window + factor*k
    focal_factor: int = 2  # kernel growth per level
    mlp_ratio: float = 4.0  # MLP hidden width / channels
    patch_size: int = 4  # stride of the stem (with use_conv_embed the stem is 7x7/4, so it must be 4)
    in_chans: int = 3
    patch_norm: bool = True  # LayerNorm after the stem
    use_conv_embed: bool = True  # overlapping convs: stem 7x7/4, downsamplers 3x3/2 (else k = stride)
    use_postln: bool = True  # post-LN blocks (norm after modulation / MLP) instead of pre-LN
    use_postln_in_modulation: bool = False  # a LayerNorm (``modulation.ln``) before ``proj``
    normalize_modulator: bool = True  # divide the aggregated context by levels + 1 (``scaling_modulator``)
    use_layerscale: bool = True  # learned per-channel residual scales ``gamma_1``, ``gamma_2``
    layerscale_value: float = 1e-4  # their initial value
    drop_rate: float = 0.0  # dropout after the stem, in the MLPs and after ``proj``
    drop_path_rate: float = 0.3  # stochastic depth of the last block (linear from 0)
    out_indices: tuple[int, ...] = (0, 1, 2, 3)  # stages whose (normed) outputs are returned

    def __post_init__(self) -> None:
        n = len(self.depths)
        if n != 4:
            raise ValueError(f"depths needs 4 entries (stages res2..res5), got {self.depths}")
        if any(d < 1 for d in self.depths):
            raise ValueError(f"depths must be positive, got {self.depths}")
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be positive, got {self.embed_dim}")
        for name in ("focal_levels", "focal_windows"):
            value = getattr(self, name)
            if len(value) != n or any(v < 1 for v in value):
                raise ValueError(f"{name} needs {n} positive entries (one per stage), got {value}")
        if self.focal_factor < 0:
            raise ValueError(f"focal_factor must be >= 0, got {self.focal_factor}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        if self.patch_size < 1 or (self.use_conv_embed and self.patch_size != 4):
            raise ValueError(
                f"patch_size must be positive, and 4 with use_conv_embed (the stem is 7x7 with stride 4), "
                f"got {self.patch_size}"
            )
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if not self.out_indices or len(set(self.out_indices)) != len(self.out_indices) or any(
            not 0 <= i < n for i in self.out_indices
        ):
            raise ValueError(
                f"out_indices must be distinct stage indices in [0, {n}), at least one, got {self.out_indices}"
            )

    @property
    def num_features(self) -> tuple[int, ...]:
        """Channels of every stage."""
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


FOCAL_L = FocalNetConfig(
    embed_dim=192,
    depths=(2, 2, 18, 2),
    focal_levels=(4, 4, 4, 4),
    focal_windows=(3, 3, 3, 3),
    mlp_ratio=4.0,
    patch_size=4,
    use_conv_embed=True,
    use_postln=True,
    use_postln_in_modulation=False,
    normalize_modulator=True,
    use_layerscale=True,
    layerscale_value=1e-4,
    drop_rate=0.0,
    drop_path_rate=0.3,
    out_indices=(0, 1, 2, 3),
)
"""X-Decoder / SEEM / BoltzFormer FocalNet-L (``configs/backbone/d2focal.yaml``): 205,746,936 parameters."""
