"""``boltzformer train``, its resume and fine-tuning, and its errors (boltzformer.cli.train)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from boltzformer.cli import main
from tests.cli.cli_helpers import MICRO, _fails
from tests.files import png


def test_train_writes_checkpoint_config_and_logs(run_dir):
    assert (run_dir / "last.ckpt").is_file()
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["model"]["image_size"] == 64 and cfg["model"]["decoder"]["num_layers"] == 3
    assert cfg["train"]["max_steps"] == 2
    assert (run_dir / "logs" / "metrics.csv").is_file()
    ckpt = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["boltzformer"]["format"] == 1


def test_resume_continues_the_run(run_dir, tmp_path):
    import shutil

    run = tmp_path / "resumed"
    shutil.copytree(run_dir, run)
    assert main(["train", "--data", "synthetic", "--out", str(run), *MICRO[:-1], "--max-steps", "4", "--resume", "--quiet"]) == 0
    assert torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 4


def test_init_fine_tunes_from_a_checkpoint(run_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["train", "--data", "synthetic", "--out", str(out), *MICRO, "--init", str(run_dir / "last.ckpt")]) == 0
    assert torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 2
    # weights of another size do not fit: one clear error, no run folder
    bad = tmp_path / "bad"
    _fails(["train", "--data", "synthetic", "--out", str(bad), *MICRO, "--set", "hidden_dim=32", "--init", str(run_dir / "last.ckpt")],
           capsys, "does not fit the model being trained")
    assert not bad.exists()


def test_train_refuses_to_overwrite_a_run(run_dir, capsys):
    assert main(["train", "--data", "synthetic", "--out", str(run_dir), *MICRO]) == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_with_other_settings_is_refused_and_touches_nothing(run_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(["train", "--data", "synthetic", "--out", str(run), *MICRO, "--max-steps", "4", "--resume", "--preset", "hiera-s"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "model.preset 'tiny' (run) vs 'hiera-s' (asked)" in err
    assert main(["train", "--data", "synthetic", "--out", str(run), *MICRO, "--max-steps", "4", "--resume", "--data-seed", "3"]) == 2
    assert "data_seed 0 (run) vs 3 (asked)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # config.json untouched


def test_error_unknown_preset(tmp_path, capsys):
    _fails(["train", "--data", "synthetic", "--out", str(tmp_path / "r"), "--preset", "tiyn"], capsys, "unknown preset 'tiyn'")
    assert not (tmp_path / "r").exists()


def test_error_image_mask_size_mismatch(tmp_path, capsys):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    pairs = []
    for i in range(4):
        png(root / f"images/i{i}.png", np.zeros((32, 32, 3), np.uint8))
        png(root / f"masks/m{i}.png", np.zeros((32, 16) if i == 2 else (32, 32), np.uint8))
        pairs.append({"id": f"m{i}", "image": f"images/i{i}.png", "mask": f"masks/m{i}.png", "prompt": "x"})
    (root / "meta.json").write_text(json.dumps({"pairs": pairs}))
    _fails(["train", "--data", str(root), "--out", str(tmp_path / "r"), *MICRO], capsys, "masks/m2.png is 32x16")
    assert not (tmp_path / "r").exists()



def test_a_bad_recipe_option_is_one_line_naming_it_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    _fails(["train", "--data", "synthetic", "--out", str(out), *MICRO, "--copy-paste", "1.5"], capsys,
           "--copy-paste", "[0, 1]")
    assert not out.exists()
    _fails(["train", "--data", "synthetic", "--out", str(out), *MICRO, "--patch-overlap", "0", "--target-fraction", "1.2"],
           capsys, "--target-fraction", "[0, 1]")
    _fails(["train", "--data", "synthetic", "--out", str(out), *MICRO, "--target-fraction", "0.3"], capsys,
           "--target-fraction", "--patch-overlap")
    assert not out.exists()
    with pytest.raises(SystemExit):  # argparse's choices: the loss and the scale jitter
        main(["train", "--data", "synthetic", "--out", str(out), "--loss", "focal"])
    assert "dice_focal" in capsys.readouterr().err


def test_patch_options_reach_the_training_config():
    import argparse

    from boltzformer.cli.train import _train_configs, add_train_args

    p = argparse.ArgumentParser()
    add_train_args(p)
    _, tc = _train_configs(p.parse_args(["--patch-overlap", "0.25",
                                         "--target-fraction", "0.33"]))
    assert (tc.patch_overlap, tc.target_fraction) == (0.25, 0.33)
    _, default = _train_configs(p.parse_args(["--patch-overlap", "0"]))
    assert default.target_fraction == 0.8
