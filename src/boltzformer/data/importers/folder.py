"""The ``"folder"`` kind: this project's own format (a ``meta.json``), validated file by file and copied
(or linked) to ``out``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from boltzformer.data.folder import META_FILE, FolderDataset
from boltzformer.io.images import DataError, read_image
from boltzformer.data.importers.common import ImportSummary, _copy_or_link, _check_out, _FolderWriter, _summary

__all__ = ["validate_folder"]


def validate_folder(root: str | os.PathLike) -> ImportSummary:
    """Check a folder dataset file by file and summarise it.

    Checks: ``meta.json`` fields and files (as :class:`FolderDataset`), every image and mask decodes,
    masks hold only 0 and 255 (a 0/1 mask would read as empty) and have their image's size,
    ``mask_pixels`` (when given) matches the mask, and ``negative: true`` pairs have empty masks.

    Raises:
        DataError: listing every problem found (up to 20), each naming its file.
    """
    root = Path(root)
    ds = FolderDataset(root, split="all", verify=False)  # fields, files present, prompts non-empty
    raw = json.loads((root / META_FILE).read_text(encoding="utf-8"))["pairs"]
    problems: list[str] = []
    sizes: dict[Path, tuple[int, int]] = {}
    for pair, rp in zip(ds.pairs, raw):
        where = f"mask {pair.mask_rel} (pair {pair.id!r})"
        try:
            if pair.image not in sizes:
                sizes[pair.image] = read_image(pair.image).shape[:2]
            with Image.open(pair.mask) as im:
                grey = np.asarray(im.convert("L"))
        except DataError as e:
            problems.append(str(e))
            continue
        except Exception as e:  # Pillow raises several kinds for corrupt files
            problems.append(f"{where} could not be read: {type(e).__name__}: {e}")
            continue
        (ih, iw), (mh, mw) = sizes[pair.image], grey.shape
        if (mh, mw) != (ih, iw):
            problems.append(f"mask {pair.mask_rel} is {mh}x{mw} but its image {pair.image_rel} is {ih}x{iw}")
            continue
        values = set(np.unique(grey).tolist())
        if values - {0, 255}:
            hint = " (a 0/1 mask reads as empty: write 0/255)" if values <= {0, 1} else ""
            problems.append(f"{where} has grey values {sorted(values - {0, 255})[:5]}, expected 0 and 255 only{hint}")
            continue
        n = int(np.count_nonzero(grey))
        if "mask_pixels" in rp and rp["mask_pixels"] != n:
            problems.append(f"{where}: meta.json says mask_pixels={rp['mask_pixels']}, the file has {n}")
        if rp.get("negative") is True and n:
            problems.append(f"{where} is marked negative but its mask has {n} pixels")
        rp.setdefault("mask_pixels", n)
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{root / META_FILE}: {len(problems)} problem(s):\n  " + "\n  ".join(problems[:20]) + more)
    return _summary("folder", root, None, raw, [])


def _import_folder(source: Path, out: Path | None, *, overwrite: bool, link: bool, made_by: Mapping[str, Any] | None = None) -> ImportSummary:
    summary = validate_folder(source)
    if out is None:
        return summary
    _check_out(source, out, overwrite)
    meta = json.loads((source / META_FILE).read_text(encoding="utf-8"))
    with _FolderWriter(out, overwrite, made_by) as w:
        for rel in sorted({p[k] for p in meta["pairs"] for k in ("image", "mask")}):
            _copy_or_link(source / rel, w.tmp / rel, link)
        w.pairs = meta.pop("pairs")
        w.images = {p["image"] for p in w.pairs}
        w.commit({k: v for k, v in meta.items() if k not in ("num_pairs", "num_images")})
    summary.out = str(out)
    return summary
