"""The existence head: BiomedParse v2's layout, detached from the mask path, gating the predictor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import boltzformer
from boltzformer.model.existence import ExistenceHead
from boltzformer.train.module import BoltzFormerModule
from boltzformer.config import TrainConfig
from boltzformer.model.weights import load_pretrained, map_official_key

LAYOUTS = Path(__file__).resolve().parents[3] / "shared" / "reference" / "official-layouts"


def _tiny(**kw):
    torch.manual_seed(0)
    return boltzformer.build_model("tiny", image_size=64, num_layers=3, num_queries=4, **kw).eval()


def test_head_has_biomedparse_v2_keys_shapes_and_parameter_count():
    if not (LAYOUTS / "biomedparse_v2_3d.json").is_file():
        pytest.skip(f"official layout not found at {LAYOUTS / 'biomedparse_v2_3d.json'} (../shared/reference)")
    layout = json.loads((LAYOUTS / "biomedparse_v2_3d.json").read_text())
    theirs = {k: tuple(v) for k, v in layout["keys"].items() if k.startswith("sem_seg_head.predictor.classifier")}
    assert len(theirs) > 0
    head = ExistenceHead(hidden_dim=512, num_heads=8, ffn_dim=2048, num_layers=9)
    ours = {f"decoder.existence.{k}": tuple(v.shape) for k, v in head.state_dict().items()}
    mapped = {map_official_key(k): shape for k, shape in theirs.items()}
    assert mapped == ours
    count = layout["param_count_by_submodule"]["sem_seg_head.predictor.classifier* (existence head)"]
    assert sum(p.numel() for p in head.parameters()) == count == 28_372_481


def test_existence_loss_never_reaches_the_mask_path():
    model = _tiny(existence=True).train()
    x = torch.rand(2, 3, 64, 64) * 255
    out = model(x, ["nodule", "cyst"], generator=torch.Generator().manual_seed(0))
    assert out.existence_logits.shape == (2,)
    out.existence_logits.sum().backward()
    touched = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert touched and all(n.startswith("decoder.existence.") for n in touched)


def test_head_does_not_change_the_masks():
    with_head, without = _tiny(existence=True), _tiny()
    without.load_state_dict({k: v for k, v in with_head.state_dict().items() if ".existence." not in k})
    x = torch.rand(1, 3, 64, 64) * 255
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(with_head(x, ["cyst"], generator=g()).logits, without(x, ["cyst"], generator=g()).logits)
    assert without(x, ["cyst"]).existence_logits is None


def test_biomedparse_style_classifier_weights_load_into_the_head(tmp_path):
    model = _tiny(existence=True)
    state = {
        "sem_seg_head.predictor." + k[len("decoder.existence."):]: torch.randn_like(v)
        for k, v in model.state_dict().items()
        if k.startswith("decoder.existence.")
    }
    state["sem_seg_head.pixel_decoder.mask_features.bias"] = model.state_dict()["pixel_decoder.mask_features.bias"].clone()
    torch.save({"state_dict": {"model." + k: v for k, v in state.items()}}, tmp_path / "bp.ckpt")
    report = load_pretrained(model, tmp_path / "bp.ckpt")
    assert report.kind == "official"
    assert not report.unused
    own = model.state_dict()
    for key, value in state.items():
        assert torch.equal(own[map_official_key(key)], value)


def test_predictor_gates_the_mask_on_existence():
    model = _tiny(existence=True)
    image = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    predictor = boltzformer.Predictor(model, threshold=0.3)
    with torch.no_grad():
        model.decoder.existence.classifier.bias.fill_(50.0)  # surely present
    ungated = predictor.predict_proba(image, "nodule") > 0.3
    assert ungated.any()
    [res] = predictor.segment(image, ["nodule"])
    assert res.existence == pytest.approx(1.0) and np.array_equal(res.mask, ungated) and res.present
    with torch.no_grad():
        model.decoder.existence.classifier.bias.fill_(-50.0)  # surely absent
    [res] = predictor.segment(image, ["nodule"])
    assert res.existence == pytest.approx(0.0, abs=1e-6) and not res.mask.any() and not res.present
    assert predictor.existence_probability("nodule") == pytest.approx(0.0, abs=1e-6)
    assert not predictor.predict(None, "nodule").any()
    samples = predictor.predict_samples(None, "nodule", 3)
    assert samples["existence"] == pytest.approx(0.0, abs=1e-6) and not samples["mask"].any()
    assert boltzformer.Predictor(_tiny()).existence_probability("nodule", image) is None


def test_segment_encodes_once_and_each_prompt_matches_its_own_call():
    model = _tiny()
    image = (np.random.default_rng(1).random((50, 70, 3)) * 255).astype(np.uint8)
    predictor = boltzformer.Predictor(model, seed=2)
    calls = []
    original = model.encode_image
    model.encode_image = lambda x: calls.append(1) or original(x)  # type: ignore[method-assign]
    try:
        results = predictor.segment(image, ["nodule", "cyst", "vessel"])
    finally:
        del model.encode_image
    assert len(calls) == 1 and [r.prompt for r in results] == ["nodule", "cyst", "vessel"]
    for r in results:
        assert r.probability.shape == (50, 70) and r.existence is None
        assert np.array_equal(r.probability, boltzformer.Predictor(model, seed=2).predict_proba(image, r.prompt))
    with pytest.raises(ValueError, match="prompt"):
        predictor.segment(image, ["nodule", "  "])


def _batch(present):
    B = len(present)
    mask = torch.zeros(B, 1, 64, 64)
    for i, p in enumerate(present):
        if p:
            mask[i, :, 20:30, 20:30] = 1
    return {"image": torch.rand(B, 3, 64, 64) * 255, "mask": mask, "prompt": ["nodule"] * B,
            "present": torch.tensor(present, dtype=torch.float64)}


def test_training_loss_uses_positives_for_masks_and_all_for_existence():
    cfg = _tiny(existence=True).config
    module = BoltzFormerModule.create(cfg, TrainConfig(existence_weight=2.0))
    module.log = lambda *a, **k: None  # outside a Trainer
    torch.manual_seed(0)
    total, main, out = module._losses(_batch([1, 0]), aux=True)
    ex = torch.nn.functional.binary_cross_entropy_with_logits(out.existence_logits, torch.tensor([1.0, 0.0]))
    mask_only = module.loss(out.logits[:1], _batch([1, 0])["mask"][:1])
    torch.testing.assert_close(main, mask_only, rtol=1e-5, atol=1e-6)
    assert total > main + 2.0 * ex - 1e-4  # plus the deep-supervision terms
    total, main, out = module._losses(_batch([0, 0]), aux=True)  # no positive: existence only
    total.backward()
    assert float(main.detach()) == 0.0
    grads = {n for n, p in module.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all(".existence." in n for n in grads)


def test_cli_trains_the_head_with_negatives(tmp_path, shared_data):
    from boltzformer.cli import main

    data = f"{shared_data / 'lidc_lung_nodule'},{shared_data / 'kvasir_small_polyp'}"
    out = tmp_path / "run"
    args = ["train", "--data", data, "--out", str(out), "--existence", "--negatives", "0.5", "--max-steps", "2",
            "--batch-size", "4", "--image-size", "64", "--val-batches", "1", "--quiet", "--set", "num_layers=3"]
    assert main(args) == 0
    model = boltzformer.load_checkpoint(out / "last.ckpt")
    assert model.config.decoder.existence and model.decoder.existence is not None
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["negative_ratio"] == 0.5
    assert main(["train", "--data", data, "--out", str(tmp_path / "bad"), "--negatives", "-1"]) == 2


def test_existence_summary_counts_and_auroc():
    from boltzformer.evaluate import existence_summary

    s = existence_summary([(0.9, True), (0.6, True), (0.7, False), (0.1, False), (0.2, True)], threshold=0.5)
    assert s["n_present"] == 3 and s["n_absent"] == 2
    assert s["sensitivity"] == pytest.approx(2 / 3) and s["specificity"] == pytest.approx(1 / 2)
    assert s["accuracy"] == pytest.approx(3 / 5)
    # pairs (present, absent) ranked right: 0.9>0.7, 0.9>0.1, 0.6<0.7, 0.6>0.1, 0.2<0.7, 0.2>0.1 -> 4/6
    assert s["auroc"] == pytest.approx(4 / 6)
    assert existence_summary([(0.3, True)])["auroc"] is None


def test_evaluate_reports_existence_with_negative_prompts(tmp_path, shared_data):
    from boltzformer.cli import main

    model = _tiny(existence=True)
    model.config.image_size = 64
    ckpt = boltzformer.save_checkpoint(model, tmp_path / "m.ckpt")
    data = f"{shared_data / 'kvasir_small_polyp'},{shared_data / 'lgg_brain_flair'}"
    out = tmp_path / "r.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", data, "--out", str(out), "--negatives", "1.0",
                 "--split", "val"]) == 0
    report = json.loads(out.read_text())
    e = report["existence"]
    assert e["n_absent"] > 0 and e["n_present"] > 0 and e["n_absent"] == report["n_empty"]
    assert 0.0 <= e["auroc"] <= 1.0 and report["dice_with_target"] is not None
    assert "Existence head" in (tmp_path / "r.md").read_text()
