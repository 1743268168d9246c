"""Prompts of imported datasets: how a modality reads in a prompt, and BiomedParse's
``"<target> in <site> <modality>"``."""

from __future__ import annotations

import re


__all__ = ["biomedparse_prompt", "modality_phrase"]

# How each modality reads in a prompt, as in the ``prompt`` field of shared/data/biomedparse_demo
# (BiomedParse's own prompt is "<target> in <site> <modality token>", kept as prompt_biomedparse_style).
_MODALITY_PHRASES = {
    "ct": "CT",
    "mri": "MRI",
    "mr": "MRI",
    "mri-flair": "FLAIR MRI",
    "flair": "FLAIR MRI",
    "mri-t1-gd": "contrast-enhanced T1 MRI",
    "t1gd": "contrast-enhanced T1 MRI",
    "t1w": "T1 MRI",
    "t2w": "T2 MRI",
    "x-ray": "X-ray",
    "xray": "X-ray",
    "pathology": "pathology image",
    "ultrasound": "ultrasound",
    "us": "ultrasound",
    "fundus": "fundus photograph",
    "endoscope": "endoscopy image",
    "endoscopy": "endoscopy image",
    "dermoscopy": "dermoscopy image",
    "oct": "OCT",
    "pet": "PET",
}


def modality_phrase(modality: str) -> str:
    """How a modality token reads in a prompt: ``"MRI-FLAIR"`` -> ``"FLAIR MRI"``, ``"X-Ray"`` -> ``"X-ray"``.

    MRI sequences not in the table read ``"<sequence> MRI"`` (``"MRI-T2"``, ``"T2"``, ``"ADC"`` ->
    ``"T2 MRI"``, ``"ADC MRI"``); anything else is kept as written.
    """
    key = modality.strip().lower()
    if key in _MODALITY_PHRASES:
        return _MODALITY_PHRASES[key]
    if key.startswith("mri-") or key.startswith("mr-"):
        return f"{modality.split('-', 1)[1]} MRI"
    if re.fullmatch(r"(t1|t2|adc|dwi|pd|swi)\w*", key):
        return f"{modality.strip()} MRI"
    return modality.strip()


def biomedparse_prompt(target: str, modality: str, site: str | None) -> str:
    """``"<target> in <site> <modality phrase>"``, e.g. ``"tumor in liver CT"``, ``"lung in chest X-ray"``.

    The site is left out when there is none or when it is the target itself (``"prostate in MRI"``).

    Raises:
        ValueError: ``target`` or ``modality`` is empty.
    """
    target, modality, site = target.strip(), modality.strip(), (site or "").strip()
    if not target or not modality:
        raise ValueError(f"a prompt needs a target and a modality, got target={target!r}, modality={modality!r}")
    phrase = modality_phrase(modality)
    if not site or site.lower() == target.lower():
        return f"{target} in {phrase}"
    return f"{target} in {site} {phrase}"
