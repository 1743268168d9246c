"""Medical images in and masks out: PNG/JPEG/BMP, 8/16-bit TIFF, NIfTI, DICOM, with their geometry.

- :func:`load_image`: a file or a DICOM series folder -> :class:`MedicalImage` (float32 intensities,
  CT in Hounsfield units, volumes as (D, H, W) slices in display orientation)
- :func:`write_mask`: a mask in the image's array order -> NIfTI in the input's own geometry (volumes)
  or PNG 0/255 (2D), written atomically
- :func:`read_label`: a label file in the same array order as :func:`load_image`, checked against
  its image (shape; for NIfTI the world grid)

Array convention of a volume: see :mod:`boltzformer.io.volumes`. The formats and their limits are in
:mod:`boltzformer.io.formats`, masks out and labels in in :mod:`boltzformer.io.masks` (both re-exported
here: ``from boltzformer.io.medical import write_mask`` keeps working).

The file-format libraries (nibabel, pydicom, tifffile: the ``io`` extra) are imported when needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from boltzformer.io import dicom
from boltzformer.io.formats import (
    _DICOM,
    _NIFTI,
    _PILLOW,
    _SUPPORTED,
    _TIFF,
    MAX_VOXELS,
    _is_dicom_file,
    _normalise_modality,
    _read_nifti,
    _read_pillow,
    _read_tiff,
    _suffix,
)
from boltzformer.io.errors import DataError
from boltzformer.io.masks import read_label, write_mask
from boltzformer.io.volumes import VIEWS, MedicalImage, _volume

__all__ = ["MAX_ASPECT", "MAX_VOXELS", "MIN_SIDE", "MedicalImage", "VIEWS", "check_segmentable", "load_image", "read_label", "write_mask"]

# images that cannot give a meaningful mask: a side under MIN_SIDE pixels, or one side over MAX_ASPECT
# times the other (the model pads to a square, so a 1 x 200 strip is almost all padding)
MIN_SIDE = 16
MAX_ASPECT = 10.0


def load_image(
    path: str | os.PathLike,
    *,
    modality: str | None = None,
    axis: str | int | None = None,
    series_uid: str | None = None,
) -> MedicalImage:
    """Read an image file, a NIfTI volume or a DICOM series.

    Args:
        path: PNG/JPEG/BMP (Pillow), TIFF 8/16-bit/float grey, RGB or a multi-page stack (tifffile),
            NIfTI ``.nii`` / ``.nii.gz`` (nibabel; 4D with a last dimension of 1 is squeezed), a DICOM
            file, or a folder holding one DICOM series (pydicom).
        modality: "CT", "MR", ...; overrides the DICOM Modality tag ("MRI..." is read as "MR").
        axis: volumes only: ``None`` / "axial" (default for NIfTI and DICOM), "coronal", "sagittal",
            or 0/1/2 to slice along that axis of the file (the default for TIFF stacks is 0, as stored).
        series_uid: the SeriesInstanceUID to read from a folder holding several series.

    Returns:
        :class:`MedicalImage`; see the module docstring for the array convention.

    Raises:
        DataError: missing, unreadable, corrupt or truncated file; unknown extension or a folder with
            no DICOM; several DICOM series or a missing slice; a 4D volume; too many voxels
            (:data:`MAX_VOXELS`) or pixels (Pillow's limit). The message names the file.
        ValueError: an ``axis`` that is not one of the above, or a view for a file without orientation.

    Example:
        >>> ct = load_image("ct.nii.gz", modality="CT")  # doctest: +SKIP
        >>> ct.array.shape, ct.spacing  # doctest: +SKIP
        ((120, 512, 512), (2.5, 0.78, 0.78))
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"image file {path} does not exist")
    if path.is_dir():
        file3d, info = dicom.read_dicom_series(path, series_uid=series_uid, max_voxels=MAX_VOXELS)
        array, ornt, spacing = _volume(file3d, info["affine"], info["spacing"], axis, path)
        meta = {k: info[k] for k in ("series_uid", "files", "positions", "window", "monochrome1")}
        meta.update(format="dicom", source_dtype="float32", ornt=ornt, file_shape=file3d.shape, volume_shape=file3d.shape,
                    axis="axial" if axis is None else axis)
        return MedicalImage(array, True, spacing, info["affine"], _normalise_modality(modality or info["modality"]), path, meta)
    suffix = _suffix(path)
    if suffix not in _PILLOW + _TIFF + _NIFTI + _DICOM and not (suffix == "" and _is_dicom_file(path)):
        raise DataError(f"image file {path} has an unknown extension {suffix!r}; supported: {_SUPPORTED}")
    if axis is not None and suffix not in _NIFTI + _TIFF:
        raise ValueError(f"axis={axis!r} applies to volumes (NIfTI, TIFF stacks, DICOM series folders), not to {path}")
    if suffix in _NIFTI:
        file3d, img, file_shape = _read_nifti(path, "image")
        zooms = (tuple(img.header.get_zooms()) + (1.0, 1.0))[:3]  # a 2D file: 1 mm between its one "slice"
        array, ornt, spacing = _volume(file3d, img.affine, zooms, axis, path)
        # nibabel moves scl_slope / scl_inter from the header to the array proxy
        scaled = getattr(img.dataobj, "slope", 1.0) != 1.0 or getattr(img.dataobj, "inter", 0.0) != 0.0
        meta = dict(format="nifti", source_dtype="float32" if scaled else img.get_data_dtype().name,
                    header=img.header.copy(), nifti_class=type(img),
                    ornt=ornt, file_shape=file_shape, volume_shape=file3d.shape, axis=axis if axis is not None else "axial")
        return MedicalImage(array, True, spacing, np.array(img.affine), _normalise_modality(modality), path, meta)
    if suffix in _TIFF:
        arr, source_dtype, kind = _read_tiff(path, "image")
        if kind == "stack":
            array, ornt, _ = _volume(arr, None, None, axis, path)
            meta = dict(format="tiff", source_dtype=source_dtype, ornt=ornt, file_shape=arr.shape, volume_shape=arr.shape, axis=axis or 0)
            return MedicalImage(array, True, None, None, _normalise_modality(modality), path, meta)
        if axis is not None:
            raise ValueError(f"axis={axis!r} applies to volumes; {path} is a 2D image")
        return MedicalImage(arr.astype(np.float32), False, None, None, _normalise_modality(modality), path, dict(format="tiff", source_dtype=source_dtype))
    if suffix in _PILLOW:
        arr, source_dtype = _read_pillow(path, "image")
        return MedicalImage(arr.astype(np.float32), False, None, None, _normalise_modality(modality), path, dict(format="pillow", source_dtype=source_dtype))
    pixels, info = dicom.read_dicom_file(path, max_pixels=2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else MAX_VOXELS)
    meta = dict(format="dicom", source_dtype="float32", window=info["window"], monochrome1=info["monochrome1"])
    return MedicalImage(pixels, False, info["spacing"], info["affine"], _normalise_modality(modality or info["modality"]), path, meta)


def check_segmentable(image: MedicalImage) -> None:
    """Refuse an image that cannot give a meaningful mask: a (slice) side under :data:`MIN_SIDE`
    pixels, an aspect ratio beyond :data:`MAX_ASPECT`, no finite value, or one value everywhere.

    Raises:
        DataError: naming the file and what was found.
    """
    arr = image.array
    h, w = (arr.shape[1:3] if image.is_volume else arr.shape[:2])
    where = f"image file {image.path}"
    if min(h, w) < MIN_SIDE:
        raise DataError(f"{where} is {h}x{w} pixels{' per slice' if image.is_volume else ''}; expected at least {MIN_SIDE} a side")
    if max(h, w) > MAX_ASPECT * min(h, w):
        raise DataError(f"{where} is {h}x{w} pixels, an aspect ratio of {max(h, w) / min(h, w):.0f}:1; expected at most {MAX_ASPECT:g}:1")
    finite = np.isfinite(arr)
    if not finite.any():
        raise DataError(f"{where} holds no finite value (all NaN or infinite); nothing to segment")
    values = arr[finite] if not finite.all() else arr
    if float(values.min()) == float(values.max()):
        raise DataError(f"{where} holds one value everywhere ({float(values.min()):g}); nothing to segment")

