"""benchmarks/crossval_multi.py: each dataset keeps its own folds inside the multi-dataset model's training
(so its test split pairs with its single-dataset rows and no tested patient is trained on), and the fold's
model is trained once, resumed, and refused when asked with other settings. Nothing here trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from boltzformer.config import TrainConfig, get_preset
from boltzformer.data.folder import FolderDataset
from boltzformer.data.loading import open_dataset
from boltzformer.train.runner import TrainJob
from tests.data.data_helpers import patients_folder
from tests.benchmarks import load_benchmark

COUNTS = {"lidc": 4, "lgg": 4, "kvasir": 3}  # crossval.DATASETS' fold counts


@pytest.fixture(scope="module")
def cm():
    return load_benchmark('crossval_multi')


def test_each_dataset_trains_with_its_own_fold_or_fold_mod_n(cm):
    assert cm.train_folds(COUNTS, 1) == {"lidc": (1, 4), "lgg": (1, 4), "kvasir": (1, 3)}
    assert cm.train_folds(COUNTS, 3) == {"lidc": (3, 4), "lgg": (3, 4), "kvasir": (0, 3)}
    for fold in (-1, 4):
        with pytest.raises(ValueError, match=r"fold must be in \[0, 4\)"):
            cm.train_folds(COUNTS, fold)


def test_a_datasets_test_split_is_its_single_dataset_one_and_none_of_it_is_trained_on(cm, tmp_path):
    roots = {name: str(patients_folder(tmp_path / name, f"{name} target", patients=6 if n == 4 else 4))
             for name, n in COUNTS.items()}
    for fold in range(4):
        folds = cm.train_folds(COUNTS, fold)
        train, test = (open_dataset(list(roots.values()), split, fold=list(folds.values())).datasets
                       for split in ("train", "test"))
        trained = {g for part in train for g in part.groups}
        for (name, n), train_part, test_part in zip(COUNTS.items(), train, test):
            assert train_part.groups == FolderDataset(roots[name], split="train", fold=(fold % n, n)).groups
            if fold < n:  # tested on this fold: the very split of its single-dataset models, never trained on
                single = FolderDataset(roots[name], split="test", fold=(fold, n))
                assert test_part.ids == single.ids and not set(single.groups) & trained


def _job(out: Path, steps: int = 4, negatives: float = 0.25) -> TrainJob:
    return TrainJob(model=get_preset("tiny", existence=True), train=TrainConfig(max_steps=steps, negative_ratio=negatives),
                    data=["a", "b"], out=out / "run", fold=[(0, 4), (0, 3)])


class _FakeTraining:
    """Stands in for run_training: records its calls and writes a last.ckpt at the asked step."""

    def __init__(self):
        self.calls = []

    def __call__(self, job):
        self.calls.append(job)
        job.out.mkdir(parents=True, exist_ok=True)
        torch.save({"global_step": job.train.max_steps}, job.out / "last.ckpt")
        return job.out / "last.ckpt"


def test_the_folds_model_is_trained_once_and_refused_with_other_settings(cm, tmp_path, monkeypatch):
    fake = _FakeTraining()
    monkeypatch.setattr(cm, "run_training", fake)
    folds = {"lidc": (0, 4), "kvasir": (0, 3)}
    last, seconds = cm.train_multi(_job(tmp_path), folds)
    assert last == tmp_path / "run" / "last.ckpt" and isinstance(seconds, float) and len(fake.calls) == 1
    assert fake.calls[0].resume is False
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["trained_on"] == {"lidc": [0, 4], "kvasir": [0, 3]} and record["steps"] == 4
    assert record["negative_ratio"] == 0.25 and record["existence"] is True
    assert cm.train_multi(_job(tmp_path), folds) == (last, record["train_seconds"]) and len(fake.calls) == 1
    with pytest.raises(SystemExit, match=r"steps 4 \(there\) vs 8 \(asked\)"):
        cm.train_multi(_job(tmp_path, steps=8), folds)
    with pytest.raises(SystemExit, match=r"negative_ratio 0.25 \(there\) vs 0.5 \(asked\)"):
        cm.train_multi(_job(tmp_path, negatives=0.5), folds)
    with pytest.raises(SystemExit, match=r"trained_on .* \(there\) vs \{'lidc': \[1, 4\], 'kvasir': \[1, 3\]\} \(asked\)"):
        cm.train_multi(_job(tmp_path), {"lidc": (1, 4), "kvasir": (1, 3)})


def test_an_interrupted_run_resumes_and_a_finished_one_is_not_trained_again(cm, tmp_path, monkeypatch):
    fake = _FakeTraining()
    monkeypatch.setattr(cm, "run_training", fake)
    folds = {"lidc": (0, 4), "kvasir": (0, 3)}
    (tmp_path / "run").mkdir()
    torch.save({"global_step": 2}, tmp_path / "run" / "last.ckpt")  # killed at step 2 of 4
    cm.train_multi(_job(tmp_path), folds)
    assert len(fake.calls) == 1 and fake.calls[0].resume is True

    (tmp_path / "train.json").unlink()  # finished, then stopped before train.json was written
    last, seconds = cm.train_multi(_job(tmp_path), folds)
    assert len(fake.calls) == 1 and seconds is None
    assert json.loads((tmp_path / "train.json").read_text())["train_seconds"] is None


def test_a_single_dataset_run_stopped_while_tested_is_not_trained_again(cm, tmp_path, monkeypatch):
    # crossval.py's single-dataset models go through the same train_or_reuse: a run that reached its steps
    # and was killed during its test is tested on the rerun, not refused for asking no more steps
    fake = _FakeTraining()
    monkeypatch.setattr(cm, "run_training", fake)
    (tmp_path / "run").mkdir()
    torch.save({"global_step": 4}, tmp_path / "run" / "last.ckpt")
    last, seconds = cm.train_or_reuse(_job(tmp_path))
    assert fake.calls == [] and seconds is None and last == tmp_path / "run" / "last.ckpt"
