"""The parser and dispatcher (boltzformer.cli.commands): --version, --help, unknown commands, exit codes."""

from __future__ import annotations

import pytest

from boltzformer.cli import commands, main
from tests.cli.cli_helpers import _fails


def test_version_and_output_paths_checked_before_the_work(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("boltzformer ")
    (tmp_path / "report.json").mkdir()
    _fails(["evaluate", "--checkpoint", str(tmp_path / "missing.ckpt"), "--data", "synthetic", "--out", str(tmp_path / "report.json")],
           capsys, "is a folder; expected a file path")  # before the checkpoint is even read
    folder = tmp_path / "images"
    folder.mkdir()
    _fails(["predict", "--checkpoint", str(run_dir / "last.ckpt"), "--input", str(folder), "--prompt", "x", "--out", str(tmp_path / "m.png")],
           capsys, "is a folder (images or a DICOM series): give a folder as --out")



def test_help_lists_every_command_and_a_bad_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "{train,evaluate,predict,explain,convert,demo,import,ablate,app}" in out
    assert set(commands.HANDLERS) == {"train", "evaluate", "predict", "explain", "convert", "demo", "import", "ablate", "app"}
    for argv in (["trian"], []):  # unknown, missing
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'trian'" in err and "required: command" in err


@pytest.mark.parametrize(("raised", "code"), [(ValueError("bad value"), 2), (FileNotFoundError("no file"), 2), (KeyboardInterrupt(), 130)],
                         ids=["ValueError", "FileNotFoundError", "KeyboardInterrupt"])
def test_handler_errors_become_one_line_and_an_exit_code(monkeypatch, capsys, raised, code):
    def handler(args):
        raise raised

    monkeypatch.setitem(commands.HANDLERS, "import", handler)
    assert main(["import", "anywhere"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err == (["interrupted"] if code == 130 else [f"boltzformer import: error: {raised}"])


def test_an_unexpected_error_is_not_hidden(monkeypatch):
    def handler(args):
        raise RuntimeError("a bug")

    monkeypatch.setitem(commands.HANDLERS, "import", handler)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["import", "anywhere"])
