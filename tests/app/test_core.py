"""The app's plain functions without a browser: uploads, prompts, per-prompt results, error messages."""

from __future__ import annotations

import functools
import importlib
import os
import socket
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

import boltzformer
from boltzformer.app import lesion_rows, load_upload, parse_prompts, segment, summary_rows
from boltzformer.app.core import preview
from boltzformer.io.images import DataError
from boltzformer.io.medical import read_label
from boltzformer.io.windows import to_uint8
from tests.files import dicom_slice, png

PROMPT = "lower-grade glioma in brain FLAIR MRI"
LGG = ("lgg_brain_flair", "images", "TCGA_CS_4941_19960909_11.png")


def small_target_model(image: np.ndarray, *, existence: bool = False, fraction: float = 0.01):
    """A random tiny model whose output bias is lowered so that about ``fraction`` of ``image`` is
    above 0.5: real targets are small, and labelling an image-sized blob into lesions takes seconds."""
    torch.manual_seed(0)
    model = boltzformer.build_model("tiny", image_size=64, num_layers=3, num_queries=4, existence=existence).eval()
    prob = boltzformer.Predictor(model).predict_proba(image, PROMPT).astype(np.float64)
    logit = np.log(prob / (1 - prob))
    with torch.no_grad():  # the output is (correction + ensemble) / 2: the bias moves the logit by half of it
        model.pigma.conv.bias -= 2 * float(np.quantile(logit, 1 - fraction))
    return model


@functools.lru_cache(maxsize=None)
def _lgg_model(path: str):
    return small_target_model(preview(load_upload(path)))


def test_parse_prompts_splits_lines_and_semicolons():
    assert parse_prompts(" nodule ; cyst\n\n tumour;nodule ") == ["nodule", "cyst", "tumour"]
    with pytest.raises(ValueError, match="at least one prompt"):
        parse_prompts(" ; \n ")
    with pytest.raises(ValueError, match="at most 8 prompts"):
        parse_prompts(";".join(f"p{i}" for i in range(9)))


def test_segment_a_png_gives_every_result_per_prompt(shared_data, tmp_path):
    path = shared_data.joinpath(*LGG)
    image = load_upload(path)
    assert not image.is_volume and image.name == path.name
    model = _lgg_model(str(path))
    results = segment(boltzformer.Predictor(model, seed=1), image, f"{PROMPT}; tumour", out_dir=tmp_path / "a", samples=3)
    assert [r.prompt for r in results] == [PROMPT, "tumour"]
    # the mask is the mean of the K = 3 passes with seeds 1, 2, 3, thresholded
    expected = boltzformer.Predictor(model, seed=1).predict_samples(preview(image), PROMPT, 3)
    for r in results:
        saved = np.asarray(Image.open(r.mask_path))
        assert r.mask_path.suffix == ".png" and saved.shape == (256, 256) and set(np.unique(saved)) <= {0, 255}
        mask = saved > 127
        if r.prompt == PROMPT:
            np.testing.assert_array_equal(mask, expected["mask"])
            assert r.agreement == pytest.approx(expected["agreement"])
        assert 0 < r.mask_pixels == mask.sum() < 0.1 * mask.size
        assert sum(x.area_px for x in r.lesions) == r.mask_pixels and r.existence is None
        assert r.overlay.size == r.uncertainty.size == (256, 256)
        assert r.sampling_grid.height == 3 * (192 + 14)  # one row per decoder layer
    rows = summary_rows(results)
    assert rows[0][:2] == [PROMPT, "n/a"] and rows[0][3] == len(results[0].lesions)
    assert len(lesion_rows(results)) == sum(len(r.lesions) for r in results)
    # seeded: the same request gives the same masks
    again = segment(boltzformer.Predictor(model, seed=1), image, [PROMPT], out_dir=tmp_path / "b", samples=3)
    assert again[0].mask_path.read_bytes() == results[0].mask_path.read_bytes()


def test_existence_probability_is_shown_when_the_model_has_the_head(tmp_path):
    image = load_upload(png(tmp_path / "x.png", (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)))
    model = small_target_model(preview(image), existence=True)
    (r,) = segment(boltzformer.Predictor(model), image, PROMPT, out_dir=tmp_path, samples=2)
    expected = boltzformer.Predictor(model).predict_samples(preview(image), PROMPT, 2)["existence"]
    assert r.existence == pytest.approx(expected) and 0 <= r.existence <= 1
    assert summary_rows([r])[0][1] == f"{expected:.3f}"


def test_each_image_is_encoded_once_for_every_prompt_and_its_sampling_maps(tmp_path):
    image = load_upload(png(tmp_path / "x.png", (np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8)))
    model = small_target_model(preview(image))
    calls = []
    original = model.encode_image
    model.encode_image = lambda x: calls.append(x.shape[0]) or original(x)  # type: ignore[method-assign]
    try:
        results = segment(boltzformer.Predictor(model), image, ["nodule", "cyst", "vessel"], out_dir=tmp_path / "o", samples=3)
    finally:
        del model.encode_image
    assert calls == [1] and len(results) == 3  # K passes, three prompts and their sampling maps: one encoding


def test_nifti_volume_every_slice_and_a_mask_in_the_file_geometry(tmp_path):
    rng = np.random.default_rng(0)
    data = (rng.random((40, 32, 5)) * 300).astype(np.int16)  # X, Y, Z
    affine = np.diag([0.8, 0.7, 2.5, 1.0])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "scan.nii.gz")
    image = load_upload(tmp_path / "scan.nii.gz")
    assert image.is_volume and image.image.array.shape == (5, 32, 40) and image.pixel_spacing == pytest.approx((0.7, 0.8))
    shown = preview(image, 3)
    predictor = boltzformer.Predictor(small_target_model(shown, fraction=0.05))
    calls = []
    (r,) = segment(predictor, image, ["glioma"], out_dir=tmp_path / "out", samples=2, slice_index=3,
                   progress=lambda f, msg: calls.append(f))
    assert len(calls) == 5 and calls[-1] == 1.0
    assert r.mask_path.name.endswith("_mask.nii.gz")
    saved = nib.load(r.mask_path)
    assert saved.shape == data.shape and np.allclose(saved.affine, affine)
    labels = read_label(r.mask_path, image.image)  # back in the display order of the slices
    assert r.mask_pixels == labels[3].sum() > 0 and r.volume_voxels == labels.sum()
    assert sum(x.area_px for x in r.lesions) == r.mask_pixels
    assert r.lesions[0].area_mm2 == pytest.approx(r.lesions[0].area_px * 0.7 * 0.8, rel=1e-5)
    assert r.volume_ml == pytest.approx(r.volume_voxels * 0.8 * 0.7 * 2.5 / 1000, rel=1e-5)
    with pytest.raises(ValueError, match=r"slice must be in \[0, 4\]"):
        segment(predictor, image, ["glioma"], out_dir=tmp_path, slice_index=5)


def test_sliding_window_gives_the_predictors_masks_on_the_image_grid_without_sampling_maps(tmp_path):
    # not square and larger than the model's 64 x 64 input: several windows at the image's own resolution
    rows, cols = np.mgrid[:80, :100]
    pixels = (60 + 40 * np.sin(rows / 7) * np.cos(cols / 9)).astype(np.uint8)
    pixels[30:38, 50:60] = 230  # a small bright target
    image = load_upload(png(tmp_path / "x.png", pixels))
    model = small_target_model(preview(image), fraction=0.05)
    results = segment(boltzformer.Predictor(model, window_overlap=0.25, seed=1), image, [PROMPT, "tumour"],
                      out_dir=tmp_path / "o", samples=3)
    for r in results:  # the app adds nothing: the predictor's own masks, same seed and K
        expected = boltzformer.Predictor(model, window_overlap=0.25, seed=1).segment(pixels, [r.prompt], samples=3)[0]
        saved = np.asarray(Image.open(r.mask_path)) > 127
        assert saved.shape == (80, 100) and r.overlay.size == r.uncertainty.size == (100, 80)
        np.testing.assert_array_equal(saved, expected.mask)
        assert 0 < r.mask_pixels == expected.mask.sum() and r.agreement == pytest.approx(expected.agreement)
        assert r.agreement < 1  # the K passes differ, so the equal masks say the seeds are the same
        assert r.sampling_grid is None
    assert not list((tmp_path / "o").glob("*_sampling.png"))
    assert len(summary_rows(results)) == 2


def test_a_volume_with_a_sliding_window_is_segmented_slice_by_slice(tmp_path):
    data = (np.random.default_rng(2).random((40, 32, 3)) * 300).astype(np.int16)  # X, Y, Z
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.7, 2.5, 1.0])), tmp_path / "scan.nii.gz")
    image = load_upload(tmp_path / "scan.nii.gz")
    model = small_target_model(preview(image, 1), fraction=0.05)
    (r,) = segment(boltzformer.Predictor(model, window_overlap=0.5), image, ["glioma"], out_dir=tmp_path / "out",
                   samples=2, slice_index=1)
    expected = boltzformer.Predictor(model, window_overlap=0.5).segment_volume(
        to_uint8(image.image, prompt="glioma"), ["glioma"], batch_size=1, samples=2, overlap="independent", context="2d")[0]
    labels = read_label(r.mask_path, image.image)
    np.testing.assert_array_equal(labels > 0, expected.mask)
    assert r.sampling_grid is None and 0 < r.mask_pixels == expected.mask[1].sum() and r.volume_voxels == expected.mask.sum()


def test_the_page_with_a_sliding_window_says_there_are_no_sampling_maps(tmp_path):
    ui = importlib.import_module("boltzformer.app.ui")
    model = boltzformer.build_model("tiny", image_size=64, num_layers=3, num_queries=4)
    with pytest.raises(ValueError, match=r"window_overlap must be in \[0, 1\) or None, got 1.0"):
        ui.build_app(model, window_overlap=1.0)
    demo = ui.build_app(model, window_overlap=0.5, workdir=tmp_path / "demo")
    shown = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert "64 x 64 input slides over each image" in shown["window-note"].value and not shown["sampling"].visible
    session = ui._Session(model, tmp_path / "work", 2**20, 2**20, window_overlap=0.5)
    image, *_ = session.on_upload(str(png(tmp_path / "x.png", np.arange(48 * 40, dtype=np.uint8).reshape(48, 40))))
    summary, overlays, _, sampling, *_, status = session.on_segment(image, "nodule", 2, 0.5, 0, 0, "2d",
                                                                    progress=lambda *a, **k: None)
    assert len(summary) == len(overlays) == 1 and sampling == []
    assert "Segmented" in status and "Sampling maps are not drawn with a sliding window (overlap 0.5)" in status


def test_zipped_dicom_series_is_one_volume_and_member_names_stay_inside(tmp_path):
    rng = np.random.default_rng(1)
    for k in range(3):
        dicom_slice(tmp_path / f"s{k}.dcm", (rng.random((24, 20)) * 2000).astype(np.uint16), position=(0.0, 0.0, 2.5 * k),
                    instance=k + 1)
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for k in range(3):
            zf.write(tmp_path / f"s{k}.dcm", f"../../escape/s{k}.dcm")
        zf.writestr("__MACOSX/._s0.dcm", b"junk")
    image = load_upload(archive)
    assert image.is_volume and image.image.array.shape == (3, 24, 20) and image.image.modality == "CT"
    assert not (tmp_path.parent / "escape").exists()
    with pytest.raises(DataError, match=r"series.zip: volume of \(3, 24, 20\) = 1440 voxels is over the app's limit of 100"):
        load_upload(archive, max_voxels=100)
    bomb = tmp_path / "bomb.zip"  # 1 MB of zeros in about 1 kB: refused before anything is written
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("s0.dcm", b"\0" * 2**20)
    assert bomb.stat().st_size < 2**12
    with pytest.raises(DataError, match="bomb.zip: the zip archive holds 1 files, 1048576 bytes uncompressed"):
        load_upload(bomb, max_voxels=1000)


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("broken.png", b"\x89PNG\r\n\x1a\nnot really a png", "could not be read as an image"),
        ("notes.txt", b"hello", "unsupported file type .txt"),
        ("cut.nii.gz", b"\x1f\x8b\x08\x00truncated", "could not be read as NIfTI"),
        ("bad.zip", b"PK\x03\x04 not a zip", "could not be read as a zip archive"),
    ],
)
def test_a_bad_file_is_one_clear_error(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        load_upload(tmp_path / name)
    assert name in str(info.value)


def test_pixel_and_voxel_limits(tmp_path):
    png(tmp_path / "big.png", np.zeros((20, 30), np.uint8))
    with pytest.raises(DataError, match=r"big.png: image of \(20, 30\) = 600 pixels is over the app's limit of 500"):
        load_upload(tmp_path / "big.png", max_pixels=500)
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.int16), np.eye(4)), tmp_path / "v.nii")
    with pytest.raises(DataError, match="1000 voxels is over the app's limit of 999"):
        load_upload(tmp_path / "v.nii", max_voxels=999)


def test_segment_rejects_bad_options(tmp_path):
    image = load_upload(png(tmp_path / "x.png", np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)))
    predictor = boltzformer.Predictor(boltzformer.build_model("tiny", image_size=64, num_layers=3, num_queries=4))
    with pytest.raises(ValueError, match=r"samples \(K\) must be in \[2, 64\]"):
        segment(predictor, image, "nodule", out_dir=tmp_path, samples=1)
    with pytest.raises(ValueError, match="at least one prompt"):
        segment(predictor, image, " ;", out_dir=tmp_path)


def test_ui_handlers_show_one_message_and_the_app_is_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("GRADIO_ANALYTICS_ENABLED", raising=False)
    ui = importlib.reload(importlib.import_module("boltzformer.app.ui"))
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert ui.offline_theme()._stylesheets == []  # no web fonts to fetch
    model = boltzformer.build_model("tiny", image_size=64, num_layers=3, num_queries=4)
    session = ui._Session(model, tmp_path / "work", 2**20, 2**20)
    folder = tmp_path / "gradio" / "upload123"
    folder.mkdir(parents=True)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    state, *_, status = session.on_upload(str(folder / "broken.png"))
    assert state is None and status.startswith("**Error:** ") and "broken.png" in status
    assert str(folder) not in status and "Traceback" not in status
    *_, status = session.on_segment(None, "nodule", 4, 0.5, 0, 0, "2d", progress=lambda *a, **k: None)
    assert "upload an image first" in status
    image, *_ = session.on_upload(str(png(folder / "ok.png", np.arange(32 * 32, dtype=np.uint8).reshape(32, 32))))
    *_, status = session.on_segment(image, " ; ", 4, 0.5, 0, 0, "2d", progress=lambda *a, **k: None)
    assert status.startswith("**Error:** ") and "at least one prompt" in status


def test_cli_app_serves_on_localhost_and_rejects_a_missing_checkpoint(tmp_path, monkeypatch, capsys):
    from boltzformer.cli import main

    assert main(["app", "--checkpoint", str(tmp_path / "missing.ckpt")]) == 2
    assert "missing.ckpt does not exist" in capsys.readouterr().err
    ckpt = boltzformer.save_checkpoint(boltzformer.build_model("tiny", image_size=64, num_layers=3, num_queries=4),
                                       tmp_path / "m.ckpt")
    with socket.socket() as taken:  # a port in use: one line, exit 2
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["app", "--checkpoint", str(ckpt), "--port", str(taken.getsockname()[1])]) == 2
    assert "cannot serve there" in capsys.readouterr().err
    calls = []
    monkeypatch.setattr("boltzformer.app.serve", lambda checkpoint, **kw: calls.append((checkpoint, kw)))
    assert main(["app", "--checkpoint", "m.ckpt", "--port", "7999"]) == 0
    assert main(["app", "--checkpoint", "m.ckpt", "--window-overlap", "0.5"]) == 0
    assert calls == [("m.ckpt", {"host": "127.0.0.1", "port": 7999, "window_overlap": None}),
                     ("m.ckpt", {"host": "127.0.0.1", "port": None, "window_overlap": 0.5})]
    for bad in ("1.0", "-0.1"):  # checked as predict / evaluate do, before the checkpoint is read
        assert main(["app", "--checkpoint", str(tmp_path / "missing.ckpt"), "--window-overlap", bad]) == 2
        err = capsys.readouterr().err
        assert f"--window-overlap must be in [0, 1), got {float(bad)}" in err and len(err.strip().splitlines()) == 1
    assert len(calls) == 2


def test_the_app_removes_its_temporary_folder_on_exit():
    ui = importlib.import_module("boltzformer.app.ui")
    session = ui._Session(boltzformer.build_model("tiny", image_size=64, num_layers=3, num_queries=4), None, 2**20, 2**20)
    root = session.root
    (session.request_dir() / "mask.png").write_bytes(b"x")
    assert root.is_dir() and session._cleanup.atexit  # runs at interpreter exit too
    session._cleanup()
    assert not root.exists()
