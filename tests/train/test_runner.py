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
