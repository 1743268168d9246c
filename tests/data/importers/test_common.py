"""What every import shares (boltzformer.data.importers and .common): layout detection, argument checks, the
output folder never overwritten unless asked, and the provenance that lets a rerun skip an identical import."""

from __future__ import annotations

import pytest

from boltzformer.data.importers import import_dataset
from boltzformer.io.images import DataError
from tests.data.importers.importers_helpers import _make_biomedparse, _meta


def test_unknown_layout_and_arguments(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"stuff: unknown dataset layout.*notes\.txt"):
        import_dataset(tmp_path / "stuff", tmp_path / "out")
    with pytest.raises(DataError, match="is not a folder"):
        import_dataset(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(ValueError, match="kind must be one of"):
        import_dataset(tmp_path / "stuff", tmp_path / "out", kind="nnunet")
    src = tmp_path / "bp"
    _make_biomedparse(src)
    with pytest.raises(ValueError, match="output folder"):
        import_dataset(src)
    with pytest.raises(ValueError, match="inside the source"):
        import_dataset(src, src / "imported")


def test_out_is_never_overwritten_unless_asked(tmp_path):
    src, out = tmp_path / "bp", tmp_path / "out"
    _make_biomedparse(src)
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        import_dataset(src, out)
    assert (out / "keep.txt").read_text() == "mine"
    import_dataset(src, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "meta.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bp", "out"]  # no temporary folder left


def test_an_imported_folder_says_what_made_it_and_a_rerun_redoes_only_a_different_import(tmp_path):
    import stat

    src, out = tmp_path / "bp", tmp_path / "out"
    _make_biomedparse(src)
    import_dataset(src, out)
    made = _meta(out)["made_by"]
    assert made["source"] == str(src.resolve()) and made["kind"] == "biomedparse" and made["options"] == {"link": False}
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~_umask()  # not mkdtemp's 0700
    again = import_dataset(src, out)
    assert any("nothing redone" in n for n in again.notes) and again.n_pairs == 5
    with pytest.raises(FileExistsError, match="imported with other options"):
        import_dataset(src, out, link=True)
    (src / "extra.txt").write_text("a new file in the source")
    with pytest.raises(FileExistsError, match="source_listing_sha256"):
        import_dataset(src, out)


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask

