"""Tests of the built-in synthetic benchmark (boltzformer.data.synthetic)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from boltzformer.data.synthetic import (
    KINDS,
    SIZE_BUCKETS,
    SYNONYMS,
    SyntheticConfig,
    SyntheticDataset,
    size_bucket,
)


def _names_in(prompt: str) -> set[str]:
    """Kinds whose synonyms occur in ``prompt``."""
    return {kind for kind, names in SYNONYMS.items() if any(name in prompt for name in names)}


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Square dilation by ``r`` pixels, in numpy (torch pooling pays thread start-up costs at this size)."""
    h, w = mask.shape
    padded = np.pad(mask, r)
    out = np.zeros_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def _digest(item: dict) -> str:
    h = hashlib.sha256()
    h.update(item["image"].numpy().tobytes())
    h.update(item["mask"].numpy().tobytes())
    h.update(item["prompt"].encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def test_meta() -> list[dict]:
    """Metadata (no pixels) of the whole default test split, plus the target's contrast to its surround."""
    ds = SyntheticDataset("test")
    rows = []
    for i in range(len(ds)):
        item = ds[i]
        image, mask = item["image"][0].numpy(), item["mask"][0].numpy() > 0
        ys, xs = np.nonzero(mask)
        window = (slice(max(0, ys.min() - 4), ys.max() + 5), slice(max(0, xs.min() - 4), xs.max() + 5))
        image, mask = image[window], mask[window]  # the target and its surround
        ring = _dilate(mask, 3) & ~mask  # 3-pixel band around the target
        inside, around = image[mask].mean(), image[ring].mean()
        rows.append(
            {
                "kind": item["kind"],
                "prompt": item["prompt"],
                "area_fraction": item["area_fraction"],
                "pixels": int(item["mask"].sum()),
                "kinds_present": item["kinds_present"].split(","),
                "contrast": float(abs(inside - around)),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("index", [0, 1, 2])
def test_sample_contract(index):
    ds = SyntheticDataset("test")
    item = ds[index]
    image, mask = item["image"], item["mask"]
    assert image.shape == (3, 256, 256) and image.dtype == torch.float32
    assert mask.shape == (1, 256, 256) and mask.dtype == torch.float32
    assert image.min() >= 0.0 and image.max() <= 255.0
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])  # grey replicated
    assert set(mask.unique().tolist()) == {0.0, 1.0}  # strictly binary and non-empty
    assert isinstance(item["prompt"], str) and item["prompt"]
    assert item["id"] == f"synthetic-test-{index:06d}"
    assert item["kind"] in KINDS
    assert item["area_fraction"] == pytest.approx(mask.mean().item())
    assert image.std() > 20.0  # not blank


def test_len_and_index_errors():
    config = SyntheticConfig(image_size=64, n_train=5, n_val=3, n_test=4)
    assert [len(SyntheticDataset(s, config)) for s in ("train", "val", "test")] == [5, 3, 4]
    ds = SyntheticDataset("val", config)
    assert torch.equal(ds[-1]["image"], ds[2]["image"])
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(IndexError):
        ds[-4]


def test_default_collate_batches_items():
    ds = SyntheticDataset("val", SyntheticConfig(image_size=64))
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["mask"].shape == (4, 1, 64, 64)
    assert len(batch["prompt"]) == 4 and len(batch["kinds_present"]) == 4


# ---------------------------------------------------------------------------------------------- determinism


def test_deterministic_across_instances_and_calls():
    a, b = SyntheticDataset("test"), SyntheticDataset("test", SyntheticConfig())
    for i in (0, 17):
        first, again, other = a[i], a[i], b[i]
        for item in (again, other):
            assert torch.equal(first["image"], item["image"]) and torch.equal(first["mask"], item["mask"])
            assert first["prompt"] == item["prompt"] and first["id"] == item["id"]


@pytest.mark.slow
def test_deterministic_across_processes():
    item = SyntheticDataset("val", SyntheticConfig(image_size=64))[5]
    code = (
        "import hashlib; from boltzformer.data.synthetic import SyntheticDataset, SyntheticConfig\n"
        "it = SyntheticDataset('val', SyntheticConfig(image_size=64))[5]\n"
        "h = hashlib.sha256(); h.update(it['image'].numpy().tobytes()); h.update(it['mask'].numpy().tobytes())\n"
        "h.update(it['prompt'].encode()); print(h.hexdigest())\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == _digest(item)


def test_seed_and_split_change_the_items():
    base = SyntheticDataset("test")[0]
    assert not torch.equal(base["image"], SyntheticDataset("test", SyntheticConfig(seed=1))[0]["image"])
    assert not torch.equal(base["image"], SyntheticDataset("train")[0]["image"])
    assert not torch.equal(base["image"], SyntheticDataset("val")[0]["image"])


# ---------------------------------------------------------------------------------------------- content


def test_objects_are_distinct_kinds_and_prompt_names_the_target(test_meta):
    for row in test_meta:
        present = row["kinds_present"]
        assert 2 <= len(present) <= 5
        assert len(set(present)) == len(present) and set(present) <= set(KINDS)
        assert row["kind"] in present
        assert _names_in(row["prompt"]) == {row["kind"]}, row["prompt"]  # names the target, and only it


def test_prompts_vary(test_meta):
    prompts = Counter(row["prompt"] for row in test_meta)
    assert len(prompts) >= 30
    assert {row["kind"] for row in test_meta} == set(KINDS)


def test_text_matters(test_meta):
    with_others = sum(any(k != row["kind"] for k in row["kinds_present"]) for row in test_meta)
    assert with_others >= 0.9 * len(test_meta)


def test_bucket_balance_on_test_split(test_meta):
    counts = Counter(size_bucket(row["area_fraction"]) for row in test_meta)
    assert len(test_meta) == 192
    for bucket in SIZE_BUCKETS:
        assert counts[bucket] >= 0.25 * len(test_meta), counts


def test_bucket_balance_on_train_split():
    ds = SyntheticDataset("train", SyntheticConfig(image_size=64))  # buckets are fractions: any size will do
    counts = Counter(size_bucket(ds[i]["area_fraction"]) for i in range(90))
    for bucket in SIZE_BUCKETS:
        assert counts[bucket] >= 0.25 * 90, counts


def test_tiny_targets_have_enough_pixels(test_meta):
    tiny = [row["pixels"] for row in test_meta if size_bucket(row["area_fraction"]) == "tiny"]
    assert tiny and min(tiny) >= 6


def test_targets_are_visible(test_meta):
    assert min(row["contrast"] for row in test_meta) >= 10.0  # grey levels between the target and its surround


@pytest.mark.parametrize("image_size", [64, 96, 320])
def test_other_sizes_keep_buckets_and_object_counts(image_size):
    config = SyntheticConfig(image_size=image_size, min_objects=5, max_objects=5, n_val=6)
    ds = SyntheticDataset("val", config)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, image_size, image_size)
        assert size_bucket(item["area_fraction"]) == ("tiny", "small", "large")[i % 3]
        assert item["mask"].sum() >= 3
        assert sorted(item["kinds_present"].split(",")) == sorted(KINDS)


# the size buckets themselves: tests/test_sizes.py (boltzformer.sizes, shared with evaluate)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"image_size": 48}, "image_size"),
        ({"image_size": 100}, "image_size"),
        ({"image_size": 64.0}, "image_size"),
        ({"seed": -1}, "seed"),
        ({"n_train": 0}, "n_train"),
        ({"n_val": 0}, "n_val"),
        ({"n_test": -3}, "n_test"),
        ({"min_objects": 0}, "min_objects"),
        ({"max_objects": 6}, "max_objects"),
        ({"min_objects": 4, "max_objects": 3}, "max_objects"),
    ],
)
def test_invalid_config_raises(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SyntheticConfig(**kwargs)


def test_invalid_split_raises():
    with pytest.raises(ValueError, match="split.*Did you mean 'train'"):
        SyntheticDataset("training")
    with pytest.raises(ValueError, match="split"):
        SyntheticDataset("all")
    with pytest.raises(ValueError, match="config"):
        SyntheticDataset("test", {"image_size": 64})
