"""Prompt wording (boltzformer.data.importers.prompts): BiomedParse's phrasing of target, site and modality."""

from __future__ import annotations

import json

import pytest

from boltzformer.data.importers import biomedparse_prompt, modality_phrase


def test_prompts_follow_the_biomedparse_demo_dataset(shared_data):
    meta = json.loads((shared_data / "biomedparse_demo" / "meta.json").read_text())
    checked = 0
    for p in meta["pairs"]:
        assert f"{p['target']} in {p['site']} {p['modality']}" == p["prompt_biomedparse_style"]
        if p["id"] == "01_CT_lung__nodule":  # the BoltzFormer README's own wording, noted in the meta
            continue
        assert biomedparse_prompt(p["target"], p["modality"], p["site"]) == p["prompt"], p["id"]
        checked += 1
    assert checked == len(meta["pairs"]) - 1
    assert modality_phrase("MRI-T2") == "T2 MRI" and modality_phrase("ADC") == "ADC MRI"
    assert modality_phrase("PET-CT") == "PET-CT"
    with pytest.raises(ValueError, match="target"):
        biomedparse_prompt(" ", "CT", "lung")

