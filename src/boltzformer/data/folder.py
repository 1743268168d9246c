"""Folder datasets: the ``images/ + masks/ + meta.json`` layout of ``shared/data``, split by patient.

Layout of one dataset folder (paths in ``meta.json`` are relative to the folder)::

    <root>/images/<image_id>.png   RGB (or grey) image
    <root>/masks/<pair_id>.png     8-bit single channel, 0 = background, 255 = target, same HxW as its image
    <root>/meta.json               {"pairs": [{"id", "image", "mask", "prompt", "patient"?, ...}, ...], ...}

Each pair is one sample (several pairs may share an image, one mask per target). Train / val / test
splits keep groups apart: the group of a pair is its ``"patient"`` when it has one, else its image
path, so that slices of one patient, or the masks of one image, never land in two splits.

Metadata problems (missing fields, missing files, empty prompts) raise :class:`DataError` when the
dataset is built; pixel data is decoded lazily in ``__getitem__`` (corrupt files and mask/image size
mismatches raise :class:`DataError` there). Every message names the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset

from boltzformer.io.images import DataError, read_image, read_mask

__all__ = [
    "DataError",
    "FolderDataset",
    "FolderPair",
    "SPLITS",
    "fold_groups",
    "open_folder_datasets",
    "split_groups",
]

SPLITS = ("all", "train", "val", "test")
META_FILE = "meta.json"


@dataclass(frozen=True)
class FolderPair:
    """One (image, mask, prompt) entry of a ``meta.json``, with its paths resolved."""

    id: str  # stable sample id ("id" in meta.json, else the mask file's stem)
    image: Path  # absolute path of the image file
    mask: Path  # absolute path of the mask file
    prompt: str  # text prompt naming the target, non-empty
    group: str  # split group: the "patient" field when present, else the image path as written in meta.json
    image_rel: str  # image path as written in meta.json (for messages)
    mask_rel: str  # mask path as written in meta.json (for messages)


def _stable_key(seed: int, group: str) -> str:
    """A platform-independent pseudo-random sort key (Python's ``hash()`` is salted per process)."""
    return hashlib.sha256(f"{seed}\x00{group}".encode("utf-8")).hexdigest()


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (is_number and math.isfinite(value) and 0.0 <= value < 1.0):
            raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 so that train is not empty, "
            f"got {val_fraction} + {test_fraction} = {val_fraction + test_fraction}"
        )


def split_groups(
    groups: Sequence[str], *, val_fraction: float = 0.15, test_fraction: float = 0.25, seed: int = 0
) -> dict[str, str]:
    """Assign whole groups to train / val / test so that the splits hold about the asked fraction of pairs.

    Groups are ordered by a SHA-256 of ``(seed, group)`` (the same order on every machine and Python
    version), then test is filled first and val second: walking that order, a group is taken when the
    split is still empty or when adding it brings the split's pair count closer to its target
    (``fraction * number of pairs``). Groups left over go to train. Each split with a positive fraction
    gets at least one group, and train always does.

    Args:
        groups: the group of every pair, one entry per pair (repeats are how pair counts are known);
            a list of distinct groups weighs every group equally.
        val_fraction: wanted fraction of pairs in val, in [0, 1); 0 gives an empty val split.
        test_fraction: wanted fraction of pairs in test, in [0, 1); 0 gives an empty test split.
        seed: selects the shuffle; the same seed always gives the same assignment.

    Returns:
        ``{group: "train" | "val" | "test"}`` for every distinct group.

    Raises:
        ValueError: fractions out of range, or fewer distinct groups than non-empty splits to fill
            (3 when both fractions are positive).

    Example:
        >>> split_groups(["a", "a", "b", "c", "d"], val_fraction=0.2, test_fraction=0.2, seed=0)
        {'d': 'test', 'c': 'val', 'a': 'train', 'b': 'train'}
    """
    _check_fractions(val_fraction, test_fraction)
    groups = [str(g) for g in groups]
    counts = Counter(groups)
    wanted = [name for name, frac in (("test", test_fraction), ("val", val_fraction)) if frac > 0]
    n_needed = len(wanted) + 1  # + train
    if len(counts) < n_needed:
        raise ValueError(
            f"cannot make {n_needed} non-empty splits ({', '.join(wanted + ['train'])}) from "
            f"{len(counts)} group(s) {sorted(counts)[:5]}; groups (patients or images) are never divided, "
            f"so at least {n_needed} are needed (or set val_fraction/test_fraction to 0)"
        )
    n_pairs = len(groups)
    remaining = sorted(counts, key=lambda g: (_stable_key(seed, g), g))
    assignment: dict[str, str] = {}
    fractions = {"test": test_fraction, "val": val_fraction}
    for i, name in enumerate(wanted):
        target = fractions[name] * n_pairs
        n_later = len(wanted) - i  # splits still to fill after this one, train included
        n_free = len(remaining)  # groups not assigned yet
        taken, kept = 0, []
        for g in remaining:
            c = counts[g]
            closer = taken == 0 or abs(taken + c - target) < abs(taken - target)
            if closer and n_free - 1 >= n_later:
                assignment[g] = name
                taken += c
                n_free -= 1
            else:
                kept.append(g)
        remaining = kept
    for g in remaining:
        assignment[g] = "train"
    return assignment


def fold_groups(groups: Sequence[str], *, folds: int, fold: int, seed: int = 0) -> dict[str, str]:
    """Cross-validation: whole groups (patients, or images) dealt into ``folds`` folds of about equal
    pair counts; fold ``fold`` is "test", one group of the others is "val" and the rest "train".

    Groups are dealt largest first (ties in the seeded order of :func:`split_groups`) to the fold with
    the fewest pairs so far. The val group is the smallest of the other folds' groups (first in the
    seeded order among equals), so that training keeps nearly everything outside the test fold.

    Raises:
        ValueError: ``folds`` < 2, ``fold`` not in [0, folds), or fewer than ``folds + 1`` groups.
    """
    if not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
    if not isinstance(fold, int) or not 0 <= fold < folds:
        raise ValueError(f"fold must be an integer in [0, {folds}), got {fold!r}")
    counts = Counter(str(g) for g in groups)
    if len(counts) < folds + 1:
        raise ValueError(f"cannot make {folds} folds plus a val group from {len(counts)} group(s); groups are never divided")
    order = sorted(counts, key=lambda g: (-counts[g], _stable_key(seed, g), g))
    sizes = [0] * folds
    assignment: dict[str, str] = {}
    of_fold: dict[str, int] = {}
    for g in order:
        k = min(range(folds), key=lambda i: (sizes[i], i))
        of_fold[g] = k
        sizes[k] += counts[g]
    others = [g for g in order if of_fold[g] != fold]
    val = min(others, key=lambda g: (counts[g], _stable_key(seed, g), g))
    for g in order:
        assignment[g] = "test" if of_fold[g] == fold else "val" if g == val else "train"
    return assignment


def _load_meta(root: Path) -> list[dict]:
    meta_path = root / META_FILE
    if not meta_path.is_file():
        raise DataError(
            f"{meta_path} not found: a dataset folder needs a {META_FILE} listing its pairs "
            f'({{"pairs": [{{"id", "image", "mask", "prompt"}}, ...]}})'
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{meta_path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or "pairs" not in meta:
        found = sorted(meta)[:10] if isinstance(meta, dict) else type(meta).__name__
        raise DataError(f'{meta_path} must be a JSON object with a "pairs" list, found {found}')
    pairs = meta["pairs"]
    if not isinstance(pairs, list) or not pairs:
        raise DataError(f'{meta_path}: "pairs" must be a non-empty list, found {pairs!r:.80}')
    return pairs


def _parse_pairs(root: Path, raw_pairs: list) -> list[FolderPair]:
    meta_path = root / META_FILE
    pairs: list[FolderPair] = []
    seen_ids: dict[str, int] = {}
    for i, p in enumerate(raw_pairs):
        where = f"{meta_path} pairs[{i}]"
        if not isinstance(p, dict):
            raise DataError(f"{where} must be an object with image/mask/prompt, found {p!r:.80}")
        for key in ("image", "mask", "prompt"):
            if key not in p:
                raise DataError(
                    f'{where} (id {p.get("id")!r}) has no "{key}" field; each pair needs image, mask, prompt'
                )
            if not isinstance(p[key], str):
                raise DataError(f'{where} "{key}" must be a string, found {p[key]!r:.80}')
        if not p["prompt"].strip():
            raise DataError(f'{where} (id {p.get("id")!r}) has an empty "prompt"; every mask needs a text prompt')
        files = {}
        for key in ("image", "mask"):
            path = root / p[key]
            if not path.is_file():
                raise DataError(f'{where} "{key}": file {p[key]} not found under {root} (looked for {path})')
            files[key] = path
        pair_id = str(p.get("id") or Path(p["mask"]).stem)
        if pair_id in seen_ids:
            raise DataError(f"{where} repeats id {pair_id!r} of pairs[{seen_ids[pair_id]}]; ids must be unique")
        seen_ids[pair_id] = i
        patient = p.get("patient")
        group = str(patient) if patient is not None and str(patient) != "" else p["image"]
        pairs.append(
            FolderPair(
                id=pair_id,
                image=files["image"],
                mask=files["mask"],
                prompt=p["prompt"].strip(),
                group=group,
                image_rel=p["image"],
                mask_rel=p["mask"],
            )
        )
    return pairs


def _size_mismatch(pair: FolderPair, root: Path, mask_hw: tuple, image_hw: tuple) -> DataError:
    (mh, mw), (ih, iw) = mask_hw, image_hw
    return DataError(
        f"mask {pair.mask_rel} is {mh}x{mw} but its image {pair.image_rel} is {ih}x{iw} "
        f"(pair {pair.id!r} in {root / META_FILE}); masks must have their image's HxW"
    )


def _check_sizes(pair: FolderPair, root: Path) -> None:
    """Open the image and mask headers (no decoding) and compare their sizes."""
    sizes = []
    for path, rel in ((pair.image, pair.image_rel), (pair.mask, pair.mask_rel)):
        try:
            with Image.open(path) as im:
                sizes.append((im.height, im.width))
        except Exception as exc:  # PIL raises several kinds for non-images
            raise DataError(f"{rel} (pair {pair.id!r} in {root / META_FILE}) is not a readable image: {exc}") from None
    if sizes[0] != sizes[1]:
        raise _size_mismatch(pair, root, sizes[1], sizes[0])


class FolderDataset(Dataset):
    """One dataset folder (``images/``, ``masks/``, ``meta.json``) as a map-style dataset, optionally one split.

    Each item is the sample dict of :mod:`boltzformer.data` plus two keys:

    - ``"image"``: float32 tensor (3, H, W), values 0-255 (grey replicated to 3 channels)
    - ``"mask"``: float32 tensor (1, H, W), values 0 or 1
    - ``"prompt"``: str; ``"id"``: str (the pair id from ``meta.json``)
    - ``"area_fraction"``: float, mask pixels / image pixels of the mask as loaded
    - ``"group"``: str, the split group (patient, or image path when there is no patient)

    Args:
        root: the dataset folder.
        split: ``"all"`` (every pair), ``"train"``, ``"val"`` or ``"test"``.
        val_fraction: about this fraction of pairs goes to val (see :func:`split_groups`).
        test_fraction: about this fraction of pairs goes to test.
        seed: selects the split; the same seed gives the same split on every machine.
        fold: ``(k, n)``: cross-validation fold k of n instead of the fractions (:func:`fold_groups`).
        verify: read every image's and mask's header now (not the pixels) and check that they open
            and that their sizes agree, so that a bad file stops a run before it starts.

    Raises:
        DataError: ``root`` is not a directory; ``meta.json`` is missing, not JSON or has no ``"pairs"``;
            a pair lacks image/mask/prompt, has an empty prompt, or names a file that does not exist.
            ``__getitem__`` raises it for undecodable files and for a mask whose size differs from its image.
        ValueError: unknown ``split``, bad fractions, or too few groups for non-empty splits.

    Example:
        >>> ds = FolderDataset("shared/data/lidc_lung_nodule", split="train", seed=0)  # doctest: +SKIP
        >>> sample = ds[0]; sample["image"].shape, sample["mask"].shape  # doctest: +SKIP
        (torch.Size([3, 512, 512]), torch.Size([1, 512, 512]))
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        split: str = "all",
        val_fraction: float = 0.15,
        test_fraction: float = 0.25,
        seed: int = 0,
        verify: bool = True,
        fold: tuple[int, int] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        root = Path(root)
        if not root.exists():
            raise DataError(f"dataset folder {root} does not exist")
        if not root.is_dir():
            raise DataError(f"dataset folder {root} is not a directory (expected images/, masks/, {META_FILE})")
        self.root = root.resolve()
        self.split = split
        self.seed = seed
        all_pairs = _parse_pairs(self.root, _load_meta(self.root))
        if split == "all":
            _check_fractions(val_fraction, test_fraction)
            self.assignment: dict[str, str] = {}
            self.pairs = all_pairs
        else:
            try:
                if fold is not None:
                    self.assignment = fold_groups([p.group for p in all_pairs], folds=fold[1], fold=fold[0], seed=seed)
                else:
                    self.assignment = split_groups(
                        [p.group for p in all_pairs], val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
                    )
            except ValueError as e:
                raise ValueError(f"cannot split {self.root / META_FILE}: {e}") from e
            self.pairs = [p for p in all_pairs if self.assignment[p.group] == split]
            if not self.pairs:
                raise ValueError(
                    f"split {split!r} of {self.root} is empty with val_fraction={val_fraction}, "
                    f"test_fraction={test_fraction}; give it a positive fraction"
                )

        if verify:
            for pair in self.pairs:
                _check_sizes(pair, self.root)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def ids(self) -> list[str]:
        """The pair ids of this split, in item order."""
        return [p.id for p in self.pairs]

    @property
    def groups(self) -> list[str]:
        """The distinct groups (patients or images) of this split, sorted."""
        return sorted({p.group for p in self.pairs})

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        image = read_image(pair.image)  # (H, W, 3) uint8
        mask = read_mask(pair.mask)  # (H, W) bool
        if mask.shape != image.shape[:2]:
            raise _size_mismatch(pair, self.root, mask.shape, image.shape[:2])
        H, W = mask.shape
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()  # HxWx3 -> 3xHxW
        mask_t = torch.from_numpy(mask).float()[None]  # HxW -> 1xHxW
        return {
            "image": image_t,
            "mask": mask_t,
            "prompt": pair.prompt,
            "id": pair.id,
            "area_fraction": float(mask.sum()) / float(H * W),
            "group": pair.group,
        }

    def __repr__(self) -> str:
        return f"FolderDataset(root={str(self.root)!r}, split={self.split!r}, seed={self.seed}, n={len(self)})"


def open_folder_datasets(
    paths: Sequence[str | os.PathLike],
    *,
    split: str = "all",
    val_fraction: float = 0.15,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> ConcatDataset:
    """Open several dataset folders with the same split arguments and concatenate them.

    Each folder is split on its own (groups never cross folders). Ids are those of each ``meta.json``
    and are not made unique across folders.

    Raises:
        ValueError: ``paths`` is empty (plus everything :class:`FolderDataset` raises).
    """
    if isinstance(paths, (str, os.PathLike)) or len(paths) == 0:
        raise ValueError(f"paths must be a non-empty list of dataset folders, got {paths!r}")
    return ConcatDataset(
        [
            FolderDataset(p, split=split, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
            for p in paths
        ]
    )
