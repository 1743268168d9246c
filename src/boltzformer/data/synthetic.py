"""The built-in "synthetic" benchmark: scan-like grey images with a few small objects and a text prompt.

Every image shows an elliptical body (darker air around it, a subcutaneous fat band, soft organ-like
regions, optional lungs and a vertebra, a bias field and texture, Gaussian noise) holding
``min_objects..max_objects`` non-overlapping objects of *distinct* kinds (:data:`KINDS`):

- ``"nodule"``: bright, round, soft edge;
- ``"cyst"``: dark, smooth, homogeneous ellipse, sometimes with a thin bright rim;
- ``"calcification"``: very bright, small and compact, sometimes a small cluster of specks;
- ``"lesion"``: irregular lobulated blob with a mottled interior, moderate contrast (either sign);
- ``"vessel segment"``: elongated curved tube of constant width, bright.

One object is the target: the prompt names its kind (with varied phrasing) and the mask is exactly
its pixels. Because a kind appears at most once per image, the prompt alone says which object to
segment. Target sizes are balanced over the :data:`SIZE_BUCKETS` (by area fraction): item ``i`` has
its target in bucket ``("tiny", "small", "large")[i % 3]``, and the mask area always lies in it
(calcifications are only tiny or small, lesions only small or large). Tiny targets cover at least
0.012% of the image (8 pixels at 256 x 256, never fewer than 3).

Items are generated on the fly; item ``i`` is a pure function of ``(config.seed, split, i)`` through
``numpy.random.default_rng([seed, SPLIT_CODES[split], i])``, so it is the same in every process and
call, and the splits never share a random stream. The drawing (background, shapes, placement, rendering)
is in :mod:`boltzformer.data.synthetic_drawing`; this module holds the recipe of an item.

Example::

    >>> ds = SyntheticDataset("test", SyntheticConfig(image_size=128))
    >>> item = ds[0]
    >>> item["image"].shape, item["mask"].shape, size_bucket(item["area_fraction"])
    (torch.Size([3, 128, 128]), torch.Size([1, 128, 128]), 'tiny')
"""

from __future__ import annotations

import difflib
import math
import operator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from boltzformer.data.synthetic_drawing import _background, _build_shape, _mark, _place, _render
from boltzformer.sizes import SIZE_BUCKETS, size_bucket

__all__ = [
    "KINDS",
    "SIZE_BUCKETS",
    "SPLIT_CODES",
    "SYNONYMS",
    "TEMPLATES",
    "SyntheticConfig",
    "SyntheticDataset",
    "size_bucket",
]

KINDS = ("nodule", "cyst", "calcification", "lesion", "vessel segment")

# Names a prompt may use for each kind; no name of one kind is contained in a name of another.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "nodule": ("nodule", "pulmonary nodule", "round nodule"),
    "cyst": ("cyst", "fluid-filled cyst", "simple cyst"),
    "calcification": ("calcification", "calcified focus", "calcified spot"),
    "lesion": ("lesion", "irregular lesion", "mass"),
    "vessel segment": ("vessel segment", "blood vessel", "vessel"),
}
TEMPLATES = ("{t}", "{t} in synthetic CT scan", "segment the {t}", "the {t} in this scan", "find the {t}")

# Fixed stream codes: changing them changes every item of the benchmark.
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}

_BUCKET_ORDER = SIZE_BUCKETS  # target bucket of item i: _BUCKET_ORDER[i % 3] (smallest first)
# Area fractions drawn (log-uniform) for objects of each bucket, inside the bucket with a margin.
_AREA_RANGES = {"tiny": (0.00012, 0.00085), "small": (0.0012, 0.0085), "large": (0.012, 0.03)}
_KIND_BUCKETS = {
    "nodule": ("tiny", "small", "large"),
    "cyst": ("tiny", "small", "large"),
    "calcification": ("tiny", "small"),
    "lesion": ("small", "large"),
    "vessel segment": ("tiny", "small", "large"),
}
_KIND_MAX_FRACTION = {"calcification": 0.004}  # calcifications stay compact
_OTHER_BUCKET_WEIGHTS = {"tiny": 0.3, "small": 0.45, "large": 0.25}  # sizes of non-target objects
_MIN_PIXELS = 3  # no object is smaller than this (tiny targets are >= 8 pixels at 256x256)


@dataclass
class SyntheticConfig:
    """Configuration of the synthetic benchmark; every field changes the generated items."""

    image_size: int = 256  # square images, >= 64 and a multiple of 32
    seed: int = 0  # benchmark seed, >= 0
    n_train: int = 2000  # items in the "train" split
    n_val: int = 64  # items in the "val" split
    n_test: int = 192  # items in the "test" split
    min_objects: int = 2  # objects per image, target included, >= 1
    max_objects: int = 5  # at most len(KINDS): kinds are distinct within an image

    def __post_init__(self) -> None:
        for name in ("image_size", "seed", "n_train", "n_val", "n_test", "min_objects", "max_objects"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"SyntheticConfig.{name} must be an int, got {value!r}")
        if self.image_size < 64 or self.image_size % 32 != 0:
            raise ValueError(f"SyntheticConfig.image_size must be >= 64 and a multiple of 32, got {self.image_size}")
        if self.seed < 0:
            raise ValueError(f"SyntheticConfig.seed must be >= 0, got {self.seed}")
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"SyntheticConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.min_objects <= len(KINDS):
            raise ValueError(f"SyntheticConfig.min_objects must be in [1, {len(KINDS)}], got {self.min_objects}")
        if not self.min_objects <= self.max_objects <= len(KINDS):
            raise ValueError(
                f"SyntheticConfig.max_objects must be in [min_objects={self.min_objects}, {len(KINDS)}], "
                f"got {self.max_objects}"
            )


class SyntheticDataset(Dataset):
    """One split of the synthetic benchmark, generated on the fly (a few ms per 256x256 item).

    Each item is a dict:

    - ``"image"``: float32 tensor (3, H, W), values in [0, 255], grey replicated to 3 channels
    - ``"mask"``: float32 tensor (1, H, W), exactly 0.0 or 1.0, the target's pixels (never empty)
    - ``"prompt"``: str naming the target's kind, e.g. ``"segment the calcified focus"``
    - ``"id"``: str, ``"synthetic-<split>-<index:06d>"``
    - ``"kind"``: str, the target's kind (one of :data:`KINDS`)
    - ``"area_fraction"``: float, mask pixels / image pixels
    - ``"kinds_present"``: str, the kinds of all objects in the image, comma-separated in
      :data:`KINDS` order (a string so that the default collate function batches it)

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        config: benchmark configuration; ``SyntheticConfig()`` when None.

    Raises:
        ValueError: if ``split`` is not one of the splits, or ``config`` is not a SyntheticConfig.
    """

    def __init__(self, split: str, config: SyntheticConfig | None = None) -> None:
        if split not in SPLIT_CODES:
            close = difflib.get_close_matches(str(split), list(SPLIT_CODES), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"split must be one of {sorted(SPLIT_CODES)}, got {split!r}.{hint}")
        if config is None:
            config = SyntheticConfig()
        if not isinstance(config, SyntheticConfig):
            raise ValueError(f"config must be a SyntheticConfig or None, got {type(config).__name__}")
        self.split = split
        self.config = config
        self._length = {"train": config.n_train, "val": config.n_val, "test": config.n_test}[split]

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict:
        index = operator.index(index)
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"index out of range for the {self._length} items of the {self.split!r} split")
        image, mask, meta = _generate(self.config, SPLIT_CODES[self.split], index)
        return {
            "image": torch.from_numpy(np.repeat(image[None], 3, axis=0)),  # HxW -> 3xHxW
            "mask": torch.from_numpy(mask)[None],  # HxW -> 1xHxW
            "prompt": meta["prompt"],
            "id": f"synthetic-{self.split}-{index:06d}",
            "kind": meta["kind"],
            "area_fraction": meta["area_fraction"],
            "kinds_present": ",".join(k for k in KINDS if k in meta["kinds_present"]),
        }

    def size_buckets(self) -> list[str]:
        """The size bucket of every item's target, without drawing the images (item i's is fixed by i)."""
        return [_BUCKET_ORDER[i % len(_BUCKET_ORDER)] for i in range(self._length)]

    def __repr__(self) -> str:
        return f"SyntheticDataset(split={self.split!r}, n={len(self)}, config={self.config})"


# ----------------------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------------------


def _generate(config: SyntheticConfig, split_code: int, index: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Item ``index`` of a split: (image float32 HxW in [0, 255], mask float32 HxW in {0, 1}, metadata)."""
    rng = np.random.default_rng([config.seed, split_code, index])
    s = config.image_size
    n_pix = s * s

    # what: target kind and size, other kinds and sizes, prompt
    bucket = _BUCKET_ORDER[index % 3]
    candidates = [k for k in KINDS if bucket in _KIND_BUCKETS[k]]
    target_kind = candidates[int(rng.integers(len(candidates)))]
    n_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
    others = [k for k in KINDS if k != target_kind]
    other_kinds = [others[j] for j in rng.permutation(len(others))[: n_objects - 1]]
    synonyms = SYNONYMS[target_kind]
    name = synonyms[int(rng.integers(len(synonyms)))]
    prompt = TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(t=name)

    specs = [(target_kind, _draw_pixels(rng, target_kind, bucket, n_pix))]
    other_specs = []
    for kind in other_kinds:
        allowed = _KIND_BUCKETS[kind]
        weights = np.array([_OTHER_BUCKET_WEIGHTS[b] for b in allowed])
        b = allowed[int(rng.choice(len(allowed), p=weights / weights.sum()))]
        other_specs.append((kind, _draw_pixels(rng, kind, b, n_pix)))
    specs += sorted(other_specs, key=lambda spec: -spec[1])  # target first, then the largest first

    # where: background, then objects placed inside the body without touching each other
    image, interior = _background(rng, s)
    iy, ix = np.nonzero(interior)
    occupied = np.zeros((s, s), dtype=bool)
    gap = max(2, s // 128)
    mask = np.zeros((s, s), dtype=np.float32)
    present = []
    for j, (kind, k) in enumerate(specs):
        is_target = j == 0
        placed = None
        for _attempt in range(6):
            shape = _build_shape(rng, kind, k, s)
            placed = _place(rng, shape.mask, interior, occupied, iy, ix)
            if placed is not None:
                break
            if not is_target:
                k = max(_MIN_PIXELS, k // 2)  # crowded: shrink the non-target object
        if placed is None:
            if not is_target and len(present) + len(specs) - j - 1 >= config.min_objects:
                continue  # drop it: the image still gets min_objects objects
            raise RuntimeError(f"could not place a {kind} of {k} pixels in synthetic item {index}")
        y0, x0 = placed
        h, w = shape.mask.shape
        window = (slice(y0, y0 + h), slice(x0, x0 + w))
        _render(rng, image[window], kind, shape)
        _mark(occupied, shape.mask, y0, x0, gap)
        if is_target:
            mask[window][shape.mask] = 1.0
        present.append(kind)

    image += rng.uniform(3.5, 7.0) * rng.standard_normal((s, s), dtype=np.float32)
    np.clip(image, 0.0, 255.0, out=image)
    area = int(mask.sum())
    assert area == specs[0][1] and size_bucket(area / n_pix) == bucket, (area, bucket)
    meta = {"prompt": prompt, "kind": target_kind, "area_fraction": area / n_pix, "kinds_present": present}
    return image, mask, meta


def _draw_pixels(rng: np.random.Generator, kind: str, bucket: str, n_pix: int) -> int:
    """Pixel count of an object of ``kind`` in ``bucket``: log-uniform in the bucket's range, clamped into it."""
    lo, hi = _AREA_RANGES[bucket]
    hi = min(hi, _KIND_MAX_FRACTION.get(kind, 1.0))
    k = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi))) * n_pix))
    k = max(k, _MIN_PIXELS)
    # clamp into the bucket, exactly as size_bucket sees it (whatever the rounding of the bounds)
    rank = _BUCKET_ORDER.index
    while rank(size_bucket(k / n_pix)) > rank(bucket):
        k -= 1
    while rank(size_bucket(k / n_pix)) < rank(bucket):
        k += 1
    return k
