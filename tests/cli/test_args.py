"""The checks shared by the sub-commands (boltzformer.cli.args), run before any file is read."""

from __future__ import annotations

from tests.cli.cli_helpers import _fails


def test_error_missing_data_folder(tmp_path, capsys):
    _fails(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")], capsys, str(tmp_path / "nope"))
    assert not (tmp_path / "r").exists()

