"""Dataset importers: other layouts -> the ``images/ + masks/ + meta.json`` folder format of
:mod:`boltzformer.data.folder`, so that ``boltzformer train --data OUT`` reads them directly.

Source layouts (``kind="auto"`` tells them apart, see :func:`detect_kind`):

- ``"folder"``: already this project's format (a ``meta.json``). It is validated: every file present
  and decodable, masks 0/255 and of their image's size, prompts non-empty; with ``out`` it is copied
  (or linked) there.
- ``"biomedparse"``: BiomedParse's fine-tuning layout (microsoft/BiomedParse,
  ``assets/readmes/FINETUNING.md``, ``biomedparse_datasets/create-customer-datasets.py``): image
  folders (``train/``, ``test/``) of ``[IMAGE-NAME]_[MODALITY]_[SITE].png`` beside mask folders
  (``train_mask/``, ``test_mask/``) of ``[IMAGE-NAME]_[MODALITY]_[SITE]_[TARGET].png``, the target
  with spaces written ``+`` and no ``_``; a mask pixel != 0 is target. One pair per mask, grouped by
  image.
- ``"msd"``: Medical Segmentation Decathlon / nnU-Net raw: ``dataset.json``, ``imagesTr/`` and
  ``labelsTr/`` NIfTI volumes. Each volume becomes 2D axial slices, one pair per (slice, label)
  where the label is present, plus negatives (slices without it, empty mask), grouped by case.

Every import is built in ``<out>.tmp-XXXX`` beside ``out`` and renamed to ``out`` at the end, so a
failed import leaves nothing behind; a non-empty ``out`` is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from boltzformer.data.folder import META_FILE, FolderDataset
from boltzformer.io.images import DataError, read_image

__all__ = [
    "ImportSummary",
    "KINDS",
    "biomedparse_prompt",
    "detect_kind",
    "import_dataset",
    "modality_phrase",
    "validate_folder",
]

KINDS = ("auto", "folder", "biomedparse", "msd")
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


# ----------------------------------------------------------------------------------------------- prompts
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


def _slug(text: str) -> str:
    """A file-name-safe form of a target name: ``"left kidney"`` -> ``"left_kidney"``."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text.strip()).strip("_") or "target"


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
        from boltzformer.io.atomic import make_temp_dir

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


# ----------------------------------------------------------------------------------------------- detection
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


def detect_kind(source: str | os.PathLike) -> str:
    """The layout of ``source``: ``"folder"`` (a ``meta.json``), ``"msd"`` (``dataset.json`` or
    ``imagesTr/`` + ``labelsTr/``) or ``"biomedparse"`` (folders ``X`` and ``X_mask``).

    Raises:
        DataError: ``source`` is not a folder, or it is none of these layouts (the message says what
            was looked for and what the folder holds).
    """
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"dataset source {source} is not a folder")
    if (source / META_FILE).is_file():
        return "folder"
    if (source / MSD_FILE).is_file() or ((source / "imagesTr").is_dir() and (source / "labelsTr").is_dir()):
        return "msd"
    if _biomedparse_splits(source):
        return "biomedparse"
    held = sorted(p.name + ("/" if p.is_dir() else "") for p in source.iterdir())[:10]
    raise DataError(
        f"{source}: unknown dataset layout; expected {META_FILE} (boltzformer folder), {MSD_FILE} with "
        f"imagesTr/ and labelsTr/ (Medical Segmentation Decathlon / nnU-Net), or image folders X/ beside "
        f"X{MASK_SUFFIX}/ (BiomedParse, e.g. train/ and train{MASK_SUFFIX}/); found {held or 'an empty folder'}"
    )


# ----------------------------------------------------------------------------------------------- folder
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


# ----------------------------------------------------------------------------------------------- BiomedParse
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


# ----------------------------------------------------------------------------------------------- MSD / nnU-Net
# Sites of the Decathlon tasks and common nnU-Net dataset names, as BiomedParse writes them (organs
# of the abdomen -> "abdomen": "liver tumor in abdomen CT"); the first word of dataset.json's "name",
# then of its "description", found here becomes the prompt's site.
_SITE_WORDS = {
    "brain": "brain", "brats": "brain", "braintumour": "brain", "glioma": "brain", "hippocampus": "brain",
    "heart": "heart", "leftatrium": "heart", "cardiac": "heart",
    "liver": "abdomen", "hepaticvessel": "abdomen", "hepatic": "abdomen", "pancreas": "abdomen",
    "spleen": "abdomen", "kidney": "abdomen", "kits": "abdomen", "abdomen": "abdomen", "abdominal": "abdomen",
    "colon": "colon", "lung": "lung", "prostate": "prostate", "breast": "breast", "chest": "chest",
    "pelvis": "pelvis",
}


@dataclass(frozen=True)
class _MsdLayout:
    labels: dict[str, tuple[int, ...]]  # label name -> voxel values (nnU-Net v2 regions have several)
    channels: dict[int, str]  # channel index -> modality as written in dataset.json
    file_ending: str
    name: str
    description: str


def _read_msd_json(source: Path) -> _MsdLayout:
    path = source / MSD_FILE
    if not path.is_file():
        raise DataError(
            f"{path} not found: a Medical Segmentation Decathlon / nnU-Net raw dataset needs {MSD_FILE} with "
            f'its "labels" ({{"0": "background", "1": "liver"}} or {{"background": 0, "liver": 1}}) and '
            f'"modality" / "channel_names" ({{"0": "CT"}})'
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON: {e}") from e
    raw = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(raw, dict) or not raw:
        raise DataError(f'{path} has no "labels" object naming the label values')
    labels: dict[str, tuple[int, ...]] = {}
    for k, v in raw.items():
        if str(k).isdigit() and isinstance(v, str):  # MSD: "1": "liver"
            name, values = v, (int(k),)
        elif isinstance(v, int) and not isinstance(v, bool):  # nnU-Net v2: "liver": 1
            name, values = str(k), (v,)
        elif isinstance(v, list) and v and all(isinstance(x, int) for x in v):  # nnU-Net v2 region
            name, values = str(k), tuple(v)
        else:
            raise DataError(f'{path} "labels": cannot read entry {k!r}: {v!r} (expected "1": "name" or "name": 1)')
        # nnU-Net v2's "ignore" label marks voxels nobody annotated: no target
        if values != (0,) and name.strip().lower() not in ("background", "ignore"):
            labels[name.strip()] = values
    if not labels:
        raise DataError(f'{path} "labels" names only the background; nothing to segment')
    raw_channels = meta.get("channel_names", meta.get("modality", {}))
    if not isinstance(raw_channels, dict):
        raise DataError(f'{path} "modality" / "channel_names" must map channel to modality, found {raw_channels!r:.80}')
    channels = {int(k): str(v) for k, v in raw_channels.items() if str(k).isdigit()}
    return _MsdLayout(labels, channels, str(meta.get("file_ending", ".nii.gz")), str(meta.get("name", "")),
                      str(meta.get("description", "")))


def _guess_site(layout: _MsdLayout) -> str | None:
    for text in (layout.name, layout.description):
        for word in re.findall(r"[a-z]+", text.lower().replace("_", " ")):
            if word in _SITE_WORDS:
                return _SITE_WORDS[word]
    return None


def _msd_cases(source: Path, ending: str, channel: int) -> list[tuple[str, Path, Path]]:
    """(case id, image file, label file) for every label of ``labelsTr/``, sorted."""
    labels_dir, images_dir = source / "labelsTr", source / "imagesTr"
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            raise DataError(f"{d} not found: an MSD / nnU-Net raw dataset keeps its volumes in imagesTr/ and labelsTr/")
    cases = []
    for label in sorted(labels_dir.iterdir()):
        if label.name.startswith(".") or not label.name.endswith(ending):  # MSD archives hold "._" AppleDouble files
            continue
        case = label.name[: -len(ending)]
        candidates = [images_dir / f"{case}_{channel:04d}{ending}", images_dir / f"{case}{ending}"]
        image = next((c for c in candidates if c.is_file()), None)
        if image is None:
            raise DataError(f"label {label} has no image: looked for {' and '.join(str(c) for c in candidates)}")
        cases.append((case, image, label))
    if not cases:
        raise DataError(f"{labels_dir} holds no label volume ending in {ending!r}")
    return cases


def _load_case(image_path: Path, label_path: Path, channel: int | None) -> tuple[Any, np.ndarray]:
    """The case's image (a :class:`~boltzformer.io.medical.MedicalImage`, (D, H, W) axial slices in
    display orientation) and its label volume in the same order, checked to lie on the same grid.

    ``channel``: the channel to take from a file that holds them all (MSD v1 4D), None for a file of one
    channel (nnU-Net v2 ``<case>_<channel:04d>``).
    """
    from boltzformer.io.medical import load_image, read_label

    if channel is None:
        return (image := load_image(image_path)), read_label(label_path, image)
    import nibabel as nib

    try:
        header = nib.load(str(image_path))
    except Exception as e:  # nibabel raises several kinds for unreadable files
        raise DataError(f"image file {image_path} could not be read as NIfTI: {type(e).__name__}: {e}") from e
    n_channels = header.shape[3] if len(header.shape) == 4 else 1
    if not 0 <= channel < n_channels:
        raise DataError(f"{image_path} has {n_channels} channel(s), channel {channel} was asked")
    if n_channels == 1:
        return (image := load_image(image_path)), read_label(label_path, image)
    # load_image reads 3D volumes only: the channel goes through a scratch 3D file, so that its
    # orientation and grid checks are exactly those of every other case
    with tempfile.TemporaryDirectory(prefix="boltzformer-channel-") as scratch:
        one = Path(scratch) / f"{image_path.name.split('.')[0]}_channel{channel}.nii"
        nib.save(header.slicer[..., channel], one)
        image = load_image(one)
    image.path = image_path
    return image, read_label(label_path, image)


def _ct_window(targets: Sequence[str], site: str | None) -> str:
    """The CT window of a dataset: the site its targets and site name ("liver tumor in abdomen CT" -> liver)."""
    from boltzformer.io.windows import DEFAULT_CT_WINDOW, window_for_prompt

    return window_for_prompt(" ".join([*targets, "in", site or "", "CT"])) or DEFAULT_CT_WINDOW


def _case_rng(seed: int, case: str, label: str) -> np.random.Generator:
    """A generator that depends on (seed, case, label) only, so that adding a case changes no other case's draws.

    Not ``numpy.random.SeedSequence``: the case and label are strings, which a SeedSequence cannot take
    without hashing them first, and the imported datasets (which negative slices were kept) depend on
    this exact stream; changing it would change every re-import and the results measured on them.
    """
    digest = hashlib.sha256(f"{seed}\x00{case}\x00{label}".encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _import_msd(
    source: Path, out: Path, *, overwrite: bool, site: str | None, modality: str | None, channel: int,
    slice_step: int, negative_ratio: float, label_names: Mapping[str, str] | None, seed: int,
    window: str | tuple[float, float] | None, made_by: Mapping[str, Any] | None = None,
) -> ImportSummary:
    from boltzformer.io.windows import to_uint8

    if not (isinstance(slice_step, int) and slice_step >= 1):
        raise ValueError(f"slice_step must be an integer >= 1, got {slice_step!r}")
    if not (isinstance(channel, int) and channel >= 0):
        raise ValueError(f"channel must be an integer >= 0, got {channel!r}")
    if not (0.0 <= negative_ratio < float("inf")):
        raise ValueError(f"negative_ratio must be a number >= 0, got {negative_ratio!r}")
    if window is not None and not isinstance(window, str):
        try:
            window = (float(window[0]), float(window[1])) if len(window) == 2 else window
        except (TypeError, ValueError):
            raise ValueError(f"window must be a window name or (center, width) in HU, got {window!r}") from None
    if window is not None:
        to_uint8(np.zeros(1, np.float32), window=window)  # a bad window fails now, before any file is read
    layout = _read_msd_json(source)
    label_names = dict(label_names or {})
    unknown = sorted(set(label_names) - set(layout.labels))
    if unknown:
        raise ValueError(f"label_names renames {unknown}, not labels of {source / MSD_FILE} ({sorted(layout.labels)})")
    notes: list[str] = []
    if modality is None:
        if channel not in layout.channels:
            raise DataError(f'{source / MSD_FILE}: no modality for channel {channel} in "modality"/"channel_names" '
                            f"{layout.channels}; pass modality=... (--modality)")
        modality = layout.channels[channel]
    if site is None:
        site = _guess_site(layout)
        notes.append(f"site {site!r} guessed from {MSD_FILE} name/description; pass --site to set it" if site
                     else f"no site found in {MSD_FILE} name/description; prompts name none (pass --site)")
    targets = {name: label_names.get(name, name.replace("_", " ")) for name in layout.labels}
    is_ct = modality.strip().upper() == "CT"
    if window is None and is_ct:
        window = _ct_window(list(targets.values()), site)
    cases = _msd_cases(source, layout.file_ending, channel)
    _check_out(source, out, overwrite)
    with _FolderWriter(out, overwrite, made_by) as w:
        for case, image_path, label_path in cases:
            in_file = None if image_path.name == f"{case}_{channel:04d}{layout.file_ending}" else channel
            image, labels = _load_case(image_path, label_path, in_file)
            pixels = to_uint8(image.array, modality=modality, window=window)  # one scale for the whole case
            written: dict[int, str] = {}
            for name, values in layout.labels.items():
                target = targets[name]
                prompt = biomedparse_prompt(target, modality, site)
                present = np.isin(labels, values)  # (D, H, W)
                per_slice = present.reshape(len(present), -1).sum(1)
                positives = np.flatnonzero(per_slice)[::slice_step]
                absent = np.flatnonzero(per_slice == 0)
                n_neg = min(len(absent), int(np.floor(negative_ratio * len(positives) + 0.5)))
                negatives = np.sort(_case_rng(seed, case, name).choice(absent, size=n_neg, replace=False))
                for z in sorted([*positives.tolist(), *negatives.tolist()]):
                    if z not in written:
                        written[z] = w.write_image(f"{case}_z{z:03d}", pixels[z])
                    fields: dict[str, Any] = {"negative": True} if per_slice[z] == 0 else {}
                    w.add_pair(f"{case}_z{z:03d}__{_slug(name)}", written[z], present[z], prompt, patient=case,
                               slice=int(z), label=name, label_values=list(values), modality=modality,
                               site=site, target=target, **fields)
        w.commit({
            "dataset": layout.name or out.name,
            "description": layout.description or f"imported from {source}",
            "import": {"kind": "msd", "source": str(source), "channel": channel, "slice_step": slice_step,
                       "negative_ratio": negative_ratio, "seed": seed, "cases": len(cases), "window": window},
            "conventions": {
                "image": "8-bit grey PNG of one axial slice, rows anterior -> posterior, columns patient right -> "
                         "left (boltzformer.io.medical); "
                         + (f"CT window {window!r}" if window is not None else "intensities stretched between the "
                            "0.5 and 99.5 percentiles of the case's non-zero voxels"),
                "mask": "8-bit, 0/255: voxels of the label's values in that slice",
                "negative": "true for a slice of the case without the label (empty mask)",
                "patient": "the case id, so that splits keep cases apart",
            },
        })
        return _summary("msd", source, out, w.pairs, notes)


# ----------------------------------------------------------------------------------------------- entry point
def import_dataset(
    source: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    kind: str = "auto",
    overwrite: bool = False,
    link: bool = False,
    site: str | None = None,
    modality: str | None = None,
    channel: int = 0,
    slice_step: int = 1,
    negative_ratio: float = 0.25,
    label_names: Mapping[str, str] | None = None,
    seed: int = 0,
    window: str | tuple[float, float] | None = None,
) -> ImportSummary:
    """Convert (or validate) a dataset into the folder format read by :class:`~boltzformer.data.folder.FolderDataset`.

    Args:
        source: the dataset folder to read.
        out: the folder to write; it must not exist or be empty (or ``overwrite``). ``None`` only
            for ``kind="folder"``: validate in place and write nothing.
        kind: ``"auto"`` (see :func:`detect_kind`), ``"folder"``, ``"biomedparse"`` or ``"msd"``.
        overwrite: replace a non-empty ``out``.
        link: folder and BiomedParse kinds: symlink the images instead of copying them.
        site: msd: the anatomical site in prompts (default: guessed from ``dataset.json``).
        modality: msd: the modality (default: ``dataset.json`` ``modality`` / ``channel_names``).
        channel: msd: which channel of multi-channel cases to import.
        slice_step: msd: keep every k-th slice that holds a label.
        negative_ratio: msd: negatives (slices without the label, empty mask) per positive slice.
        label_names: msd: rename labels in prompts, e.g. ``{"cancer": "liver tumor"}``.
        seed: msd: which negative slices are drawn.
        window: msd: a CT window name of :data:`boltzformer.io.windows.WINDOWS` or (center, width) in
            HU, applied whatever the modality; default for CT: the site the labels and ``site`` name
            (:func:`~boltzformer.io.windows.window_for_prompt`), else none (percentile stretch).

    Returns:
        an :class:`ImportSummary`.

    Raises:
        DataError: the source is of no known layout, or a file is missing, unreadable or inconsistent
            (the message names it).
        FileExistsError: ``out`` is not empty and ``overwrite`` is False.
        ValueError: bad arguments.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"dataset source {source} is not a folder")
    kind = detect_kind(source) if kind == "auto" else kind
    if out is None and kind != "folder":
        raise ValueError(f"an output folder (--out) is needed to import a {kind} dataset")
    out = None if out is None else Path(out)
    if out is not None:
        from boltzformer.io.atomic import check_output

        check_output(out, kind="folder")
    options = {"link": link} if kind != "msd" else {
        "site": site, "modality": modality, "channel": channel, "slice_step": slice_step, "negative_ratio": negative_ratio,
        "label_names": dict(label_names or {}), "seed": seed, "window": window}
    made_by = _import_provenance(source, kind, options)
    if out is not None and not overwrite:
        same = _same_import(out, made_by)
        if same is not None:
            return same
    if kind == "folder":
        return _import_folder(source, out, overwrite=overwrite, link=link, made_by=made_by)
    if kind == "biomedparse":
        return _import_biomedparse(source, out, overwrite=overwrite, link=link, made_by=made_by)
    return _import_msd(source, out, overwrite=overwrite, site=site, modality=modality, channel=channel,
                       slice_step=slice_step, negative_ratio=negative_ratio, label_names=label_names, seed=seed,
                       window=window, made_by=made_by)


def _import_provenance(source: Path, kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """What makes an imported folder: the source (path, and size + mtime of its top-level entries), the
    kind and options, the package version and commit."""
    from boltzformer.provenance import git_commit, package_version

    listing = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in source.iterdir() if not p.name.startswith("."))
    digest = hashlib.sha256(repr(listing).encode("utf-8", "surrogateescape")).hexdigest()
    made = {"source": str(source.resolve()), "source_listing_sha256": digest, "kind": kind, "options": dict(options),
            "version": package_version(), "commit": git_commit()}
    return json.loads(json.dumps(made))


def _same_import(out: Path, made_by: Mapping[str, Any]) -> ImportSummary | None:
    """The summary of ``out`` when it already holds this import (same source, kind, options, code);
    None when it is empty or absent. A non-empty ``out`` made otherwise is an error naming what differs."""
    if not out.is_dir() or not any(out.iterdir()):
        return None
    try:
        stored = json.loads((out / META_FILE).read_text(encoding="utf-8")).get("made_by")
    except (OSError, ValueError, AttributeError):
        stored = None
    if stored == made_by:
        summary = validate_folder(out)
        summary.notes.append(f"{out} already holds this import (same source, options and code): nothing redone")
        return summary
    differ = "it was not made by an import" if not stored else "it was imported with other " + ", ".join(
        k for k in made_by if stored.get(k) != made_by[k])
    raise FileExistsError(f"--out {out} exists and is not empty ({differ}); pass --overwrite to replace it")
