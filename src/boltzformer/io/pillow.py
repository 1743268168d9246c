"""Opening a 2D image file with Pillow: one place where every unreadable file (missing, not a file,
truncated, a decompression bomb) becomes a :class:`~boltzformer.io.errors.DataError` naming it, and
EXIF orientation is applied. Used by :mod:`.images` (PNG/JPEG) and :mod:`.formats` (8-bit TIFF)."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageOps

from boltzformer.io.errors import DataError

__all__ = ["open_converted"]


def open_converted(path: str | os.PathLike, mode: str | None, what: str) -> Image.Image:
    """Open ``path`` with Pillow and convert it to ``mode`` (``None``: keep its mode), decoding the whole file.

    Raises:
        DataError: the path does not exist, is not a file, or Pillow cannot decode it (including
            truncated files and decompression bombs).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} file {path} does not exist")
    if not path.is_file():
        raise DataError(f"{what} file {path} is not a file (expected a PNG/JPEG image)")
    try:
        with Image.open(path) as img:
            # convert() / load() force a full decode, so truncated or corrupt data fails here, not later;
            # exif_transpose: a photo a viewer shows rotated (EXIF Orientation) is read as the viewer shows it
            img.load()
            img = ImageOps.exif_transpose(img)
            return img if mode is None else img.convert(mode)
    except Image.DecompressionBombError as e:
        raise DataError(
            f"{what} file {path} is too large to decode safely "
            f"(Pillow's limit PIL.Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS}): {e}"
        ) from e
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, zlib/struct errors
        raise DataError(
            f"{what} file {path} could not be read as an image "
            f"(expected a PNG/JPEG image; Pillow said: {type(e).__name__}: {e})"
        ) from e
