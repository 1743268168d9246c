"""Reading 2D images and binary masks from image files (PNG, JPEG, ... anything Pillow decodes).

The folder datasets, the predictor and the command line all read files through these two functions,
so that every unreadable file fails the same way: a :class:`DataError` that names the file, what was
expected and what was found.

- :func:`read_image`: any image -> (H, W, 3) uint8 RGB (grey images replicated to 3 channels);
  TIFF, NIfTI and DICOM files (one slice) go through :mod:`boltzformer.io.medical` and
  :func:`~boltzformer.io.windows.to_uint8` (CT windowed, 16-bit and float data stretched)
- :func:`read_mask`:  any image -> (H, W) bool, ``True`` where the 8-bit grey value is > 127

Pillow's decompression-bomb protection (``PIL.Image.MAX_IMAGE_PIXELS``) is left at its default; an
image over the limit raises :class:`DataError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from boltzformer.io.errors import DataError
from boltzformer.io.formats import MEDICAL_SUFFIXES
from boltzformer.io.medical import load_image
from boltzformer.io.pillow import open_converted as _open_converted
from boltzformer.io.windows import to_uint8

__all__ = ["DataError", "MASK_THRESHOLD", "read_image", "read_mask"]

# masks are stored as 8-bit grey, 0 = background, 255 = target; anything above the midpoint is target
MASK_THRESHOLD = 127




def _is_medical(path: Path) -> bool:
    if not path.is_file():
        return False
    if path.name.lower().endswith(MEDICAL_SUFFIXES):
        return True
    with open(path, "rb") as f:  # DICOM files often have no extension: "DICM" after a 128-byte preamble
        return path.suffix == "" and f.read(132)[128:] == b"DICM"


def _read_medical_as_rgb(path: Path, modality: str | None, window, prompt: str | None) -> np.ndarray:
    image = load_image(path, modality=modality)
    if image.is_volume and image.array.shape[0] != 1:
        raise DataError(
            f"image file {path} is a volume of {image.array.shape[0]} slices; read it with "
            "boltzformer.io.medical.load_image and feed its slices (boltzformer.io.windows.volume_slices)"
        )
    grey_or_rgb = to_uint8(image, window=window, prompt=prompt)
    if image.is_volume:
        grey_or_rgb = grey_or_rgb[0]
    return grey_or_rgb if grey_or_rgb.ndim == 3 else np.repeat(grey_or_rgb[..., None], 3, axis=-1)


def read_image(
    path: str | os.PathLike,
    *,
    modality: str | None = None,
    window: str | tuple[float, float] | None = None,
    prompt: str | None = None,
) -> np.ndarray:
    """Read an image file as RGB.

    Args:
        path: an image file Pillow can decode; grey, palette and RGBA images are converted to RGB
            (grey replicated to 3 channels, alpha dropped). TIFF (8/16-bit, float), NIfTI and DICOM
            files holding one slice are read with :func:`boltzformer.io.medical.load_image` and
            brought to 8 bits by :func:`boltzformer.io.windows.to_uint8` (8-bit data unchanged).
        modality, window, prompt: passed to ``to_uint8`` for those files ("CT" windows by the prompt's
            site); 8-bit PNG/JPEG files ignore them.

    Returns:
        (H, W, 3) uint8 array, RGB.

    Raises:
        DataError: the file is missing, not a file, or not a decodable image, or a volume of several
            slices; the message names ``path``.

    Example:
        >>> path = "shared/data/lidc_lung_nodule/images/LIDC-IDRI-0001_nodule000_slice000.png"
        >>> img = read_image(path)  # doctest: +SKIP
        >>> img.shape, img.dtype  # doctest: +SKIP
        ((512, 512, 3), dtype('uint8'))
    """
    if _is_medical(Path(path)):
        return _read_medical_as_rgb(Path(path), modality, window, prompt)
    img = _open_converted(path, "RGB", "image")
    arr = np.asarray(img, dtype=np.uint8)
    assert arr.ndim == 3 and arr.shape[2] == 3, arr.shape
    return arr


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a binary mask file.

    Args:
        path: an image file; it is converted to 8-bit grey and thresholded at > 127
            (0 = background, 255 = target).

    Returns:
        (H, W) bool array, ``True`` on the target.

    Raises:
        DataError: the file is missing, not a file, or not a decodable image; the message names ``path``.
    """
    img = _open_converted(path, "L", "mask")
    return np.asarray(img, dtype=np.uint8) > MASK_THRESHOLD
