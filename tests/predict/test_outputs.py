"""The one writer of predictions and the one slug function."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from boltzformer.io.medical import load_image
from boltzformer.predict.outputs import label_slug, prompt_slug, save_pngs_atomic, slug, write_prediction
from boltzformer.predict.results import Prediction


def test_slugs_name_prompts_and_targets():
    assert prompt_slug("Lung nodule (CT)").startswith("lung_nodule_ct_") and len(prompt_slug("x").split("_")[-1]) == 6
    assert prompt_slug("lung nodule") != prompt_slug("lung-nodule")  # the digest keeps them apart
    assert prompt_slug("??").startswith("prompt_") and len(prompt_slug("a" * 100)) == 60 + 7
    assert label_slug(" left kidney ") == "left_kidney" and label_slug("T2-w.a+b") == "T2-w.a+b" and label_slug("//") == "target"
    assert slug("A b", keep_case=True) == "A_b" and slug("A b") == "a_b"


def test_write_prediction_writes_the_mask_overlay_lesions_and_measures_them(tmp_path):
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "in.png")
    image = load_image(tmp_path / "in.png")
    mask = np.zeros((20, 30), bool)
    mask[2:5, 3:7] = True
    prob = mask.astype(np.float32) * 0.9
    result = Prediction("nodule", prob, mask, existence=0.8, std=np.full((20, 30), 0.25, np.float32), agreement=0.9)
    written = write_prediction(result, image, np.zeros((20, 30), np.uint8), tmp_path / "out" / "m.png", with_uncertainty=True)
    saved = np.asarray(Image.open(tmp_path / "out" / "m.png"))
    assert saved.shape == (20, 30) and set(np.unique(saved)) == {0, 255} and (saved > 0).sum() == 12
    assert np.asarray(Image.open(tmp_path / "out" / "m_uncertainty.png")).max() == 127
    assert (tmp_path / "out" / "m_overlay.png").is_file() and len(written.lesions) == 1
    assert json.loads((tmp_path / "out" / "m_lesions.json").read_text())[0]["area_px"] == 12
    r = written.record
    assert (r["prompt"], r["output"], r["present"], r["area_px"], r["existence"], r["lesions"]) == ("nodule", "m.png", True, 12, 0.8, 1)
    assert r["max_probability"] == pytest.approx(0.9) and len(r["sha256"]) == 64
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_save_pngs_atomic_writes_all_or_none(tmp_path):
    good = Image.new("L", (4, 4))
    with pytest.raises(AttributeError):
        save_pngs_atomic({tmp_path / "a.png": good, tmp_path / "b.png": None})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []
    save_pngs_atomic({tmp_path / "a.png": good, tmp_path / "b.png": good})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]
