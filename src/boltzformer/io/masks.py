"""Masks out and labels in, in the geometry of the image they belong to.

- :func:`write_mask`: a mask in the image's array order -> NIfTI in the input's own geometry (volumes)
  or PNG 0/255 (2D), written atomically
- :func:`read_label`: a label file in the same array order as :func:`~boltzformer.io.medical.load_image`,
  checked against its image (shape; for NIfTI the world grid)
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from boltzformer.io.atomic import atomic_paths
from boltzformer.io.formats import (
    _DICOM,
    _NIFTI,
    _PILLOW,
    _SUPPORTED,
    _TIFF,
    _is_dicom_file,
    _nibabel,
    _read_nifti,
    _read_pillow,
    _read_tiff,
    _suffix,
    _tifffile,
)
from boltzformer.io.errors import DataError
from boltzformer.io.volumes import AFFINE_ATOL_MM, AFFINE_RTOL, MedicalImage, _invert_ornt, _orientation

__all__ = ["read_label", "write_mask"]


def _binary_array(mask: np.ndarray, name: str) -> np.ndarray:
    """bool, {0, 1} or {0, 255} -> uint8 0/1; anything else (probabilities, labels) is an error."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    background = mask == 0
    if (background | (mask == 1)).all() or (background | (mask == 255)).all():
        return (~background).astype(np.uint8)
    values = np.unique(mask[~np.isnan(mask)] if mask.dtype.kind == "f" else mask)
    shown = ", ".join(f"{v:g}" for v in values[:6].tolist()) + (", ..." if len(values) > 6 else "")
    raise ValueError(f"{name} must be binary (bool, 0/1 or 0/255), found {len(values)} values: {shown}")


def _nifti_bytes(image: Any, path: Path) -> bytes:
    raw = image.to_bytes()
    # nibabel's level for .nii.gz; mtime=0: the same mask gives the same file
    return gzip.compress(raw, compresslevel=1, mtime=0) if _suffix(path) == ".nii.gz" else raw


def write_mask(mask: np.ndarray, reference: MedicalImage, path: str | os.PathLike) -> Path:
    """Write a mask predicted on ``reference.array`` back in the input's own geometry.

    Args:
        mask: bool, 0/1 or 0/255; ``reference.array.shape`` for volumes (D, H, W), (H, W) for 2D.
        reference: the image the mask belongs to, as :func:`~boltzformer.io.medical.load_image` returned it.
        path: ``.nii`` / ``.nii.gz`` for NIfTI and DICOM volumes, ``.tif`` / ``.tiff`` for TIFF stacks,
            ``.png`` for 2D images.

    Returns:
        ``path``. Volumes: uint8 0/1 (labels, as read back by :func:`read_label`) in the original file's
        shape and axis order. A NIfTI input keeps
        its header (qform, sform and their codes, pixdim, units); only the data type (uint8), the
        scaling (none), cal_min/cal_max (0/1) and the intent (label) change. A DICOM series gives a
        NIfTI (column, row, slice) with the series' affine in RAS (qform = sform, code scanner).
        2D: PNG 0/255 of the input's size. The file appears whole or not at all (temporary name, then
        rename).

    Raises:
        ValueError: the mask is not binary, its shape differs from the image's, or ``path`` has the
            wrong extension for the image.
    """
    path = Path(path)
    if not isinstance(reference, MedicalImage):
        raise TypeError(f"reference must be a MedicalImage from load_image, got {type(reference).__name__}")
    expected = reference.array.shape if reference.is_volume else reference.array.shape[:2]
    mask = np.asarray(mask)
    if mask.shape != expected:
        raise ValueError(f"mask has shape {mask.shape} but the image {reference.path} has {expected}")
    mask = _binary_array(mask, "mask")
    suffix = _suffix(path)
    if not reference.is_volume:
        if suffix != ".png":
            raise ValueError(f"the mask of a 2D image is written as PNG; path {path} must end in .png")
        with atomic_paths(path) as (tmp,):
            Image.fromarray(mask * 255).save(tmp, format="PNG")
        return path
    from nibabel.orientations import apply_orientation

    file_data = apply_orientation(mask, _invert_ornt(reference.meta["ornt"]))
    file_data = np.ascontiguousarray(file_data).reshape(reference.meta["file_shape"])
    fmt = reference.meta["format"]
    if fmt == "tiff":
        if suffix not in _TIFF:
            raise ValueError(f"the mask of a TIFF stack is written as TIFF; path {path} must end in .tif or .tiff")
        tifffile = _tifffile()
        with atomic_paths(path) as (tmp,):
            tifffile.imwrite(tmp, file_data, photometric="minisblack")
        return path
    if suffix not in _NIFTI:
        raise ValueError(f"the mask of a {fmt.upper()} volume is written as NIfTI; path {path} must end in .nii or .nii.gz")
    nib = _nibabel()
    if fmt == "nifti":
        header = reference.meta["header"].copy()
        image = reference.meta["nifti_class"](file_data, reference.affine, header)
        for which in ("qform", "sform"):  # exactly the input's, codes included
            affine, code = getattr(header, f"get_{which}")(coded=True)
            getattr(image, f"set_{which}")(affine, code=int(code))
    else:  # a DICOM series: its geometry, scanner coordinates
        image = nib.Nifti1Image(file_data, reference.affine)
        image.set_qform(reference.affine, code=1)
        image.set_sform(reference.affine, code=1)
        image.header.set_xyzt_units("mm")
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1.0, 0.0)
    image.header["cal_min"], image.header["cal_max"] = 0, 1
    image.header.set_intent("label")
    data = _nifti_bytes(image, path)
    with atomic_paths(path) as (tmp,):
        tmp.write_bytes(data)
    return path


# ---------------------------------------------------------------- labels in


def _integer_labels(values: np.ndarray, path: Path) -> np.ndarray:
    finite = np.isfinite(values)
    if not finite.all() or not np.array_equal(values, np.rint(values)):
        raise DataError(f"label file {path} holds non-integer values (probabilities?); expected integer labels")
    if values.size and values.min() >= 0 and values.max() <= 255:
        return values.astype(np.uint8)
    return values.astype(np.int32)


def _binary_label(values: np.ndarray, path: Path) -> np.ndarray:
    if values.ndim == 3:
        if not (values == values[..., :1]).all():
            raise DataError(f"mask file {path} is a colour image; expected a grey binary mask (0/1 or 0/255)")
        values = values[..., 0]
    try:
        return _binary_array(values, f"mask file {path}")
    except ValueError as e:
        raise DataError(str(e)) from None


def _same_affine(a: np.ndarray, b: np.ndarray) -> bool:
    return np.allclose(a, b, atol=AFFINE_ATOL_MM, rtol=AFFINE_RTOL)


def read_label(path: str | os.PathLike, reference: MedicalImage | None = None) -> np.ndarray:
    """Read a label image or volume in the array order :func:`~boltzformer.io.medical.load_image` gives its image.

    Args:
        path: a 2D mask (PNG/JPEG/BMP/TIFF) that must be binary (0/1 or 0/255), or a label volume
            (NIfTI, TIFF stack) of integer labels.
        reference: the image the label belongs to. A NIfTI label is put in the reference's view and
            must lie on the same world grid (same display shape and affine within
            ``AFFINE_ATOL_MM``; it may store its axes in another order); other labels must have the
            reference's shape.

    Returns:
        2D: (H, W) uint8 0/1. Volumes: (D, H, W) integer labels (uint8 when they fit, else int32).

    Raises:
        DataError: unreadable file, a 2D mask that is not binary, non-integer labels, a shape or an
            affine that differs from the reference's, a DICOM label (DICOM SEG is not supported).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"label file {path} does not exist")
    if reference is not None and not isinstance(reference, MedicalImage):
        raise TypeError(f"reference must be a MedicalImage from load_image, got {type(reference).__name__}")
    if path.is_dir():
        raise DataError(f"label file {path} is a folder; DICOM labels (SEG, RTSTRUCT) are not supported: convert them to NIfTI")
    suffix = _suffix(path)
    where = f" but its image {reference.path}" if reference is not None else ""
    if suffix in _NIFTI:
        from nibabel.orientations import apply_orientation, inv_ornt_aff

        file3d, img, _ = _read_nifti(path, "label")
        if reference is None:
            return _integer_labels(apply_orientation(file3d, _orientation(img.affine, None, path)), path)
        if not reference.is_volume or reference.affine is None:
            raise DataError(f"label file {path} is a NIfTI volume{where} is {'a 2D image' if not reference.is_volume else 'a volume without geometry'}")
        view = reference.meta["axis"]
        ornt = _orientation(img.affine, view, path) if isinstance(view, str) else reference.meta["ornt"]
        labels = apply_orientation(file3d, ornt)
        if labels.shape != reference.array.shape:
            raise DataError(
                f"label file {path} has shape {tuple(img.shape)} ({labels.shape} as slices){where} has "
                f"{tuple(reference.meta['file_shape'])} ({reference.array.shape} as slices)"
            )
        label_affine = img.affine @ inv_ornt_aff(ornt, file3d.shape)
        if not _same_affine(label_affine, reference.display_affine):
            raise DataError(
                f"label file {path} lies on another world grid{where}: affines differ beyond {AFFINE_ATOL_MM} mm\n"
                f"label (file):\n{np.array2string(img.affine, precision=4)}\nimage (file):\n"
                f"{np.array2string(reference.affine, precision=4)}"
            )
        return _integer_labels(labels, path)
    if suffix in _TIFF:
        values, _, kind = _read_tiff(path, "label")
        volume = kind == "stack"
    elif suffix in _PILLOW:
        values, _ = _read_pillow(path, "mask")
        volume = False
    elif suffix in _DICOM or _is_dicom_file(path):
        raise DataError(f"label file {path} is DICOM; DICOM labels (SEG, RTSTRUCT) are not supported: convert them to NIfTI")
    else:
        raise DataError(f"label file {path} has an unknown extension {suffix!r}; supported: {_SUPPORTED}")
    if volume:
        labels = values
        if reference is not None:
            if not reference.is_volume or values.shape != tuple(reference.meta["file_shape"]):
                expected = tuple(reference.meta["file_shape"]) if reference.is_volume else reference.array.shape[:2]
                raise DataError(f"label file {path} has shape {values.shape}{where} has {expected}")
            from nibabel.orientations import apply_orientation

            labels = apply_orientation(values, reference.meta["ornt"])
        return _integer_labels(np.asarray(labels, dtype=np.float64), path)
    labels = _binary_label(values, path)
    if reference is not None:
        expected = reference.array.shape if reference.is_volume else reference.array.shape[:2]
        if labels.shape != expected:
            size = "x".join(map(str, labels.shape))
            raise DataError(f"mask file {path} is {size}{where} is {'x'.join(map(str, expected))}")
    return labels
