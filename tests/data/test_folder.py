"""Tests of boltzformer.data.folder and boltzformer.io.images: patient-disjoint splits, the sample contract, error paths."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from boltzformer.data.folder import DataError, FolderDataset, open_folder_datasets, split_groups
from boltzformer.io.images import read_image, read_mask
from tests.files import png

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA}")
SPLITS = ("train", "val", "test")

# ---------------------------------------------------------------------------------------------- split_groups


def test_split_groups_is_pinned_across_machines():
    # the order comes from sha256(seed, group): this exact mapping must come out on every machine
    groups = [f"p{i}" for i in range(10)]
    got = split_groups(groups, val_fraction=0.2, test_fraction=0.3, seed=0)
    assert got == {
        "p9": "test", "p2": "test", "p1": "test",
        "p3": "val", "p5": "val",
        "p8": "train", "p7": "train", "p0": "train", "p4": "train", "p6": "train",
    }  # fmt: skip
    # the input order does not matter
    assert split_groups(groups[::-1], val_fraction=0.2, test_fraction=0.3, seed=0) == got


def test_split_groups_fractions_follow_pair_counts():
    # 100 groups of 1 pair: the split sizes are the fractions exactly
    got = split_groups([f"g{i}" for i in range(100)], val_fraction=0.15, test_fraction=0.25, seed=3)
    assert Counter(got.values()) == {"train": 60, "val": 15, "test": 25}
    # one heavy group of 50 pairs among 50 single-pair groups: fractions count pairs, not groups
    pairs = ["heavy"] * 50 + [f"g{i}" for i in range(50)]
    got = split_groups(pairs, val_fraction=0.15, test_fraction=0.25, seed=0)
    n_pairs = Counter(got[g] for g in pairs)
    assert abs(n_pairs["test"] - 25) <= 1 and abs(n_pairs["val"] - 15) <= 1
    assert got["heavy"] == "train"


def test_split_groups_seed_changes_the_split_and_is_deterministic():
    groups = [f"g{i}" for i in range(30)]
    a = split_groups(groups, val_fraction=0.15, test_fraction=0.25, seed=0)
    assert a == split_groups(groups, val_fraction=0.15, test_fraction=0.25, seed=0)
    assert a != split_groups(groups, val_fraction=0.15, test_fraction=0.25, seed=1)


def test_split_groups_non_empty_splits_with_three_groups():
    # the big group would fill test on its own; the other splits must still get a group each
    for seed in range(5):
        got = split_groups(["a"] * 10 + ["b", "c"], val_fraction=0.15, test_fraction=0.25, seed=seed)
        assert sorted(got.values()) == ["test", "train", "val"]


def test_split_groups_too_few_groups():
    with pytest.raises(ValueError, match="at least 3"):
        split_groups(["a", "a", "b"], val_fraction=0.15, test_fraction=0.25, seed=0)
    # without val, two groups are enough
    assert sorted(split_groups(["a", "b"], val_fraction=0.0, test_fraction=0.5, seed=0).values()) == ["test", "train"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"val_fraction": -0.1, "test_fraction": 0.2}, "val_fraction"),
        ({"val_fraction": 0.1, "test_fraction": 1.0}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, r"val_fraction \+ test_fraction"),
        ({"val_fraction": float("nan"), "test_fraction": 0.2}, "val_fraction"),
    ],
)
def test_split_groups_rejects_bad_fractions(kwargs, match):
    with pytest.raises(ValueError, match=match):
        split_groups(["a", "b", "c", "d"], seed=0, **kwargs)


# ---------------------------------------------------------------------------------------- the shared data


def _meta(name: str) -> dict:
    return json.loads((DATA / name / "meta.json").read_text())


@needs_data
@pytest.mark.parametrize("name", ["lidc_lung_nodule", "lgg_brain_flair"])
def test_splits_partition_pairs_and_keep_patients_apart(name):
    meta = _meta(name)
    splits = {s: FolderDataset(DATA / name, split=s, seed=0) for s in SPLITS}
    assert sum(len(ds) for ds in splits.values()) == meta["num_pairs"] == len(FolderDataset(DATA / name))
    assert all(len(ds) > 0 for ds in splits.values())
    ids = [i for ds in splits.values() for i in ds.ids]
    assert sorted(ids) == sorted(p["id"] for p in meta["pairs"])  # each pair exactly once
    patient_of = {p["id"]: p["patient"] for p in meta["pairs"]}
    patients = {s: {patient_of[i] for i in ds.ids} for s, ds in splits.items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert patients == {s: set(ds.groups) for s, ds in splits.items()}
    # about the asked fractions of pairs (groups are indivisible: LIDC has 8 patients of 4-28 slices)
    n = meta["num_pairs"]
    assert 0.1 * n <= len(splits["test"]) <= 0.4 * n


@needs_data
@pytest.mark.parametrize("name", ["lidc_lung_nodule", "lgg_brain_flair"])
def test_split_is_deterministic_and_depends_on_seed(name):
    a = FolderDataset(DATA / name, split="test", seed=0)
    b = FolderDataset(DATA / name, split="test", seed=0)
    c = FolderDataset(DATA / name, split="test", seed=1)
    assert a.ids == b.ids
    assert set(a.ids) != set(c.ids)


@needs_data
@pytest.mark.parametrize("name", ["lidc_lung_nodule", "lgg_brain_flair"])
def test_samples_follow_the_contract(name):
    area_in_meta = {p["id"]: p["area_fraction"] for p in _meta(name)["pairs"]}
    ds = FolderDataset(DATA / name)  # every pair
    for k in range(len(ds)):
        s = ds[k]
        assert set(s) == {"image", "mask", "prompt", "id", "area_fraction", "group"}
        img, mask = s["image"], s["mask"]
        assert img.dtype == torch.float32 and mask.dtype == torch.float32
        assert img.ndim == 3 and img.shape[0] == 3 and mask.shape == (1, *img.shape[1:])
        assert 0 <= img.min() and img.max() <= 255 and img.max() > 1  # 0-255, not normalised
        assert torch.equal(img, img.round())
        assert set(mask.unique().tolist()) == {0.0, 1.0}  # binary and non-empty
        assert isinstance(s["prompt"], str) and s["prompt"]
        assert s["area_fraction"] == pytest.approx(mask.mean().item())
        assert s["area_fraction"] == pytest.approx(area_in_meta[s["id"]], abs=1e-6)


@needs_data
def test_masks_of_one_image_stay_in_one_split():
    root = DATA / "biomedparse_demo"
    images = {s: {p.image_rel for p in FolderDataset(root, split=s, seed=0).pairs} for s in SPLITS}
    assert not images["train"] & images["val"]
    assert not images["train"] & images["test"]
    assert not images["val"] & images["test"]
    # several masks share images there, so the check above is not trivial
    n_pairs = sum(len(FolderDataset(root, split=s, seed=0)) for s in SPLITS)
    assert n_pairs == _meta("biomedparse_demo")["num_pairs"] > sum(len(v) for v in images.values())


@needs_data
def test_open_folder_datasets_concatenates():
    names = ["lidc_lung_nodule", "kvasir_small_polyp"]
    ds = open_folder_datasets([DATA / n for n in names], split="val", seed=0)
    assert len(ds) == sum(len(FolderDataset(DATA / n, split="val", seed=0)) for n in names)
    with pytest.raises(ValueError, match="non-empty list"):
        open_folder_datasets([])


# ------------------------------------------------------------------------------------- tiny built datasets


def make_dataset(root: Path, n: int = 3, size: tuple[int, int] = (8, 8), **overrides) -> Path:
    """n images with one mask each; overrides: {pair index: dict of fields to replace (None deletes)}."""
    pairs = []
    for i in range(n):
        img = np.full((*size, 3), 40 * i, np.uint8)
        mask = np.zeros(size, np.uint8)
        mask[: i + 1, : i + 1] = 255
        png(root / f"images/im{i}.png", img)
        png(root / f"masks/m{i}.png", mask)
        pairs.append({"id": f"m{i}", "image": f"images/im{i}.png", "mask": f"masks/m{i}.png", "prompt": "a dot"})
    for i, fields in overrides.get("pairs", {}).items():
        for k, v in fields.items():
            if v is None:
                pairs[i].pop(k)
            else:
                pairs[i][k] = v
    (root / "meta.json").write_text(json.dumps({"pairs": pairs}))
    return root


def test_tiny_dataset_loads(tmp_path):
    ds = FolderDataset(make_dataset(tmp_path / "d", n=3))
    s = ds[2]
    assert s["image"].shape == (3, 8, 8) and s["image"][0, 0, 0] == 80
    assert s["mask"].sum() == 9 and s["area_fraction"] == 9 / 64
    assert s["group"] == "images/im2.png" and s["id"] == "m2"
    with pytest.raises(ValueError, match="split must be one of"):
        FolderDataset(tmp_path / "d", split="training")


def test_too_few_groups_for_a_split(tmp_path):
    root = make_dataset(tmp_path / "d", n=2)
    assert len(FolderDataset(root, split="all")) == 2
    with pytest.raises(ValueError, match="at least 3"):
        FolderDataset(root, split="train")
    with pytest.raises(ValueError, match="is empty"):
        FolderDataset(make_dataset(tmp_path / "e", n=4), split="val", val_fraction=0.0)


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        FolderDataset(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        FolderDataset(tmp_path / "file")


def test_missing_meta(tmp_path):
    root = make_dataset(tmp_path / "d")
    (root / "meta.json").unlink()
    with pytest.raises(DataError, match=r"meta\.json not found"):
        FolderDataset(root)


def test_bad_json(tmp_path):
    root = make_dataset(tmp_path / "d")
    (root / "meta.json").write_text('{"pairs": [')
    with pytest.raises(DataError, match=r"meta\.json is not valid JSON"):
        FolderDataset(root)
    (root / "meta.json").write_text('{"images": []}')
    with pytest.raises(DataError, match=r'meta\.json must be a JSON object with a "pairs" list'):
        FolderDataset(root)


@pytest.mark.parametrize("field", ["image", "mask", "prompt"])
def test_pair_missing_field(tmp_path, field):
    root = make_dataset(tmp_path / "d", pairs={1: {field: None}})
    with pytest.raises(DataError, match=rf"pairs\[1\] \(id 'm1'\) has no \"{field}\" field"):
        FolderDataset(root)


def test_empty_prompt(tmp_path):
    root = make_dataset(tmp_path / "d", pairs={2: {"prompt": "   "}})
    with pytest.raises(DataError, match=r"pairs\[2\] \(id 'm2'\) has an empty \"prompt\""):
        FolderDataset(root)


def test_missing_image_file(tmp_path):
    root = make_dataset(tmp_path / "d")
    (root / "images/im1.png").unlink()
    with pytest.raises(DataError, match=r'pairs\[1\] "image": file images/im1\.png not found'):
        FolderDataset(root)  # eager: at construction


def test_duplicate_ids(tmp_path):
    root = make_dataset(tmp_path / "d", pairs={2: {"id": "m0"}})
    with pytest.raises(DataError, match="repeats id 'm0'"):
        FolderDataset(root)


def test_non_image_file_fails_at_construction(tmp_path):
    root = make_dataset(tmp_path / "d", size=(64, 64))
    (root / "images/im1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match=r"images/im1\.png \(pair 'm1'.*is not a readable image"):
        FolderDataset(root)


def test_truncated_png_fails_lazily_naming_the_file(tmp_path):
    root = make_dataset(tmp_path / "d", size=(64, 64))
    path = root / "images/im1.png"
    rng = np.random.default_rng(0)  # noise does not compress, so the cut lands in pixel data
    png(path, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    ds = FolderDataset(root)  # the header is intact: construction passes
    ds[0]
    with pytest.raises(DataError, match=r"image file .*images/im1\.png could not be read"):
        ds[1]


def test_mask_size_mismatch(tmp_path):
    root = make_dataset(tmp_path / "d")
    png(root / "masks/m1.png", np.zeros((4, 6), np.uint8))
    with pytest.raises(DataError, match=r"mask masks/m1\.png is 4x6 but its image images/im1\.png is 8x8"):
        FolderDataset(root)  # eager: headers are read at construction
    ds = FolderDataset(root, verify=False)
    with pytest.raises(DataError, match=r"mask masks/m1\.png is 4x6 but its image images/im1\.png is 8x8"):
        ds[1]


def test_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    png(tmp_path / "big.png", np.zeros((64, 64, 3), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64*64 > 2 * 100: Pillow refuses to decode
    with pytest.raises(DataError, match=r"big\.png is too large"):
        read_image(tmp_path / "big.png")


def test_read_image_and_mask(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    png(tmp_path / "g.png", grey)
    img = read_image(tmp_path / "g.png")
    assert img.shape == (3, 4, 3) and img.dtype == np.uint8
    assert (img == grey[..., None]).all()  # grey replicated to 3 channels
    m = np.array([[0, 127, 128, 255]], np.uint8)
    png(tmp_path / "m.png", m)
    assert read_mask(tmp_path / "m.png").tolist() == [[False, False, True, True]]
    (tmp_path / "t.txt").write_text("hello")
    with pytest.raises(DataError, match=r"t\.txt could not be read as an image"):
        read_image(tmp_path / "t.txt")
    with pytest.raises(DataError, match=r"mask file .*nope\.png does not exist"):
        read_mask(tmp_path / "nope.png")
    with pytest.raises(DataError, match="is not a file"):
        read_image(tmp_path)
    assert issubclass(DataError, ValueError)


def test_fold_groups_keep_patients_apart_and_cover_every_group_once():
    from boltzformer.data.folder import fold_groups

    groups = ["a"] * 28 + ["b"] * 24 + ["c"] * 24 + ["d"] * 9 + ["e"] * 8 + ["f"] * 7 + ["g"] * 4 + ["h"] * 4
    tested = []
    for k in range(4):
        split = fold_groups(groups, folds=4, fold=k, seed=0)
        assert set(split) == set(groups) and list(split.values()).count("val") == 1
        test = [g for g, s in split.items() if s == "test"]
        assert 24 <= sum(groups.count(g) for g in test) <= 28  # folds of about equal slice counts
        val = next(g for g, s in split.items() if s == "val")
        assert groups.count(val) == 4  # the smallest group of the other folds
        tested += test
    assert sorted(tested) == sorted(set(groups))  # every patient is tested exactly once
    assert fold_groups(groups, folds=4, fold=1, seed=0) == fold_groups(groups, folds=4, fold=1, seed=0)
    with pytest.raises(ValueError, match="fold must be"):
        fold_groups(groups, folds=4, fold=4)
    with pytest.raises(ValueError, match="groups are never divided"):
        fold_groups(["a", "b"], folds=2, fold=0)
