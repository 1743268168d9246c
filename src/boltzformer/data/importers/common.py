"""What every importer shares: the summary of an import, and the writer that builds a dataset folder
in ``<out>.tmp-XXXX`` and renames it to ``out`` at the end (a failed import leaves nothing behind)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from boltzformer.data.folder import META_FILE
from boltzformer.io.images import DataError
from boltzformer.io.atomic import make_temp_dir
from boltzformer.predict.outputs import label_slug as _slug  # noqa: F401 (used by the importers)

__all__ = ["ImportSummary", "MASK_SUFFIX", "MSD_FILE"]

MASK_SUFFIX = "_mask"  # BiomedParse: the masks of folder X are in X_mask
MSD_FILE = "dataset.json"


@dataclass
class ImportSummary:
    """What an import (or a validation) found and wrote."""

    kind: str  # "folder" | "biomedparse" | "msd"
    source: str  # the folder read
    out: str | None  # the folder written (None: validated in place)
    n_images: int  # image files listed in meta.json
    n_pairs: int  # (image, mask, prompt) pairs
    n_negative: int  # pairs whose mask is empty
    n_groups: int  # split groups: cases (msd) or images
    prompts: dict[str, int] = field(default_factory=dict)  # prompt -> number of pairs
    notes: list[str] = field(default_factory=list)  # things the user should know (skipped files, guesses)

    @property
    def n_positive(self) -> int:
        return self.n_pairs - self.n_negative

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n_positive": self.n_positive}

    def format(self) -> str:
        """A few lines for the terminal."""
        where = f"{self.source} -> {self.out}" if self.out else f"{self.source} (validated in place)"
        lines = [
            f"{self.kind}: {where}",
            f"{self.n_pairs} pairs ({self.n_positive} with a target, {self.n_negative} negatives) on "
            f"{self.n_images} images, {self.n_groups} groups",
        ]
        top = sorted(self.prompts.items(), key=lambda kv: (-kv[1], kv[0]))
        lines += [f"  {n:6d}  {p}" for p, n in top[:12]]
        if len(top) > 12:
            lines.append(f"  ... {len(top) - 12} more prompts")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- writing
def _check_out(source: Path, out: Path, overwrite: bool) -> None:
    src, dst = source.resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise ValueError(f"--out {out} is inside the source folder {source}; choose a folder outside it")
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"--out {out} exists and is not a folder")
        if any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"--out {out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")


class _FolderWriter:
    """Builds a dataset folder in ``<out>.tmp-XXXX`` and renames it to ``out`` on :meth:`commit`."""

    def __init__(self, out: Path, overwrite: bool, made_by: Mapping[str, Any] | None = None) -> None:
        self.out, self.overwrite, self.made_by = out, overwrite, made_by
        out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = make_temp_dir(out.parent, f"{out.name}.tmp-")  # 0755 under umask 022, not mkdtemp's 0700
        (self.tmp / "images").mkdir()
        (self.tmp / "masks").mkdir()
        self.pairs: list[dict[str, Any]] = []
        self.images: set[str] = set()

    def __enter__(self) -> "_FolderWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp.exists():  # not committed: an error on the way
            shutil.rmtree(self.tmp, ignore_errors=True)

    def write_image(self, name: str, array: np.ndarray) -> str:
        """Save a uint8 (H, W) or (H, W, 3) array as ``images/<name>.png``; returns the relative path."""
        rel = f"images/{name}.png"
        Image.fromarray(array).save(self.tmp / rel, format="PNG")
        self.images.add(rel)
        return rel

    def copy_image(self, name: str, src: Path, *, link: bool) -> str:
        """Copy (or symlink) an image file as ``images/<name><suffix>``; returns the relative path."""
        rel = f"images/{name}{src.suffix.lower()}"
        _copy_or_link(src, self.tmp / rel, link)
        self.images.add(rel)
        return rel

    def add_pair(self, pair_id: str, image_rel: str, mask: np.ndarray, prompt: str, **fields: Any) -> dict:
        """Save ``mask`` (bool (H, W)) as ``masks/<pair_id>.png`` (0/255) and record the pair."""
        rel = f"masks/{pair_id}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(self.tmp / rel, format="PNG")
        H, W = mask.shape
        n = int(mask.sum())
        pair = {"id": pair_id, "image": image_rel, "mask": rel, "prompt": prompt, "height": H, "width": W,
                "mask_pixels": n, "area_fraction": round(n / (H * W), 8), **fields}
        self.pairs.append(pair)
        return pair

    def commit(self, header: Mapping[str, Any]) -> None:
        """Write ``meta.json`` and move the folder into place (replacing ``out`` when allowed)."""
        if not self.pairs:
            raise DataError(f"nothing to import into {self.out}: no (image, mask) pair was found")
        meta = {**header, "num_pairs": len(self.pairs), "num_images": len(self.images), "pairs": self.pairs}
        if self.made_by is not None:
            meta["made_by"] = dict(self.made_by)
        (self.tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        old = None
        if self.out.exists():
            if any(self.out.iterdir()) and not self.overwrite:  # appeared while importing
                raise FileExistsError(f"--out {self.out} exists and is not empty; pass --overwrite to replace it")
            old = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f"{self.out.name}.old-"))
            os.replace(self.out, old / "dataset")
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _copy_or_link(src: Path, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        os.symlink(src.resolve(), dst)
    else:
        shutil.copyfile(src, dst)


def _summary(kind: str, source: Path, out: Path | None, pairs: Sequence[Mapping[str, Any]], notes: list[str]) -> ImportSummary:
    groups = {str(p.get("patient") or p["image"]) for p in pairs}
    return ImportSummary(
        kind=kind,
        source=str(source),
        out=None if out is None else str(out),
        n_images=len({p["image"] for p in pairs}),
        n_pairs=len(pairs),
        n_negative=sum(1 for p in pairs if p.get("mask_pixels", 1) == 0),
        n_groups=len(groups),
        prompts=dict(Counter(p["prompt"] for p in pairs)),
        notes=notes,
    )
