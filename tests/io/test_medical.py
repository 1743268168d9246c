"""Medical formats in and out: NIfTI, DICOM series, TIFF, PNG; geometry, masks, labels, bad files."""

from __future__ import annotations

import json
import random

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from boltzformer.io import formats
from boltzformer.io.images import DataError, read_image
from boltzformer.io.medical import MedicalImage, load_image, read_label, write_mask
from boltzformer.io.windows import to_uint8
from tests.files import dicom_slice, png

# ---------------------------------------------------------------- file builders


def _oblique_affine() -> np.ndarray:
    """File axes -> RAS: axis 0 ~ anterior, 1 ~ inferior, 2 ~ left; anisotropic, rotated, shifted."""
    affine = np.eye(4)
    affine[:3, :3] = [[0.0, 0.05, -1.5], [0.9, 0.1, 0.0], [0.1, -0.8, 0.05]]
    affine[:3, 3] = [10.0, -20.0, 30.0]
    return affine


def _nifti(path, data, affine=None, *, slope=None, inter=None):
    affine = _oblique_affine() if affine is None else affine
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=4)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, path)
    return path


def _ct_slice(path, pixels, **kw):
    dicom_slice(path, pixels, slope=2, **kw)  # stored values x 2 - 1024 = HU


# a CT series tilted 20 degrees about the patient's z axis (LPS), slices 2.5 mm apart
_THETA = np.deg2rad(20)
_ROW_DIR = np.array([np.cos(_THETA), np.sin(_THETA), 0.0])
_COL_DIR = np.array([-np.sin(_THETA), np.cos(_THETA), 0.0])
_NORMAL = np.cross(_ROW_DIR, _COL_DIR)
_ORIGIN = np.array([-100.0, 50.0, 30.0])


def _series(folder, pixels, *, series_uid="1.2.826.0.1.1", skip=(), seed=0):
    """One file per slice of ``pixels`` (D, rows, cols), written in a shuffled order under shuffled names."""
    folder.mkdir(parents=True, exist_ok=True)
    order = [k for k in range(len(pixels)) if k not in skip]
    random.Random(seed).shuffle(order)
    for n, k in enumerate(order):
        _ct_slice(folder / f"{series_uid[-3:]}_{n:03d}.dcm", pixels[k], position=_ORIGIN + k * 2.5 * _NORMAL,
                     orientation=[*_ROW_DIR, *_COL_DIR], series_uid=series_uid, instance=k + 1)
    return folder


def _dicom_world_ras(d, r, c):
    """RAS position of pixel (row r, column c) of slice d, from the DICOM geometry."""
    lps = _ORIGIN + d * 2.5 * _NORMAL + c * 0.9 * _ROW_DIR + r * 0.7 * _COL_DIR
    return lps * [-1, -1, 1]


# ---------------------------------------------------------------- NIfTI


def test_nifti_volume_in_display_orientation(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, (7, 6, 5)).astype(np.int16)
    path = _nifti(tmp_path / "ct.nii.gz", data, slope=2.0, inter=-1024.0)
    img = load_image(path, modality="ct")
    assert img.is_volume and img.modality == "CT" and img.array.dtype == np.float32
    # file axes (A, I, L) -> array (S, P, L): axis 1 flipped and moved first, axis 0 flipped second
    assert nib.aff2axcodes(img.affine) == ("A", "I", "L")
    assert nib.aff2axcodes(img.display_affine) == ("S", "P", "L")
    assert img.array.shape == (6, 7, 5)
    hu = data.astype(np.float32) * 2 - 1024
    assert np.array_equal(img.array, hu[::-1, ::-1, :].transpose(1, 0, 2))
    # every voxel sits where the file's affine puts it
    to_file = np.linalg.inv(img.affine) @ img.display_affine
    for dhw in [(0, 0, 0), (5, 6, 4), (2, 3, 1)]:
        ijk = tuple(np.rint(to_file @ [*dhw, 1])[:3].astype(int))
        assert img.array[dhw] == hu[ijk]
    zooms = np.sqrt((_oblique_affine()[:3, :3] ** 2).sum(0))
    assert np.allclose(img.spacing, [zooms[1], zooms[0], zooms[2]], atol=1e-4)
    assert img.meta["source_dtype"] == "float32"  # scaled: not the stored values
    raw8 = load_image(_nifti(tmp_path / "u8.nii", data.astype(np.uint8)))
    assert raw8.meta["source_dtype"] == "uint8" and np.array_equal(to_uint8(raw8), raw8.array)  # 8-bit: as stored


def test_nifti_views_and_file_axes(tmp_path):
    data = np.arange(7 * 6 * 5, dtype=np.float32).reshape(7, 6, 5)
    path = _nifti(tmp_path / "v.nii", data)
    assert nib.aff2axcodes(load_image(path, axis="coronal").display_affine) == ("A", "I", "L")
    assert nib.aff2axcodes(load_image(path, axis="sagittal").display_affine) == ("R", "I", "P")
    for k in range(3):  # slices along a file axis, the other two in file order, nothing flipped
        assert np.array_equal(load_image(path, axis=k).array, np.moveaxis(data, k, 0))
    with pytest.raises(ValueError, match="axis must be 0, 1, 2 or one of"):
        load_image(path, axis="transverse")
    with pytest.raises(ValueError, match="applies to volumes"):
        load_image(png(tmp_path / "a.png", np.zeros((4, 4), np.uint8)), axis=0)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("axis", [None, "sagittal", 1])
def test_write_mask_nifti_round_trip(tmp_path, suffix, axis):
    rng = np.random.default_rng(1)
    path = _nifti(tmp_path / "ct.nii.gz", rng.integers(0, 1000, (7, 6, 5)).astype(np.int16), slope=2.0, inter=-1024.0)
    img = load_image(path, axis=axis)
    mask = rng.random(img.array.shape) > 0.7
    out = write_mask(mask, img, tmp_path / f"mask{suffix}")
    written = nib.load(out)
    source = nib.load(path)
    assert written.shape == source.shape == (7, 6, 5)
    assert written.header.get_data_dtype() == np.uint8
    for which in ("get_qform", "get_sform"):  # the input's geometry, codes included
        (a, code_a), (b, code_b) = getattr(written.header, which)(coded=True), getattr(source.header, which)(coded=True)
        assert code_a == code_b and np.allclose(a, b, atol=1e-5)
    assert np.allclose(written.header.get_zooms(), source.header.get_zooms())
    data = np.asarray(written.dataobj)  # no scaling is left from the CT header (slope 2, intercept -1024)
    assert data.dtype == np.uint8 and set(np.unique(data).tolist()) <= {0, 1}
    assert np.array_equal(read_label(out, img), mask)
    # the same voxels as the image's: the mask's file voxel (i, j, k) is the image's file voxel (i, j, k)
    assert np.array_equal(load_image(out, axis=axis).array, mask.astype(np.float32))
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left


def test_nifti_4d_2d_and_singleton(tmp_path):
    with pytest.raises(DataError, match=r"4d\.nii\.gz is 4D with shape \(4, 5, 6, 3\); expected a 3D volume"):
        load_image(_nifti(tmp_path / "4d.nii.gz", np.zeros((4, 5, 6, 3), np.float32)))
    img = load_image(_nifti(tmp_path / "t1.nii.gz", np.ones((4, 5, 6, 1), np.float32)))
    assert img.array.shape == (5, 4, 6)
    write_mask(np.ones(img.array.shape, bool), img, tmp_path / "m.nii.gz")
    assert nib.load(tmp_path / "m.nii.gz").shape == (4, 5, 6, 1)
    flat = load_image(_nifti(tmp_path / "2d.nii", np.ones((4, 5), np.float32), np.diag([0.5, 0.5, 1.0, 1.0])))
    assert flat.is_volume and flat.array.shape == (1, 5, 4)  # RAS file: rows flipped to anterior-first
    write_mask(np.zeros((1, 5, 4), bool), flat, tmp_path / "flat.nii")
    assert nib.load(tmp_path / "flat.nii").shape == (4, 5)


def test_truncated_nifti(tmp_path):
    rng = np.random.default_rng(2)
    path = _nifti(tmp_path / "ct.nii.gz", rng.random((32, 32, 32)).astype(np.float32))
    raw = path.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"cut\.nii\.gz: the voxel data could not be read \(truncated or corrupt"):
        load_image(tmp_path / "cut.nii.gz")
    (tmp_path / "junk.nii").write_bytes(b"not a nifti file" * 30)
    with pytest.raises(DataError, match=r"junk\.nii could not be read as NIfTI"):
        load_image(tmp_path / "junk.nii")


def test_nifti_over_the_voxel_limit_is_refused_before_reading(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 1024))  # 2**32 voxels, 4 GiB of uint8, in a 352-byte file
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    (tmp_path / "bomb.nii").write_bytes(header.binaryblock + b"\0" * 4)
    with pytest.raises(DataError, match=r"bomb\.nii has shape \(2048, 2048, 1024\) = 4294967296 voxels, over the limit .*MAX_VOXELS=2147483648"):
        load_image(tmp_path / "bomb.nii")


# ---------------------------------------------------------------- DICOM


def test_dicom_series_order_hu_and_geometry(tmp_path):
    rng = np.random.default_rng(3)
    stored = rng.integers(0, 2000, (4, 5, 6))
    img = load_image(_series(tmp_path / "series", stored))
    assert img.is_volume and img.modality == "CT" and img.array.shape == (4, 5, 6)
    # slices in order along the normal although the files are shuffled; HU = 2 * stored - 1024
    assert np.array_equal(img.array, stored * 2.0 - 1024)
    assert np.allclose(img.meta["positions"], np.dot(_ORIGIN, _NORMAL) + 2.5 * np.arange(4))
    assert np.allclose(img.spacing, (2.5, 0.7, 0.9))
    assert nib.aff2axcodes(img.display_affine) == ("S", "P", "L")
    for dhw in [(0, 0, 0), (3, 4, 5), (2, 1, 3)]:
        assert np.allclose((img.display_affine @ [*dhw, 1])[:3], _dicom_world_ras(*dhw))


def test_dicom_write_mask_is_in_the_series_geometry(tmp_path):
    img = load_image(_series(tmp_path / "series", np.zeros((4, 5, 6))))
    mask = np.zeros(img.array.shape, bool)
    mask[2, 3, 4] = True
    written = nib.load(write_mask(mask, img, tmp_path / "mask.nii.gz"))
    data = np.asarray(written.dataobj)
    assert data.shape == (6, 5, 4) and data.dtype == np.uint8  # (column, row, slice), as dcm2niix
    (ijk,) = np.argwhere(data)
    assert np.allclose((written.affine @ [*ijk, 1])[:3], _dicom_world_ras(2, 3, 4), atol=1e-4)
    assert written.header.get_sform(coded=True)[1] == written.header.get_qform(coded=True)[1] == 1
    assert np.array_equal(read_label(tmp_path / "mask.nii.gz", img), mask)


def test_dicom_folder_with_two_series(tmp_path):
    folder = _series(tmp_path / "mixed", np.zeros((3, 4, 4)), series_uid="1.2.826.0.1.111")
    _series(folder, np.ones((2, 4, 4)), series_uid="1.2.826.0.1.222")
    with pytest.raises(DataError, match=r"mixed holds 2 series, expected one: 1\.2\.826\.0\.1\.111 \(3 files, CT\); "
                                        r"1\.2\.826\.0\.1\.222 \(2 files, CT\)"):
        load_image(folder)
    assert load_image(folder, series_uid="1.2.826.0.1.222").array.shape == (2, 4, 4)
    with pytest.raises(DataError, match=r"has no series '9\.9'"):
        load_image(folder, series_uid="9.9")


def test_dicom_series_with_a_missing_slice(tmp_path):
    folder = _series(tmp_path / "gap", np.zeros((6, 4, 4)), skip=(3,))
    with pytest.raises(DataError, match=r"gap is missing slice\(s\): 5\.000 mm between .* the median step being 2\.500 mm"):
        load_image(folder)


def test_dicom_duplicate_position_and_bad_files(tmp_path):
    folder = _series(tmp_path / "dup", np.zeros((3, 4, 4)))
    _ct_slice(folder / "extra.dcm", np.zeros((4, 4)), position=_ORIGIN, orientation=[*_ROW_DIR, *_COL_DIR])
    with pytest.raises(DataError, match="are at the same position"):
        load_image(folder)
    (tmp_path / "garbage.dcm").write_bytes(b"\x89garbage" * 40)
    with pytest.raises(DataError, match=r"garbage\.dcm is not a DICOM file"):
        load_image(tmp_path / "garbage.dcm")
    folder = _series(tmp_path / "withjunk", np.zeros((2, 4, 4)))
    (folder / "notes.txt").write_text("not DICOM")  # other files are ignored, but not a broken .dcm
    assert load_image(folder).array.shape == (2, 4, 4)
    (folder / "broken.dcm").write_bytes(b"\0" * 50)
    with pytest.raises(DataError, match=r"broken\.dcm is not a DICOM file"):
        load_image(folder)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match=r"empty holds no DICOM image file \(looked at 1 files"):
        load_image(tmp_path / "empty")


def test_truncated_dicom_pixel_data(tmp_path):
    _ct_slice(tmp_path / "one.dcm", np.full((16, 16), 1000), position=_ORIGIN, orientation=[*_ROW_DIR, *_COL_DIR])
    raw = (tmp_path / "one.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(raw[: len(raw) - 300])
    with pytest.raises(DataError, match=r"cut\.dcm"):
        load_image(tmp_path / "cut.dcm")


def test_single_dicom_file_is_a_2d_image(tmp_path):
    pixels = np.arange(20).reshape(4, 5) * 100
    _ct_slice(tmp_path / "slice", pixels, position=_ORIGIN, orientation=[*_ROW_DIR, *_COL_DIR])  # no extension
    img = load_image(tmp_path / "slice")
    assert not img.is_volume and img.modality == "CT" and img.spacing == (0.7, 0.9)
    assert np.array_equal(img.array, pixels * 2.0 - 1024)
    assert np.allclose((img.affine @ [3, 2, 0, 1])[:3], _dicom_world_ras(0, 2, 3))  # index (column, row, 0)
    out = write_mask(img.array > 0, img, tmp_path / "mask.png")
    assert np.array_equal(np.asarray(Image.open(out)), np.where(img.array > 0, 255, 0))
    # read_image: the CT windowed by the prompt's site, replicated to RGB
    rgb = read_image(tmp_path / "slice", prompt="lung nodule in CT")
    assert rgb.shape == (4, 5, 3) and np.array_equal(rgb[..., 0], to_uint8(img.array, modality="CT", window="lung"))


# ---------------------------------------------------------------- TIFF


def test_tiff_16_bit_grey_rgb_and_stack(tmp_path):
    rng = np.random.default_rng(4)
    grey = rng.integers(0, 60000, (20, 30)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "g16.tif", grey)
    img = load_image(tmp_path / "g16.tif")
    assert not img.is_volume and img.array.dtype == np.float32 and np.array_equal(img.array, grey)
    assert img.meta["source_dtype"] == "uint16"
    assert np.array_equal(to_uint8(img), to_uint8(grey.astype(np.float32)))  # percentiles, not a cast
    rgb = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "planar.tiff", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    for name in ("rgb.tif", "planar.tiff"):
        img = load_image(tmp_path / name)
        assert img.array.shape == (20, 30, 3) and np.array_equal(to_uint8(img), rgb)
    rgb16 = rng.integers(0, 4000, (8, 9, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    assert np.array_equal(load_image(tmp_path / "rgb16.tif").array, rgb16)
    stack = rng.integers(0, 4000, (4, 20, 30)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    img = load_image(tmp_path / "stack.tif")
    assert img.is_volume and img.affine is None and np.array_equal(img.array, stack)
    mask = stack > 2000
    write_mask(mask, img, tmp_path / "stack_mask.tif")
    assert np.array_equal(read_label(tmp_path / "stack_mask.tif", img), mask)
    with pytest.raises(ValueError, match="needs the file's orientation"):
        load_image(tmp_path / "stack.tif", axis="axial")


def test_truncated_tiff(tmp_path):
    tifffile.imwrite(tmp_path / "g.tif", np.ones((64, 64), np.uint16))
    raw = (tmp_path / "g.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"cut\.tif could not be read as a TIFF"):
        load_image(tmp_path / "cut.tif")


def test_tiff_whose_header_claims_a_huge_image(tmp_path):
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((8, 8), np.uint8))
    raw = bytearray((tmp_path / "small.tif").read_bytes())
    with tifffile.TiffFile(tmp_path / "small.tif") as tif:
        tags = tif.pages[0].tags
        offsets = {name: tags[name].valueoffset for name in ("ImageWidth", "ImageLength")}
        dtypes = {name: tags[name].dtype for name in ("ImageWidth", "ImageLength")}
    for name, offset in offsets.items():  # declare 60000 x 60000 pixels: 3.6e9 > twice Pillow's limit
        raw[offset: offset + (2 if dtypes[name] == 3 else 4)] = (60000).to_bytes(2 if dtypes[name] == 3 else 4, "little")
    (tmp_path / "bomb.tif").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"bomb\.tif is 60000x60000 pixels, too large .*MAX_IMAGE_PIXELS"):
        load_image(tmp_path / "bomb.tif")


def test_tiff_stack_over_the_voxel_limit(tmp_path, monkeypatch):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 4, 5), np.uint8), photometric="minisblack")
    monkeypatch.setattr(formats, "MAX_VOXELS", 59)  # the limit lives in boltzformer.io.formats
    with pytest.raises(DataError, match=r"stack\.tif has shape \(3, 4, 5\) = 60 voxels, over the limit .*MAX_VOXELS=59"):
        load_image(tmp_path / "stack.tif")


# ---------------------------------------------------------------- 2D images and labels


def test_png_modes_and_write_mask(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    img = load_image(png(tmp_path / "g.png", grey))
    assert img.array.shape == (3, 4) and img.meta["source_dtype"] == "uint8" and np.array_equal(to_uint8(img), grey)
    rgba = np.dstack([np.full((3, 4, 3), 9, np.uint8), np.zeros((3, 4), np.uint8)])
    assert load_image(png(tmp_path / "a.png", rgba)).array.shape == (3, 4, 3)  # alpha dropped
    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    img16 = load_image(png(tmp_path / "d.png", deep))
    assert img16.meta["source_dtype"] in ("uint16", "int32") and np.array_equal(img16.array, deep)
    mask = grey % 2 == 0
    out = write_mask(mask, img, tmp_path / "out" / "mask.png")
    assert np.array_equal(np.asarray(Image.open(out)), mask * 255)
    assert np.array_equal(read_label(out, img), mask)
    with pytest.raises(ValueError, match=r"mask has shape \(4, 3\) but the image .*g\.png has \(3, 4\)"):
        write_mask(mask.T, img, tmp_path / "m.png")
    with pytest.raises(ValueError, match=r"mask must be binary .*found 12 values: 0, 1, 2, 3, 4, 5, \.\.\."):
        write_mask(grey, img, tmp_path / "m.png")
    with pytest.raises(ValueError, match=r"must end in \.png"):
        write_mask(mask, img, tmp_path / "m.nii.gz")


def test_corrupt_png_and_pillow_limit(tmp_path, monkeypatch):
    raw = png(tmp_path / "ok.png", np.zeros((64, 64), np.uint8)).read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"cut\.png could not be read as an image"):
        load_image(tmp_path / "cut.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 * 64 > 2 * 100
    with pytest.raises(DataError, match=r"ok\.png is too large to decode safely"):
        load_image(tmp_path / "ok.png")


def test_unknown_files(tmp_path):
    with pytest.raises(DataError, match=r"nope\.nii\.gz does not exist"):
        load_image(tmp_path / "nope.nii.gz")
    (tmp_path / "scan.xyz").write_bytes(b"123")
    with pytest.raises(DataError, match=r"scan\.xyz has an unknown extension '\.xyz'; supported: PNG"):
        load_image(tmp_path / "scan.xyz")
    (tmp_path / "noext").write_bytes(b"\0" * 200)
    with pytest.raises(DataError, match=r"noext has an unknown extension ''"):
        load_image(tmp_path / "noext")


def test_2d_labels_must_be_binary_and_sized(tmp_path):
    image = load_image(png(tmp_path / "im.png", np.zeros((4, 6), np.uint8)))
    ones = np.zeros((4, 6), np.uint8)
    ones[1, 2] = 1
    assert np.array_equal(read_label(png(tmp_path / "ones.png", ones), image), ones)
    rgb = np.repeat((ones * 255)[..., None], 3, axis=-1)
    assert np.array_equal(read_label(png(tmp_path / "rgb.png", rgb), image), ones)  # grey stored as RGB
    soft = ones * 7
    soft[0, 0] = 1
    with pytest.raises(DataError, match=r"soft\.png must be binary .*found 3 values: 0, 1, 7"):
        read_label(png(tmp_path / "soft.png", soft), image)
    colour = rgb.copy()
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(DataError, match=r"colour\.png is a colour image"):
        read_label(png(tmp_path / "colour.png", colour), image)
    with pytest.raises(DataError, match=r"small\.png is 3x6 but its image .*im\.png is 4x6"):
        read_label(png(tmp_path / "small.png", np.zeros((3, 6), np.uint8)), image)


def test_nifti_labels_checked_against_the_image_grid(tmp_path):
    rng = np.random.default_rng(5)
    image = load_image(_nifti(tmp_path / "ct.nii.gz", rng.random((7, 6, 5)).astype(np.float32)))
    labels = rng.integers(0, 3, (7, 6, 5)).astype(np.uint8)
    got = read_label(_nifti(tmp_path / "lab.nii.gz", labels), image)
    assert got.dtype == np.uint8 and got.shape == image.array.shape
    assert np.array_equal(got, np.moveaxis(labels[::-1, ::-1, :], 1, 0))
    # the same grid stored in another axis order is put in the image's order
    affine = _oblique_affine()
    swapped = affine.copy()
    swapped[:, [0, 2]] = affine[:, [2, 0]]
    assert np.array_equal(read_label(_nifti(tmp_path / "swapped.nii", labels.transpose(2, 1, 0), swapped), image), got)
    shifted = affine.copy()
    shifted[:3, 3] += [0.0, 0.0, 1.0]
    with pytest.raises(DataError, match=r"moved\.nii lies on another world grid but its image .*ct\.nii\.gz: affines differ"):
        read_label(_nifti(tmp_path / "moved.nii", labels, shifted), image)
    with pytest.raises(DataError, match=r"short\.nii has shape \(7, 6, 4\) .* but its image .* has \(7, 6, 5\)"):
        read_label(_nifti(tmp_path / "short.nii", labels[..., :4]), image)
    with pytest.raises(DataError, match=r"prob\.nii holds non-integer values"):
        read_label(_nifti(tmp_path / "prob.nii", labels * 0.5), image)
    with pytest.raises(DataError, match="is a NIfTI volume but its image .* is a 2D image"):
        read_label(tmp_path / "lab.nii.gz", load_image(png(tmp_path / "x.png", np.zeros((2, 2), np.uint8))))


# ---------------------------------------------------------------- real data


def test_real_png_loads_as_read_image_reads_it(shared_data):
    meta = json.loads((shared_data / "biomedparse_demo" / "meta.json").read_text())
    pairs = {p["image"]: p for p in meta["pairs"]}
    for rel in list(pairs)[:2] + ["images/01_CT_lung.png"]:
        path = shared_data / "biomedparse_demo" / rel
        img = load_image(path, modality=pairs[rel]["modality"])
        reference = read_image(path)
        assert img.array.shape == reference.shape and np.array_equal(img.array, reference.astype(np.float32))
        assert np.array_equal(to_uint8(img, prompt=pairs[rel]["prompt"]), reference)  # 8-bit: never re-windowed
        mask = read_label(shared_data / "biomedparse_demo" / pairs[rel]["mask"], img)
        assert mask.shape == reference.shape[:2] and mask.max() == 1


def test_medical_image_is_a_plain_dataclass(tmp_path):
    img = MedicalImage(np.zeros((2, 2), np.float32), False, None, None, None, tmp_path / "x.png")
    assert img.meta == {} and img.display_affine is None


@pytest.mark.parametrize("case, needle", [
    ("nan", "no finite value"), ("constant", "one value everywhere"), ("tiny", "at least 16 a side"), ("strip", "aspect ratio"),
])
def test_images_that_cannot_give_a_meaningful_mask_are_refused(tmp_path, case, needle):
    import tifffile

    from boltzformer.io.medical import check_segmentable

    arrays = {"nan": np.full((32, 32), np.nan, np.float32), "constant": np.full((32, 32), 7.0, np.float32),
              "tiny": np.arange(1, dtype=np.float32).reshape(1, 1), "strip": np.random.default_rng(0).random((16, 400)).astype(np.float32)}
    tifffile.imwrite(tmp_path / f"{case}.tif", arrays[case])
    with pytest.raises(DataError, match=needle):
        check_segmentable(load_image(tmp_path / f"{case}.tif"))


def test_exif_orientation_is_honoured(tmp_path):
    from PIL import Image

    from boltzformer.io.images import read_image

    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :5] = 255  # a bright left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    shown = read_image(tmp_path / "photo.jpg")
    assert shown.shape == (40, 20, 3)  # as a viewer shows it
    assert shown[:5].mean() > 200 and shown[-5:].mean() < 50  # the left edge is now the top
    assert load_image(tmp_path / "photo.jpg").array.shape[:2] == (40, 20)
