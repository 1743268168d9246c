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
