"""Files in, masks out: volumes slice by slice, folders of mixed files, resumable runs, bad files."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

import boltzformer
from boltzformer.cli import main
from boltzformer.predict.files import find_inputs, run_batch, segment_volume

from tests.io.test_medical import _series

PROMPTS = ["lung nodule in CT scan", "liver tumor"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return boltzformer.build_model("tiny", image_size=64, num_layers=3, num_queries=4, existence=True).eval()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    return boltzformer.save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "m.ckpt")


def _ct(path, shape=(40, 50, 6)):
    vol = np.random.default_rng(0).normal(-300, 400, shape).astype(np.int16)
    affine = np.diag([0.8, 0.7, 2.5, 1.0])
    affine[:3, 3] = [-10, 20, 30]
    nib.save(nib.Nifti1Image(vol, affine), path)
    return path


@pytest.fixture
def folder(tmp_path, shared_data):
    src = tmp_path / "in"
    src.mkdir()
    _ct(src / "ct.nii.gz")
    shutil.copy(next((shared_data / "lidc_lung_nodule" / "images").glob("*.png")), src / "slice.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (src / "notes.txt").write_text("not an image")
    return src


def test_segment_volume_is_seeded_and_gated_per_slice(model):
    vol = (np.random.default_rng(1).random((5, 30, 40)) * 255).astype(np.uint8)
    a = segment_volume(model, vol, PROMPTS, batch_size=2, seed=3, threshold=0.3)
    b = segment_volume(model, vol, PROMPTS, batch_size=2, seed=3, threshold=0.3)
    assert [r.prompt for r in a] == PROMPTS
    for ra, rb in zip(a, b):
        assert ra.mask.shape == ra.probability.shape == (5, 30, 40) and ra.existence.shape == (5,)
        assert np.array_equal(ra.probability, rb.probability)
    other_seed = segment_volume(model, vol, PROMPTS[:1], batch_size=2, seed=4, threshold=0.3)[0]
    assert not np.array_equal(other_seed.probability, a[0].probability)  # the seed reaches the sampler
    with torch.no_grad():
        model.decoder.existence.classifier.bias.fill_(-50.0)
    try:
        gated = segment_volume(model, vol, PROMPTS[:1], batch_size=2, seed=3, threshold=0.3)[0]
    finally:
        with torch.no_grad():
            model.decoder.existence.classifier.bias.zero_()
    assert np.array_equal(gated.probability, a[0].probability) and not gated.mask.any()
    ctx = segment_volume(model, vol, PROMPTS[:1], context="2.5d", batch_size=4, seed=3)[0]
    assert ctx.mask.shape == (5, 30, 40)
    with pytest.raises(ValueError, match="uint8"):
        segment_volume(model, vol.astype(np.float32), PROMPTS)


def test_folder_run_writes_masks_in_the_input_geometry_and_skips_bad_files(model, folder, tmp_path):
    out = tmp_path / "out"
    inputs = find_inputs(folder)
    assert [p.name for p in inputs] == ["broken.png", "ct.nii.gz", "slice.png"]
    logged = []
    rows = run_batch(model, inputs, PROMPTS, out, log=logged.append, batch_size=4)
    status = {(r.file.split("/")[-1], r.prompt): r.status for r in rows}
    assert status[("broken.png", PROMPTS[0])] == "error" and "broken.png" in logged[0]
    assert status[("ct.nii.gz", PROMPTS[1])] == "done" and status[("slice.png", PROMPTS[0])] == "done"
    src, masks = nib.load(folder / "ct.nii.gz"), sorted((out / "ct").glob("*.nii.gz"))
    assert len(masks) == 2
    for m in masks:
        written = nib.load(m)
        assert written.shape == src.shape and np.allclose(written.affine, src.affine)
        assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1}
    record = json.loads(next((out / "slice").glob("*_??????.json")).read_text())
    assert record["output"].endswith(".png") and record["existence"] is not None and "lesions" in record
    assert record["made_by"]["settings"]["threshold"] == 0.5 and record["source"]["kind"]["eight_bit"]
    assert record["intensity"]["mapping"] == "as stored"
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["pairs"]) == 6 and summary["made_by"]["model_config"] is not None
    assert not list(out.rglob("*.tmp"))


def test_a_second_run_skips_complete_outputs_and_redoes_damaged_ones(model, folder, tmp_path):
    out = tmp_path / "out"
    inputs = [folder / "ct.nii.gz", folder / "slice.png"]
    run_batch(model, inputs, PROMPTS, out, log=lambda s: None)
    damaged = [p for p in (out / "slice").glob("liver_tumor_*.png") if not p.name.endswith("_overlay.png")][0]
    damaged.write_bytes(damaged.read_bytes()[:10])  # a half-written mask from a crash
    rows = run_batch(model, inputs, PROMPTS, out, log=lambda s: None)
    status = {(r.file.split("/")[-1], r.prompt): r.status for r in rows}
    assert status == {
        ("ct.nii.gz", PROMPTS[0]): "skipped", ("ct.nii.gz", PROMPTS[1]): "skipped",
        ("slice.png", PROMPTS[0]): "skipped", ("slice.png", PROMPTS[1]): "done",
    }
    from PIL import Image

    assert np.asarray(Image.open(damaged)).shape == (512, 512)


def test_dicom_series_folder_gives_a_nifti_mask_in_the_series_geometry(model, tmp_path):
    from boltzformer.io.medical import load_image

    series = _series(tmp_path / "series", np.random.default_rng(0).integers(0, 1500, (4, 24, 20)))
    assert find_inputs(series) == [series]
    rows = run_batch(model, [series], ["lung nodule in CT scan"], tmp_path / "out", log=lambda s: None)
    assert rows[0].status == "done"
    written = nib.load(rows[0].output)
    image = load_image(series)
    assert written.shape == tuple(image.meta["file_shape"])
    assert np.allclose(written.affine, image.affine, atol=1e-4)


def test_cli_predict_on_a_folder_and_its_errors(checkpoint, folder, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(checkpoint), "--input", str(folder), "--prompt", PROMPTS[0],
            "--prompt", PROMPTS[1], "--out", str(out), "--quiet"]
    assert main(args) == 1  # one file failed; the others are done
    printed = capsys.readouterr().out
    assert "ct.nii.gz" in printed and "error: broken.png" in printed and "existence" in printed
    (folder / "broken.png").unlink()
    assert main(args) == 0
    assert "skipped" in capsys.readouterr().out
    # one mask file: one 2D image and one prompt only
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(folder / "ct.nii.gz"), "--prompt", "x",
                 "--out", str(tmp_path / "m.png")]) == 2
    assert "is a volume" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(folder / "slice.png"), "--prompt", "a",
                 "--prompt", "b", "--out", str(tmp_path / "m.png")]) == 2
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "nothing"), "--prompt", "a",
                 "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(folder), "--prompt", "a",
                 "--window", "40,abc", "--out", str(tmp_path / "o")]) == 2
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(folder), "--prompt", "x" * 5000,
                 "--out", str(tmp_path / "o")]) == 2


def test_a_rerun_redoes_exactly_the_pairs_whose_model_or_settings_changed(model, checkpoint, tmp_path):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 48)) * 255).astype(np.uint8)).save(src / "a8.png")
    Image.fromarray((rng.random((40, 48)) * 4000).astype(np.uint16)).save(src / "b16.png")
    inputs, out = find_inputs(src), tmp_path / "out"
    other = boltzformer.save_checkpoint(boltzformer.build_model("tiny", image_size=64, num_layers=3, num_queries=4,
                                                                existence=True), tmp_path / "other.ckpt")

    def run(ckpt=checkpoint, prompts=PROMPTS, **options):
        logged = []
        rows = run_batch(model, inputs, prompts, out, checkpoint=ckpt, log=logged.append, **options)
        return {(r.file.split("/")[-1], r.prompt): r.status for r in rows}, logged

    first, _ = run()
    assert set(first.values()) == {"done"} and len(first) == 4
    again, _ = run()
    assert set(again.values()) == {"skipped"}
    # the window changes only the 16-bit file's intensities (8-bit files are used as stored)
    windowed, logged = run(window="lung")
    assert windowed == {("a8.png", p): "skipped" for p in PROMPTS} | {("b16.png", p): "done" for p in PROMPTS}
    assert any("2 (file, prompt) pair(s) redone" in line and "window None -> 'lung'" in line for line in logged)
    # a new prompt adds its pairs; the others stay
    extra, _ = run(prompts=PROMPTS + ["kidney cyst"], window="lung")
    assert [k for k, v in extra.items() if v == "done"] == [("a8.png", "kidney cyst"), ("b16.png", "kidney cyst")]
    threshold, logged = run(threshold=0.3, window="lung")
    assert set(threshold.values()) == {"done"} and any("threshold 0.5 -> 0.3 (4)" in line for line in logged)
    model_changed, logged = run(ckpt=other, threshold=0.3, window="lung")
    assert set(model_changed.values()) == {"done"} and any("checkpoint (4)" in line for line in logged)
    assert set(run(ckpt=other, threshold=0.3, window="lung")[0].values()) == {"skipped"}
    assert set(run(ckpt=other, threshold=0.3, window="lung", force=True)[0].values()) == {"done"}
    record = json.loads(next((out / "b16").glob("*_??????.json")).read_text())
    assert record["made_by"]["checkpoint"] == {"path": str(other), "sha256": boltzformer.provenance.file_sha256(other)}
    assert record["intensity"]["mapping"] == "window"
