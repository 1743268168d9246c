"""boltzformer.predict.explain: per-layer sampling maps of a tiny model, their npz arrays and the PNG grid.
(That the maps reuse the predictor's cached features is tested in tests/predict/test_engine.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import boltzformer
from boltzformer.predict.explain import sampling_maps, save_sampling_grid

LAYERS, QUERIES = 3, 4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return boltzformer.build_model("tiny", image_size=64, num_layers=LAYERS, num_queries=QUERIES, base_temperature=2.0).eval()


@pytest.fixture(scope="module")
def image():
    return (np.random.default_rng(0).random((80, 48)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def maps(model, image):
    return sampling_maps(boltzformer.Predictor(model, seed=1), image, "nodule")


def test_one_row_per_decoder_layer_with_temperature_tau0_over_one_plus_l(maps):
    assert len(maps.distributions) == len(maps.sampled) == len(maps.temperatures) == LAYERS
    assert maps.temperatures == pytest.approx([2.0 / (1 + layer) for layer in range(LAYERS)])
    # input 64: the layers attend at 2x2, 4x4 and 8x8 tokens, coarse to fine
    assert [d.shape for d in maps.distributions] == [(2, 2), (4, 4), (8, 8)]
    assert [s.shape for s in maps.sampled] == [d.shape for d in maps.distributions]


def test_distributions_sum_to_queries_times_heads_and_draws_are_counts(model, maps):
    pairs = QUERIES * model.decoder.num_heads
    for dist, drawn in zip(maps.distributions, maps.sampled):
        assert dist.min() >= 0 and dist.sum() == pytest.approx(pairs, rel=1e-4)
        assert np.array_equal(drawn, np.round(drawn)) and 0 <= drawn.min() and drawn.max() <= pairs
        assert drawn.sum() > 0


def test_maps_are_the_same_for_a_seed(model, image, maps):
    again = sampling_maps(boltzformer.Predictor(model, seed=1), image, "nodule")
    for a, b in zip(maps.sampled + maps.distributions, again.sampled + again.distributions):
        np.testing.assert_array_equal(a, b)


def test_npz_arrays_and_the_grid(maps, image, tmp_path):
    arrays = maps.to_npz_dict()
    assert set(arrays) == {"probability", "temperatures"} | {f"layer{i}_{k}" for i in range(LAYERS) for k in ("distribution", "sampled")}
    assert arrays["probability"].shape == (80, 48) and 0 <= arrays["probability"].min() <= arrays["probability"].max() <= 1
    assert arrays["temperatures"].shape == (LAYERS,)
    np.savez(tmp_path / "maps.npz", **arrays)
    loaded = np.load(tmp_path / "maps.npz")
    assert [loaded[f"layer{i}_distribution"].shape for i in range(LAYERS)] == [(2, 2), (4, 4), (8, 8)]
    grid = save_sampling_grid(maps, image, tmp_path / "grid.png", tile=32)
    assert grid.size == (2 * 32, LAYERS * (32 + 14))
    assert Image.open(tmp_path / "grid.png").size == grid.size
