"""``boltzformer predict`` and ``boltzformer explain``: what they write, and the inputs they refuse (boltzformer.cli.predict)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from boltzformer.cli import main
from tests.cli.cli_helpers import _fails
from tests.files import png


def test_predict_writes_a_mask_of_the_input_size_and_an_overlay(run_dir, tmp_path):
    image = png(tmp_path / "scan.png", (np.random.default_rng(0).random((150, 97)) * 255).astype(np.uint8))
    out = tmp_path / "out" / "mask.png"
    assert main(["predict", "--checkpoint", str(run_dir / "last.ckpt"), "--image", str(image), "--prompt", "nodule", "--out", str(out)]) == 0
    mask = np.array(Image.open(out))
    assert mask.shape == (150, 97) and set(np.unique(mask)) <= {0, 255}
    assert (tmp_path / "out" / "mask_overlay.png").is_file()
    found = json.loads((tmp_path / "out" / "mask_lesions.json").read_text())
    assert sum(x["area_px"] for x in found) == int((mask > 0).sum())
    assert all(0.5 < x["mean_probability"] <= x["max_probability"] <= 1.0 for x in found)
    # the same seed gives the same mask
    out2 = tmp_path / "out" / "mask2.png"
    main(["predict", "--checkpoint", str(run_dir / "last.ckpt"), "--image", str(image), "--prompt", "nodule", "--out", str(out2)])
    assert np.array_equal(mask, np.array(Image.open(out2)))


def test_predict_with_samples_writes_uncertainty(run_dir, tmp_path):
    image = png(tmp_path / "scan.png", (np.random.default_rng(0).random((64, 48)) * 255).astype(np.uint8))
    out = tmp_path / "m.png"
    assert main(["predict", "--checkpoint", str(run_dir / "last.ckpt"), "--image", str(image), "--prompt", "cyst",
                 "--out", str(out), "--samples", "3"]) == 0
    assert np.array(Image.open(tmp_path / "m_uncertainty.png")).shape == (64, 48)
    report = json.loads((tmp_path / "m_uncertainty.json").read_text())
    assert report["samples"] == 3 and 0.0 <= report["agreement"] <= 1.0


def test_explain_writes_sampling_maps(run_dir, tmp_path):
    image = png(tmp_path / "scan.png", (np.random.default_rng(0).random((80, 64)) * 255).astype(np.uint8))
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


def test_error_empty_prompt_writes_nothing(run_dir, tmp_path, capsys):
    image = png(tmp_path / "scan.png", np.zeros((64, 64), np.uint8))
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
    image = png(tmp_path / "scan.png", (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    _fails(["predict", "--checkpoint", str(ckpt), "--image", str(image), "--prompt", "x", "--out", str(tmp_path / "m.png")],
           capsys, str(ckpt), needle)
    assert not (tmp_path / "m.png").exists()
    _fails(["evaluate", "--checkpoint", str(ckpt), "--data", "synthetic", "--out", str(tmp_path / "r.json")], capsys, needle)
    assert not (tmp_path / "r.json").exists()

