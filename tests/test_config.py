"""boltzformer.config: every preset is valid and round-trips; overrides and bad values raise naming the setting."""

import pytest

from boltzformer.config import (
    PRESETS,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    get_preset,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid_and_round_trips(name):
    cfg = get_preset(name)
    assert cfg.preset == name
    assert cfg.validate() is cfg
    assert config_from_dict(ModelConfig, config_to_dict(cfg)) == cfg


def test_unknown_preset_names_it_and_suggests():
    with pytest.raises(ValueError, match=r"unknown preset 'tinyy'.*did you mean 'tiny'"):
        get_preset("tinyy")


def test_overrides_by_dotted_path_or_unique_name_on_a_copy():
    base = get_preset("tiny")
    cfg = apply_overrides(base, {"decoder.num_layers": 2, "sample_ratio": 0.2, "pixel_mean": [1.0, 2.0, 3.0]})
    assert cfg.decoder.num_layers == 2 and cfg.decoder.sample_ratio == 0.2
    assert cfg.pixel_mean == (1.0, 2.0, 3.0)  # lists become the field's tuple
    assert base == get_preset("tiny")  # the config overridden is not changed
    assert get_preset("tiny", num_layers=3).decoder.num_layers == 3


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"num_layerz": 2}, r"unknown model setting 'num_layerz'.*did you mean 'num_layers'"),
        ({"image_size": 100}, r"image_size must be a positive multiple of 32, got 100"),
        ({"attention": "boltzman"}, r"decoder.attention must be one of .*got 'boltzman'"),
        ({"sample_ratio": 0.0}, r"decoder.sample_ratio must be in \(0, 1\], got 0.0"),
        ({"base_temperature": -1.0}, r"decoder.base_temperature must be > 0"),
        ({"decoder.num_queries": 0}, r"decoder.num_queries must be >= 1"),
        ({"tokenizer": "bpe"}, r"text.tokenizer must be one of"),
        ({"edge_queries": 2}, r"edge_queries needs pigma=False"),
        ({"pad": "middle"}, r"pad must be one of"),
        ({"volume_context": "3d"}, r"volume_context must be one of"),
    ],
)
def test_bad_model_values_raise_naming_the_setting(overrides, match):
    with pytest.raises(ValueError, match=match):
        get_preset("tiny", **overrides)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"freeze": ("backbone", "head")}, r"freeze: unknown part\(s\) \['head'\]"),
        ({"patch_overlap": 1.0}, r"patch_overlap must be in \[0, 1\)"),
        ({"target_fraction": 1.5}, r"target_fraction must be in \[0, 1\]"),
    ],
)
def test_bad_train_values_raise_naming_the_setting(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_config_from_dict_refuses_unknown_fields():
    data = config_to_dict(TrainConfig())
    data["learning_rate"] = 1.0
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields: \['learning_rate'\]"):
        config_from_dict(TrainConfig, data)
