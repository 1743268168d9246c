"""Pretrained weights: key mapping, the load report, and the whole model against the authors' code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import boltzformer
from boltzformer.model.checkpoint import CheckpointError
from boltzformer.model.weights import load_pretrained, map_official_key, map_sam2_key, map_xdecoder_key

GOLDEN = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "golden"

# the authors' hiera-s configuration shrunk as in ../shared/reference/golden/README.md
GOLDEN_OVERRIDES = {
    "backbone.options": {"embed_dim": 16, "num_heads": 1, "stages": [1, 1, 3, 1], "global_att_blocks": [3],
                         "backbone_channel_list": [128, 64, 32, 16]},
    "pixel_decoder.conv_dim": 32, "pixel_decoder.mask_dim": 16, "pixel_decoder.encoder_layers": 1,
    "pixel_decoder.encoder_heads": 2, "pixel_decoder.encoder_ffn_dim": 64,
    "text.width": 32, "text.layers": 1, "text.heads": 2,
    "decoder.hidden_dim": 32, "decoder.num_heads": 2, "decoder.ffn_dim": 64, "decoder.num_layers": 3, "decoder.num_queries": 4,
}


def test_key_mapping():
    assert map_official_key("sem_seg_head.predictor.query_feat.weight") == "decoder.query_feat.weight"
    assert map_official_key("sem_seg_head.predictor.language_encoder.lang_proj") == "text_encoder.lang_proj"
    assert map_official_key("sem_seg_head.pixel_decoder.layer_1.norm.weight") == "pixel_decoder.layer_1.norm.weight"
    assert map_official_key("output_deconv.weight") == "pigma.deconv.weight"
    assert map_official_key("sem_seg_head.predictor.class_embed") is None
    assert map_xdecoder_key("model.backbone.layers.0.blocks.0.gamma_1") == "backbone.layers.0.blocks.0.gamma_1"
    assert map_xdecoder_key("sem_seg_head.predictor.lang_encoder.lang_encoder.token_embedding.weight") is None
    assert map_sam2_key("image_encoder.trunk.pos_embed") == "backbone.trunk.pos_embed"
    assert map_sam2_key("memory_encoder.fuser.layers.0.gamma") is None


@pytest.fixture(scope="module")
def golden_model(clip_tokenizer_folder):
    if not (GOLDEN / "weights.safetensors").is_file():
        pytest.skip(f"golden reference files not found at {GOLDEN}")
    torch.manual_seed(0)
    return boltzformer.build_model("hiera-s", **GOLDEN_OVERRIDES).eval()


def test_official_checkpoint_loads_completely(golden_model):
    report = load_pretrained(golden_model, GOLDEN / "weights.safetensors")
    assert report.kind == "official"
    assert report.missing == {}
    assert set(report.unused) == {"sem_seg_head.predictor.class_embed", "sem_seg_head.predictor.language_encoder.logit_scale"}
    assert len(report.loaded) == 225


def _golden_forward(model, mode: str, monkeypatch=None):
    """The golden image and prompt string through ``model`` with ``mode`` attention: the prompt goes
    through our CLIP tokenizer and text encoder (checked to make the golden token ids on the way)."""
    shared = dict(np.load(GOLDEN / "shared.npz"))
    model.decoder.sampler.mode = mode
    assert model.config.text.tokenizer == "clip"
    ids, mask = model.text_encoder.tokenizer([str(shared["prompt"])])
    assert ids.tolist() == shared["input_ids"].tolist() and mask.tolist() == shared["attention_mask"].tolist()
    with torch.no_grad():
        return model(torch.from_numpy(shared["image_float32"]), [str(shared["prompt"])])


@pytest.mark.parametrize("case", ["full", "masked"])
def test_whole_model_matches_the_official_code(golden_model, case, monkeypatch):
    """From the prompt string: tokenizer -> text encoder -> decoder -> mask, against the authors' outputs
    (tolerances of ../shared/reference/golden/README.md)."""
    load_pretrained(golden_model, GOLDEN / "weights.safetensors")
    data = dict(np.load(GOLDEN / f"case_{case}.npz"))
    out = _golden_forward(golden_model, case, monkeypatch)
    torch.testing.assert_close(out.query_logits, torch.from_numpy(data["mask_logits_layer2"]), atol=2e-3, rtol=0)
    torch.testing.assert_close(out.logits, torch.from_numpy(data["pred_gmasks_final"]), atol=5e-4, rtol=0)


def test_sam2_checkpoint_loads_the_backbone_and_reports_the_rest(golden_model, tmp_path):
    from safetensors.torch import load_file

    weights = load_file(str(GOLDEN / "weights.safetensors"))
    sam2 = {"image_encoder." + k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")}
    sam2["memory_encoder.fuser.layers.0.gamma"] = torch.zeros(3)
    torch.save({"model": sam2}, tmp_path / "sam2.pt")
    report = load_pretrained(golden_model, tmp_path / "sam2.pt")
    assert report.kind == "sam2"
    assert len(report.loaded) == len(sam2) - 1 and list(report.unused) == ["memory_encoder.fuser.layers.0.gamma"]
    assert all(k.startswith(("pixel_decoder.", "decoder.", "text_encoder.", "pigma.")) for k in report.missing)
    assert not any(k.startswith("backbone.") for k in report.missing)


def test_bad_files_are_clear_errors(golden_model, tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint this package can read"):
        load_pretrained(golden_model, tmp_path / "other.pt")
    torch.save({"sem_seg_head.predictor.query_feat.weight": torch.zeros(7, 32)}, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"has shape \(7, 32\) but the model's decoder.query_feat.weight has \(4, 32\)"):
        load_pretrained(golden_model, tmp_path / "shape.pt")
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_pretrained(golden_model, tmp_path / "trunc.pt")


def test_presets_have_the_official_parameter_counts():
    import json

    layouts = GOLDEN.parent / "official-layouts"
    if not layouts.is_dir():
        pytest.skip(f"official layouts not found at {layouts}")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    for preset in ("hiera-s", "hiera-bp", "focal-l"):
        official = json.loads((layouts / f"boltzformer_{preset}.json").read_text())["param_count_by_submodule"]
        with torch.device("meta"):
            model = boltzformer.build_model(preset)
        assert count(model.backbone) == official["backbone"], preset
        assert count(model.pixel_decoder) == official["sem_seg_head.pixel_decoder"], preset
        # ours has no class_embed (512 x 512), which no segmentation output uses
        assert count(model.decoder) == official["sem_seg_head.predictor (excl. language_encoder)"] - 512 * 512, preset
        assert count(model.text_encoder) == official["sem_seg_head.predictor.language_encoder"] - 1, preset  # no logit_scale
        assert count(model.pigma) == official["output_deconv"] + official["output_conv"], preset


def _layout_checkpoint(layout_file: Path, path: Path, wrap: str | None) -> int:
    """A checkpoint with exactly the layout's keys and shapes. Each tensor is one stored value
    expanded to its shape, so the file stays small while shapes and keys are the real ones."""
    import json

    keys = json.loads(layout_file.read_text())["keys"]
    state = {k: torch.full((1,), 0.01).expand(*shape) if shape else torch.tensor(0.01) for k, shape in keys.items()}
    torch.save({wrap: state} if wrap else state, path)
    return len(keys)


@pytest.mark.parametrize("preset,layout", [("hiera-s", "sam2_hiera_small.ckpt.json"), ("hiera-bp", "sam2_hiera_base_plus.ckpt.json")])
def test_sam2_layout_loads_every_backbone_key(preset, layout, tmp_path):
    layout_file = GOLDEN.parent / "official-layouts" / layout
    if not layout_file.is_file():
        pytest.skip(f"official layout not found at {layout_file}")
    _layout_checkpoint(layout_file, tmp_path / "sam2.pt", "model")
    model = boltzformer.build_model(preset)
    report = load_pretrained(model, tmp_path / "sam2.pt")
    assert report.kind == "sam2"
    assert not [k for k in report.missing if k.startswith("backbone.")]
    assert sorted(report.loaded) == sorted(k for k in report.loaded if k.startswith("image_encoder."))
    assert len(report.loaded) == len([k for k in model.state_dict() if k.startswith("backbone.")])
    assert all(not k.startswith("image_encoder.") for k in report.unused)


def test_xdecoder_layout_loads_backbone_pixel_decoder_and_shared_decoder_parts(tmp_path):
    layout_file = GOLDEN.parent / "official-layouts" / "xdecoder_focall.ckpt.json"
    if not layout_file.is_file():
        pytest.skip(f"official layout not found at {layout_file}")
    _layout_checkpoint(layout_file, tmp_path / "xdecoder.pt", None)
    model = boltzformer.build_model("focal-l")
    report = load_pretrained(model, tmp_path / "xdecoder.pt")
    assert report.kind == "xdecoder"
    missing = set(report.missing)
    assert not [k for k in missing if k.startswith(("backbone.", "pixel_decoder."))]
    # as the layout README finds: the text encoder, the text prior and PiGMA are not in X-Decoder
    assert all(k.startswith(("text_encoder.", "decoder.initial_", "pigma.")) for k in missing), sorted(missing)[:5]
    assert any(k.startswith("sem_seg_head.predictor.transformer_cross_attention_layers.") for k in report.loaded)
    # the layout README: 775 official focal-l keys are covered; ours has no class_embed, so 774
    assert len(report.loaded) == 774


def test_cli_convert_writes_a_checkpoint_and_the_key_report(tmp_path, capsys):
    import json

    from boltzformer.cli import main

    if not (GOLDEN / "weights.safetensors").is_file():
        pytest.skip(f"golden reference files not found at {GOLDEN}")
    overrides = [f"--set={k}={json.dumps(v)}" for k, v in GOLDEN_OVERRIDES.items()]
    out = tmp_path / "init.ckpt"
    assert main(["convert", "--preset", "hiera-s", "--weights", str(GOLDEN / "weights.safetensors"), "--out", str(out), *overrides]) == 0
    printed = capsys.readouterr().out
    assert "official checkpoint: 225 tensors loaded, 2 in the file unused, 0 of the model's not set" in printed
    report = json.loads((tmp_path / "init.ckpt.load.json").read_text())
    assert report["kind"] == "official" and len(report["loaded"]) == 225
    model = boltzformer.load_checkpoint(out)
    assert model.config.decoder.num_queries == 4
    assert main(["convert", "--preset", "hiera-s", "--weights", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x.ckpt")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "x.ckpt").exists()


def _grid(x: torch.Tensor, g: int) -> torch.Tensor:
    H, W = x.shape[-2:]
    rows = torch.from_numpy(np.round(np.linspace(0, H - 1, g)).astype(np.int64))
    cols = torch.from_numpy(np.round(np.linspace(0, W - 1, g)).astype(np.int64))
    return x[..., rows, :][..., cols]


def test_whole_model_matches_the_official_code_with_non_constant_weights(golden_model, monkeypatch):
    """Case masked_nonconst: the overlay replaces every tensor the official init leaves constant
    (norm weights, attention biases, Hiera position tables), so dropped or swapped ones show."""
    load_pretrained(golden_model, GOLDEN / "weights.safetensors")
    report = load_pretrained(golden_model, GOLDEN / "weights_nonconst_overlay.safetensors")
    assert len(report.loaded) == 96
    data = dict(np.load(GOLDEN / "case_masked_nonconst.npz"))
    out = _golden_forward(golden_model, "masked", monkeypatch)
    for ours, name, atol in ((out.query_logits, "mask_logits_layer2", 2e-3), (out.logits, "pred_gmasks_final", 5e-4)):
        torch.testing.assert_close(_grid(ours, 32), torch.from_numpy(data[f"{name}_grid32"]), atol=atol, rtol=0)
        torch.testing.assert_close(ours[..., -32:, -32:], torch.from_numpy(data[f"{name}_corner32"]), atol=atol, rtol=0)
        mean = ours.double().mean(dim=(-2, -1)).flatten()
        torch.testing.assert_close(mean, torch.from_numpy(data[f"{name}_chan_mean"]).double(), atol=atol, rtol=0)


def test_own_checkpoint_is_refused_by_a_model_with_another_tokenizer(tmp_path, clip_tokenizer):
    sizes = {"num_layers": 2, "num_queries": 4, "text.vocab_size": 49408}
    torch.manual_seed(0)
    hashed = boltzformer.build_model("tiny", **sizes)
    boltzformer.save_checkpoint(hashed, tmp_path / "hash.ckpt")
    clip = boltzformer.build_model("tiny", **sizes, **{"text.tokenizer": "clip"})
    with pytest.raises(CheckpointError, match=r"hash.ckpt: its text weights were trained on 'hash' tokenizer ids but the model's text tokenizer is 'clip'"):
        load_pretrained(clip, tmp_path / "hash.ckpt")
    report = load_pretrained(hashed, tmp_path / "hash.ckpt")
    assert report.tokenizer == "hash" and report.missing == {} and "text tokenizer: hash" in report.summary()
