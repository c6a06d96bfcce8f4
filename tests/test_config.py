"""Configs: presets by name, round trips through plain data, and clear errors for bad keys."""

import dataclasses

import pytest

from gemini_jax.config import (
    PRESETS,
    ConfigError,
    config_from_dict,
    config_to_dict,
    get_preset,
    override,
)


def test_presets_round_trip_through_plain_data():
    for name, config in PRESETS.items():
        assert config_from_dict(config_to_dict(config)) == config, name


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match=r"unknown preset 'nano-9'; choose one of: demo, demo-half, nano-1, nano-2, pro, test, ultra"):
        get_preset("nano-9")


def test_unknown_keys_are_named_with_what_is_accepted():
    data = config_to_dict(PRESETS["demo"])
    with pytest.raises(ConfigError, match=r"unknown model config key\(s\) \['widht'\].*'width'"):
        config_from_dict({**data, "widht": 3})
    with pytest.raises(ConfigError, match=r"unknown vision config key\(s\) \['patch'\].*'patch_size'"):
        config_from_dict({**data, "vision": {**data["vision"], "patch": 4}})
    with pytest.raises(ConfigError, match=r"unknown model config key\(s\) \['layers'\]"):
        override(PRESETS["demo"], layers=4)
    del data["width"]
    with pytest.raises(ConfigError, match="incomplete.*width"):
        config_from_dict(data)


def test_inconsistent_values_are_refused():
    with pytest.raises(ConfigError, match="multiple of num_kv_heads"):
        dataclasses.replace(PRESETS["demo"], num_heads=3, num_kv_heads=2)
    with pytest.raises(ConfigError, match="dtype must be"):
        override(PRESETS["demo"], dtype="float16")


def test_prompt_format_and_fixed_grid_round_trip_and_are_checked():
    config = override(PRESETS["test"], prompt_format="prefix",
                      vision=dataclasses.replace(PRESETS["test"].vision, keep_aspect_ratio=False))
    data = config_to_dict(config)
    assert (data["prompt_format"], data["vision"]["keep_aspect_ratio"]) == ("prefix", False)
    assert config_from_dict(data) == config
    # A config.json written before these fields reads back with the old behaviour.
    del data["prompt_format"], data["vision"]["keep_aspect_ratio"]
    old = config_from_dict(data)
    assert (old.prompt_format, old.vision.keep_aspect_ratio) == ("chat", True)
    with pytest.raises(ConfigError, match=r"prompt_format must be one of \['chat', 'prefix'\], got 'paligemma'"):
        override(PRESETS["demo"], prompt_format="paligemma")
    with pytest.raises(ConfigError, match="keep_aspect_ratio must be true or false"):
        dataclasses.replace(PRESETS["demo"].vision, keep_aspect_ratio="no")
