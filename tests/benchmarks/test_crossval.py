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
    return argparse.Namespace(steps=40, batch_size=4, lr=1e-3, seed=3, overlap=0.0, negatives=0.25, weights=None,
                              target_fraction=0.8, lesion_iou=0.1, runs=tmp_path, cache=tmp_path / "cache")


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


def _report(dice: float) -> dict:
    froc = {"fp_rates": [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0], "sensitivity": [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5],
            "cpm": 0.357, "score": "highest probability of each predicted lesion"}
    return {"n": 2, "dice": dice, "dice_by_size": {"tiny": dice, "small": None, "large": None},
            "n_by_size": {"tiny": 2, "small": 0, "large": 0}, "failure_rate": 0.0, "samples": [{"dice": dice}] * 2,
            "lesion_detection": {"sensitivity": 0.5, "fp_per_image": 1.0, "froc": froc, "match": "IoU > 0.1"}}


def test_rescore_tests_a_finished_run_again_and_keeps_its_training_time(cv, tmp_path, monkeypatch):
    """A fold with a result.json is skipped; with --rescore it is tested again (a new metric, here the
    FROC) and keeps the training time the run took, which reusing the checkpoint cannot measure."""
    class Dummy:
        def eval(self):
            return self

    class Test:
        groups = ["p1"]

    reports, asked = iter([_report(0.4)]), []
    monkeypatch.setattr(cv, "train_or_reuse", lambda job: (tmp_path / "last.ckpt", None))
    monkeypatch.setattr(cv, "load_checkpoint", lambda path: Dummy())
    monkeypatch.setattr(cv, "FolderDataset", lambda *a, **k: Test())
    monkeypatch.setattr(cv, "evaluate_model", lambda *a, **k: asked.append(k) or next(reports))
    args = _args(tmp_path)
    args.data, args.rescore = tmp_path, False
    out = tmp_path / "lidc" / "tiny" / "fold0" / "result.json"
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps({"dice": 0.1, "train_seconds": 123.0}))
    assert cv.run_fold("lidc", "tiny", 0, args) == {"dice": 0.1, "train_seconds": 123.0}  # reused as it is
    args.rescore = True
    r = cv.run_fold("lidc", "tiny", 0, args)
    assert (r["dice"], r["train_seconds"], r["froc"]["cpm"]) == (0.4, 123.0, 0.357)
    assert asked[0]["lesion_iou"] == 0.1 and r["lesion_match"] == "IoU > 0.1"  # the table's lesion match
    assert json.loads(out.read_text())["dice"] == 0.4
    assert cv._froc_at(r, 0.5) == 0.3 and cv._froc_at({"froc": None}, 0.5) is None


def _main(cv, monkeypatch, tmp_path, *argv):
    data = tmp_path / "data"
    (data / cv.DATASETS["lidc"][0]).mkdir(parents=True, exist_ok=True)
    (data / cv.DATASETS["lidc"][0] / "meta.json").write_text("{}")
    monkeypatch.setattr("sys.argv", ["crossval.py", "--datasets", "lidc", "--models", "tiny", "--data", str(data),
                                     "--runs", str(tmp_path / "runs"), "--md", str(tmp_path / "t.md"),
                                     "--json", str(tmp_path / "t.json"), *argv])
    cv.main()


def test_rescore_retests_only_the_folds_that_finished(cv, tmp_path, monkeypatch):
    """--rescore must not train a fold that never finished (it only re-tests what is there)."""
    done = tmp_path / "runs" / "lidc" / "tiny" / "fold2" / "result.json"
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    called = []

    def fake_run_fold(name, model_name, fold, args):
        called.append((name, model_name, fold, args.rescore))
        return {"dataset": name, "model": model_name, "fold": fold, "folds": 4, "dice": 0.5,
                "dice_by_size": {s: None for s in cv.SIZES}, "sensitivity": 0.5, "fp_per_image": 1.0,
                "per_image_dice": [0.5], "train_seconds": 1.0, "froc": None}

    monkeypatch.setattr(cv, "run_fold", fake_run_fold)
    _main(cv, monkeypatch, tmp_path, "--rescore")
    assert called == [("lidc", "tiny", 2, True)]
    called.clear()
    _main(cv, monkeypatch, tmp_path)  # without it, every fold runs (and trains where it must)
    assert [c[2] for c in called] == [0, 1, 2, 3]


@pytest.mark.parametrize("argv, needle", [
    (["--lesion-iou", "1.5"], "--lesion-iou must be in [0, 1)"),
    (["--rescore", "--summarise-only"], "--rescore tests the runs again"),
    (["--target-fraction", "-0.1"], "--target-fraction must be in [0, 1]"),
])
def test_bad_arguments_are_one_error_before_any_work(cv, tmp_path, monkeypatch, capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        _main(cv, monkeypatch, tmp_path, *argv)
    assert exc.value.code == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "t.md").exists()
