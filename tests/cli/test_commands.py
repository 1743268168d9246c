"""The command line round trip (train -> evaluate -> predict) and every error path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from boltzformer.cli import main

MICRO = ["--max-steps", "2", "--batch-size", "2", "--val-every", "2", "--val-batches", "1", "--image-size", "64",
         "--set", "num_layers=3", "--set", "num_queries=4", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--data", "synthetic", "--out", str(out), *MICRO]) == 0
    return out


def _png(path, array):
    Image.fromarray(array).save(path)
    return path


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


def test_predict_writes_a_mask_of_the_input_size_and_an_overlay(run_dir, tmp_path):
    image = _png(tmp_path / "scan.png", (np.random.default_rng(0).random((150, 97)) * 255).astype(np.uint8))
    out = tmp_path / "out" / "mask.png"
    assert main(["predict", "--checkpoint", str(run_dir / "last.ckpt"), "--image", str(image), "--prompt", "nodule", "--out", str(out)]) == 0
    mask = np.array(Image.open(out))
    assert mask.shape == (150, 97) and set(np.unique(mask)) <= {0, 255}
    assert (tmp_path / "out" / "mask_overlay.png").is_file()
    found = json.loads((tmp_path / "out" / "mask_lesions.json").read_text())
    assert sum(x["area_px"] for x in found) == int((mask > 0).sum())
    # the same seed gives the same mask
    out2 = tmp_path / "out" / "mask2.png"
    main(["predict", "--checkpoint", str(run_dir / "last.ckpt"), "--image", str(image), "--prompt", "nodule", "--out", str(out2)])
    assert np.array_equal(mask, np.array(Image.open(out2)))


def _fails(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_error_unknown_preset(tmp_path, capsys):
    _fails(["train", "--data", "synthetic", "--out", str(tmp_path / "r"), "--preset", "tiyn"], capsys, "unknown preset 'tiyn'")
    assert not (tmp_path / "r").exists()


def test_error_missing_data_folder(tmp_path, capsys):
    _fails(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")], capsys, str(tmp_path / "nope"))
    assert not (tmp_path / "r").exists()


def test_error_image_mask_size_mismatch(tmp_path, capsys):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    pairs = []
    for i in range(4):
        _png(root / f"images/i{i}.png", np.zeros((32, 32, 3), np.uint8))
        _png(root / f"masks/m{i}.png", np.zeros((32, 16) if i == 2 else (32, 32), np.uint8))
        pairs.append({"id": f"m{i}", "image": f"images/i{i}.png", "mask": f"masks/m{i}.png", "prompt": "x"})
    (root / "meta.json").write_text(json.dumps({"pairs": pairs}))
    _fails(["train", "--data", str(root), "--out", str(tmp_path / "r"), *MICRO], capsys, "masks/m2.png is 32x16")
    assert not (tmp_path / "r").exists()


def test_error_empty_prompt_writes_nothing(run_dir, tmp_path, capsys):
    image = _png(tmp_path / "scan.png", np.zeros((64, 64), np.uint8))
    _fails(["predict", "--checkpoint", str(run_dir / "last.ckpt"), "--image", str(image), "--prompt", " ", "--out", str(tmp_path / "m.png")],
           capsys, "--prompt", "empty")
    assert list(tmp_path.iterdir()) == [image]


def test_error_missing_and_unreadable_image(run_dir, tmp_path, capsys):
    _fails(["predict", "--checkpoint", str(run_dir / "last.ckpt"), "--image", str(tmp_path / "no.png"), "--prompt", "x",
            "--out", str(tmp_path / "m.png")], capsys, "no.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    _fails(["predict", "--checkpoint", str(run_dir / "last.ckpt"), "--image", str(bad), "--prompt", "x",
            "--out", str(tmp_path / "m.png")], capsys, "bad.png")
    assert not (tmp_path / "m.png").exists()


@pytest.mark.parametrize("kind", ["foreign", "truncated", "missing"])
def test_error_checkpoint_that_is_not_ours(run_dir, tmp_path, capsys, kind):
    ckpt = tmp_path / "model.ckpt"
    if kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, ckpt)
        needle = "not a boltzformer checkpoint"
    elif kind == "truncated":
        data = (run_dir / "last.ckpt").read_bytes()
        ckpt.write_bytes(data[: len(data) // 3])
        needle = "could not be read"
    else:
        needle = "does not exist"
    image = _png(tmp_path / "scan.png", (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    _fails(["predict", "--checkpoint", str(ckpt), "--image", str(image), "--prompt", "x", "--out", str(tmp_path / "m.png")],
           capsys, str(ckpt), needle)
    assert not (tmp_path / "m.png").exists()
    _fails(["evaluate", "--checkpoint", str(ckpt), "--data", "synthetic", "--out", str(tmp_path / "r.json")], capsys, needle)
    assert not (tmp_path / "r.json").exists()


def test_explain_writes_sampling_maps(run_dir, tmp_path):
    image = _png(tmp_path / "scan.png", (np.random.default_rng(0).random((80, 64)) * 255).astype(np.uint8))
    out = tmp_path / "explain"
    assert main(["explain", "--checkpoint", str(run_dir / "last.ckpt"), "--image", str(image), "--prompt", "nodule", "--out", str(out)]) == 0
    arrays = np.load(out / "sampling_maps.npz")
    assert arrays["probability"].shape == (80, 64)
    assert arrays["temperatures"].tolist() == pytest.approx([1.0, 0.5, 1 / 3])
    # MICRO input 64: layers attend at 2x2, 4x4, 8x8 tokens; each distribution sums to queries x heads
    assert [arrays[f"layer{i}_distribution"].shape for i in range(3)] == [(2, 2), (4, 4), (8, 8)]
    assert arrays["layer2_distribution"].sum() == pytest.approx(4 * 4, rel=1e-4)
    assert 0 < arrays["layer2_sampled"].sum() <= 4 * 4 * 64
    assert Image.open(out / "sampling_maps.png").size == (384, 3 * (192 + 14))


def test_predict_with_samples_writes_uncertainty(run_dir, tmp_path):
    image = _png(tmp_path / "scan.png", (np.random.default_rng(0).random((64, 48)) * 255).astype(np.uint8))
    out = tmp_path / "m.png"
    assert main(["predict", "--checkpoint", str(run_dir / "last.ckpt"), "--image", str(image), "--prompt", "cyst",
                 "--out", str(out), "--samples", "3"]) == 0
    assert np.array(Image.open(tmp_path / "m_uncertainty.png")).shape == (64, 48)
    report = json.loads((tmp_path / "m_uncertainty.json").read_text())
    assert report["samples"] == 3 and 0.0 <= report["agreement"] <= 1.0


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
