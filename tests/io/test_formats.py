"""boltzformer.io.formats: the one list of suffixes, suffix and DICOM detection, and each reader refusing a
file that is not its format with a DataError naming the file."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from boltzformer.io.errors import DataError
from boltzformer.io.formats import (
    IMAGE_SUFFIXES,
    MEDICAL_SUFFIXES,
    _read_nifti,
    _read_pillow,
    _read_tiff,
    is_dicom_file,
    suffix_of,
)


def test_image_suffixes_are_lower_case_dotted_and_cover_every_reader():
    assert all(s.startswith(".") and s == s.lower() for s in IMAGE_SUFFIXES)
    assert len(set(IMAGE_SUFFIXES)) == len(IMAGE_SUFFIXES)
    assert {".png", ".jpg", ".tif", ".tiff", ".nii", ".nii.gz", ".dcm"} <= set(IMAGE_SUFFIXES)
    assert set(MEDICAL_SUFFIXES) < set(IMAGE_SUFFIXES) and ".png" not in MEDICAL_SUFFIXES


@pytest.mark.parametrize(("name", "suffix"), [("scan.PNG", ".png"), ("ct.NII.GZ", ".nii.gz"), ("ct.nii", ".nii"),
                                              ("a.b.tiff", ".tiff"), ("x.gz", ".gz"), ("IM0001", "")])
def test_suffix_of(name, suffix):
    assert suffix_of(Path("/data") / name) == suffix


def test_is_dicom_file_reads_the_magic_whatever_the_name(tmp_path):
    dicom = tmp_path / "IM0001"
    dicom.write_bytes(bytes(128) + b"DICM" + b"\x02\x00")
    assert is_dicom_file(dicom)
    (tmp_path / "x.dcm").write_bytes(bytes(128) + b"NOPE")
    assert not is_dicom_file(tmp_path / "x.dcm")
    (tmp_path / "short.dcm").write_bytes(b"DICM")
    assert not is_dicom_file(tmp_path / "short.dcm")


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """One valid file per format, and one that is nothing."""
    png = tmp_path / "grey.png"
    Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)).save(png)
    tif = tmp_path / "grey.tif"
    tifffile.imwrite(tif, np.arange(12, dtype=np.uint16).reshape(3, 4))
    nii = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4)), nii)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    return {"png": png, "tif": tif, "nii": nii, "text": text}


def test_each_reader_reads_its_format(files):
    arr, dtype = _read_pillow(files["png"], "image")
    assert arr.shape == (3, 4) and dtype == "uint8" and arr[2, 3] == 11
    arr, dtype, kind = _read_tiff(files["tif"], "image")
    assert arr.shape == (3, 4) and dtype == "uint16" and kind == "grey" and arr[2, 3] == 11
    data, _, shape = _read_nifti(files["nii"], "image")
    assert shape == (2, 3, 4) and data.dtype == np.float32 and data[1, 2, 3] == 23


@pytest.mark.parametrize(("reader", "wrong", "said"), [
    (_read_pillow, "text", "could not be read as an image"),
    (_read_pillow, "nii", "could not be read as an image"),
    (_read_tiff, "png", "could not be read as a TIFF"),
    (_read_nifti, "png", "could not be read as NIfTI"),
    (_read_nifti, "tif", "could not be read as NIfTI"),
])
def test_a_reader_refuses_another_format_naming_the_file(files, reader, wrong, said):
    path = files[wrong]
    with pytest.raises(DataError, match="could not be read") as err:
        reader(path, "image")
    assert str(path) in str(err.value) and said in str(err.value) and str(err.value).startswith("image file ")
