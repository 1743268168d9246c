"""Resolving --data, and the model-input view of a dataset (resize, augmentation)."""

from __future__ import annotations

import pytest
import torch

from boltzformer.data.folder import FolderDataset
from boltzformer.data.loading import ModelInputDataset, _crop_around_target, folds_per_path, open_dataset
from boltzformer.data.synthetic import SyntheticDataset
from tests.data.data_helpers import patients_folder


def test_crop_keeps_the_whole_target():
    torch.manual_seed(0)
    ds = SyntheticDataset("train")
    for i in range(40):
        s = ds[i]
        image, mask = _crop_around_target(s["image"], s["mask"], 0.5)
        assert image.shape[-1] == image.shape[-2] == mask.shape[-1] >= 128
        assert mask.sum() == s["mask"].sum()  # nothing of the target is cut


def test_augmented_items_keep_shape_range_and_target():
    torch.manual_seed(0)
    base = SyntheticDataset("train")
    ds = ModelInputDataset(base, 128, augment=True)
    for i in range(10):
        item = ds[i]
        assert item["image"].shape == (3, 128, 128) and item["mask"].shape == (1, 128, 128)
        assert 0 <= item["image"].min() and item["image"].max() <= 255
        assert item["mask"].sum() > 0 and item["mask"].max() <= 1


def test_no_flip_when_the_prompt_names_a_side():
    class One(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            mask = torch.zeros(1, 64, 64)
            mask[0, 10:20, 5:15] = 1  # on the left of the image
            return {"image": torch.full((3, 64, 64), 100.0), "mask": mask, "prompt": "left kidney", "id": "x"}

    ds = ModelInputDataset(One(), 64, augment=True)
    torch.manual_seed(0)
    for _ in range(20):
        m = ds[0]["mask"][0]
        cols = torch.nonzero(m.sum(0)).flatten()
        # the crop zooms in, but the target stays in the left half of the view
        assert cols.float().mean() < 32


def test_open_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        open_dataset("", "train")
    with pytest.raises(ValueError, match="cannot be mixed"):
        open_dataset(f"{tmp_path},synthetic", "train")


def test_flips_mode_keeps_intensities_and_the_target_area():
    torch.manual_seed(0)
    base = SyntheticDataset("train")
    ds = ModelInputDataset(base, 256, augment="flips")
    for i in range(6):
        item, raw = ds[i], base[i]
        assert item["mask"].sum() == raw["mask"].sum()
        assert torch.equal(item["image"].flatten().sort().values, raw["image"].flatten().sort().values)  # flipped at most
    with pytest.raises(ValueError, match="augment"):
        ModelInputDataset(base, 64, augment="rotate")


def _one_target(size=64, box=(10, 14, 20, 26)):
    image = torch.full((3, size, size), 50.0)
    mask = torch.zeros(1, size, size)
    y0, y1, x0, x1 = box
    image[:, y0:y1, x0:x1] = 200.0
    mask[:, y0:y1, x0:x1] = 1
    return image, mask


def test_copy_paste_adds_one_copy_of_the_target_away_from_it():
    from boltzformer.data.loading import _copy_paste

    torch.manual_seed(0)
    image, mask = _one_target()
    for _ in range(20):
        img2, mask2 = _copy_paste(image, mask)
        assert mask2.sum() == 2 * mask.sum()  # the copy does not overlap the original
        assert torch.equal(mask2 * mask, mask)  # the original stays
        assert torch.equal(img2[:, mask2[0] > 0], torch.full((3, int(mask2.sum())), 200.0))  # the pixels moved with it
        assert torch.equal(img2[:, mask2[0] == 0], torch.full((3, int((mask2 == 0).sum())), 50.0))
    empty = torch.zeros_like(mask)
    assert _copy_paste(image, empty)[1].sum() == 0  # nothing to copy: unchanged
    whole = torch.ones_like(mask)
    assert torch.equal(_copy_paste(image, whole)[1], whole)  # no room: unchanged


def test_zoom_out_keeps_the_whole_target_and_shrinks_it_in_the_models_view():
    from boltzformer.data.loading import _zoom_out

    torch.manual_seed(0)
    image, mask = _one_target()
    sides = set()
    for _ in range(20):
        img2, mask2 = _zoom_out(image, mask, 0.5)
        assert mask2.sum() == mask.sum() and 64 <= img2.shape[-1] <= 128 and img2.shape[-1] == img2.shape[-2]
        assert float(img2.min()) == 50.0  # the canvas is the image's darkest value
        sides.add(img2.shape[-1])
    assert len(sides) > 5
    ds = ModelInputDataset([{"image": image, "mask": mask, "prompt": "dot", "id": "a"}], 64, scale="both")
    areas = {float(ds[0]["mask"].sum()) for _ in range(30)}
    assert min(areas) < mask.sum() - 5 and max(areas) > mask.sum() + 5  # zoomed out and in


def test_scale_and_copy_paste_are_checked_and_draw_nothing_when_off():
    with pytest.raises(ValueError, match="scale"):
        ModelInputDataset([], 64, scale="out")
    with pytest.raises(ValueError, match="copy_paste"):
        ModelInputDataset([], 64, copy_paste=1.5)
    image, mask = _one_target()
    base = [{"image": image, "mask": mask, "prompt": "dot", "id": "a"}]
    torch.manual_seed(3)
    a = ModelInputDataset(base, 64, augment=True)[0]
    torch.manual_seed(3)
    b = ModelInputDataset(base, 64, augment=True, scale="in", copy_paste=0.0)[0]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_size_buckets_of_synthetic_negatives_and_folders_agree_with_the_masks():
    from boltzformer.data.loading import size_buckets
    from boltzformer.data.negatives import WithNegatives
    from boltzformer.data.synthetic import SyntheticConfig
    from boltzformer.sizes import size_bucket

    ds = SyntheticDataset("train", SyntheticConfig(image_size=64, n_train=12))
    assert size_buckets(ds) == [size_bucket(ds[i]["area_fraction"]) for i in range(12)]
    neg = WithNegatives(ds, 0.25, seed=0)
    assert size_buckets(neg) == size_buckets(ds) + ["empty"] * 3

    class Plain(torch.utils.data.Dataset):  # no size_buckets(): read from the masks
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            return ds[i]

    assert size_buckets(Plain()) == size_buckets(ds)


# ----------------------------------------------------------------------- cross-validation folds per folder


@pytest.fixture
def two_folders(tmp_path):
    return [str(patients_folder(tmp_path / "a", "a dot", patients=6)),
            str(patients_folder(tmp_path / "b", "a square", patients=5, per_patient=3))]


def test_each_folder_with_its_own_fold_gives_the_splits_of_that_folder_alone(two_folders):
    for split in ("train", "val", "test"):
        for folds in ([(1, 4), (2, 3)], [(3, 4), (0, 3)], ((0, 2), (1, 2))):
            ds = open_dataset(two_folders, split, seed=3, fold=folds)
            alone = [FolderDataset(p, split=split, seed=3, fold=f) for p, f in zip(two_folders, folds)]
            assert [part.ids for part in ds.datasets] == [a.ids for a in alone]
            assert [part.groups for part in ds.datasets] == [a.groups for a in alone]
    # the second folder's own fold, not the first one's: fold 1 of 4 would test other patients
    mixed = open_dataset(two_folders, "test", fold=[(1, 4), (2, 3)])
    assert mixed.datasets[1].ids != FolderDataset(two_folders[1], split="test", fold=(1, 4)).ids


def test_one_fold_for_every_folder_is_unchanged(two_folders):
    one = open_dataset(two_folders[0], "test", fold=(1, 3))
    assert isinstance(one, FolderDataset) and one.ids == FolderDataset(two_folders[0], split="test", fold=(1, 3)).ids
    both = open_dataset(",".join(two_folders), "test", fold=(1, 3))
    ids = [p.ids for p in both.datasets]
    assert ids == [p.ids for p in open_dataset(two_folders, "test", fold=[(1, 3), (1, 3)]).datasets]
    assert ids == [FolderDataset(p, split="test", fold=(1, 3)).ids for p in two_folders]


@pytest.mark.parametrize("fold, match", [
    ([(0, 4)], r"fold: one \(k, n\) per data folder is 2 fold\(s\) here, got 1"),
    ([(0, 4), (0, 3), (0, 2)], r"fold: one \(k, n\) per data folder is 2 fold\(s\) here, got 3"),
    ((4, 4), r"fold: \(k, n\) needs n >= 2 and 0 <= k < n, got \(4, 4\)"),
    ([(0, 4), (-1, 3)], r"fold: \(k, n\) needs n >= 2 and 0 <= k < n, got \(-1, 3\)"),
    ((0, 1), r"fold: \(k, n\) needs n >= 2"),
    ((0, 4, 1), r"fold must be \(k, n\) or a sequence of one \(k, n\) per data folder"),
    ([(0, 4), 3], r"fold must be \(k, n\) or a sequence"),
    ((True, 4), r"fold must be \(k, n\)"),
    ("0,4", r"fold must be \(k, n\)"),
    ({"a": (0, 4)}, r"fold must be \(k, n\)"),
])
def test_bad_fold_specs_are_refused_naming_fold(two_folders, fold, match):
    with pytest.raises(ValueError, match=match):
        folds_per_path(fold, two_folders)
    with pytest.raises(ValueError, match=match):
        open_dataset(two_folders, "train", fold=fold)


def test_folds_per_path_forms():
    assert folds_per_path(None, "a,b") == [None, None]
    assert folds_per_path((1, 4), "a,b,c") == [(1, 4)] * 3
    assert folds_per_path([[1, 4], [2, 3]], ["a", "b"]) == [(1, 4), (2, 3)]  # as config.json stores it
