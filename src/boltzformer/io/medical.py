"""Medical images in and masks out: PNG/JPEG/BMP, 8/16-bit TIFF, NIfTI, DICOM, with their geometry.

- :func:`load_image`: a file or a DICOM series folder -> :class:`MedicalImage` (float32 intensities,
  CT in Hounsfield units, volumes as (D, H, W) slices in display orientation)
- :func:`write_mask`: a mask in the image's array order -> NIfTI in the input's own geometry (volumes)
  or PNG 0/255 (2D), written atomically
- :func:`read_label`: a label file in the same array order as :func:`load_image`, checked against
  its image (shape; for NIfTI the world grid)

Array convention of a volume, ``image.array[d, h, w]`` (default ``axis="axial"``): ``d`` runs from
the patient's feet to the head (inferior -> superior), and each slice ``array[d]`` is shown as a
radiologist views an axial slice, from the feet: row ``h`` runs from anterior (top) to posterior
(bottom), column ``w`` from the patient's right (left of the screen) to the patient's left. In RAS
axis codes the array is ``("S", "P", "L")``. ``axis="coronal"`` gives ``("A", "I", "L")`` (slices
posterior -> anterior, rows head -> feet), ``axis="sagittal"`` gives ``("R", "I", "P")``. The file is
only flipped and transposed to the nearest axes (nibabel's orientation codes), never resampled;
``axis=0/1/2`` slices along that axis of the file instead, the other two in file order, unflipped.
``image.affine`` maps an index of the *file's* array to world mm (RAS); ``image.display_affine``
maps ``(d, h, w)``. For a DICOM series the file's array is (column, row, slice), slices sorted along
the normal, as dcm2niix and SimpleITK lay it out.

The file-format libraries (nibabel, pydicom, tifffile: the ``io`` extra) are imported when needed.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from boltzformer.io.atomic import atomic_paths
from boltzformer.io.images import DataError

__all__ = ["MAX_ASPECT", "MAX_VOXELS", "MIN_SIDE", "MedicalImage", "VIEWS", "check_segmentable", "load_image", "read_label", "write_mask"]

# refuse volumes (NIfTI, TIFF stacks, DICOM series) with more voxels than this before allocating
# them; 2D images follow Pillow's PIL.Image.MAX_IMAGE_PIXELS (refused above twice that, as Pillow)
MAX_VOXELS = 2**31
# images that cannot give a meaningful mask: a side under MIN_SIDE pixels, or one side over MAX_ASPECT
# times the other (the model pads to a square, so a 1 x 200 strip is almost all padding)
MIN_SIDE = 16
MAX_ASPECT = 10.0
# RAS axis codes of (D, H, W) per named view; see the module docstring
VIEWS: dict[str, tuple[str, str, str]] = {"axial": ("S", "P", "L"), "coronal": ("A", "I", "L"), "sagittal": ("R", "I", "P")}
# a label's world grid must match its image's within these (mm, as in np.allclose)
AFFINE_ATOL_MM, AFFINE_RTOL = 1e-3, 1e-5

_PILLOW = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_TIFF = (".tif", ".tiff")
_NIFTI = (".nii", ".nii.gz")
_DICOM = (".dcm", ".dicom")
_SUPPORTED = "PNG/JPEG/BMP, TIFF (.tif/.tiff), NIfTI (.nii/.nii.gz), DICOM (.dcm, or a folder of one series)"


@dataclass
class MedicalImage:
    """An image or volume as read from its file, with what it takes to write a mask back.

    Attributes:
        array: float32 intensities (CT: Hounsfield units, the rescale slope / intercept applied).
            2D: (H, W) grey or (H, W, 3) RGB, as stored. Volume: (D, H, W), see the module docstring.
        is_volume: True for NIfTI files, DICOM series folders and multi-page TIFF stacks (D may be 1).
        spacing: mm per axis of ``array`` when the file says, else None.
        affine: 4x4, index of the *original file's* array -> world mm (RAS); None without geometry.
        modality: "CT", "MR", ... (DICOM Modality, or the caller's); None when unknown.
        path: the file or folder read.
        meta: ``format`` ("pillow", "tiff", "nifti", "dicom"), ``source_dtype`` ("uint8" for 8-bit files,
            which :func:`~boltzformer.io.windows.to_uint8` returns unchanged), and for volumes
            ``ornt`` (nibabel orientation of file axes -> array axes), ``file_shape``, ``axis``; NIfTI:
            ``header``; DICOM: ``series_uid``, ``files``, ``positions``, ``window`` (the file's own).
    """

    array: np.ndarray
    is_volume: bool
    spacing: tuple[float, ...] | None
    affine: np.ndarray | None
    modality: str | None
    path: Path
    meta: dict = field(default_factory=dict)

    @property
    def display_affine(self) -> np.ndarray | None:
        """4x4, index ``(d, h, w)`` of :attr:`array` -> world mm (RAS); None without geometry or for 2D."""
        if self.affine is None or not self.is_volume:
            return None
        from nibabel.orientations import inv_ornt_aff

        return self.affine @ inv_ornt_aff(self.meta["ornt"], self.meta["volume_shape"])


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
            f"limit boltzformer.io.medical.MAX_VOXELS={MAX_VOXELS}; refusing to allocate it"
        )


# ---------------------------------------------------------------- readers, each -> arrays + meta


def _read_pillow(path: Path, what: str) -> tuple[np.ndarray, str]:
    """-> (H, W) or (H, W, 3) array as stored, and its dtype name; alpha and palettes -> RGB."""
    from boltzformer.io.images import _open_converted

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


def _orientation(affine: np.ndarray | None, axis: str | int | None, path: Path) -> np.ndarray:
    """nibabel ornt (3, 2): file axis i -> array axis ornt[i, 0], flipped where ornt[i, 1] == -1."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1, 2 or one of {sorted(VIEWS)}, got {axis}")
        others = [a for a in range(3) if a != axis]
        ornt = np.ones((3, 2))
        ornt[axis, 0], ornt[others[0], 0], ornt[others[1], 0] = 0, 1, 2
        return ornt
    if axis is None:
        if affine is None:  # a TIFF stack: pages are the slices, as stored
            return np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
        axis = "axial"
    if axis not in VIEWS:
        raise ValueError(f"axis must be 0, 1, 2 or one of {sorted(VIEWS)}, got {axis!r}")
    if affine is None:
        raise ValueError(f"axis={axis!r} needs the file's orientation, which {path} does not have; use axis=0, 1 or 2")
    source = io_orientation(affine)
    if np.isnan(source).any():
        raise DataError(f"{path}: the affine is degenerate, so the orientation is unknown; pass axis=0, 1 or 2 to slice the file's axes")
    return ornt_transform(source, axcodes2ornt(VIEWS[axis]))


def _invert_ornt(ornt: np.ndarray) -> np.ndarray:
    inverse = np.zeros_like(ornt)
    for i, (target, flip) in enumerate(ornt):
        inverse[int(target)] = (i, flip)
    return inverse


def _volume(file3d: np.ndarray, affine: np.ndarray | None, zooms, axis, path: Path) -> tuple[np.ndarray, np.ndarray, tuple | None]:
    from nibabel.orientations import apply_orientation

    ornt = _orientation(affine, axis, path)
    array = np.ascontiguousarray(apply_orientation(file3d, ornt), dtype=np.float32)
    spacing = None
    if zooms is not None:
        spacing = [0.0] * 3
        for i, (target, _) in enumerate(ornt):
            spacing[int(target)] = float(zooms[i])
        spacing = tuple(spacing)
    return array, ornt, spacing


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
    from boltzformer.io import dicom

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


# ---------------------------------------------------------------- masks out


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
        reference: the image the mask belongs to, as :func:`load_image` returned it.
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
    """Read a label image or volume in the array order :func:`load_image` gives its image.

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
