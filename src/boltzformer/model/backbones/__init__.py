"""Image encoders: (B, 3, H, W) normalised images -> {"res2".."res5"} maps at strides 4-32.

Every backbone sets ``out_channels``: the channels of res2..res5, in that order.

- ``tiny``: a small ConvNeXt-style network for CPUs and the synthetic benchmark;
- ``tinyvit``: LiteMedSAM's TinyViT + neck (stride 4) and a parameter-free pyramid, loads ``lite_medsam.pth``;
- ``hiera``: SAM2's Hiera trunk + FPN neck (S, B+), loads SAM2 checkpoints;
- ``focalnet``: FocalNet-L as X-Decoder configures it, loads X-Decoder checkpoints.
"""

from boltzformer.model.backbones.focalnet import FOCAL_L, FocalNetBackbone, FocalNetConfig
from boltzformer.model.backbones.hiera import HIERA_BP, HIERA_S, HieraBackbone, HieraConfig
from boltzformer.model.backbones.tiny import TinyBackbone
from boltzformer.model.backbones.tinyvit import LITE_MEDSAM, TinyViTBackbone, TinyViTConfig

__all__ = ["FOCAL_L", "HIERA_BP", "HIERA_S", "FocalNetBackbone", "FocalNetConfig", "HieraBackbone", "HieraConfig", "LITE_MEDSAM", "TinyBackbone",
           "TinyViTBackbone", "TinyViTConfig"]
