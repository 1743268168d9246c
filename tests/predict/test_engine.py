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


# ------------------------------------------------------------- the one engine: batches, volumes, passes, gate


def _count_encodes(model, monkeypatch):
    calls = []
    original = model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda x: calls.append(x.shape[0]) or original(x))
    return calls


def _images(n, shape=(50, 70), seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.random(shape) * 255).astype(np.uint8) for _ in range(n)]


def test_a_batch_is_encoded_once_for_any_number_of_prompts_and_passes(model, monkeypatch):
    calls = _count_encodes(model, monkeypatch)
    predictor = boltzformer.Predictor(model, seed=2)
    a, b = _images(2)
    predictor.set_image_batch([a, b[:40]])  # sizes may differ
    first = predictor.predict_batch(["nodule", "cyst"])
    second = predictor.predict_batch(["vessel", "nodule"], samples=2)
    assert calls == [2]  # one encoder pass for the batch of two
    assert [p.prompt for p in second] == ["vessel", "nodule"] and predictor.num_images == 2
    assert first[0].probabilities.shape == (1, 50, 70) and first[1].probabilities.shape == (1, 40, 70)
    assert second[0].probabilities.shape == (2, 50, 70) and second[0].existence is None
    # one image: many prompts with K passes each, and the single-image methods, on one encoding
    predictor.set_image(a)
    predictor.segment(None, ["nodule", "cyst"], samples=2)
    predictor.predict_proba(None, "nodule")
    assert calls == [2, 1]
    # a volume: each batch of slices is encoded once for every prompt
    vol = (np.random.default_rng(1).random((3, 24, 32)) * 255).astype(np.uint8)
    predictor.segment_volume(vol, ["nodule", "cyst"], batch_size=2, context="2d")
    assert calls == [2, 1, 2, 1]


def test_predict_batch_checks_its_inputs(model):
    predictor = boltzformer.Predictor(model)
    with pytest.raises(RuntimeError, match="set_image_batch"):
        predictor.predict_batch(["x"])
    predictor.set_image_batch(_images(2))
    with pytest.raises(ValueError, match="one prompt per image: 2 images are set, got 1"):
        predictor.predict_batch(["x"])
    with pytest.raises(RuntimeError, match="2 images are set"):
        predictor.predict(None, "x")  # the single-image methods need one image
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        predictor.predict_batch(["x", "y"], samples=0)
    with pytest.raises(ValueError, match="at least one image"):
        predictor.set_image_batch([])
    with pytest.raises(ValueError, match=r"images\[0\] must be a \(3, H, W\) tensor"):
        predictor.set_image_batch([torch.zeros(1, 8, 8)])


def test_k_passes_are_deterministic_for_a_seed_and_pass_k_is_seed_plus_k(model):
    image = _images(1, (60, 60), seed=4)[0]
    a = boltzformer.Predictor(model, seed=5).segment(image, ["nodule"], samples=3)[0]
    b = boltzformer.Predictor(model, seed=5).segment(image, ["nodule"], samples=3)[0]
    assert np.array_equal(a.probability, b.probability) and np.array_equal(a.std, b.std) and a.agreement == b.agreement
    predictor = boltzformer.Predictor(model, seed=5)
    predictor.set_image(image)
    [passes] = predictor.predict_batch(["nodule"], samples=3)
    for k in range(3):  # pass k is the single pass of seed 5 + k
        assert np.array_equal(passes.probabilities[k].numpy(), boltzformer.Predictor(model, seed=5 + k).predict_proba(image, "nodule"))
    np.testing.assert_array_equal(a.probability, passes.probabilities.mean(0).numpy())
    other = boltzformer.Predictor(model, seed=6).segment(image, ["nodule"], samples=3)[0]
    assert not np.array_equal(other.probability, a.probability)


def _per_slice(model, slices, prompt, *, seed, batch_size):
    """The volume path written out with the model's own calls: batches of slices encoded, decoded with one
    generator seeded ``seed`` that carries on from batch to batch, mapped back to the slice grid."""
    from boltzformer.io.transforms import from_model_output, image_to_tensor, to_model_input

    generator = torch.Generator().manual_seed(seed)
    probs = []
    with torch.no_grad():
        for start in range(0, len(slices), batch_size):
            batch = [to_model_input(image_to_tensor(slices[d]), 64) for d in range(start, min(len(slices), start + batch_size))]
            features = model.encode_image(torch.stack([x for x, _ in batch]))
            out = model.decode(features, [prompt] * len(batch), generator=generator)
            probs.append(from_model_output(out.logits[:, 0].float(), batch[0][1]).sigmoid().numpy())
    return np.concatenate(probs)


@pytest.mark.parametrize("context", ["2d", "2.5d"])
def test_volume_prediction_equals_the_per_slice_path_for_a_seed(model, context):
    from boltzformer.io.windows import volume_slices

    vol = (np.random.default_rng(2).random((5, 30, 40)) * 255).astype(np.uint8)
    predictor = boltzformer.Predictor(model, seed=3, threshold=0.4)
    results = predictor.segment_volume(vol, ["nodule", "cyst"], context=context, batch_size=2)
    for r in results:
        expected = _per_slice(model, volume_slices(vol, context=context), r.prompt, seed=3, batch_size=2)
        np.testing.assert_array_equal(r.probability, expected)
        np.testing.assert_array_equal(r.mask, expected > 0.4)
        assert r.existence is None and r.std is None
    # a prompt's masks do not depend on the other prompts asked with it
    alone = predictor.segment_volume(vol, ["cyst"], context=context, batch_size=2)[0]
    np.testing.assert_array_equal(alone.probability, results[1].probability)
    # one slice per batch: the first slice is the 2D path's image
    first = predictor.segment_volume(vol, ["nodule"], context=context, batch_size=1)[0]
    np.testing.assert_array_equal(first.probability[0], predictor.predict_proba(volume_slices(vol, context=context)[0], "nodule"))


def test_volume_with_k_passes_gives_the_spread_per_slice(model):
    vol = (np.random.default_rng(3).random((3, 32, 32)) * 255).astype(np.uint8)
    predictor = boltzformer.Predictor(model, seed=1)
    a = predictor.segment_volume(vol, ["nodule"], batch_size=2, samples=3)[0]
    b = predictor.segment_volume(vol, ["nodule"], batch_size=2, samples=3)[0]
    assert a.std.shape == a.probability.shape == (3, 32, 32) and a.agreement.shape == (3,)
    np.testing.assert_array_equal(a.probability, b.probability)
    assert ((0 <= a.agreement) & (a.agreement <= 1)).all() and (a.std >= 0).all()
    np.testing.assert_array_equal(a.mask, a.probability > 0.5)


def test_one_existence_gate_for_images_volumes_and_passes():
    from boltzformer.predict.results import gate

    mask = np.ones((2, 3, 3), bool)
    assert not gate(mask[0], 0.2, 0.5).any() and gate(mask[0], 0.5, 0.5).all() and gate(mask[0], None, 0.5).all()
    assert gate(mask, np.array([0.9, 0.1]), 0.5).any(axis=(1, 2)).tolist() == [True, False]
    torch.manual_seed(0)
    head = boltzformer.build_model("tiny", image_size=64, num_layers=3, num_queries=4, existence=True).eval()
    image = _images(1, (64, 64))[0]
    vol = np.stack(_images(3, (32, 32)))
    predictor = boltzformer.Predictor(head, threshold=0.2)
    with torch.no_grad():
        head.decoder.existence.classifier.bias.fill_(50.0)  # surely present: nothing is gated
    present = predictor.segment(image, ["nodule"], samples=2)[0]
    volume = predictor.segment_volume(vol, ["nodule"], batch_size=2)[0]
    assert present.mask.any() and present.existence == pytest.approx(1.0) and volume.mask.any()
    np.testing.assert_array_equal(volume.mask, volume.probability > 0.2)
    with torch.no_grad():
        head.decoder.existence.classifier.bias.fill_(-50.0)  # surely absent: every mask is empty
    absent = predictor.segment(image, ["nodule"], samples=2)[0]
    gated = predictor.segment_volume(vol, ["nodule"], batch_size=2)[0]
    np.testing.assert_array_equal(absent.probability, present.probability)  # the probabilities are not gated
    assert not absent.mask.any() and not gated.mask.any() and (gated.existence < 0.5).all()
    np.testing.assert_array_equal(gated.probability, volume.probability)


def test_sampling_maps_reuse_the_predictor_s_features(model, monkeypatch):
    from boltzformer.predict.explain import sampling_maps

    image = _images(1, (80, 64), seed=5)[0]
    predictor = boltzformer.Predictor(model, seed=4)
    predictor.set_image(image)
    calls = _count_encodes(model, monkeypatch)
    maps = sampling_maps(predictor, None, "nodule")
    assert calls == [] and len(maps.distributions) == 3
    np.testing.assert_array_equal(maps.probability, predictor.predict_proba(None, "nodule"))
