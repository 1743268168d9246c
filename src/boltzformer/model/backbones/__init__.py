"""Image encoders: (B, 3, H, W) normalised images -> {"res2".."res5"} maps at strides 4-32.

Every backbone sets ``out_channels``: the channels of res2..res5, in that order.
"""

from boltzformer.model.backbones.tiny import TinyBackbone

__all__ = ["TinyBackbone"]
