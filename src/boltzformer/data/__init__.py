"""Datasets: the built-in synthetic small-object benchmark and the folder format of ``shared/data``.

Every dataset yields the same sample, a dict:

- ``"image"``: float32 tensor (3, H, W), values 0-255 (grey images replicated to 3 channels)
- ``"mask"``:  float32 tensor (1, H, W), values 0 or 1
- ``"prompt"``: str, the text prompt naming the target
- ``"id"``:    str, a stable identifier of the sample
"""

from boltzformer.data.io import DataError, read_image, read_mask
from boltzformer.data.medical import MAX_VOXELS, MedicalImage, load_image, read_label, write_mask
from boltzformer.data.windows import WINDOWS, to_uint8, volume_slices, window_for_prompt

__all__ = [
    "DataError",
    "MAX_VOXELS",
    "MedicalImage",
    "WINDOWS",
    "load_image",
    "read_image",
    "read_label",
    "read_mask",
    "to_uint8",
    "volume_slices",
    "window_for_prompt",
    "write_mask",
]
