"""A read image or volume (:class:`MedicalImage`) and the orientation of volume files: how a file's
axes become the array's ``(d, h, w)``.

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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from boltzformer.io.errors import DataError

__all__ = ["AFFINE_ATOL_MM", "AFFINE_RTOL", "MedicalImage", "VIEWS"]

# RAS axis codes of (D, H, W) per named view; see the module docstring
VIEWS: dict[str, tuple[str, str, str]] = {"axial": ("S", "P", "L"), "coronal": ("A", "I", "L"), "sagittal": ("R", "I", "P")}
# a label's world grid must match its image's within these (mm, as in np.allclose)
AFFINE_ATOL_MM, AFFINE_RTOL = 1e-3, 1e-5


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
