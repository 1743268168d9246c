"""CT windows, percentile normalisation and 2D / 2.5D slices of a volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from boltzformer.io.medical import MedicalImage
from boltzformer.io.windows import (
    DEFAULT_CT_WINDOW,
    WINDOWS,
    modality_for_prompt,
    to_uint8,
    volume_slices,
    window_for_prompt,
)


def test_biomedparse_windows_keep_its_bounds():
    # microsoft/BiomedParse CT_WINDOWS as (lower, upper) HU
    bounds = {"abdomen": (-150, 250), "lung": (-1000, 1000), "pelvis": (-55, 200), "liver": (-25, 230),
              "colon": (-68, 187), "pancreas": (-100, 200)}
    for site, (lower, upper) in bounds.items():
        center, width = WINDOWS[site]
        assert (center - width / 2, center + width / 2) == (lower, upper), site
    assert {"brain", "bone", "soft_tissue", "mediastinum"} <= set(WINDOWS)


def test_window_maps_hounsfield_units_linearly():
    hu = np.array([-2000.0, -1350.0, -600.0, 0.0, 150.0, 3000.0], np.float32)
    # the radiologists' lung window L-600 W1500: -600 HU is mid-grey
    assert to_uint8(hu, modality="CT", window="lung_radiology").tolist() == [0, 0, 128, 230, 255, 255]
    # BiomedParse's lung window [-1000, 1000]: 0 HU is mid-grey, -600 HU is dark
    assert to_uint8(hu, modality="CT", window="lung").tolist() == [0, 0, 51, 128, 147, 255]
    assert to_uint8(hu, window=(0.0, 2000.0)).tolist() == to_uint8(hu, window="lung").tolist()
    # CT without window nor site: the abdomen window [-150, 250]
    assert DEFAULT_CT_WINDOW == "abdomen"
    assert to_uint8(np.array([-150.0, 50.0, 250.0]), modality="CT").tolist() == [0, 128, 255]


def test_the_prompt_chooses_modality_and_window():
    hu = np.linspace(-1200, 1200, 50, dtype=np.float32).reshape(5, 10)
    assert (to_uint8(hu, prompt="liver tumor in abdomen CT") == to_uint8(hu, modality="CT", window="liver")).all()
    assert (to_uint8(hu, prompt="lung nodule in CT scan") == to_uint8(hu, modality="CT", window="lung")).all()
    # the modality given wins over the prompt's; MR is never windowed
    assert (to_uint8(hu, modality="MR", prompt="lung nodule in CT") == to_uint8(hu, modality="MR")).all()
    assert not (to_uint8(hu, modality="MR") == to_uint8(hu, modality="CT", window="lung")).all()


@pytest.mark.parametrize(
    "prompt, site",
    [
        ("lung nodule in CT scan", "lung"),
        ("COVID-19 infection in lung CT", "lung"),
        ("liver tumor in abdomen CT", "liver"),
        ("hepatic lesion", "liver"),
        ("kidney tumour in CT", "abdomen"),
        ("right adrenal gland in abdomen CT", "abdomen"),
        ("pancreatic cyst", "pancreas"),
        ("brain hemorrhage", "brain"),
        ("vertebral fracture", "bone"),
        ("prostate", "pelvis"),
        ("mediastinal lymph node", "mediastinum"),
        ("polyp in colonoscopy image", None),
        ("the target", None),
    ],
)
def test_window_for_prompt(prompt, site):
    assert window_for_prompt(prompt) == site


def test_modality_for_prompt():
    assert modality_for_prompt("nodule in lung CT") == "CT"
    assert modality_for_prompt("lower-grade glioma in brain FLAIR MRI") == "MR"
    assert modality_for_prompt("right adrenal gland in abdomen MRI") == "MR"
    assert modality_for_prompt("polyp in colonoscopy image") is None
    assert modality_for_prompt("acute infarct") is None  # "ct" inside a word does not count


def test_bad_windows_name_the_rule():
    with pytest.raises(ValueError, match=r"'lnug' is not one of .*did you mean 'lung'"):
        to_uint8(np.zeros(3), window="lnug")
    with pytest.raises(ValueError, match="width > 0"):
        to_uint8(np.zeros(3), window=(40, 0))
    with pytest.raises(ValueError, match=r"\(center, width\)"):
        to_uint8(np.zeros(3), window=(1, 2, 3))


def test_percentiles_of_the_non_zero_values():
    rng = np.random.default_rng(0)
    image = np.zeros((40, 50), np.float32)
    image[5:35, 5:45] = rng.uniform(100, 900, (30, 40))
    image[0, 0] = 1e6  # one hot pixel must not darken the rest
    out = to_uint8(image, modality="MR")
    lower, upper = np.percentile(image[image != 0], [0.5, 99.5])
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert out[image == 0].max() == 0  # background stays black
    assert out[0, 0] == 255 and out[image <= lower].max() == 0 and out[(image >= upper)].min() == 255
    inside = (image > lower) & (image < upper)
    expected = np.rint((image[inside] - lower) / (upper - lower) * 255)
    assert np.abs(out[inside].astype(int) - expected).max() <= 1
    assert np.median(out[image != 0]) > 100  # not squashed by the outlier


def test_one_normalisation_per_volume():
    volume = np.stack([np.full((4, 4), 100.0), np.full((4, 4), 300.0), np.full((4, 4), 500.0)]).astype(np.float32)
    volume[:, 0, 0] += [10.0, 20.0, 30.0]
    out = to_uint8(volume)  # not per slice: the slices keep their order of brightness
    assert out[0].mean() < out[1].mean() < out[2].mean()
    assert out.shape == volume.shape


def test_uint8_bool_constant_and_nan():
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert to_uint8(img, modality="CT") is img  # uint8 data is not touched
    assert to_uint8(np.array([True, False])).tolist() == [255, 0]
    assert to_uint8(np.full((3, 3), 7.0)).max() == 0
    assert to_uint8(np.array([0.0, 1.0, 1.0])).tolist() == [0, 255, 255]  # a 0/1 image
    assert to_uint8(np.array([np.nan, -150.0, 250.0]), modality="CT").tolist() == [0, 0, 255]


def test_an_image_read_from_8_bits_is_returned_as_is():
    pixels = np.array([[0, 128, 255]], np.float32)
    png = MedicalImage(pixels, False, None, None, "CT", Path("x.png"), {"source_dtype": "uint8"})
    assert to_uint8(png).tolist() == [[0, 128, 255]]  # not windowed although its modality is CT
    ct = MedicalImage(pixels - 1000, False, None, None, "CT", Path("x.dcm"), {"source_dtype": "float32"})
    assert to_uint8(ct).tolist() == to_uint8(pixels - 1000, modality="CT").tolist()
    inverted = MedicalImage(pixels - 1000, False, None, None, "CT", Path("x.dcm"), {"monochrome1": True})
    assert (to_uint8(inverted) == 255 - to_uint8(ct)).all()


def test_2d_and_2_5d_channel_order():
    D = 5
    volume = (np.arange(D, dtype=np.uint8) * 10)[:, None, None].repeat(3, 1).repeat(4, 2)  # slice d holds 10 d
    flat = volume_slices(volume)
    assert len(flat) == D and flat[3].shape == (3, 4, 3) and flat[3].dtype == np.uint8
    assert flat[3][0, 0].tolist() == [30, 30, 30]
    ctx = volume_slices(volume, context="2.5d")
    channels = [s[0, 0].tolist() for s in ctx]  # (slice, previous, next)
    assert channels[0] == [0, 10, 10]  # the first slice uses slice 1 as its previous
    assert channels[2] == [20, 10, 30]
    assert channels[4] == [40, 30, 30]  # the last slice uses slice D-2 as its next
    assert ctx[-1][0, 0].tolist() == channels[4]
    assert volume_slices(volume[:1], context="2.5d")[0][0, 0].tolist() == [0, 0, 0]
    with pytest.raises(IndexError, match="out of range"):
        ctx[D]


def test_volume_slices_checks_its_arguments():
    with pytest.raises(ValueError, match=r"\(D, H, W\) uint8"):
        volume_slices(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(D, H, W\) uint8"):
        volume_slices(np.zeros((3, 4), np.uint8))
    with pytest.raises(ValueError, match="context must be '2d' or '2.5d'"):
        volume_slices(np.zeros((2, 3, 4), np.uint8), context="3d")


def test_16_bit_png_with_a_ct_prompt_is_grey_levels_not_hu(tmp_path):
    """A 16-bit PNG holds grey levels: a CT prompt does not window it as HU (it would saturate to white)."""
    from PIL import Image

    from boltzformer.io.medical import load_image
    from boltzformer.io.windows import intensity_plan

    values = (np.random.default_rng(0).random((32, 40)) * 3000 + 20000).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "x16.png")
    image = load_image(tmp_path / "x16.png")
    plan = intensity_plan(image, prompt="lung nodule in CT scan")
    assert plan["mapping"] == "percentiles" and "not HU" in plan["why"]
    out = to_uint8(image, prompt="lung nodule in CT scan")
    assert 0 < out.mean() < 255 and len(np.unique(out)) > 100  # stretched, not saturated
    windowed = intensity_plan(image, window="lung", prompt="lung nodule in CT scan")
    assert windowed["mapping"] == "window" and windowed["unit"] == "HU"  # told otherwise: HU


def test_nifti_ct_is_windowed_as_hu(tmp_path):
    import nibabel as nib

    from boltzformer.io.medical import load_image
    from boltzformer.io.windows import intensity_plan

    nib.save(nib.Nifti1Image(np.full((20, 20, 2), -300, np.int16), np.eye(4)), tmp_path / "ct.nii.gz")
    plan = intensity_plan(load_image(tmp_path / "ct.nii.gz", modality="CT"), prompt="liver tumor")
    assert plan["mapping"] == "window" and (plan["center"], plan["width"]) == WINDOWS["liver"]
