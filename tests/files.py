"""Small image files the tests write: a PNG, a DICOM CT slice (one writer each, shared by every test folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image


def png(path: Path, array: np.ndarray) -> Path:
    """``array`` (H, W) or (H, W, 3) uint8 as a PNG at ``path`` (its folder made); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def dicom_slice(path: Path, pixels: np.ndarray, *, position: Sequence[float] = (0.0, 0.0, 0.0),
                orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), spacing: Sequence[float] = (0.7, 0.9),
                series_uid: str = "1.2.826.0.1.1", instance: int = 1, slope: float = 1.0) -> None:
    """One CT slice of stored values ``pixels`` (uint16, HU = slope x value - 1024), 2.5 mm thick, at
    ``position`` (mm, patient LPS) with ``orientation`` (row and column direction cosines)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1", series_uid
    ds.Modality, ds.InstanceNumber = "CT", instance
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, -1024
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.SliceThickness = 2.5
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
