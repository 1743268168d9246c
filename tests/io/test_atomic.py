"""Atomic writes with the umask's permissions, output paths checked first, JSON for any file name."""

from __future__ import annotations

import json
import os
import stat

import pytest

from boltzformer.io.atomic import OutputPathError, atomic_paths, check_output, json_safe, make_temp_dir, write_json_atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_files_and_folders_get_the_umask_permissions(tmp_path, umask_022):
    with atomic_paths(tmp_path / "a.txt") as (tmp,):
        tmp.write_text("x")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644  # not mkstemp's 0600
    assert stat.S_IMODE(make_temp_dir(tmp_path, "d-").stat().st_mode) == 0o755  # not mkdtemp's 0700
    os.umask(0o077)
    write_json_atomic({"a": 1}, tmp_path / "private.json")
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600


def test_output_paths_are_checked_before_the_work(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(OutputPathError, match="is a folder; expected a file"):
        check_output(tmp_path / "folder.png", kind="file")
    with pytest.raises(OutputPathError, match="is a file; expected a folder"):
        check_output(tmp_path / "file", kind="folder")
    with pytest.raises(OutputPathError, match="is a file, so no folder can be made"):
        check_output(tmp_path / "file" / "sub" / "mask.png")
    assert check_output(tmp_path / "new" / "deeper" / "mask.png") == tmp_path / "new" / "deeper" / "mask.png"


def test_an_unwritable_output_folder_is_refused(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere: the permission check cannot be shown as root")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(OutputPathError, match="no permission"):
        check_output(locked / "mask.png")


def test_json_stays_utf8_for_file_names_that_are_not(tmp_path):
    name = os.fsdecode(b"scan\xff.png")  # a lone surrogate in Python
    path = write_json_atomic({"file": name, "ok": "café"}, tmp_path / "s.json")
    data = json.loads(path.read_bytes().decode("utf-8"))
    assert data == {"file": "scan\\xff.png", "ok": "café"}
    assert json_safe(["\ud800"]) == ["\\ud800"]
