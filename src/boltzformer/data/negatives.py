"""Negative prompts: an image paired with a target it does not contain, and an empty mask.

The existence head learns to say "not here" only if training shows it absent targets. Datasets rarely
list what an image lacks, so :class:`WithNegatives` makes such pairs: after the base dataset's items it
appends ``round(ratio * len(base))`` items, each one a base image with a prompt drawn from the prompts
of the whole training set that no pair of that image uses (for the synthetic benchmark: a kind of
object the image does not hold). Every item carries ``"present"``: 1.0 when its mask is not empty.

Which image and which prompt a negative item gets depends only on ``seed`` and the item's index, so
workers and DDP ranks agree, and the same seed gives the same pairs.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from typing import Any, Callable

import torch
from torch.utils.data import ConcatDataset, Dataset

from boltzformer.data.folder import FolderDataset
from boltzformer.data.synthetic import KINDS, SYNONYMS, TEMPLATES, SyntheticDataset

__all__ = ["WithNegatives", "with_presence"]


def with_presence(item: dict[str, Any]) -> dict[str, Any]:
    """``item`` with ``"present"``: 1.0 if its mask has a target pixel, else 0.0."""
    return {**item, "present": float(bool((item["mask"] > 0).any()))}


def _index_key(seed: int, index: int) -> int:
    digest = hashlib.sha256(f"negative\x00{seed}\x00{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _folder_absent(ds: FolderDataset, vocabulary: list[str]) -> Callable[[int, dict], list[str]]:
    by_image: dict[str, set[str]] = {}
    for pair in ds.pairs:
        by_image.setdefault(str(pair.image), set()).add(pair.prompt)
    return lambda i, item: [p for p in vocabulary if p not in by_image[str(ds.pairs[i].image)]]


def _synthetic_absent(i: int, item: dict) -> list[str]:
    present = set(item["kinds_present"].split(","))
    return [t.format(t=name) for kind in KINDS if kind not in present for name in SYNONYMS[kind] for t in TEMPLATES]


class WithNegatives(Dataset):
    """``base`` followed by negative items (an image, an absent target's prompt, an empty mask).

    Args:
        base: a :class:`FolderDataset`, a :class:`SyntheticDataset`, or a ``ConcatDataset`` of them.
        ratio: negatives per base item (0.25: one negative for four positives).
        seed: chooses the images and prompts of the negatives.

    Items are the base's dicts plus ``"present"`` (float); a negative has the base image, the
    absent prompt, a zero mask, ``"area_fraction"`` 0 and ``"id"`` ``"<base id>~neg<k>"``. An image
    for which no absent prompt exists (every prompt of the set is one of its targets) is passed over
    for the next one.

    Raises:
        ValueError: ``ratio`` < 0, or ``ratio`` > 0 and no item of ``base`` has an absent prompt to
            pair with (e.g. a single-target dataset: combine it with another, or import negatives).
    """

    def __init__(self, base: Dataset, ratio: float, *, seed: int = 0) -> None:
        if not ratio >= 0:
            raise ValueError(f"negative ratio must be >= 0, got {ratio!r}")
        self.base = base
        self.seed = seed
        parts = list(base.datasets) if isinstance(base, ConcatDataset) else [base]
        self._offsets = [0]
        for part in parts:
            self._offsets.append(self._offsets[-1] + len(part))  # type: ignore[arg-type]
        vocabulary = sorted({p.prompt for part in parts if isinstance(part, FolderDataset) for p in part.pairs})
        self._absent: list[Callable[[int, dict], list[str]]] = []
        for part in parts:
            if isinstance(part, FolderDataset):
                self._absent.append(_folder_absent(part, vocabulary))
            elif isinstance(part, SyntheticDataset):
                self._absent.append(_synthetic_absent)
            else:
                raise ValueError(f"negative prompts need folder or synthetic datasets, got {type(part).__name__}")
        self.num_negatives = round(ratio * len(base)) if len(base) else 0  # type: ignore[arg-type]
        if self.num_negatives and not any(isinstance(p, SyntheticDataset) for p in parts) and len(vocabulary) < 2:
            raise ValueError(
                f"cannot make negative prompts: the training data has one prompt only ({vocabulary}); every image "
                "contains it. Train on several datasets together, or import a dataset with negatives"
            )

    def __len__(self) -> int:
        return len(self.base) + self.num_negatives  # type: ignore[arg-type]

    def size_buckets(self) -> list[str]:
        """The base's size buckets (``data.loading.size_buckets``), then ``"empty"`` for each negative."""
        from boltzformer.data.loading import size_buckets
        from boltzformer.sizes import EMPTY_BUCKET

        return size_buckets(self.base) + [EMPTY_BUCKET] * self.num_negatives

    def _absent_prompts(self, index: int, item: dict) -> list[str]:
        part = bisect_right(self._offsets, index) - 1
        return self._absent[part](index - self._offsets[part], item)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.base)  # type: ignore[arg-type]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        if index < n:
            return with_presence(self.base[index])
        key = _index_key(self.seed, index - n)
        for step in range(n):  # an image with no absent prompt passes to the next one
            source = (key + step) % n
            item = self.base[source]
            absent = self._absent_prompts(source, item)
            if absent:
                prompt = absent[(key >> 20) % len(absent)]
                return {
                    **item,
                    "mask": torch.zeros_like(item["mask"]),
                    "prompt": prompt,
                    "id": f"{item['id']}~neg{index - n}",
                    "area_fraction": 0.0,
                    "present": 0.0,
                }
        raise ValueError("no image of the dataset lacks any of its prompts: cannot make a negative item")
