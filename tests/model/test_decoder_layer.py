"""The decoder layer's module: the layer over the decoder's own sublayers, and the speed helpers."""

from __future__ import annotations

import pytest
import torch

from boltzformer.model.decoder import BoltzmannDecoder
from boltzformer.model.decoder_layer import DecoderLayer, resize_bilinear
from boltzformer.model.sampling import BoltzmannSampler


def test_a_layer_is_a_view_of_the_decoders_sublayers_and_adds_no_keys():
    dec = BoltzmannDecoder(in_channels=24, mask_dim=16, hidden_dim=32, num_heads=4, ffn_dim=48, num_layers=3,
                           num_queries=5, sampler=BoltzmannSampler(), existence=True)
    keys = set(dec.state_dict())
    layer = dec.layer(2)
    assert isinstance(layer, DecoderLayer) and layer.index == 2
    assert layer.cross_attention is dec.transformer_cross_attention_layers[2]
    assert layer.self_attention is dec.transformer_self_attention_layers[2]
    assert layer.ffn is dec.transformer_ffn_layers[2] and layer.existence is dec.existence
    assert set(dec.state_dict()) == keys


@pytest.mark.parametrize("size", [(32, 24), (16, 12), (8, 6), (4, 3), (64, 48), (20, 15)])
def test_resize_bilinear_equals_interpolate(size):
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(resize_bilinear(x, size), expected, atol=1e-6, rtol=1e-6)
