"""read_image on medical formats: TIFF, NIfTI and DICOM slices reach the model as 8-bit RGB."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from boltzformer.io.images import DataError, read_image
from boltzformer.io.windows import to_uint8


def test_8_bit_tiff_reads_as_pillow_reads_it(tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    tifffile.imwrite(tmp_path / "g.tif", grey)
    expected = np.asarray(Image.open(tmp_path / "g.tif").convert("RGB"))
    assert np.array_equal(read_image(tmp_path / "g.tif"), expected)


def test_16_bit_tiff_is_stretched_not_clipped(tmp_path):
    grey = (np.arange(48, dtype=np.uint16).reshape(6, 8) + 1) * 1000  # all above 255
    tifffile.imwrite(tmp_path / "g16.tif", grey)
    rgb = read_image(tmp_path / "g16.tif")
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 1], to_uint8(grey.astype(np.float32)))
    assert rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb)) > 40


def test_nifti_slice_and_volume(tmp_path):
    hu = np.linspace(-1000, 1000, 20, dtype=np.float32).reshape(4, 5, 1)
    nib.save(nib.Nifti1Image(hu, np.eye(4)), tmp_path / "slice.nii.gz")
    rgb = read_image(tmp_path / "slice.nii.gz", modality="CT", window="lung")
    # one slice in display orientation: RAS file -> rows anterior first, columns right to left
    assert rgb.shape == (5, 4, 3)
    assert np.array_equal(rgb[..., 0], to_uint8(hu[::-1, ::-1, 0].T, window="lung"))
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3), np.float32), np.eye(4)), tmp_path / "vol.nii.gz")
    with pytest.raises(DataError, match=r"vol\.nii\.gz is a volume of 3 slices; read it with .*load_image"):
        read_image(tmp_path / "vol.nii.gz")


def test_a_folder_is_still_not_an_image(tmp_path):
    with pytest.raises(DataError, match="is not a file"):
        read_image(tmp_path)
