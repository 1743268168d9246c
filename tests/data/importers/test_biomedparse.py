"""The BiomedParse importer (boltzformer.data.importers.biomedparse): named PNGs and masks to a dataset folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from boltzformer.data.folder import FolderDataset
from boltzformer.data.importers import detect_kind, import_dataset
from boltzformer.io.images import DataError
from tests.data.importers.importers_helpers import _make_biomedparse, _mask, _meta
from tests.files import png


def test_biomedparse_import(tmp_path):
    src, out = tmp_path / "bp", tmp_path / "out"
    expected = _make_biomedparse(src)
    assert detect_kind(src) == "biomedparse"
    summary = import_dataset(src, out)
    assert summary.kind == "biomedparse" and summary.n_pairs == 5 and summary.n_negative == 1
    assert summary.n_images == 4 and summary.n_groups == 4  # 0004_CT_lung has no mask
    assert any("0004_CT_lung" in n for n in summary.notes)

    meta = _meta(out)
    by_source = {f"{p['source_split']}/{Path(p['source_mask']).name}": p for p in meta["pairs"]}
    assert set(by_source) == set(expected)
    for key, want in expected.items():
        got = _mask(out, by_source[key])
        assert got.dtype == np.uint8 and set(np.unique(got)) <= {0, 255}
        np.testing.assert_array_equal(got == 255, want, err_msg=key)
    prompts = {k: p["prompt"] for k, p in by_source.items()}
    assert prompts == {
        "train/0001_CT_abdomen_liver.png": "liver in abdomen CT",
        "train/0001_CT_abdomen_kidney+cyst.png": "kidney cyst in abdomen CT",
        "train/0002_MRI-FLAIR_brain_lower-grade+glioma.png": "lower-grade glioma in brain FLAIR MRI",
        "train/0003_X-Ray_chest_left+lung.png": "left lung in chest X-ray",
        "test/0001_pathology_liver_neoplastic+cells.png": "neoplastic cells in liver pathology image",
    }
    p = by_source["train/0001_CT_abdomen_kidney+cyst.png"]
    assert (p["modality"], p["site"], p["target"]) == ("CT", "abdomen", "kidney cyst")
    assert p["prompt_biomedparse_style"] == "kidney cyst in abdomen CT"
    assert by_source["train/0003_X-Ray_chest_left+lung.png"]["negative"] is True
    assert "negative" not in p
    # images are copied byte for byte; the two splits' "0001" images do not collide
    liver = by_source["train/0001_CT_abdomen_liver.png"]
    assert (out / liver["image"]).read_bytes() == (src / "train" / "0001_CT_abdomen.png").read_bytes()
    assert liver["image"] != by_source["test/0001_pathology_liver_neoplastic+cells.png"]["image"]

    ds = FolderDataset(out)
    assert len(ds) == 5 and len(ds.groups) == 4  # masks of one image share its group
    sample = ds[ds.ids.index(by_source["train/0003_X-Ray_chest_left+lung.png"]["id"])]
    assert sample["mask"].sum() == 0 and sample["area_fraction"] == 0.0
    assert not list(tmp_path.glob("out.tmp-*"))


def test_biomedparse_errors_name_the_file(tmp_path):
    src = tmp_path / "bp"
    _make_biomedparse(src)
    orphan = png(src / "train_mask" / "0009_CT_lung_nodule.png", np.zeros((24, 32), np.uint8))
    with pytest.raises(DataError, match=r"0009_CT_lung_nodule\.png has no image .*0009_CT_lung\.png"):
        import_dataset(src, tmp_path / "out")
    orphan.unlink()
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))

    png(src / "train" / "0005_CT.png", np.zeros((24, 32), np.uint8))
    bad = png(src / "train_mask" / "0005_CT_nodule.png", np.zeros((24, 32), np.uint8))
    with pytest.raises(DataError, match=r"0005_CT\.png.*\[IMAGE-NAME\]_\[MODALITY\]_\[SITE\]"):
        import_dataset(src, tmp_path / "out")
    bad.unlink()

    png(src / "train_mask" / "0001_CT_abdomen_spleen.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match=r"0001_CT_abdomen_spleen\.png is 10x10 but its image .* is 24x32"):
        import_dataset(src, tmp_path / "out")

