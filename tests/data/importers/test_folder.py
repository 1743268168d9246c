"""Folder validation, copy and link (boltzformer.data.importers.folder). Named test_import_folder.py because
tests/data/test_folder.py tests boltzformer.data.folder and test files need unique basenames (no __init__.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from boltzformer.data.folder import FolderDataset
from boltzformer.data.importers import detect_kind, import_dataset
from boltzformer.io.images import DataError
from tests.data.importers.importers_helpers import _make_biomedparse, _meta
from tests.files import png


def test_folder_validation_copy_and_link(tmp_path):
    src = tmp_path / "ds"
    _make_biomedparse(tmp_path / "bp")
    import_dataset(tmp_path / "bp", src)
    assert detect_kind(src) == "folder"
    summary = import_dataset(src)  # validate in place
    assert summary.out is None and summary.n_pairs == 5 and summary.n_negative == 1
    copied = import_dataset(src, tmp_path / "copy")
    assert FolderDataset(tmp_path / "copy").ids == FolderDataset(src).ids and copied.out == str(tmp_path / "copy")
    import_dataset(src, tmp_path / "linked", link=True)
    some = next((tmp_path / "linked" / "images").iterdir())
    assert some.is_symlink() and len(FolderDataset(tmp_path / "linked")) == 5


def test_folder_validation_lists_every_problem(tmp_path):
    src = tmp_path / "ds"
    _make_biomedparse(tmp_path / "bp")
    import_dataset(tmp_path / "bp", src)
    meta = _meta(src)
    pairs = meta["pairs"]
    png(src / pairs[0]["mask"], (np.asarray(Image.open(src / pairs[0]["mask"])) > 0).astype(np.uint8))  # 0/1
    png(src / pairs[1]["mask"], np.zeros((5, 5), np.uint8))  # wrong size
    (src / pairs[4]["image"]).write_bytes(b"not a png")
    neg = next(p for p in pairs if p.get("negative"))
    neg["negative"], pairs[2]["negative"] = False, True  # pairs[2] has pixels
    (src / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError) as err:
        import_dataset(src)
    text = str(err.value)
    assert "4 problem(s)" in text
    assert f"{pairs[0]['mask']} (pair {pairs[0]['id']!r}) has grey values [1]" in text and "reads as empty" in text
    assert f"{pairs[1]['mask']} is 5x5 but its image" in text
    assert pairs[4]["image"].split("/")[-1] in text and "could not be read" in text
    assert f"{pairs[2]['mask']} (pair {pairs[2]['id']!r}) is marked negative" in text


def test_shared_folder_datasets_validate(shared_data):
    summary = import_dataset(shared_data / "kvasir_small_polyp")
    meta = json.loads((shared_data / "kvasir_small_polyp" / "meta.json").read_text())
    assert summary.kind == "folder" and summary.n_pairs == len(meta["pairs"]) and summary.n_negative == 0

