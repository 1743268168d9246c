"""BiomedParse v2: the preset, its released checkpoint layout (written here with random or constant
weights: real keys and shapes, wrapped as the released file), the tokenizer check, the memory a
conversion needs, and ``convert`` then ``predict`` on a NIfTI volume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import boltzformer
from boltzformer.model.checkpoint import CheckpointError
from boltzformer.cli import main
from boltzformer.model.weights import load_pretrained, map_official_key

LAYOUT = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "official-layouts" / "biomedparse_v2_3d.json"
LOSS_BUFFERS = {"loss_function.loss_fn.dice_loss.class_weight": torch.ones(2), "loss_function.cls_loss_fn.pos_weight": torch.ones(1)}

# biomedparse-v2's architecture (16 queries, 4 edge queries, existence head, no PiGMA) at small widths:
# a full-size model takes ~16 s to build and ~20 s per volume slice batch on 2 CPU cores
SMALL = {
    "backbone.options": {"embed_dim": 16, "depths": [1, 1, 1, 1]},
    "pixel_decoder.conv_dim": 32, "pixel_decoder.mask_dim": 16, "pixel_decoder.encoder_layers": 1,
    "pixel_decoder.encoder_heads": 2, "pixel_decoder.encoder_ffn_dim": 64,
    "text.width": 32, "text.layers": 1, "text.heads": 2,
    "decoder.hidden_dim": 32, "decoder.num_heads": 2, "decoder.ffn_dim": 64, "decoder.num_layers": 3,
    "image_size": 64,
}


def test_preset_is_the_released_configuration():
    cfg = boltzformer.get_preset("biomedparse-v2")
    assert (cfg.decoder.num_queries, cfg.edge_queries, cfg.decoder.existence, cfg.pigma) == (16, 4, True, False)
    assert cfg.text.tokenizer == "clip" and cfg.image_size == 512 and cfg.volume_context == "2.5d" and cfg.prompt_overlap == "nms"
    assert cfg.pad == "center"
    assert cfg.pixel_mean == pytest.approx((114.495,) * 3) and cfg.pixel_std == pytest.approx((57.63,) * 3)
    assert [boltzformer.get_preset(p).text.tokenizer for p in ("tiny", "hiera-s", "hiera-bp", "focal-l")] == ["hash"] + ["clip"] * 3
    with pytest.raises(ValueError, match="edge_queries needs pigma=False"):
        boltzformer.get_preset("focal-l", edge_queries=4)
    with pytest.raises(ValueError, match="text.tokenizer must be one of"):
        boltzformer.get_preset("tiny", **{"text.tokenizer": "bpe"})


def _official_key(ours: str) -> str:
    """Our key -> the released file's (without its "model." prefix); checked against map_official_key."""
    for new, old in (("decoder.query_feat.", "sem_seg_head.predictor.query_feat_."),
                     ("decoder.query_embed.", "sem_seg_head.predictor.query_embed_."),
                     ("decoder.existence.classifier", "sem_seg_head.predictor.classifier"),
                     ("decoder.", "sem_seg_head.predictor."), ("pixel_decoder.", "sem_seg_head.pixel_decoder."),
                     ("text_encoder.", "sem_seg_head.predictor.language_encoder."), ("backbone.", "backbone.")):
        if ours.startswith(new):
            key = old + ours[len(new):]
            assert map_official_key(key) == ours, key
            return key
    raise AssertionError(ours)


def _released_wrapping(state: dict, path: Path) -> Path:
    """As the released file: a Lightning dict, weights under "state_dict" with "model.", loss buffers,
    the grey normalisation buffers, optimizer state beside."""
    weights = {"model." + k: v for k, v in state.items()}
    weights.update({"model." + k: v for k, v in LOSS_BUFFERS.items()})
    weights["model.pixel_mean"] = torch.full((1, 3, 1, 1), 114.495)
    weights["model.pixel_std"] = torch.full((1, 3, 1, 1), 57.63)
    torch.save({"state_dict": weights, "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}}], "epoch": 7}, path)
    return path


def test_layout_loads_every_key_into_the_full_size_preset(tmp_path, clip_tokenizer):
    """Full size (372 M parameters), built without initialisation (meta device, then empty memory):
    every model key is set from the file and only the documented file keys are left unused."""
    if not LAYOUT.is_file():
        pytest.skip(f"the BiomedParse v2 layout {LAYOUT} is not present (../shared/reference)")
    keys = json.loads(LAYOUT.read_text())["keys"]
    state = {k: torch.full((1,), 0.01).expand(*s) if s else torch.tensor(0.01) for k, s in keys.items()
             if k not in ("pixel_mean", "pixel_std")}
    path = _released_wrapping(state, tmp_path / "biomedparse_v2.ckpt")
    with torch.device("meta"):
        model = boltzformer.build_model("biomedparse-v2")
    model = model.to_empty(device="cpu")
    report = load_pretrained(model, path)
    assert report.kind == "official" and report.tokenizer == "clip"
    assert report.missing == {}  # 0 missing
    assert not [k for k, why in report.unused.items() if why.startswith("this model has no")]  # 0 unexpected
    assert set(report.unused) == {"model.sem_seg_head.predictor.class_embed", "model.sem_seg_head.predictor.language_encoder.logit_scale",
                                  *("model." + k for k in LOSS_BUFFERS)}
    assert len(report.loaded) == len(keys) - 2  # all but class_embed and logit_scale, the buffers included
    assert set(report.ignored) == {"optimizer_states", "epoch"} and "AdamW" in report.ignored["optimizer_states"]
    assert float(model.pixel_mean.flatten()[0]) == pytest.approx(114.495)


def test_clip_text_weights_are_refused_by_a_hash_tokenizer_model(tmp_path):
    torch.manual_seed(0)
    model = boltzformer.build_model("biomedparse-v2", **SMALL, **{"text.tokenizer": "hash"})
    path = _released_wrapping({_official_key(k): v for k, v in model.state_dict().items()}, tmp_path / "v2.ckpt")
    with pytest.raises(CheckpointError, match=r"v2.ckpt: its text weights were trained on 'clip' tokenizer ids but the model's text tokenizer is 'hash'"):
        load_pretrained(model, path)


_MEMORY_SCRIPT = r"""
import resource, sys, torch, boltzformer
from boltzformer.model.weights import load_pretrained
model = boltzformer.build_model("tiny", **{"text.vocab_size": 50000, "text.width": 256})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
report = load_pretrained(model, sys.argv[1])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert not report.missing, list(report.missing)[:3]
print(peak - base)
"""


def test_conversion_does_not_read_the_whole_file_into_memory(tmp_path):
    """A 370 MB checkpoint (52 MB of weights, 320 MB of optimizer state, as in a Lightning file): loading
    maps it and reads only the weights, tensor by tensor, into the model. The peak resident memory of
    the loading process grows by less than half the file (reading it whole takes at least its size)."""
    torch.manual_seed(0)
    model = boltzformer.build_model("tiny", **{"text.vocab_size": 50000, "text.width": 256})
    state = model.state_dict()
    moments = {"exp_avg": torch.ones(40_000_000), "exp_avg_sq": torch.ones(40_000_000)}  # not zeros: pages of zeros may never be materialised
    path = tmp_path / "big.ckpt"
    torch.save({"state_dict": state, "optimizer_states": [{"state": {0: moments}}]}, path)
    del moments
    size = path.stat().st_size
    assert size > 300e6
    env = {**os.environ, "PYTHONPATH": str(Path(boltzformer.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    growth = int(out.stdout.strip().splitlines()[-1]) * 1024  # ru_maxrss is in KiB on Linux
    assert growth < 0.5 * size, f"peak RSS grew by {growth / 1e6:.0f} MB for a {size / 1e6:.0f} MB file"


def _nifti(path: Path, shape=(40, 50, 6)) -> Path:
    vol = np.random.default_rng(0).normal(-300, 400, shape).astype(np.int16)
    affine = np.diag([0.8, 0.7, 2.5, 1.0])
    affine[:3, 3] = [-10, 20, 30]
    nib.save(nib.Nifti1Image(vol, affine), path)
    return path


def test_convert_then_predict_a_volume_gives_masks_in_its_geometry(tmp_path, capsys, clip_tokenizer):
    """The released layout at reduced widths (see SMALL) -> ``convert`` -> ``predict`` with two prompts
    on a NIfTI volume: 2.5D slices, NMS across prompts, NIfTI masks with the input's shape and affine."""
    torch.manual_seed(0)
    source = boltzformer.build_model("biomedparse-v2", **SMALL)
    with torch.no_grad():  # random, not constant, existence and query weights
        for p in source.decoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    fake = _released_wrapping({_official_key(k): v for k, v in source.state_dict().items()}, tmp_path / "biomedparse_v2.ckpt")
    sets = [f"--set={k}={json.dumps(v)}" for k, v in SMALL.items()]
    converted = tmp_path / "v2.boltzformer.ckpt"
    assert main(["convert", "--preset", "biomedparse-v2", "--weights", str(fake), "--out", str(converted), *sets]) == 0
    printed = capsys.readouterr().out
    assert "tensors loaded, 2 in the file unused, 0 of the model's not set; text tokenizer: clip" in printed
    assert "not weights, skipped: epoch, optimizer_states" in printed
    model = boltzformer.load_checkpoint(converted)
    for k, v in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    assert model.config.pixel_mean == pytest.approx((114.495,) * 3)
    with pytest.raises(CheckpointError, match="was trained with the 'clip' tokenizer, not the configured 'hash'"):
        boltzformer.load_checkpoint(converted, **{"text.tokenizer": "hash"})

    ct = _nifti(tmp_path / "ct.nii.gz")
    prompts = ["liver tumor in CT", "kidney cyst in CT"]
    out = tmp_path / "masks"
    args = ["predict", "--checkpoint", str(converted), "--input", str(ct), "--out", str(out), "--quiet", "--threshold", "0.3"]
    assert main(args + [a for p in prompts for a in ("--prompt", p)]) == 0
    summary = json.loads((out / "summary.json").read_text())["pairs"]  # beside "made_by" and "options"
    assert [r["status"] for r in summary] == ["done", "done"]
    masks = [nib.load(r["output"]) for r in summary]
    reference = nib.load(ct)
    for m in masks:
        assert m.shape == reference.shape and np.allclose(m.affine, reference.affine)
    a, b = (np.asarray(m.dataobj) > 0 for m in masks)
    assert not (a & b).any()  # one label per voxel
    records = [json.loads(Path(r["output"]).with_suffix("").with_suffix(".json").read_text()) for r in summary]
    assert all(0.0 <= rec["existence"] <= 1.0 for rec in records)
