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
