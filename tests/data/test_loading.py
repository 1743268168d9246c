"""Resolving --data, and the model-input view of a dataset (resize, augmentation)."""

from __future__ import annotations

import pytest
import torch

from boltzformer.data.loading import ModelInputDataset, _crop_around_target, open_dataset
from boltzformer.data.synthetic import SyntheticDataset


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
