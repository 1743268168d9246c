"""Negative prompts: absent targets with empty masks, reproducible from a seed."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import ConcatDataset

from boltzformer.data.folder import FolderDataset
from boltzformer.data.loading import ModelInputDataset
from boltzformer.data.negatives import WithNegatives
from boltzformer.data.synthetic import SYNONYMS, SyntheticConfig, SyntheticDataset


@pytest.fixture
def two_sets(shared_data):
    lidc = FolderDataset(shared_data / "lidc_lung_nodule", split="train", verify=False)
    lgg = FolderDataset(shared_data / "lgg_brain_flair", split="train", verify=False)
    return lidc, lgg, ConcatDataset([lidc, lgg])


def test_negatives_pair_an_image_with_a_prompt_of_the_other_set(two_sets):
    lidc, lgg, both = two_sets
    ds = WithNegatives(both, 0.25, seed=0)
    n = len(both)
    assert len(ds) == n + round(0.25 * n)
    assert ds[0]["present"] == 1.0 and ds[0]["prompt"] == lidc.pairs[0].prompt
    lidc_prompts = {p.prompt for p in lidc.pairs}
    lgg_prompts = {p.prompt for p in lgg.pairs}
    kinds = []
    for i in range(n, len(ds)):
        item = ds[i]
        assert item["present"] == 0.0 and item["mask"].sum() == 0 and item["area_fraction"] == 0.0
        assert "~neg" in item["id"]
        base_id = item["id"].split("~neg")[0]
        from_lidc = base_id in set(lidc.ids)
        # an image of one set gets a prompt of the other: never a target it has
        assert item["prompt"] in (lgg_prompts if from_lidc else lidc_prompts)
        kinds.append(from_lidc)
    assert any(kinds) and not all(kinds)  # both sets give negatives


def test_negatives_are_reproducible_from_the_seed(two_sets):
    _, _, both = two_sets
    a, b, c = WithNegatives(both, 0.1, seed=3), WithNegatives(both, 0.1, seed=3), WithNegatives(both, 0.1, seed=4)
    n = len(both)
    ids = lambda d: [d[i]["id"] + d[i]["prompt"] for i in range(n, len(d))]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)
    assert torch.equal(a[n]["image"], b[n]["image"])


def test_a_single_prompt_dataset_cannot_make_negatives(shared_data):
    lidc = FolderDataset(shared_data / "lidc_lung_nodule", split="train", verify=False)
    with pytest.raises(ValueError, match="one prompt only"):
        WithNegatives(lidc, 0.25)
    assert len(WithNegatives(lidc, 0.0)) == len(lidc)
    with pytest.raises(ValueError, match=">= 0"):
        WithNegatives(lidc, -1)


def test_synthetic_negatives_name_a_kind_the_image_lacks():
    base = SyntheticDataset("train", SyntheticConfig(image_size=64, n_train=20, max_objects=3))
    ds = WithNegatives(base, 0.5, seed=0)
    assert len(ds) == 30
    for i in range(20, 30):
        item = ds[i]
        present = item["kinds_present"].split(",")
        named = [k for k, names in SYNONYMS.items() if any(n in item["prompt"] for n in names)]
        assert named and not set(named) & set(present), (item["prompt"], present)
        assert item["mask"].sum() == 0


def test_model_input_items_carry_presence(two_sets):
    _, _, both = two_sets
    ds = ModelInputDataset(WithNegatives(both, 0.25, seed=0), 64, augment=True)
    torch.manual_seed(0)
    assert ds[0]["present"] == 1.0
    neg = ds[len(both)]
    assert neg["present"] == 0.0 and neg["mask"].sum() == 0 and neg["image"].shape == (3, 64, 64)
