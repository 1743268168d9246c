"""The ``"biomedparse"`` kind: BiomedParse's fine-tuning layout (microsoft/BiomedParse,
``assets/readmes/FINETUNING.md``): image folders of ``[IMAGE-NAME]_[MODALITY]_[SITE].png`` beside mask
folders of ``[IMAGE-NAME]_[MODALITY]_[SITE]_[TARGET].png``; one pair per mask, grouped by image."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from boltzformer.io.images import DataError, read_image
from boltzformer.data.importers.common import MASK_SUFFIX, ImportSummary, _check_out, _FolderWriter, _slug, _summary
from boltzformer.data.importers.prompts import biomedparse_prompt


def _biomedparse_splits(source: Path) -> list[tuple[Path, Path]]:
    """(image folder, mask folder) pairs: ``source/X`` with ``source/X_mask``, or ``source`` with ``source_mask``."""
    found = []
    if source.is_dir():
        for d in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.endswith(MASK_SUFFIX)):
            if (source / f"{d.name}{MASK_SUFFIX}").is_dir():
                found.append((d, source / f"{d.name}{MASK_SUFFIX}"))
    sibling = source.with_name(source.name + MASK_SUFFIX)
    if not found and sibling.is_dir():
        found.append((source, sibling))
    return found


def _parse_biomedparse_image(path: Path) -> tuple[str, str]:
    """(modality, site) from ``[IMAGE-NAME]_[MODALITY]_[SITE].png``."""
    parts = path.stem.rsplit("_", 2)
    if len(parts) < 3 or not all(parts):
        raise DataError(
            f"image {path}: BiomedParse names images [IMAGE-NAME]_[MODALITY]_[SITE].png "
            f"(e.g. 0001_CT_abdomen.png), found {path.name!r}"
        )
    return parts[1], parts[2]


def _read_biomedparse_mask(path: Path) -> np.ndarray:
    """A BiomedParse mask as bool (H, W): any RGB channel != 0 is target (alpha is ignored)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).any(axis=2)
    except Exception as e:  # Pillow raises several kinds for corrupt files
        raise DataError(f"mask {path} could not be read as an image: {type(e).__name__}: {e}") from e


def _import_biomedparse(source: Path, out: Path, *, overwrite: bool, link: bool, made_by: Mapping[str, Any] | None = None) -> ImportSummary:
    splits = _biomedparse_splits(source)
    if not splits:
        raise DataError(f"{source}: no BiomedParse image folder X/ with a mask folder X{MASK_SUFFIX}/ beside it")
    _check_out(source, out, overwrite)
    notes: list[str] = []
    prefix_split = len(splits) > 1  # image names may repeat across train/ and test/
    with _FolderWriter(out, overwrite, made_by) as w:
        for image_dir, mask_dir in splits:
            images = {p.stem: p for p in sorted(image_dir.glob("*.png")) if not p.name.startswith(".")}
            masks = sorted(p for p in mask_dir.glob("*.png") if not p.name.startswith("."))
            if not masks:
                notes.append(f"{mask_dir} holds no .png mask; {image_dir.name}/ skipped")
                continue
            written: dict[str, tuple[str, tuple[int, int]]] = {}  # image stem -> (rel path, HxW)
            for mask_path in masks:
                image_stem, _, target_token = mask_path.stem.rpartition("_")
                if image_stem not in images:
                    raise DataError(
                        f"mask {mask_path} has no image {image_dir / (image_stem + '.png')}: BiomedParse names a mask "
                        f"[IMAGE-NAME]_[MODALITY]_[SITE]_[TARGET].png after its image [IMAGE-NAME]_[MODALITY]_[SITE].png "
                        f"(target spaces as '+', no '_' in the target)"
                    )
                image_path = images[image_stem]
                modality, site = _parse_biomedparse_image(image_path)
                name = f"{image_dir.name}__{image_stem}" if prefix_split else image_stem
                if image_stem not in written:
                    hw = read_image(image_path).shape[:2]  # decodable, and its size
                    written[image_stem] = (w.copy_image(name, image_path, link=link), hw)
                image_rel, hw = written[image_stem]
                mask = _read_biomedparse_mask(mask_path)
                if mask.shape != hw:
                    raise DataError(f"mask {mask_path} is {mask.shape[0]}x{mask.shape[1]} but its image "
                                    f"{image_path} is {hw[0]}x{hw[1]}; masks must have their image's size")
                target = target_token.replace("+", " ").strip()
                fields: dict[str, Any] = {}
                if not mask.any():
                    fields["negative"] = True
                w.add_pair(
                    f"{name}__{_slug(target_token)}", image_rel, mask, biomedparse_prompt(target, modality, site),
                    prompt_biomedparse_style=f"{target} in {site} {modality}", modality=modality, site=site,
                    target=target, source_split=image_dir.name,
                    source_image=str(image_path.relative_to(source.parent if image_dir == source else source)),
                    source_mask=str(mask_path.relative_to(mask_dir.parent)), **fields,
                )
            unused = sorted(set(images) - set(written))
            if unused:
                notes.append(f"{len(unused)} image(s) in {image_dir} have no mask and were skipped, e.g. {unused[0]}.png")
        if len(splits) > 1:
            notes.append("BiomedParse's own split is kept as each pair's source_split; boltzformer splits by image")
        w.commit({
            "dataset": out.name,
            "description": f"imported from the BiomedParse-named folders of {source}",
            "import": {"kind": "biomedparse", "source": str(source), "folders": [d.name for d, _ in splits]},
            "conventions": {"image": "copied unchanged from the source", "mask": "8-bit, 0/255 (source pixel != 0 -> 255)",
                            "prompt": "<target> in <site> <modality phrase>"},
        })
        return _summary("biomedparse", source, out, w.pairs, notes)
