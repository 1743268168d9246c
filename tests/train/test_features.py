"""The frozen encoder's feature cache: hits, and invalidation when the encoder, the image or the
preprocessing changes."""

from __future__ import annotations

import pytest
import torch

import boltzformer
from boltzformer.train.features import FeatureCache, encoder_digest


def _tiny_model():
    torch.manual_seed(0)
    model = boltzformer.build_model("tiny", image_size=64, num_layers=3, num_queries=4).eval()
    model.backbone.requires_grad_(False)
    return model


def test_second_encoding_reads_the_cache_and_gives_the_same_features(tmp_path):
    model = _tiny_model()
    model.feature_cache = cache = FeatureCache(root=tmp_path, dtype="float32")
    images = torch.rand(2, 3, 64, 64) * 255
    first = model.encode_image(images)
    assert (cache.hits, cache.misses) == (0, 2) and len(list(tmp_path.rglob("*.pt"))) == 2
    again = model.encode_image(images)
    assert (cache.hits, cache.misses) == (2, 2)
    assert torch.equal(first.mask_features, again.mask_features)
    model.feature_cache = None
    assert torch.allclose(model.encode_image(images).mask_features, first.mask_features, atol=1e-5)


def test_cache_is_invalidated_by_a_new_image_new_weights_or_new_preprocessing(tmp_path):
    model = _tiny_model()
    model.feature_cache = cache = FeatureCache(root=tmp_path)
    image = torch.rand(1, 3, 64, 64) * 255
    model.encode_image(image)
    changed = image.clone()
    changed[0, 0, 10, 10] += 1  # one pixel
    model.encode_image(changed)
    assert cache.misses == 2
    digest = encoder_digest(model.backbone)
    with torch.no_grad():
        model.backbone.stem[0].weight.mul_(1.01)  # in place: the optimiser's and load_state_dict's way
    assert encoder_digest(model.backbone) != digest
    fresh = model.encode_image(image)
    assert cache.misses == 3
    model.feature_cache = None
    assert torch.allclose(model.encode_image(image).mask_features, fresh.mask_features, atol=1e-2)
    model.feature_cache = cache
    model.pixel_mean.add_(1.0)  # another normalisation
    model.encode_image(image)
    assert cache.misses == 4 and cache.hits == 0


def test_lite_backbone_stores_its_neck_only_and_a_trainable_encoder_is_refused(tmp_path):
    torch.manual_seed(0)
    small = {"embed_dims": (8, 16, 16, 32), "depths": (1, 1, 1, 1), "num_heads": (1, 2, 2, 2), "neck_dim": 32}
    model = boltzformer.build_model("lite", image_size=64, num_layers=3, num_queries=4, options=small).eval()
    model.feature_cache = FeatureCache(root=tmp_path, dtype="float32")
    image = torch.rand(1, 3, 64, 64) * 255
    with pytest.raises(RuntimeError, match="frozen encoders only"):
        model.encode_image(image)
    model.backbone.requires_grad_(False)
    with pytest.raises(RuntimeError, match="eval mode"):
        model.train().encode_image(image)
    model.eval()
    cached = model.encode_image(image)
    (entry,) = tmp_path.rglob("*.pt")
    assert set(torch.load(entry, weights_only=True)) == {"neck"}
    model.feature_cache = None
    assert torch.allclose(model.encode_image(image).mask_features, cached.mask_features, atol=1e-5)
    with pytest.raises(ValueError, match="dtype"):
        FeatureCache(root=tmp_path, dtype="int8")


def test_feature_flips_flip_the_image_and_every_backbone_map(tmp_path):
    model = _tiny_model()
    image = torch.rand(1, 3, 64, 64) * 255
    seen = {}
    model.pixel_decoder.register_forward_pre_hook(lambda m, args: seen.__setitem__("feats", args[0]))
    model.encode_image(image)
    plain = {k: v.clone() for k, v in seen["feats"].items()}
    flipped = model.encode_image(image, flip_dims=(-1,))
    assert all(torch.equal(seen["feats"][k], plain[k].flip(-1)) for k in plain)
    assert torch.equal(flipped.image, ((image - model.pixel_mean) / model.pixel_std).flip(-1))
    with pytest.raises(ValueError, match="flip_dims"):
        model.encode_image(image, flip_dims=(1,))
