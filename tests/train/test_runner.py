"""train/runner.py: the resume check compares a run's stored settings with the asked ones."""

from __future__ import annotations

import json

import pytest

from boltzformer.config import ModelConfig, TrainConfig, config_to_dict
from boltzformer.train.runner import _check_resume


def _config(model: dict, train: dict) -> dict:
    return {"model": model, "train": train, "data": "synthetic", "data_seed": 0}


def test_a_run_from_an_older_version_resumes_and_a_changed_one_is_refused(tmp_path):
    model, train = json.loads(json.dumps(config_to_dict(ModelConfig()))), json.loads(json.dumps(config_to_dict(TrainConfig())))
    older = json.loads(json.dumps(model))
    del older["pad"]  # a setting added since, asked at its default
    older["decoder"]["decoder_impl"] = "efficient"  # a setting retired since, at its only former value
    (tmp_path / "config.json").write_text(json.dumps(_config(older, train)))
    _check_resume(tmp_path, _config(model, train))  # no error

    other = json.loads(json.dumps(model))
    other["decoder"]["num_queries"] = 3
    with pytest.raises(ValueError, match=r"model.decoder.num_queries 10 \(run\) vs 3 \(asked\)"):
        _check_resume(tmp_path, _config(other, train))
    older["pad"] = "center"  # added since, but the run did not use the default
    (tmp_path / "config.json").write_text(json.dumps(_config(older, train)))
    with pytest.raises(ValueError, match="model.pad 'center' \\(run\\) vs 'corner' \\(asked\\)"):
        _check_resume(tmp_path, _config(model, train))


@pytest.mark.parametrize("weighting", [False, True])
def test_image_weighting_draws_tiny_target_images_4x_and_small_2x(tmp_path, weighting):
    from torch.utils.data import RandomSampler, WeightedRandomSampler

    from boltzformer.config import get_preset
    from boltzformer.train.runner import TrainJob, _loaders

    tc = TrainConfig(max_steps=2, batch_size=2, image_weighting=weighting, copy_paste=0.5, scale_jitter="both")
    job = TrainJob(model=get_preset("tiny", image_size=64), train=tc, data="synthetic", out=tmp_path,
                   synthetic_counts={"n_train": 6, "n_val": 2, "n_test": 2})
    train_dl, _ = _loaders(job, tc)
    assert train_dl.dataset.copy_paste == 0.5 and train_dl.dataset.scale == "both"
    if weighting:
        assert isinstance(train_dl.sampler, WeightedRandomSampler)
        assert train_dl.sampler.weights.tolist() == [4.0, 2.0, 1.0] * 2  # item i's bucket: tiny, small, large
    else:
        assert isinstance(train_dl.sampler, RandomSampler)


@pytest.fixture
def two_folders(tmp_path):
    from tests.data.data_helpers import patients_folder

    return [str(patients_folder(tmp_path / "a", "a dot", patients=6)),
            str(patients_folder(tmp_path / "b", "a square", patients=5, per_patient=3))]


def _folds_job(data, out, fold, model=None, **train):
    from boltzformer.config import get_preset
    from boltzformer.train.runner import TrainJob

    tc = TrainConfig(**{"max_steps": 2, "batch_size": 2, "val_every": 2, "val_batches": 1, **train})
    return TrainJob(model=get_preset("tiny", image_size=64, **(model or {})), train=tc, data=data, out=out, fold=fold,
                    progress=False)


def test_per_folder_folds_are_recorded_as_json_and_a_resume_needs_the_same(tmp_path, two_folders):
    import dataclasses

    from boltzformer.train.runner import _run_config

    job = _folds_job(two_folders, tmp_path, [(1, 4), (2, 3)])
    config = _run_config(job, job.train)
    assert config["fold"] == [[1, 4], [2, 3]]
    assert _run_config(dataclasses.replace(job, fold=(1, 3)), job.train)["fold"] == [1, 3]  # as runs always recorded it
    (tmp_path / "config.json").write_text(json.dumps(config))
    _check_resume(tmp_path, config)  # no error: the same folds, read back from JSON
    _check_resume(tmp_path, _run_config(dataclasses.replace(job, fold=([1, 4], [2, 3])), job.train))
    other = _run_config(dataclasses.replace(job, fold=[(1, 4), (1, 3)]), job.train)
    with pytest.raises(ValueError, match=r"fold \[\[1, 4\], \[2, 3\]\] \(run\) vs \[\[1, 4\], \[1, 3\]\] \(asked\)"):
        _check_resume(tmp_path, other)


@pytest.mark.parametrize("patch_overlap", [None, 0.0])
def test_training_data_of_per_folder_folds_with_negative_prompts(tmp_path, two_folders, patch_overlap):
    """Each folder's own fold-k training split, then negatives pairing an image with the other folder's prompt."""
    from boltzformer.data.folder import FolderDataset
    from boltzformer.data.negatives import WithNegatives
    from boltzformer.train.runner import _loaders

    folds = [(1, 4), (2, 3)]
    job = _folds_job(two_folders, tmp_path, folds, negative_ratio=0.25, patch_overlap=patch_overlap)
    train_dl, val_dl = _loaders(job, job.train)
    train = train_dl.dataset.base
    assert isinstance(train, WithNegatives)
    for split, parts in (("train", train.base.datasets), ("val", val_dl.dataset.base.datasets)):
        assert [p.ids for p in parts] == [FolderDataset(d, split=split, fold=f).ids for d, f in zip(two_folders, folds)]
    n = len(train.base)
    assert train.num_negatives == round(0.25 * n) > 0
    for i in range(n, len(train)):
        item = train[i]
        own = {"a": "a dot", "b": "a square"}[item["id"].split("-")[0]]
        assert item["present"] == 0.0 and item["mask"].sum() == 0
        assert item["prompt"] == {"a dot": "a square", "a square": "a dot"}[own]


def test_a_bad_fold_is_refused_before_anything_is_written(tmp_path, two_folders):
    from boltzformer.train.runner import run_training

    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"fold: one \(k, n\) per data folder is 2 fold\(s\) here, got 1"):
        run_training(_folds_job(two_folders, out, [(0, 4)]))
    assert not out.exists()


@pytest.mark.slow
def test_per_folder_folds_train_with_negatives_and_resume(tmp_path, two_folders):
    """Two steps: one, then a resume to the second, of the multi-dataset recipe (per-folder folds,
    negative prompts, the existence head), as benchmarks/crossval.py's multi models train."""
    import dataclasses

    import torch

    from boltzformer.train.runner import run_training

    out = tmp_path / "run"
    model = {"existence": True, "num_layers": 2, "num_queries": 2}
    job = _folds_job(two_folders, out, [(1, 4), (2, 3)], model, negative_ratio=0.25, max_steps=1, val_every=1)
    run_training(job)
    assert json.loads((out / "config.json").read_text())["fold"] == [[1, 4], [2, 3]]
    last = run_training(dataclasses.replace(job, train=dataclasses.replace(job.train, max_steps=2), resume=True))
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2
    with pytest.raises(ValueError, match=r"fold \[\[1, 4\], \[2, 3\]\] \(run\) vs \[1, 4\] \(asked\)"):
        run_training(dataclasses.replace(job, fold=(1, 4), train=dataclasses.replace(job.train, max_steps=3), resume=True))
