"""SAM2 Hiera backbone: official key layouts, SAM2 checkpoint loading, and the authors' outputs.

The full-size Hiera-S / Hiera-B+ are only built on the meta device (keys, shapes, counts); the
numerical checks use the shrunk hiera-s of ``../shared/reference/golden`` (official weights and
fingerprints of its trunk and neck outputs on a 1024 x 1024 image).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from boltzformer.model.backbones.hiera import (
    HIERA_BP,
    HIERA_S,
    HieraBackbone,
    HieraConfig,
    sam2_state_dict_to_backbone,
)

REFERENCE = Path(__file__).resolve().parents[3].parent / "shared" / "reference"
LAYOUTS = REFERENCE / "official-layouts"
GOLDEN = REFERENCE / "golden"
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

# the golden README's Hydra overrides of boltzformer_hiera-s
GOLDEN_CONFIG = HieraConfig(
    embed_dim=16,
    num_heads=1,
    stages=(1, 1, 3, 1),
    global_att_blocks=(3,),
    window_spec=(8, 4, 14, 7),
    window_pos_embed_bkg_spatial_size=(7, 7),
    backbone_channel_list=(128, 64, 32, 16),
    d_model=256,
)

PRESETS = [
    pytest.param(HIERA_S, "sam2_hiera_small.ckpt.json", "boltzformer_hiera-s.json", id="hiera-s"),
    pytest.param(HIERA_BP, "sam2_hiera_base_plus.ckpt.json", "boltzformer_hiera-bp.json", id="hiera-bp"),
]


def _layout(name: str) -> dict:
    path = LAYOUTS / name
    if not path.is_file():
        pytest.skip(f"official layout {path} not found")
    return json.loads(path.read_text())


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- layouts of the released models


@pytest.mark.parametrize("config, sam2_file, boltzformer_file", PRESETS)
def test_official_layouts_and_counts(config, sam2_file, boltzformer_file):
    with torch.device("meta"):
        model = HieraBackbone(config)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}

    sam2 = _layout(sam2_file)["keys"]
    expected = {k[len("image_encoder."):]: v for k, v in sam2.items() if k.startswith("image_encoder.")}
    assert ours == expected

    official = _layout(boltzformer_file)
    backbone = {k[len("backbone."):]: v for k, v in official["keys"].items() if k.startswith("backbone.")}
    assert ours == backbone
    counts = official["param_count_by_submodule"]
    assert _count(model) == counts["backbone"]
    assert _count(model.trunk) == counts["backbone.trunk"]
    assert _count(model.neck) == counts["backbone.neck"]
    assert model.out_channels == (256, 256, 256, 256)
    assert model.size_divisor == 32


def test_hiera_s_count_is_the_documented_one():
    with torch.device("meta"):
        model = HieraBackbone(HIERA_S)
    assert (_count(model), _count(model.trunk), _count(model.neck)) == (34_316_992, 33_947_328, 369_664)


# ---------------------------------------------------------------- SAM2 checkpoint -> backbone


def test_sam2_checkpoint_loads_strictly(tmp_path):
    reference = HieraBackbone(GOLDEN_CONFIG)
    gen = torch.Generator().manual_seed(0)
    model_dict = {f"image_encoder.{k}": torch.randn(v.shape, generator=gen) for k, v in reference.state_dict().items()}
    # keys of the rest of SAM2, which the backbone must ignore
    model_dict["sam_mask_decoder.iou_token.weight"] = torch.randn(1, 256, generator=gen)
    model_dict["maskmem_tpos_enc"] = torch.randn(7, 1, 1, 64, generator=gen)
    torch.save({"model": model_dict}, tmp_path / "sam2_tiny.pt")

    checkpoint = torch.load(tmp_path / "sam2_tiny.pt", map_location="cpu", weights_only=True)
    state = sam2_state_dict_to_backbone(checkpoint["model"])
    assert set(state) == set(reference.state_dict())
    model = HieraBackbone(GOLDEN_CONFIG)
    report = model.load_state_dict(state, strict=True)
    assert not report.missing_keys and not report.unexpected_keys
    for k, v in model.state_dict().items():
        assert torch.equal(v, model_dict[f"image_encoder.{k}"]), k


def test_sam2_state_dict_to_backbone_is_pure_and_raises():
    sd = {"image_encoder.trunk.pos_embed": torch.zeros(1), "memory_encoder.x": torch.zeros(1)}
    assert list(sam2_state_dict_to_backbone(sd)) == ["trunk.pos_embed"]
    assert list(sd) == ["image_encoder.trunk.pos_embed", "memory_encoder.x"]
    with pytest.raises(ValueError, match=r"checkpoint\['model'\]"):
        sam2_state_dict_to_backbone({"model": sd})
    with pytest.raises(ValueError, match="image_encoder"):
        sam2_state_dict_to_backbone({"trunk.pos_embed": torch.zeros(1)})


# ---------------------------------------------------------------- the authors' outputs


def _golden_model(overlay: bool) -> HieraBackbone:
    safetensors = pytest.importorskip("safetensors.torch")
    model = HieraBackbone(GOLDEN_CONFIG).eval()
    weights = safetensors.load_file(str(GOLDEN / "weights.safetensors"))
    state = {k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")}
    model.load_state_dict(state, strict=True)
    if overlay:
        extra = safetensors.load_file(str(GOLDEN / "weights_nonconst_overlay.safetensors"))
        extra = {k[len("backbone."):]: v for k, v in extra.items() if k.startswith("backbone.")}
        assert {"trunk.pos_embed", "trunk.pos_embed_window"} <= set(extra)
        report = model.load_state_dict(extra, strict=False)
        assert not report.unexpected_keys
    return model


@pytest.fixture(scope="module")
def golden_runs():
    """Trunk and neck outputs for the golden image, with the plain and the overlay weights."""
    if not (GOLDEN / "weights.safetensors").is_file():
        pytest.skip(f"golden reference files not found at {GOLDEN}")
    shared = dict(np.load(GOLDEN / "shared.npz"))
    image = torch.from_numpy(shared["image_float32"])
    image = (image - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    runs = {}
    for case, overlay, file in (("plain", False, "shared.npz"), ("nonconst", True, "case_masked_nonconst.npz")):
        model = _golden_model(overlay)
        with torch.no_grad():
            trunk = model.forward_trunk(image)
            res = model(image)
        maps = {f"trunk_stage{i + 1}": t for i, t in enumerate(trunk)} | res
        runs[case] = (maps, dict(np.load(GOLDEN / file)))
    return runs


GOLDEN_MAPS = [f"trunk_stage{i}" for i in range(1, 5)] + [f"res{i}" for i in range(2, 6)]


@pytest.mark.parametrize("case", ["plain", "nonconst"])
@pytest.mark.parametrize("name", GOLDEN_MAPS)
def test_matches_official_outputs(golden_runs, case, name):
    maps, ref = golden_runs[case]
    x = maps[name].double().numpy()
    H, W = x.shape[-2:]
    rows = np.round(np.linspace(0, H - 1, 8)).astype(int)
    cols = np.round(np.linspace(0, W - 1, 8)).astype(int)
    np.testing.assert_allclose(x[:, :, rows][:, :, :, cols], ref[f"{name}_grid8"], rtol=0, atol=1e-5)
    if f"{name}_corner8" in ref:  # bottom-right, where window padding acts
        np.testing.assert_allclose(x[:, :, -8:, -8:], ref[f"{name}_corner8"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), ref[f"{name}_chan_mean"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), ref[f"{name}_chan_std"], rtol=0, atol=1e-5)
    _, total_abs, total_sq, lo, hi = ref[f"{name}_summary"]
    np.testing.assert_allclose([x.min(), x.max()], [lo, hi], rtol=0, atol=1e-5)
    np.testing.assert_allclose([np.abs(x).sum(), (x * x).sum()], [total_abs, total_sq], rtol=1e-5)


def test_golden_output_shapes(golden_runs):
    maps, _ = golden_runs["plain"]
    assert [tuple(maps[f"trunk_stage{i}"].shape) for i in range(1, 5)] == [
        (1, 16, 256, 256), (1, 32, 128, 128), (1, 64, 64, 64), (1, 128, 32, 32)]
    assert [tuple(maps[f"res{i}"].shape) for i in range(2, 6)] == [
        (1, 256, 256, 256), (1, 256, 128, 128), (1, 256, 64, 64), (1, 256, 32, 32)]


# ---------------------------------------------------------------- any size, errors


def _small_model() -> HieraBackbone:
    torch.manual_seed(0)
    model = HieraBackbone(GOLDEN_CONFIG).eval()
    with torch.no_grad():  # non-zero position tables, so that their resizing matters
        model.trunk.pos_embed.normal_(0, 0.1)
        model.trunk.pos_embed_window.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("size", [(96, 160), (32, 32), (224, 64)])
def test_any_multiple_of_32_runs(size):
    H, W = size
    model = _small_model()
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        out = model(x)
        single = model(x[1:])
    assert list(out) == ["res2", "res3", "res4", "res5"]
    for (name, feat), stride in zip(out.items(), (4, 8, 16, 32)):
        assert feat.shape == (2, 256, H // stride, W // stride), name
        assert torch.isfinite(feat).all()
        # windows never mix images of a batch
        torch.testing.assert_close(feat[1:], single[name], rtol=1e-4, atol=1e-5)


def test_backward_reaches_every_parameter():
    model = _small_model().train()
    out = model(torch.randn(1, 3, 64, 96))
    sum(f.square().mean() for f in out.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_drop_path_only_in_training():
    config = dataclasses.replace(GOLDEN_CONFIG, drop_path_rate=0.5)
    model = HieraBackbone(config)
    model.load_state_dict(_small_model().state_dict())
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        model.eval()
        a, b = model(x)["res5"], model(x)["res5"]
        model.train()
        torch.manual_seed(1)
        c = model(x)["res5"]
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_scalp_drops_the_coarsest_level():
    config = dataclasses.replace(GOLDEN_CONFIG, scalp=1)
    model = HieraBackbone(config)
    assert model.out_channels == (256, 256, 256)
    assert list(model(torch.randn(1, 3, 64, 64))) == ["res2", "res3", "res4"]


@pytest.mark.parametrize("shape", [(1, 3, 100, 96), (1, 3, 96, 48), (1, 1, 64, 64), (3, 64, 64)])
def test_bad_input_raises(shape):
    model = HieraBackbone(GOLDEN_CONFIG)
    with pytest.raises(ValueError, match="x"):
        model(torch.randn(*shape))


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"window_spec": (8, 4, 14)}, "window_spec"),
        ({"stages": (1, 0, 3, 1)}, "stages"),
        ({"q_pool": 4}, "q_pool"),
        ({"q_stride": (2, 1)}, "q_stride"),
        ({"global_att_blocks": (6,)}, "global_att_blocks"),
        ({"backbone_channel_list": (16, 32, 64, 128)}, "backbone_channel_list"),
        ({"fpn_interp_model": "linear"}, "fpn_interp_model"),
        ({"fuse_type": "max"}, "fuse_type"),
        ({"fpn_top_down_levels": (4,)}, "fpn_top_down_levels"),
        ({"scalp": 4}, "scalp"),
        ({"embed_dim": 18, "num_heads": 4, "backbone_channel_list": None}, "heads"),
    ],
)
def test_bad_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(GOLDEN_CONFIG, **overrides)


def test_config_must_be_a_hiera_config():
    with pytest.raises(TypeError, match="config"):
        HieraBackbone({"embed_dim": 16})


def test_odd_window_before_query_pooling_raises():
    config = dataclasses.replace(GOLDEN_CONFIG, window_spec=(8, 4, 7, 7))
    with pytest.raises(ValueError, match="window_spec"):
        HieraBackbone(config)


def test_config_accepts_lists_and_presets_match_sam2():
    config = HieraConfig(embed_dim=16, stages=[1, 1, 3, 1], global_att_blocks=[3], backbone_channel_list=[128, 64, 32, 16])
    assert config.stages == (1, 1, 3, 1) and config.backbone_channel_list == (128, 64, 32, 16)
    assert HIERA_S.trunk_channels == (96, 192, 384, 768) and HIERA_S.stage_heads == (1, 2, 4, 8)
    assert HIERA_BP.trunk_channels == (112, 224, 448, 896) and HIERA_BP.stage_heads == (2, 4, 8, 16)
    assert dataclasses.replace(HIERA_S, backbone_channel_list=None) == HieraConfig()
