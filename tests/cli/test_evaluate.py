"""``boltzformer evaluate``: the report files, reproducibility and when a rerun is skipped (boltzformer.cli.evaluate)."""

from __future__ import annotations

import json

from boltzformer.cli import main


def test_evaluate_writes_json_and_markdown(run_dir, tmp_path):
    out = tmp_path / "report.json"
    assert main(["evaluate", "--checkpoint", str(run_dir / "last.ckpt"), "--data", "synthetic", "--out", str(out), "--limit", "6"]) == 0
    report = json.loads(out.read_text())
    assert report["n"] == 6
    assert set(report["dice_by_size"]) == {"tiny", "small", "large"}
    assert 0.0 <= report["dice"] <= 1.0 and 0.0 <= report["failure_rate"] <= 1.0
    assert "| overall | 6 |" in out.with_suffix(".md").read_text()


def test_evaluate_is_reproducible_with_a_seed(run_dir, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for out in (a, b):
        main(["evaluate", "--checkpoint", str(run_dir / "last.ckpt"), "--data", "synthetic", "--out", str(out), "--limit", "4", "--seed", "3"])
    assert json.loads(a.read_text())["samples"] == json.loads(b.read_text())["samples"]


def test_evaluate_rerun_is_skipped_only_when_nothing_changed(run_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["evaluate", "--checkpoint", str(run_dir / "last.ckpt"), "--data", "synthetic", "--out", str(out), "--limit", "2"]
    assert main(args) == 0
    made = json.loads(out.read_text())["made_by"]
    assert len(made["checkpoint"]["sha256"]) == 64 and made["settings"]["split"] == "test" and made["model_config"]
    capsys.readouterr()
    assert main(args) == 0 and "up to date" in capsys.readouterr().out
    assert main(args + ["--seed", "1"]) == 0 and "seed 0 -> 1" in capsys.readouterr().err
    assert main(args + ["--split", "all", "--force"]) == 0
    assert json.loads(out.read_text())["split"] == "all"

