"""Resolve a data argument ("synthetic" or folder paths) to datasets at the model's input size."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from boltzformer.io.transforms import resize_mask_to_input, to_model_input

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
    fold: tuple[int, int] | None = None,
) -> Dataset:
    """``"synthetic"`` (the built-in benchmark) or one or more dataset folders (comma-separated or a
    list), each in the ``shared/data`` format. ``split``: "train", "val", "test" or "all" (every sample).
    ``fold``: ``(k, n)``, cross-validation fold k of n of every folder (:func:`~boltzformer.data.folder.fold_groups`)."""
    paths = _split_paths(data)
    if not paths:
        raise ValueError("--data is empty: give 'synthetic' or a dataset folder")
    if paths == [SYNTHETIC]:
        from boltzformer.data.synthetic import SyntheticConfig, SyntheticDataset

        counts = synthetic_counts or {}
        cfg = SyntheticConfig(image_size=synthetic_size, seed=seed, **counts)
        if split == "all":
            return ConcatDataset([SyntheticDataset(s, cfg) for s in ("train", "val", "test")])
        return SyntheticDataset(split, cfg)
    if fold is not None and SYNTHETIC in paths:
        raise ValueError("cross-validation folds are for dataset folders, not 'synthetic'")
    if SYNTHETIC in paths:
        raise ValueError("'synthetic' cannot be mixed with dataset folders in --data")
    from boltzformer.data.folder import FolderDataset

    datasets = [FolderDataset(Path(p), split=split, seed=seed, fold=fold) for p in paths]
    return datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)


def _crop_around_target(image: Tensor, mask: Tensor, min_scale: float) -> tuple[Tensor, Tensor]:
    """A random square crop of side in [min_scale, 1] x the shorter side that keeps the whole target."""
    _, H, W = image.shape
    side = min(H, W)
    ys, xs = torch.nonzero(mask[0] > 0, as_tuple=True)
    if len(ys):
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    else:
        y0, y1, x0, x1 = 0, 0, 0, 0
    lo = max(int(side * min_scale), y1 - y0, x1 - x0, 1)
    c = int(lo + torch.randint(0, side - lo + 1, ()).item()) if side > lo else side
    # top-left corners that keep the target box inside the crop
    top = int(torch.randint(max(0, y1 - c), min(y0, H - c) + 1, ()).item()) if len(ys) else int(torch.randint(0, H - c + 1, ()).item())
    left = int(torch.randint(max(0, x1 - c), min(x0, W - c) + 1, ()).item()) if len(ys) else int(torch.randint(0, W - c + 1, ()).item())
    return image[:, top : top + c, left : left + c], mask[:, top : top + c, left : left + c]


class ModelInputDataset(Dataset):
    """Pads each sample to a square and resizes it to ``image_size``; optional augmentation.

    Items: {"image": (3, S, S) 0-255, "mask": (1, S, S) in [0, 1] (soft where resized), "prompt",
    "id", "present" (1.0 when the target is in the image, 0.0 for an empty mask)}. Augmentation, for training: a random square crop that keeps the whole target (zoom up to
    1 / ``min_crop``), flips (not for prompts that name a side: "left kidney" must stay left) and a
    small brightness / contrast change. It draws from torch's global generator, which Lightning's
    ``seed_everything(workers=True)`` seeds in every worker, so a run is reproducible from its seed.
    ``augment="flips"`` does the flips only. ``center``: pad equally on both sides (``ModelConfig.pad``).

    Why not MONAI's dictionary transforms (``RandFlipd``, ``RandSpatialCropd``, ``RandScaleIntensityd``...):
    they draw from a NumPy ``RandomState`` of their own, not from torch's generator, so switching would
    change the random stream of every training run (and the ablation cells measured with it); MONAI has no
    crop that keeps the whole target box at a random scale either (``RandCropByPosNegLabeld`` centres on
    one pixel). The crop, flips and intensity change below stay hand-written, in the order they draw.
    """

    def __init__(self, base: Dataset, image_size: int, *, augment: bool | str = False, min_crop: float = 0.6,
                 center: bool = False) -> None:
        if augment not in (False, True, "flips"):
            raise ValueError(f"augment must be False, True or 'flips', got {augment!r}")
        self.base = base
        self.image_size = image_size
        self.augment = augment
        self.min_crop = min_crop
        self.center = center

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.base[index]
        image, mask = s["image"], s["mask"]
        present = float(s["present"]) if "present" in s else float(bool((mask > 0).any()))
        if self.augment is True:
            image, mask = _crop_around_target(image, mask, self.min_crop)
        image, geom = to_model_input(image, self.image_size, center=self.center)
        mask = resize_mask_to_input(mask, geom)
        if self.augment:
            if not _LATERAL.search(s["prompt"]):
                flips = torch.rand(2) < 0.5
                dims = [d for d, f in zip((-1, -2), flips.tolist()) if f]
                if dims:
                    image, mask = image.flip(dims), mask.flip(dims)
        if self.augment is True:
            gain, shift = 1 + 0.3 * (torch.rand(()) - 0.5), 30 * (torch.rand(()) - 0.5)
            image = (image * gain + shift).clamp(0, 255)
        return {
            "image": image.contiguous(),
            "mask": mask.contiguous(),
            "prompt": s["prompt"],
            "id": s["id"],
            "present": present,
        }
