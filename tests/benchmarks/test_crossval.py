"""benchmarks/crossval.py: the MONAI peer's row trains the peer on the same patches, steps and batch as
``tiny``, with one channel that each dataset's own prompts select. Nothing here trains."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tests.benchmarks import load_benchmark

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="module")
def cv():
    return load_benchmark("crossval")


def _args(tmp_path: Path) -> argparse.Namespace:
    return argparse.Namespace(steps=40, batch_size=4, lr=1e-3, seed=3, overlap=0.0, negatives=0.25, weights=None, target_fraction=0.8,
                              runs=tmp_path, cache=tmp_path / "cache")


def test_the_peer_trains_as_tiny_does_with_its_datasets_kind(cv, tmp_path):
    args = _args(tmp_path)
    for name, kind in cv.PEER_KINDS.items():
        peer = cv._job("peer", "data", (0, 4), tmp_path, args, dataset=name)
        tiny = cv._job("tiny", "data", (0, 4), tmp_path, args, dataset=name)
        assert peer.peer is not None and peer.peer.kinds == (kind,) and peer.peer.network == "unet"
        assert tiny.peer is None
        assert peer.train == tiny.train and peer.model == tiny.model  # same loop settings, patches, input size
        assert peer.train.patch_overlap == 0.0 and peer.train.freeze == () and peer.init is None
    resize = cv._job("peer-resize", "data", (0, 4), tmp_path, args, dataset="lidc")
    assert resize.train.patch_overlap is None and resize.peer.kinds == ("nodule",)


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"the real sets' meta.json are read from {SHARED}, absent here")
def test_each_datasets_prompts_select_the_peers_channel(cv):
    from boltzformer.config import get_preset
    from boltzformer.train.peer import PeerConfig, PromptedPeer

    for name, kind in cv.PEER_KINDS.items():
        meta = json.loads((SHARED / cv.DATASETS[name][0] / "meta.json").read_text())
        peer = PromptedPeer(model=get_preset("tiny", image_size=64), peer=PeerConfig(channels=(4, 8), kinds=(kind,)))
        prompts = sorted({p["prompt"] for p in meta["pairs"]})
        assert peer.channel_of(prompts).tolist() == [0] * len(prompts)
