"""The MONAI peer: the prompt picks the channel of its kind; bad prompts and settings are refused."""

from __future__ import annotations

import pytest
import torch

from boltzformer.config import get_preset
from boltzformer.data.synthetic import KINDS, SYNONYMS, TEMPLATES, SyntheticConfig, SyntheticDataset
from boltzformer.train.peer import PeerConfig, PromptedPeer


def _peer(**kw):
    return PromptedPeer(model=get_preset("tiny", image_size=64), peer=PeerConfig(channels=(4, 8), **kw)).eval()


def test_every_phrasing_of_a_kind_selects_its_channel():
    peer = _peer()
    prompts, expected = [], []
    for k, kind in enumerate(KINDS):
        for name in SYNONYMS[kind]:
            for t in TEMPLATES:
                prompts.append(t.format(t=name))
                expected.append(k)
    assert peer.channel_of(prompts).tolist() == expected
    # and the benchmark's own prompts name their item's kind
    ds = SyntheticDataset("test", SyntheticConfig(image_size=64, n_test=12))
    items = [ds[i] for i in range(12)]
    assert peer.channel_of([s["prompt"] for s in items]).tolist() == [KINDS.index(s["kind"]) for s in items]


def test_decode_returns_the_prompted_channel():
    peer = _peer()
    features = torch.arange(len(KINDS), dtype=torch.float32).view(1, -1, 1, 1).expand(3, -1, 8, 8).clone()
    out = peer.decode(features, ["segment the cyst", "blood vessel", "calcified spot"])
    assert out.logits.shape == (3, 1, 8, 8)
    assert out.logits[:, 0, 0, 0].tolist() == [KINDS.index("cyst"), KINDS.index("vessel segment"), KINDS.index("calcification")]
    assert out.aux_logits == [] and out.existence_logits is None
    # the whole model: one output channel per kind, the image's size
    with torch.no_grad():
        full = peer(torch.rand(2, 3, 64, 64) * 255, ["nodule", "mass"])
    assert full.logits.shape == (2, 1, 64, 64)


def test_kinds_subset_and_refusals():
    peer = _peer(kinds=("cyst", "nodule"))
    assert peer.channel_of(["nodule", "simple cyst"]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="names none"):
        peer.channel_of(["the liver"])
    with pytest.raises(ValueError, match="several"):
        peer.channel_of(["the cyst next to the nodule"])
    with pytest.raises(ValueError, match="network"):
        PeerConfig(network="resnet")
    for bad in ((), ("",), ("cyst", "cyst")):
        with pytest.raises(ValueError, match="kinds"):
            PeerConfig(kinds=bad)
    with pytest.raises(ValueError, match="'nodule' occurs in 'lung nodule'"):
        PeerConfig(kinds=("nodule", "lung nodule"))


def test_a_real_datasets_kind_answers_to_its_own_name():
    # a kind outside the synthetic benchmark (the real sets' targets) is named by itself, in any case
    peer = _peer(kinds=("polyp", "Glioma", "nodule"))
    prompts = ["polyp in colonoscopy image", "lower-grade glioma in brain FLAIR MRI", "lung nodule in CT scan"]
    assert peer.channel_of(prompts).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="names none"):
        peer.channel_of(["the tumour"])
