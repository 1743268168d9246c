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

__all__ = ["open_dataset", "folds_per_path", "ModelInputDataset", "SCALE_JITTER", "SYNTHETIC", "size_buckets"]

SYNTHETIC = "synthetic"
#: ``TrainConfig.scale_jitter``: "in" crops around the target (zoom in up to 1 / min_crop), "both" also
#: zooms out (the image placed on a larger canvas, up to 1 / min_crop), "none" neither
SCALE_JITTER = ("none", "in", "both")
_LATERAL = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def _split_paths(data: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    if isinstance(data, (str, os.PathLike)):
        return [p for p in str(data).split(",") if p]
    return [str(p) for p in data]


def _is_fold(spec: Any) -> bool:
    return (isinstance(spec, (tuple, list)) and len(spec) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in spec))


def folds_per_path(fold: Any, data: str | os.PathLike | Sequence[str | os.PathLike]) -> list[tuple[int, int] | None]:
    """The cross-validation fold of each data folder of ``data`` (as :func:`open_dataset` takes it) from its ``fold``:
    None (no folds), one ``(k, n)`` for every folder, or a sequence of one ``(k, n)`` per folder, in
    the order of the paths (each folder split into its own number of folds).

    Raises:
        ValueError: ``fold`` is none of these, a sequence of another length than the paths, or a
            ``(k, n)`` with ``n`` < 2 or ``k`` outside [0, n).
    """
    n_paths = len(_split_paths(data))
    if fold is None:
        return [None] * n_paths
    if _is_fold(fold):
        specs = [tuple(fold)] * n_paths
    elif isinstance(fold, (tuple, list)) and all(_is_fold(f) for f in fold):
        if len(fold) != n_paths:
            raise ValueError(f"fold: one (k, n) per data folder is {n_paths} fold(s) here, got {len(fold)}: {fold!r}")
        specs = [tuple(f) for f in fold]
    else:
        raise ValueError(f"fold must be (k, n) or a sequence of one (k, n) per data folder (integers), got {fold!r}")
    for k, n in specs:
        if n < 2 or not 0 <= k < n:
            raise ValueError(f"fold: (k, n) needs n >= 2 and 0 <= k < n, got {(k, n)!r} in {fold!r}")
    return specs  # type: ignore[return-value]


def open_dataset(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    split: str,
    *,
    seed: int = 0,
    synthetic_size: int = 256,
    synthetic_counts: dict[str, int] | None = None,
    fold: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
) -> Dataset:
    """``"synthetic"`` (the built-in benchmark) or one or more dataset folders (comma-separated or a
    list), each in the ``shared/data`` format. ``split``: "train", "val", "test" or "all" (every sample).
    ``fold``: ``(k, n)``, cross-validation fold k of n of every folder (:func:`~boltzformer.data.folder.fold_groups`),
    or one ``(k, n)`` per folder in the order of the paths, each folder with its own fold count
    (:func:`folds_per_path`): ``[(0, 4), (0, 3)]`` is fold 0 of 4 of the first folder and 0 of 3 of the second."""
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

    folds = folds_per_path(fold, paths)
    datasets = [FolderDataset(Path(p), split=split, seed=seed, fold=f) for p, f in zip(paths, folds)]
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


def _zoom_out(image: Tensor, mask: Tensor, min_scale: float) -> tuple[Tensor, Tensor]:
    """The image at a random place on a square canvas of side in [1, 1 / min_scale] x its longer side,
    filled with the image's darkest value (the air around a scan): targets shrink, by up to ``min_scale``."""
    _, H, W = image.shape
    side = max(H, W)
    c = int(side + torch.randint(0, int(side / min_scale) - side + 1, ()).item())
    top = int(torch.randint(0, c - H + 1, ()).item())
    left = int(torch.randint(0, c - W + 1, ()).item())
    canvas = image.new_empty((image.shape[0], c, c))
    canvas[:] = image.amin(dim=(-2, -1), keepdim=True)
    canvas_mask = mask.new_zeros((mask.shape[0], c, c))
    canvas[:, top : top + H, left : left + W] = image
    canvas_mask[:, top : top + H, left : left + W] = mask
    return canvas, canvas_mask


def _copy_paste(image: Tensor, mask: Tensor, tries: int = 10) -> tuple[Tensor, Tensor]:
    """A copy of the target's pixels pasted at a random place of the same image where it overlaps
    neither the target's box nor an earlier paste; the mask becomes both (an image with one more
    instance of what the prompt names). Images without a target, or with no free place, are unchanged."""
    target = mask[0] > 0
    ys, xs = torch.nonzero(target, as_tuple=True)
    if not len(ys):
        return image, mask
    _, H, W = image.shape
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    h, w = y1 - y0, x1 - x0
    if h >= H or w >= W:
        return image, mask
    for _ in range(tries):
        top = int(torch.randint(0, H - h + 1, ()).item())
        left = int(torch.randint(0, W - w + 1, ()).item())
        if top >= y1 or top + h <= y0 or left >= x1 or left + w <= x0:  # boxes apart
            image, mask = image.clone(), mask.clone()
            cut = target[y0:y1, x0:x1]
            image[:, top : top + h, left : left + w][:, cut] = image[:, y0:y1, x0:x1][:, cut]
            mask[:, top : top + h, left : left + w][:, cut] = mask[:, y0:y1, x0:x1][:, cut]
            return image, mask
    return image, mask


def size_buckets(dataset: Dataset) -> list[str]:
    """The size bucket (:func:`boltzformer.sizes.size_bucket`, or ``"empty"``) of every item's target,
    for drawing images by :data:`boltzformer.data.patches.SIZE_WEIGHTS`. The synthetic benchmark knows
    its buckets without drawing its images; other datasets are read once (masks only matter)."""
    from boltzformer.sizes import EMPTY_BUCKET, size_bucket

    if hasattr(dataset, "size_buckets"):
        return list(dataset.size_buckets())
    if isinstance(dataset, ConcatDataset):
        return [b for part in dataset.datasets for b in size_buckets(part)]
    out = []
    for i in range(len(dataset)):  # type: ignore[arg-type]
        mask = dataset[i]["mask"]
        area = float((mask > 0).float().mean())
        out.append(size_bucket(area) if area > 0 else EMPTY_BUCKET)
    return out


class ModelInputDataset(Dataset):
    """Pads each sample to a square and resizes it to ``image_size``; optional augmentation.

    Items: {"image": (3, S, S) 0-255, "mask": (1, S, S) in [0, 1] (soft where resized), "prompt",
    "id", "present" (1.0 when the target is in the image, 0.0 for an empty mask)}. Augmentation, for training: a random square crop that keeps the whole target (zoom up to
    1 / ``min_crop``), flips (not for prompts that name a side: "left kidney" must stay left) and a
    small brightness / contrast change. It draws from torch's global generator, which Lightning's
    ``seed_everything(workers=True)`` seeds in every worker, so a run is reproducible from its seed.
    ``augment="flips"`` does the flips only. ``center``: pad equally on both sides (``ModelConfig.pad``).
    ``scale``: the scale jitter (:data:`SCALE_JITTER`; default: "in" with ``augment=True``, else
    "none"); "both" zooms in or out, each half of the time. ``copy_paste``: the probability that a copy of
    the target is pasted elsewhere in the image (:func:`_copy_paste`), done before the scale jitter.
    Neither draws a random number when off, so turning them on changes no other stream.

    Why not MONAI's dictionary transforms (``RandFlipd``, ``RandSpatialCropd``, ``RandScaleIntensityd``...):
    they draw from a NumPy ``RandomState`` of their own, not from torch's generator, so switching would
    change the random stream of every training run (and the ablation cells measured with it); MONAI has no
    crop that keeps the whole target box at a random scale either (``RandCropByPosNegLabeld`` centres on
    one pixel). The crop, flips and intensity change below stay hand-written, in the order they draw.
    """

    def __init__(self, base: Dataset, image_size: int, *, augment: bool | str = False, min_crop: float = 0.6,
                 center: bool = False, scale: str | None = None, copy_paste: float = 0.0) -> None:
        if augment not in (False, True, "flips"):
            raise ValueError(f"augment must be False, True or 'flips', got {augment!r}")
        scale = scale if scale is not None else "in" if augment is True else "none"
        if scale not in SCALE_JITTER:
            raise ValueError(f"scale must be one of {SCALE_JITTER}, got {scale!r}")
        if not 0.0 <= copy_paste <= 1.0:
            raise ValueError(f"copy_paste must be a probability in [0, 1], got {copy_paste}")
        self.scale = scale
        self.copy_paste = copy_paste
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
        if self.copy_paste > 0 and float(torch.rand(())) < self.copy_paste:
            image, mask = _copy_paste(image, mask)
        if self.scale == "in" or (self.scale == "both" and float(torch.rand(())) < 0.5):
            image, mask = _crop_around_target(image, mask, self.min_crop)
        elif self.scale == "both":
            image, mask = _zoom_out(image, mask, self.min_crop)
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
