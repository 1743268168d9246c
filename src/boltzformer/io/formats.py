"""The file formats read by :func:`boltzformer.io.medical.load_image` and
:func:`boltzformer.io.masks.read_label`: suffixes, size limits, and one reader per format (Pillow,
TIFF, NIfTI) that returns the file's array as stored (DICOM: :mod:`boltzformer.io.dicom`).

The file-format libraries (nibabel, tifffile: the ``io`` extra) are imported when needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from boltzformer.io.errors import DataError
from boltzformer.io.pillow import open_converted as _open_converted

__all__ = ["MAX_VOXELS"]

# refuse volumes (NIfTI, TIFF stacks, DICOM series) with more voxels than this before allocating
# them; 2D images follow Pillow's PIL.Image.MAX_IMAGE_PIXELS (refused above twice that, as Pillow)
MAX_VOXELS = 2**31

_PILLOW = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_TIFF = (".tif", ".tiff")
_NIFTI = (".nii", ".nii.gz")
_DICOM = (".dcm", ".dicom")
#: the one list of what :func:`boltzformer.io.load_image` reads, by suffix: folder scanning
#: (``predict --input``), the app's upload filter and :func:`boltzformer.io.images.read_image` use it
IMAGE_SUFFIXES = _PILLOW + _TIFF + _NIFTI + _DICOM
#: the suffixes read by the medical readers (tifffile, nibabel, pydicom) rather than Pillow
MEDICAL_SUFFIXES = _TIFF + _NIFTI + _DICOM
_SUPPORTED = "PNG/JPEG/BMP, TIFF (.tif/.tiff), NIfTI (.nii/.nii.gz), DICOM (.dcm, or a folder of one series)"


def _nibabel():
    try:
        import nibabel
    except ImportError as e:  # pragma: no cover - nibabel is in the io extra
        raise ImportError("reading NIfTI needs nibabel: pip install -c constraints.txt 'boltzformer[io]'") from e
    return nibabel


def _tifffile():
    try:
        import tifffile
    except ImportError as e:  # pragma: no cover - tifffile is in the io extra
        raise ImportError("reading TIFF needs tifffile: pip install -c constraints.txt 'boltzformer[io]'") from e
    return tifffile


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def suffix_of(path: Path) -> str:
    """The lower-case suffix that chooses the reader (``".nii.gz"`` counts as one)."""
    return _suffix(path)


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM file by content ("DICM" after the 128-byte preamble), whatever its name."""
    return _is_dicom_file(path)


def _is_dicom_file(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def _normalise_modality(modality: str | None) -> str | None:
    if modality is None or not modality.strip():
        return None
    modality = modality.strip().upper()
    return "MR" if modality.startswith("MR") else modality


def _check_2d_size(path: Path, shape: tuple[int, ...], what: str) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and shape[0] * shape[1] > 2 * limit:
        raise DataError(
            f"{what} file {path} is {shape[0]}x{shape[1]} pixels, too large to decode safely "
            f"(over twice Pillow's limit PIL.Image.MAX_IMAGE_PIXELS={limit})"
        )


def _check_voxels(path: Path, shape: tuple[int, ...], what: str) -> None:
    if int(np.prod(shape, dtype=np.float64)) > MAX_VOXELS:
        raise DataError(
            f"{what} file {path} has shape {shape} = {int(np.prod(shape, dtype=np.float64))} voxels, over the "
            f"limit boltzformer.io.formats.MAX_VOXELS={MAX_VOXELS}; refusing to allocate it"
        )


# ---------------------------------------------------------------- readers, each -> arrays + meta


def _read_pillow(path: Path, what: str) -> tuple[np.ndarray, str]:
    """-> (H, W) or (H, W, 3) array as stored, and its dtype name; alpha and palettes -> RGB."""
    img = _open_converted(path, None, what)
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img)
    elif img.mode in ("1", "L", "LA"):
        arr = np.asarray(img.convert("L"), dtype=np.uint8)
    else:
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return arr, arr.dtype.name


def _read_tiff(path: Path, what: str) -> tuple[np.ndarray, str, str]:
    """-> (array, dtype name, kind): "grey" (H, W), "rgb" (H, W, 3) or "stack" (D, H, W)."""
    tifffile = _tifffile()
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise DataError(f"{what} file {path} holds no image")
            series = tif.series[0]
            dtype = np.dtype(series.dtype)
            # tifffile names the axes: Y, X, S (samples: RGB), I/Q/Z (pages); drop other length-1 axes
            kept = [(n, a) for n, a in zip(series.shape, series.axes) if n != 1 or a in "YX"]
            shape, axes = tuple(n for n, _ in kept), "".join(a for _, a in kept)
            if dtype.kind not in "biuf":
                raise DataError(f"{what} file {path} has {dtype} pixels; expected integer or float")
            if "S" in axes and (len(shape) != 3 or shape[axes.index("S")] not in (3, 4)):
                raise DataError(
                    f"{what} file {path} has shape {tuple(series.shape)} (axes {series.axes}); expected grey, "
                    "RGB / RGBA, or a stack of grey pages"
                )
            if len(shape) not in (2, 3):
                raise DataError(f"{what} file {path} has shape {tuple(series.shape)} (axes {series.axes}); expected 2 or 3 dimensions")
            kind = "rgb" if "S" in axes else ("grey" if len(shape) == 2 else "stack")
            if kind == "stack":
                _check_voxels(path, shape, what)
            else:
                _check_2d_size(path, tuple(n for n, a in zip(shape, axes) if a != "S"), what)
            arr = series.asarray().reshape(shape)
    except DataError:
        raise
    except Exception as e:  # tifffile raises TiffFileError, ValueError, OSError, struct errors, ...
        raise DataError(f"{what} file {path} could not be read as a TIFF (tifffile said: {type(e).__name__}: {e})") from e
    if kind == "rgb":
        arr = np.moveaxis(arr, axes.index("S"), -1)[..., :3]  # planar or interleaved -> (H, W, 3), alpha dropped
    return arr, arr.dtype.name, kind


def _read_nifti(path: Path, what: str) -> tuple[np.ndarray, Any, tuple[int, ...]]:
    """-> (X, Y, Z) float32 (scaling applied; 2D files get Z = 1), the image, the file's shape."""
    nib = _nibabel()
    try:
        img = nib.load(path)
    except Exception as e:
        raise DataError(f"{what} file {path} could not be read as NIfTI (nibabel said: {type(e).__name__}: {e})") from e
    shape = tuple(int(n) for n in img.shape)
    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise DataError(f"{what} file {path} stores {dtype} voxels; expected integer or float intensities")
    shape3 = shape
    while len(shape3) > 3 and shape3[-1] == 1:
        shape3 = shape3[:-1]
    if len(shape3) > 3:
        raise DataError(
            f"{what} file {path} is {len(shape)}D with shape {shape}; expected a 3D volume "
            "(a 4D file whose last dimension is 1 is accepted)"
        )
    if len(shape3) < 2:
        raise DataError(f"{what} file {path} has shape {shape}; expected a 2D or 3D image")
    shape3 = shape3 + (1,) * (3 - len(shape3))
    _check_voxels(path, shape, what)
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32, caching="unchanged")).reshape(shape3)
    except Exception as e:  # truncated .nii.gz: EOFError / zlib.error; truncated .nii: mmap ValueError
        raise DataError(f"{what} file {path}: the voxel data could not be read (truncated or corrupt? nibabel said: {type(e).__name__}: {e})") from e
    return data, img, shape

