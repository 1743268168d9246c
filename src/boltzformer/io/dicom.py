"""DICOM (pydicom): one slice file, or a folder holding one series, as intensities and geometry.

A series becomes an array in *file order* (X = column, Y = row, Z = slice), slices sorted by their
ImagePositionPatient projected on the slice normal (row direction x column direction), with the
affine of that index to RAS world coordinates in mm: the layout dcm2niix and SimpleITK give a
series, so a mask written in it overlays the series in any viewer. Rescale slope / intercept (the
modality LUT) are applied per slice, so CT values are Hounsfield units.

pydicom reads the files; the geometry (sorting, gaps, affine) is written here because pydicom
leaves it to the caller and SimpleITK is not a dependency.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from boltzformer.io.errors import DataError

__all__ = ["GAP_FACTOR", "dicom_geometry_affine", "read_dicom_file", "read_dicom_series"]

# a step between sorted slice positions larger than this many median steps means a missing slice
GAP_FACTOR = 1.5
# two slices closer than this (mm) along the normal are at the same position
_SAME_POSITION_MM = 1e-3
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _pydicom():
    try:
        import pydicom
    except ImportError as e:  # pragma: no cover - pydicom is in the io extra
        raise ImportError("reading DICOM needs pydicom: pip install -c constraints.txt 'boltzformer[io]'") from e
    return pydicom


def dicom_geometry_affine(
    position: np.ndarray, orientation: np.ndarray, pixel_spacing: np.ndarray, slice_step: np.ndarray
) -> np.ndarray:
    """Affine of the voxel index (column, row, slice) -> RAS mm.

    Args:
        position: ImagePositionPatient of slice 0 (LPS mm), the centre of its first pixel.
        orientation: ImageOrientationPatient, 6 values: the row direction (along a row, as the column
            index grows) then the column direction (down a column, as the row index grows), LPS.
        pixel_spacing: PixelSpacing, (between rows, between columns) in mm.
        slice_step: LPS vector from one slice's first pixel to the next one's.
    """
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * float(pixel_spacing[1])  # column index -> moves along the row direction
    lps[:3, 1] = col_dir * float(pixel_spacing[0])  # row index -> moves along the column direction
    lps[:3, 2] = slice_step
    lps[:3, 3] = position
    return _LPS_TO_RAS @ lps


def _pixels(ds: Any, path: Path) -> np.ndarray:
    """Decoded pixels with the modality LUT (rescale slope / intercept) applied, float32."""
    pydicom = _pydicom()
    try:
        pixels = ds.pixel_array
    except Exception as e:  # missing decoder (compressed transfer syntax), truncated pixel data, ...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax_name = getattr(syntax, "name", syntax)
        raise DataError(
            f"DICOM file {path}: pixel data could not be decoded (transfer syntax {syntax_name}; "
            f"pydicom said: {type(e).__name__}: {e})"
        ) from e
    if int(ds.get("SamplesPerPixel", 1)) == 1:
        pixels = pydicom.pixels.apply_modality_lut(pixels, ds)
    return np.asarray(pixels, dtype=np.float32)


def _read_header(path: Path, *, required: bool) -> Any | None:
    """The dataset without pixel data; ``None`` for a file that is not DICOM when not ``required``."""
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except pydicom.errors.InvalidDicomError as e:
        if not required:
            return None
        raise DataError(f"DICOM file {path} is not a DICOM file (pydicom said: {e})") from e
    except Exception as e:  # truncated header, bad element lengths, ...
        raise DataError(f"DICOM file {path} could not be read (pydicom said: {type(e).__name__}: {e})") from e


def _float_tuple(ds: Any, keyword: str) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    if value is None:
        return None
    values = [value] if isinstance(value, (str, bytes, int, float)) else list(value)  # DS or MultiValue
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None


def _modality(ds: Any) -> str | None:
    value = str(ds.get("Modality", "") or "").strip().upper()
    return value or None


def _window_tags(ds: Any) -> tuple[float, float] | None:
    """The file's own WindowCenter / WindowWidth (first pair), for reference."""
    center, width = _float_tuple(ds, "WindowCenter"), _float_tuple(ds, "WindowWidth")
    return (center[0], width[0]) if center and width else None


def read_dicom_file(path: str | os.PathLike, *, max_pixels: int) -> tuple[np.ndarray, dict]:
    """One single-frame DICOM file -> (H, W) float32 (grey, modality LUT applied) or (H, W, 3) RGB.

    Returns:
        ``(pixels, info)``; ``info`` has ``modality``, ``spacing`` (row, column mm or None), ``affine``
        (index (column, row, 0) -> RAS, or None without geometry), ``monochrome1`` and ``window``.
    """
    path = Path(path)
    ds = _read_header(path, required=True)
    if "Rows" not in ds:  # read without pixel data: Rows tells an image from a report or a DICOMDIR
        raise DataError(f"DICOM file {path} holds no image (SOP class {ds.get('SOPClassUID', 'unknown')})")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(
            f"DICOM file {path} is multi-frame ({frames} frames), which is not supported; "
            "convert it to NIfTI (e.g. dcm2niix) or to one file per slice"
        )
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > max_pixels:
        raise DataError(f"DICOM file {path} is {rows}x{cols}, over the limit of {max_pixels} pixels")
    ds = _read_full(path)
    pixels = _pixels(ds, path)
    spacing = _float_tuple(ds, "PixelSpacing")
    position, orientation = _float_tuple(ds, "ImagePositionPatient"), _float_tuple(ds, "ImageOrientationPatient")
    affine = None
    if spacing and position and orientation and len(orientation) == 6:
        thickness = float(ds.get("SpacingBetweenSlices", 0) or ds.get("SliceThickness", 0) or 1.0)
        normal = np.cross(orientation[:3], orientation[3:])
        affine = dicom_geometry_affine(np.array(position), np.array(orientation), np.array(spacing), normal * thickness)
    info = {
        "modality": _modality(ds),
        "spacing": tuple(spacing[:2]) if spacing else None,
        "affine": affine,
        "monochrome1": str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1",
        "window": _window_tags(ds),
    }
    return pixels, info


def _read_full(path: Path) -> Any:
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(path)
    except Exception as e:
        raise DataError(f"DICOM file {path} could not be read (pydicom said: {type(e).__name__}: {e})") from e


def _describe_series(uid: str, datasets: list) -> str:
    ds = datasets[0][1]
    what = " ".join(str(v) for v in (ds.get("Modality"), ds.get("SeriesDescription")) if v)
    return f"{uid} ({len(datasets)} files{', ' + what if what else ''})"


def read_dicom_series(
    folder: str | os.PathLike, *, series_uid: str | None = None, max_voxels: int
) -> tuple[np.ndarray, dict]:
    """The DICOM series in ``folder`` (files directly in it; subfolders are not searched).

    Args:
        folder: a folder holding the files of one series (other non-DICOM files are ignored; a file
            named ``*.dcm`` that is not DICOM is an error).
        series_uid: the SeriesInstanceUID to read when the folder holds several series.
        max_voxels: refuse series with more voxels, before decoding any pixels.

    Returns:
        ``(volume, info)``: volume (X = column, Y = row, Z = slice) float32, slices sorted along the
        normal; ``info`` has ``affine`` (index -> RAS mm), ``spacing`` (column, row, slice mm),
        ``modality``, ``series_uid``, ``files`` (in slice order), ``positions`` (mm along the normal),
        ``monochrome1`` and ``window``.

    Raises:
        DataError: no DICOM file, several series (their UIDs and file counts are named), slices of
            different size or orientation, no ImagePositionPatient / ImageOrientationPatient, two
            slices at one position, a missing slice (a step over :data:`GAP_FACTOR` x the median), too
            many voxels, or a file that cannot be decoded.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    series: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    for path in files:
        ds = _read_header(path, required=path.suffix.lower() in (".dcm", ".dicom"))
        if ds is None:
            continue
        sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
        if sop_class == _DICOMDIR_SOP_CLASS or "Rows" not in ds:
            continue  # a DICOMDIR, a structured report, ...: no image
        series[str(ds.get("SeriesInstanceUID", "unknown"))].append((path, ds))
    if not series:
        raise DataError(
            f"DICOM folder {folder} holds no DICOM image file (looked at {len(files)} files directly "
            "in it; subfolders are not searched: give the folder of one series)"
        )
    if series_uid is not None:
        if series_uid not in series:
            listed = "; ".join(_describe_series(u, d) for u, d in series.items())
            raise DataError(f"DICOM folder {folder} has no series {series_uid!r}; it holds: {listed}")
        chosen = series[series_uid]
    elif len(series) > 1:
        listed = "; ".join(_describe_series(u, d) for u, d in sorted(series.items()))
        raise DataError(
            f"DICOM folder {folder} holds {len(series)} series, expected one: {listed}. "
            "Pass --series-uid UID (series_uid=... in Python) or put each series in its own folder"
        )
    else:
        series_uid, chosen = next(iter(series.items()))
    return _stack_series(folder, series_uid, chosen, max_voxels=max_voxels)


def _stack_series(folder: Path, uid: str, datasets: list[tuple[Path, Any]], *, max_voxels: int) -> tuple[np.ndarray, dict]:
    first_path, first = datasets[0]
    rows, cols = int(first.Rows), int(first.Columns)
    for path, ds in datasets:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise DataError(f"DICOM file {path} in {folder} is multi-frame ({frames} frames), which is not supported in a series")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise DataError(
                f"DICOM series {uid} in {folder}: {path.name} is {ds.Rows}x{ds.Columns} but {first_path.name} is {rows}x{cols}"
            )
    if rows * cols * len(datasets) > max_voxels:
        raise DataError(
            f"DICOM series {uid} in {folder} is {len(datasets)} slices of {rows}x{cols}, over the limit of {max_voxels} voxels"
        )
    geometry = [(_float_tuple(ds, "ImagePositionPatient"), _float_tuple(ds, "ImageOrientationPatient"), _float_tuple(ds, "PixelSpacing")) for _, ds in datasets]
    for (path, _), (position, orientation, spacing) in zip(datasets, geometry):
        if not position or not orientation or len(position) != 3 or len(orientation) != 6 or not spacing:
            raise DataError(
                f"DICOM file {path} has no ImagePositionPatient / ImageOrientationPatient / PixelSpacing, "
                "so the slices of its series cannot be ordered or placed"
            )
    orientation = np.array(geometry[0][1])
    spacing = np.array(geometry[0][2][:2])
    for (path, _), (_, o, s) in zip(datasets, geometry):
        if not np.allclose(o, orientation, atol=1e-4) or not np.allclose(s[:2], spacing, atol=1e-4):
            raise DataError(
                f"DICOM series {uid} in {folder}: {path.name} has orientation {o} / spacing {s} but "
                f"{first_path.name} has {tuple(orientation)} / {tuple(spacing)}; one series must share them"
            )
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([np.dot(g[0], normal) for g in geometry])
    order = np.argsort(positions, kind="stable")
    positions = positions[order]
    datasets = [datasets[i] for i in order]
    ipp = np.array([geometry[i][0] for i in order])
    steps = np.diff(positions)
    if len(steps):
        same = np.flatnonzero(steps < _SAME_POSITION_MM)
        if len(same):
            a, b = datasets[same[0]][0].name, datasets[same[0] + 1][0].name
            raise DataError(
                f"DICOM series {uid} in {folder}: {a} and {b} are at the same position "
                f"({positions[same[0]]:.3f} mm along the slice normal); a series must have one slice per position"
            )
        median = float(np.median(steps))
        gaps = np.flatnonzero(steps > GAP_FACTOR * median)
        if len(gaps):
            i = gaps[0]
            raise DataError(
                f"DICOM series {uid} in {folder} is missing slice(s): {steps[i]:.3f} mm between "
                f"{datasets[i][0].name} ({positions[i]:.3f} mm) and {datasets[i + 1][0].name} "
                f"({positions[i + 1]:.3f} mm), the median step being {median:.3f} mm "
                f"(limit {GAP_FACTOR} x median)"
            )
        step = (ipp[-1] - ipp[0]) / (len(ipp) - 1)  # the actual step: keeps a gantry tilt exact
    else:
        thickness = float(first.get("SpacingBetweenSlices", 0) or first.get("SliceThickness", 0) or 1.0)
        step = normal * thickness
    slices = [_pixels(_read_full(path), path) for path, _ in datasets]
    for (path, _), pixels in zip(datasets, slices):
        if pixels.shape != (rows, cols):
            raise DataError(f"DICOM file {path}: decoded pixels are {pixels.shape}, expected ({rows}, {cols}) grey")
    volume = np.stack(slices, axis=0).transpose(2, 1, 0)  # (Z, rows, cols) -> (X = col, Y = row, Z)
    info = {
        "affine": dicom_geometry_affine(ipp[0], orientation, spacing, step),
        "spacing": (float(spacing[1]), float(spacing[0]), float(np.linalg.norm(step))),
        "modality": _modality(first),
        "series_uid": uid,
        "files": [str(p) for p, _ in datasets],
        "positions": positions.tolist(),
        "monochrome1": str(first.get("PhotometricInterpretation", "")) == "MONOCHROME1",
        "window": _window_tags(first),
    }
    return np.ascontiguousarray(volume), info
