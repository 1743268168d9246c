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

One module per kind (:mod:`~boltzformer.data.importers.folder`, :mod:`~boltzformer.data.importers.biomedparse`,
:mod:`~boltzformer.data.importers.msd`); :mod:`~boltzformer.data.importers.common` holds the summary and the
folder writer, :mod:`~boltzformer.data.importers.prompts` the prompt phrasing; this module detects the kind
and dispatches.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from boltzformer.data.folder import META_FILE
from boltzformer.io.images import DataError
from boltzformer.data.importers.biomedparse import _biomedparse_splits, _import_biomedparse
from boltzformer.data.importers.common import MASK_SUFFIX, MSD_FILE, ImportSummary
from boltzformer.data.importers.folder import _import_folder, validate_folder
from boltzformer.data.importers.msd import _import_msd
from boltzformer.data.importers.prompts import biomedparse_prompt, modality_phrase
from boltzformer.io.atomic import check_output
from boltzformer.provenance import git_commit, package_version

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
