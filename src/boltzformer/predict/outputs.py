"""The one writer of predictions: masks, overlays, lesion lists and the record's measurements; and the
one slug function for file names.

:func:`write_prediction` writes a :class:`~boltzformer.predict.results.Prediction` of a 2D image as a
0/255 PNG (with ``<stem>_overlay.png``, ``<stem>_uncertainty.png`` and ``<stem>_lesions.json`` beside it
when asked) or a :class:`~boltzformer.predict.results.VolumePrediction` in the input's own geometry
(:func:`~boltzformer.io.medical.write_mask`: NIfTI for NIfTI and DICOM, TIFF for TIFF stacks). Every file
appears whole or not at all (temporary names, then renamed); the callers write their JSON record last,
from :attr:`Written.record`. Used by folder runs (:mod:`.files`), ``boltzformer predict`` on one image,
the app and the demo.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from boltzformer.io.atomic import atomic_paths, write_json_atomic
from boltzformer.io.medical import MedicalImage, write_mask
from boltzformer.predict.lesions import Lesion, lesions
from boltzformer.predict.results import Prediction, VolumePrediction
from boltzformer.predict.visualize import overlay
from boltzformer.provenance import file_sha256

__all__ = ["Written", "label_slug", "prompt_slug", "save_pngs_atomic", "slug", "write_prediction"]


def slug(text: str, *, keep_case: bool = False, keep: str = "", max_len: int | None = None, digest: bool = False,
         default: str = "prompt") -> str:
    """A file-name-safe name: every run of characters other than ASCII letters, digits and ``keep``
    becomes ``_`` (letters lowered unless ``keep_case``), trimmed of ``_`` at both ends, cut to ``max_len``;
    ``default`` when nothing is left; with ``digest``, ``_`` and 6 hex digits of the text's SHA-1 are
    appended (so texts that differ only in punctuation or case stay apart).

    Example:
        >>> slug("Lung nodule in CT", max_len=60, digest=True)
        'lung_nodule_in_ct_4f3b1c'  # doctest: +SKIP
    """
    letters = "A-Za-z" if keep_case else "a-z"
    out = re.sub(f"[^{letters}0-9{re.escape(keep)}]+", "_", text if keep_case else text.lower()).strip("_")
    out = (out[:max_len] if max_len is not None else out) or default
    return f"{out}_{hashlib.sha1(text.encode('utf-8')).hexdigest()[:6]}" if digest else out


def prompt_slug(prompt: str) -> str:
    """The file name of a prompt's outputs: ``"Lung nodule in CT"`` -> ``"lung_nodule_in_ct_<6 hex>"``."""
    return slug(prompt, max_len=60, digest=True)


def label_slug(name: str) -> str:
    """A target name in a sample id: ``"left kidney"`` -> ``"left_kidney"`` (case, ``.``, ``+`` and ``-`` kept)."""
    return slug(name.strip(), keep_case=True, keep=".+-", default="target")


def save_pngs_atomic(images: Mapping[Path, Image.Image]) -> None:
    """Write PIL images to their paths: all to temporary names first, then rename them all."""
    with atomic_paths(*images) as temps:
        for tmp, img in zip(temps, images.values()):
            img.save(tmp, format="PNG")


@dataclass
class Written:
    """What :func:`write_prediction` wrote: the mask's path, the measurements for the record (``file``,
    ``prompt``, ``output``, ``sha256`` of the mask, ``present``, ``area_px``, ``area_mm`` (mm^2, or mm^3
    for volumes, when the spacing is known), ``existence`` (the largest over slices for volumes),
    ``max_probability``, and ``lesions`` (2D) or ``slices_with_target`` (volumes)), and the lesions found (2D)."""

    mask: Path
    record: dict[str, Any]
    lesions: list[Lesion] = field(default_factory=list)


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.stem + suffix)


def write_prediction(
    result: Prediction | VolumePrediction,
    image: MedicalImage,
    display: np.ndarray,
    path: str | Path,
    *,
    with_overlay: bool = True,
    with_lesions: bool = True,
    with_uncertainty: bool = False,
) -> Written:
    """Write one prompt's mask of ``image`` to ``path`` (``.png`` for 2D images; ``.nii.gz`` / ``.tif`` for
    volumes, as :func:`~boltzformer.io.medical.write_mask`), with, for 2D, the overlay on ``display`` (the
    uint8 intensities the model saw), the standard deviation of K passes as a grey PNG (0.5 and above
    white; ``with_uncertainty`` and K > 1) and the lesion list (``<stem>_lesions.json``)."""
    path = Path(path)
    spacing = image.spacing
    mask = result.mask
    found: list[Lesion] = []
    if image.is_volume:
        write_mask(mask, image, path)
        voxel = float(np.prod(spacing)) if spacing else None
        existence = None if result.existence is None else float(np.max(result.existence))
        extra: dict[str, Any] = {"slices_with_target": int(mask.any(axis=(1, 2)).sum())}
        area_mm = float(mask.sum()) * voxel if voxel else None
    else:
        pngs = {path: Image.fromarray(mask.astype(np.uint8) * 255)}
        if with_overlay:
            pngs[_sibling(path, "_overlay.png")] = overlay(display, mask, label=result.prompt)
        if with_uncertainty and result.std is not None:
            pngs[_sibling(path, "_uncertainty.png")] = Image.fromarray((np.clip(result.std / 0.5, 0, 1) * 255).astype(np.uint8))
        save_pngs_atomic(pngs)
        pixel = tuple(spacing[:2]) if spacing else None
        found = lesions(mask, probability=result.probability, spacing=pixel)
        if with_lesions:
            write_json_atomic([x.to_dict() for x in found], _sibling(path, "_lesions.json"))
        existence = None if result.existence is None else float(result.existence)  # type: ignore[arg-type]
        extra = {"lesions": len(found)}
        area_mm = float(mask.sum()) * pixel[0] * pixel[1] if pixel else None
    record = {
        "file": str(image.path),
        "prompt": result.prompt,
        "output": path.name,
        "sha256": file_sha256(path),
        "present": bool(mask.any()),
        "area_px": int(mask.sum()),
        "area_mm": area_mm,
        "existence": existence,
        "max_probability": float(result.probability.max()) if result.probability.size else 0.0,
        **extra,
    }
    return Written(path, record, found)
