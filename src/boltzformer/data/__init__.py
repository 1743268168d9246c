"""Datasets: the built-in synthetic small-object benchmark and the folder format of ``shared/data``.

Every dataset yields the same sample, a dict:

- ``"image"``: float32 tensor (3, H, W), values 0-255 (grey images replicated to 3 channels)
- ``"mask"``:  float32 tensor (1, H, W), values 0 or 1
- ``"prompt"``: str, the text prompt naming the target
- ``"id"``:    str, a stable identifier of the sample

Files are read by :mod:`boltzformer.io`.
"""
