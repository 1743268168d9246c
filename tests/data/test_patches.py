"""Native-resolution patches: the sliding window's grid, patches that keep tiny targets, size weights."""

from __future__ import annotations

import pytest
import torch

from boltzformer.data.patches import PatchDataset, size_weights, window_starts, window_step


class _Images(torch.utils.data.Dataset):
    """Hand-made samples: a zero image with a square target of side ``side`` at (y, x)."""

    def __init__(self, boxes, hw=(512, 512), prompt="lung nodule in CT scan"):
        self.boxes, self.hw, self.prompt = boxes, hw, prompt

    def __len__(self):
        return len(self.boxes)

    def __getitem__(self, i):
        y, x, side = self.boxes[i]
        mask = torch.zeros(1, *self.hw)
        if side:
            mask[:, y : y + side, x : x + side] = 1
        image = mask.expand(3, -1, -1) * 200 + 20
        return {"image": image.clone(), "mask": mask, "prompt": self.prompt, "id": str(i)}


def test_window_grid_is_monais():
    from monai.inferers.utils import _get_scan_interval, dense_patch_slices

    for length, window, overlap in ((512, 256, 0.5), (512, 256, 0.0), (700, 256, 0.25), (256, 256, 0.5), (200, 256, 0.5)):
        step = window_step(window, overlap)
        padded = max(length, window)
        interval = _get_scan_interval((padded, padded), (window, window), 2, (overlap, overlap))
        starts = sorted({s[0].start for s in dense_patch_slices((padded, padded), (window, window), interval)})
        assert window_starts(length, window, step) == starts, (length, window, overlap)
    with pytest.raises(ValueError, match="overlap"):
        window_step(256, 1.0)


def test_sampled_patches_keep_tiny_targets_whole():
    # 3 x 3 targets anywhere in 128 x 128 images, including across the grid lines at 32, 64 and 96
    g = torch.Generator().manual_seed(0)
    boxes = [(int(torch.randint(0, 125, (), generator=g)), int(torch.randint(0, 125, (), generator=g)), 3) for _ in range(40)]
    boxes += [(30, 62, 3), (62, 94, 3), (0, 125, 3)]
    images = _Images(boxes, hw=(128, 128))
    ds = PatchDataset(images, 64, step=32, target_fraction=1.0, flips=True, seed=0)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (1, 64, 64)
        assert item["mask"].sum() == 9, (boxes[i], item["box"])  # the whole target is in the patch
        top, left = item["box"]
        assert top in (0, 32, 64) and left in (0, 32, 64)  # on the sliding window's grid
    # the same seed, the same patch; without a target fraction the patches wander off the target
    assert ds[3]["box"] == ds[3]["box"]
    anywhere = PatchDataset(images, 64, step=32, target_fraction=0.0, seed=0)
    assert sum(anywhere[i]["mask"].sum() < 9 for i in range(len(boxes))) > 5


def test_small_images_are_padded_and_large_targets_centred():
    ds = PatchDataset(_Images([(10, 10, 50)], hw=(200, 160)), 256, seed=0)
    item = ds[0]
    assert item["image"].shape == (3, 256, 256) and item["mask"].sum() == 2500 and item["box"] == (0, 0)
    assert item["image"][:, 200:].abs().sum() == 0 and item["image"][:, :, 160:].abs().sum() == 0
    big = PatchDataset(_Images([(100, 100, 300)]), 256, step=128, target_fraction=1.0, seed=0)[0]
    assert big["mask"].sum() == 256 * 256  # the target is larger than a patch: one that it fills


def test_size_weights_favour_tiny_targets():
    assert size_weights([0.0005, 0.005, 0.05, 0.0]) == [4.0, 2.0, 1.0, 1.0]
    ds = PatchDataset(_Images([(0, 0, 3), (0, 0, 100)]), 256)
    assert size_weights(ds.area_fractions()) == [4.0, 1.0]
    with pytest.raises(ValueError, match="multiple of 32"):
        PatchDataset(_Images([(0, 0, 3)]), 100)


def test_present_is_the_patchs_not_the_images():
    # a patch drawn away from the target shows none of it: the existence head must be told "absent" there
    images = _Images([(10, 10, 3)] * 30 + [(0, 0, 0)], hw=(256, 256))
    ds = PatchDataset(images, 64, step=64, target_fraction=0.0, seed=0)
    items = [ds[i] for i in range(len(ds))]
    assert all(it["present"] == float(bool(it["mask"].sum() > 0)) for it in items)
    assert {it["present"] for it in items[:30]} == {0.0, 1.0}  # both kinds of patch were drawn
    negative = [{**images[0], "present": 0.0}]  # a negative prompt stays absent in every patch
    assert PatchDataset(negative, 64, target_fraction=1.0, seed=0)[0]["present"] == 0.0
