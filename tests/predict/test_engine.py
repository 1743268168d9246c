"""The Python API: build, save, load, predict on numpy images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import boltzformer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return boltzformer.build_model("tiny", image_size=64, num_layers=3, num_queries=4).eval()


def test_checkpoint_round_trip_gives_identical_outputs(model, tmp_path):
    path = boltzformer.save_checkpoint(model, tmp_path / "m.pt")
    loaded = boltzformer.load_checkpoint(path)
    assert loaded.config == model.config
    x = torch.rand(1, 3, 64, 64) * 255
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(model(x, ["cyst"], generator=g()).logits, loaded(x, ["cyst"], generator=g()).logits)
    assert not list(tmp_path.glob("*.tmp"))


def test_load_checkpoint_rejects_a_file_that_does_not_fit(model, tmp_path):
    path = boltzformer.save_checkpoint(model, tmp_path / "m.pt")
    data = torch.load(path, weights_only=True)
    data["boltzformer"]["model_config"]["decoder"]["hidden_dim"] = 32
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(boltzformer.CheckpointError, match="does not fit"):
        boltzformer.load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("shape,dtype", [((90, 130), np.uint8), ((64, 64, 3), np.uint8), ((70, 50), np.uint16), ((40, 40), np.float32)])
def test_predictor_returns_a_mask_of_the_input_size(model, shape, dtype):
    rng = np.random.default_rng(0)
    image = (rng.random(shape) * (255 if dtype != np.uint16 else 4000)).astype(dtype)
    predictor = boltzformer.Predictor(model)
    mask = predictor.predict(image, "nodule")
    assert mask.shape == shape[:2] and mask.dtype == bool
    prob = predictor.predict_proba(image, "nodule")
    assert prob.shape == shape[:2] and 0 <= prob.min() <= prob.max() <= 1
    assert np.array_equal(mask, prob > 0.5)


def test_predictor_caches_the_image_and_is_seeded(model):
    image = (np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8)
    predictor = boltzformer.Predictor(model, seed=3)
    predictor.set_image(image)
    a = predictor.predict_proba(None, "nodule")
    b = predictor.predict_proba(image, "nodule")
    assert np.array_equal(a, b)
    other = boltzformer.Predictor(model, seed=4).predict_proba(image, "nodule")
    assert not np.array_equal(a, other)  # another seed draws other attention sets


def test_predictor_errors(model):
    predictor = boltzformer.Predictor(model)
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(None, "nodule")
    with pytest.raises(ValueError, match="prompt"):
        predictor.predict(np.zeros((8, 8), np.uint8), "")
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, 3\)"):
        predictor.predict(np.zeros((2, 8, 8, 3), np.uint8), "x")
    with pytest.raises(ValueError, match="threshold"):
        boltzformer.Predictor(model, threshold=1.5)


def test_predictor_bf16_autocast_is_close_to_float32(model):
    image = (np.random.default_rng(2).random((64, 64)) * 255).astype(np.uint8)
    p32 = boltzformer.Predictor(model).predict_proba(image, "nodule")
    p16 = boltzformer.Predictor(model, bf16=True).predict_proba(image, "nodule")
    assert p16.dtype == np.float32 and p16.shape == p32.shape
    assert np.abs(p16 - p32).max() < 0.1


def test_predict_samples_gives_mean_std_and_agreement(model):
    image = (np.random.default_rng(3).random((70, 50)) * 255).astype(np.uint8)
    predictor = boltzformer.Predictor(model, seed=0)
    r = predictor.predict_samples(image, "nodule", 4)
    assert r["mean"].shape == r["std"].shape == r["mask"].shape == (70, 50)
    assert 0.0 <= r["agreement"] <= 1.0 and (r["std"] >= 0).all()
    # the mean is the mean of the single passes with seeds 0..3
    singles = [boltzformer.Predictor(model, seed=s).predict_proba(image, "nodule") for s in range(4)]
    np.testing.assert_allclose(r["mean"], np.mean(singles, axis=0), atol=1e-6)
    assert np.abs(r["std"] - np.std(singles, axis=0)).max() < 1e-5
    # dense attention draws nothing: every pass is the same, agreement 1, no uncertainty
    full = boltzformer.build_model("tiny", image_size=64, num_layers=3, num_queries=4, attention="full").eval()
    r = boltzformer.Predictor(full).predict_samples(image, "nodule", 3)
    assert r["agreement"] == 1.0 and r["std"].max() == 0.0
    with pytest.raises(ValueError, match="samples"):
        predictor.predict_samples(image, "nodule", 1)


class _WindowMean:
    """A stand-in model for the blending test: each window's mask logit is one constant, (the window's
    mean intensity - 50) / 25, at half the window's resolution (as PiGMA's output)."""

    device = torch.device("cpu")

    def encode_image(self, x):
        return x

    def decode(self, x, prompts, generator=None):
        logit = (x.mean((1, 2, 3), keepdim=True) - 50) / 25  # n x 1 x 1 x 1
        return type("Out", (), {"logits": logit.expand(-1, 1, x.shape[-2] // 2, x.shape[-1] // 2), "existence_logits": None})


def test_sliding_window_blends_windows_with_gaussian_weights():
    from boltzformer.predict.engine import window_passes

    # 256 x 512: left half 0, right half 100; windows of 256 with overlap 0.5 start at x = 0, 128, 256 and
    # see means 0, 50, 100, i.e. logits -2, 0, 2
    image = torch.zeros(3, 256, 512)
    image[:, :, 256:] = 100
    probs, existence = window_passes(_WindowMean(), image, "x", window=256, overlap=0.5, generators=[torch.Generator()])
    assert probs.shape == (1, 256, 512) and existence is None
    logit = torch.logit(probs[0, 128].double())
    assert torch.allclose(logit[:120], torch.tensor(-2.0, dtype=torch.float64), atol=1e-4)  # only window 0 covers it
    assert torch.allclose(logit[392:], torch.tensor(2.0, dtype=torch.float64), atol=1e-4)  # only window 2
    # the middle window's centre: its Gaussian weight (1) dwarfs the others' at their edges (e^-8)
    assert abs(float(logit[255:257].mean())) < 0.01
    assert bool((logit[1:] - logit[:-1] >= -1e-6).all())  # a smooth ramp from -2 to 2, never back
    assert torch.allclose(logit, -logit.flip(0), atol=0.1)  # the weights mirror (up to the half-resolution grid)


def test_predictor_at_native_resolution_keeps_the_image_size(model):
    predictor = boltzformer.Predictor(model, window_overlap=0.25)
    image = (np.random.default_rng(0).random((100, 150)) * 255).astype(np.uint8)
    prob = predictor.predict_proba(image, "cyst")
    assert prob.shape == (100, 150) and np.isfinite(prob).all()
    assert np.array_equal(predictor.predict(None, "cyst"), prob > 0.5)  # the image is kept for more prompts
    with pytest.raises(ValueError, match="window_overlap"):
        boltzformer.Predictor(model, window_overlap=1.0)
