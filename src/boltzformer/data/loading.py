"""Resolve a data argument ("synthetic" or folder paths) to datasets at the model's input size."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import ConcatDataset, Dataset

from boltzformer.transforms import resize_mask_to_input, to_model_input

__all__ = ["open_dataset", "ModelInputDataset", "SYNTHETIC"]

SYNTHETIC = "synthetic"
_LATERAL = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def _split_paths(data: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    if isinstance(data, (str, os.PathLike)):
        return [p for p in str(data).split(",") if p]
    return [str(p) for p in data]


def open_dataset(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    split: str,
    *,
    seed: int = 0,
    synthetic_size: int = 256,
    synthetic_counts: dict[str, int] | None = None,
) -> Dataset:
    """``"synthetic"`` (the built-in benchmark) or one or more dataset folders (comma-separated or a
    list), each in the ``shared/data`` format. ``split``: "train", "val" or "test"."""
    paths = _split_paths(data)
    if not paths:
        raise ValueError("--data is empty: give 'synthetic' or a dataset folder")
    if paths == [SYNTHETIC]:
        from boltzformer.data.synthetic import SyntheticConfig, SyntheticDataset

        counts = synthetic_counts or {}
        cfg = SyntheticConfig(image_size=synthetic_size, seed=seed, **counts)
        return SyntheticDataset(split, cfg)
    from boltzformer.data.folder import FolderDataset

    datasets = []
    for p in paths:
        if p == SYNTHETIC:
            raise ValueError("'synthetic' cannot be mixed with dataset folders in --data")
        datasets.append(FolderDataset(Path(p), split=split, seed=seed))
    return datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)


class ModelInputDataset(Dataset):
    """Pads each sample to a square and resizes it to ``image_size``; optional random flips.

    Items: {"image": (3, S, S) 0-255, "mask": (1, S, S) in [0, 1] (soft where resized), "prompt",
    "id"}. Flips (not for prompts that name a side) use torch's global generator, which Lightning's ``seed_everything(workers=True)``
    seeds in every worker, so a run is reproducible from its seed.
    """

    def __init__(self, base: Dataset, image_size: int, *, augment: bool = False) -> None:
        self.base = base
        self.image_size = image_size
        self.augment = augment

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.base[index]
        image, geom = to_model_input(s["image"], self.image_size)
        mask = resize_mask_to_input(s["mask"], geom)
        # no flips where the prompt names a side: "left kidney" must stay left
        if self.augment and not _LATERAL.search(s["prompt"]):
            flips = torch.rand(2) < 0.5
            dims = [d for d, f in zip((-1, -2), flips.tolist()) if f]
            if dims:
                image, mask = image.flip(dims), mask.flip(dims)
        return {"image": image.contiguous(), "mask": mask.contiguous(), "prompt": s["prompt"], "id": s["id"]}
