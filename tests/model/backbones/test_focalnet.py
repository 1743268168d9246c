"""FocalNet backbone: the official key layout, shapes and gradients, X-Decoder key mapping, save/load."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from boltzformer.model.backbones.focalnet import (
    FOCAL_L,
    FocalNetBackbone,
    FocalNetConfig,
    xdecoder_state_dict_to_backbone,
)

LAYOUTS = Path(__file__).resolve().parents[3].parent / "shared" / "reference" / "official-layouts"
SMALL = replace(FOCAL_L, embed_dim=24, depths=(1, 1, 2, 1))


def _layout(name: str) -> tuple[dict[str, list[int]], dict]:
    path = LAYOUTS / name
    if not path.is_file():
        pytest.skip(f"official layout not found at {path}")
    data = json.loads(path.read_text())
    backbone = {k.removeprefix("backbone."): v for k, v in data["keys"].items() if k.startswith("backbone.")}
    return backbone, data


def _small(seed: int = 0) -> FocalNetBackbone:
    torch.manual_seed(seed)
    return FocalNetBackbone(SMALL)


@pytest.fixture(scope="module")
def focal_l_meta() -> FocalNetBackbone:
    with torch.device("meta"):
        return FocalNetBackbone(FOCAL_L)


@pytest.mark.parametrize("name", ["boltzformer_focal-l.json", "xdecoder_focall.ckpt.json"])
def test_focal_l_matches_the_official_layout(focal_l_meta, name):
    expected, _ = _layout(name)
    ours = {k: list(v.shape) for k, v in focal_l_meta.state_dict().items()}
    assert sorted(set(ours) ^ set(expected)) == []
    assert ours == expected


def test_focal_l_parameter_count(focal_l_meta):
    _, data = _layout("boltzformer_focal-l.json")
    count = sum(p.numel() for p in focal_l_meta.parameters())
    assert count == data["param_count_by_submodule"]["backbone"] == 205_746_936
    assert focal_l_meta.out_channels == (192, 384, 768, 1536)


def test_small_forward_backward_strides_channels_and_gradients():
    net = _small().train()
    x = torch.randn(2, 3, 96, 160)
    out = net(x)
    assert net.out_channels == (24, 48, 96, 192)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (2, 24, 24, 40), "res3": (2, 48, 12, 20), "res4": (2, 96, 6, 10), "res5": (2, 192, 3, 5),
    }
    sum(v.square().mean() for v in out.values()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert net.patch_embed.proj.weight.grad.abs().sum() > 0


def test_sizes_not_multiple_of_32_are_padded_and_rounded_up():
    out = _small().eval()(torch.randn(1, 3, 100, 72))
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(25, 18), (13, 9), (7, 5), (4, 3)]


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients():
    x = torch.randn(1, 3, 32, 32)
    grads = []
    for ckpt in (False, True):
        net = _small(seed=1).train()
        net.gradient_checkpointing = ckpt
        torch.manual_seed(7)  # the same drop-path draws in both runs
        out = net(x)
        out["res5"].sum().backward()
        grads.append((out["res5"].detach(), net.layers[0].blocks[0].modulation.f.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_out_indices_subset():
    net = FocalNetBackbone(replace(SMALL, out_indices=(1, 3)))
    assert net.out_channels == (48, 192)
    assert not hasattr(net, "norm0") and hasattr(net, "norm3")
    assert set(net.eval()(torch.randn(1, 3, 64, 64))) == {"res3", "res5"}


def test_pre_ln_and_plain_embedding_variants_run():
    cfg = replace(SMALL, use_postln=False, use_conv_embed=False, use_layerscale=False, use_postln_in_modulation=True)
    net = FocalNetBackbone(cfg)
    assert "layers.0.blocks.0.modulation.ln.weight" in net.state_dict()
    assert net.patch_embed.proj.kernel_size == (4, 4)
    assert net.layers[0].downsample.proj.kernel_size == (2, 2)
    assert net.eval()(torch.randn(1, 3, 64, 64))["res5"].shape == (1, 192, 2, 2)


def test_xdecoder_state_dict_to_backbone():
    t = [torch.full((2,), float(i)) for i in range(6)]
    sd = {
        "model.backbone.patch_embed.proj.weight": t[0],
        "model.backbone.norm3.bias": t[1],
        "backbone.layers.0.blocks.0.gamma_1": t[2],  # no "model." prefix: kept as well
        "model.sem_seg_head.predictor.query_feat.weight": t[3],
        "model.backbone_proj": t[4],  # a different module that merely starts with "backbone"
        "criterion.empty_weight": t[5],
    }
    out = xdecoder_state_dict_to_backbone(sd)
    expected = {"patch_embed.proj.weight": t[0], "norm3.bias": t[1], "layers.0.blocks.0.gamma_1": t[2]}
    assert list(out) == list(expected)
    assert all(out[k] is v for k, v in expected.items())  # not copied
    assert "model.backbone.norm3.bias" in sd  # the input is left as it was


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"model.sem_seg_head.x": torch.zeros(1)}, "no 'backbone"),
        ({"model.backbone.a": torch.zeros(1), "backbone.a": torch.zeros(1)}, "twice"),
    ],
)
def test_xdecoder_state_dict_to_backbone_rejects(bad, match):
    with pytest.raises(ValueError, match=match):
        xdecoder_state_dict_to_backbone(bad)
    with pytest.raises(TypeError, match="mapping"):
        xdecoder_state_dict_to_backbone([("backbone.a", torch.zeros(1))])  # type: ignore[arg-type]


def test_checkpoint_round_trip_loads_strictly(tmp_path):
    net = _small(seed=2).eval()
    torch.save(net.state_dict(), tmp_path / "focal.pt")
    # the same weights, X-Decoder style: under "model.backbone." beside other modules
    torch.save(
        {**{f"model.backbone.{k}": v for k, v in net.state_dict().items()}, "model.other.weight": torch.zeros(1)},
        tmp_path / "xdecoder.pt",
    )
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        expected = net(x)
        for name, convert in (("focal.pt", dict), ("xdecoder.pt", xdecoder_state_dict_to_backbone)):
            fresh = _small(seed=3).eval()
            fresh.load_state_dict(convert(torch.load(tmp_path / name, weights_only=True)), strict=True)
            got = fresh(x)
            for key in expected:
                torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(depths=(2, 2, 2)), "depths"),
        (dict(focal_levels=(4, 4)), "focal_levels"),
        (dict(focal_windows=(3, 3, 0, 3)), "focal_windows"),
        (dict(patch_size=2), "patch_size"),
        (dict(drop_path_rate=1.0), "drop_path_rate"),
        (dict(out_indices=()), "out_indices"),
        (dict(out_indices=(0, 4)), "out_indices"),
        (dict(mlp_ratio=0.0), "mlp_ratio"),
    ],
)
def test_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        replace(FOCAL_L, **kwargs)


def test_forward_rejects_wrong_input():
    with pytest.raises(ValueError, match="x must be"):
        _small()(torch.randn(1, 1, 64, 64))
    with pytest.raises(TypeError, match="config"):
        FocalNetBackbone({"embed_dim": 24})  # type: ignore[arg-type]


def test_defaults_are_focal_l():
    assert FocalNetConfig() == FOCAL_L
