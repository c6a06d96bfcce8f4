"""Configs: presets by name, round trips through plain data, enums that take their strings, and
clear errors for bad keys and values."""

import dataclasses
import json
import re

import pytest

from gemini_jax.config import (
    PRESETS,
    AttentionImpl,
    ConfigError,
    DType,
    FramePooling,
    Pooling,
    PositionEmbedding,
    PromptAttention,
    PromptFormat,
    RematPolicy,
    VisionBlock,
    config_from_dict,
    config_to_dict,
    get_preset,
    override,
)


def test_presets_round_trip_through_plain_data():
    for name, config in PRESETS.items():
        assert config_from_dict(config_to_dict(config)) == config, name


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match=r"unknown preset 'nano-9'; choose one of: demo, demo-draw, demo-half, nano-1, nano-2, pro, test, ultra"):
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


def test_choices_are_enums_that_accept_their_plain_strings():
    config = override(PRESETS["test"], dtype="bfloat16", attention_impl="blockwise", remat="dots_no_batch",
                      prompt_attention="bidirectional", prompt_format="prefix",
                      vision=dataclasses.replace(PRESETS["test"].vision, block="siglip", pooling="none",
                                                 position_embedding="learned"))
    assert config.dtype is DType.BFLOAT16 and config.attention_impl is AttentionImpl.BLOCKWISE
    assert config.remat is RematPolicy.DOTS_NO_BATCH and config.prompt_format is PromptFormat.PREFIX
    assert config.prompt_attention is PromptAttention.BIDIRECTIONAL
    vision = config.vision
    assert (vision.block, vision.pooling, vision.position_embedding, vision.frame_pooling) == (
        VisionBlock.SIGLIP, Pooling.NONE, PositionEmbedding.LEARNED, FramePooling.ATTENTION)
    # Given as a member or as its string, a config is the same config (equal, same hash).
    assert override(config, dtype=DType.BFLOAT16) == override(config, dtype="bfloat16") == config
    assert hash(override(PRESETS["demo"], dtype="float32")) == hash(PRESETS["demo"])


def test_plain_data_holds_plain_strings_and_old_json_loads_equal():
    data = config_to_dict(PRESETS["demo"])
    assert type(data["dtype"]) is str and type(data["vision"]["frame_pooling"]) is str
    # A config.json written before the enums: the same plain strings, the same config.
    text = json.dumps(data)
    assert '"dtype": "float32"' in text and '"frame_pooling": "grid+frame"' in text and '"attention_impl": "auto"' in text
    assert config_from_dict(json.loads(text)) == PRESETS["demo"]
    assert json.loads(json.dumps(config_to_dict(config_from_dict(json.loads(text))))) == json.loads(text)


@pytest.mark.parametrize("field, kind", [
    ("dtype", DType), ("prompt_attention", PromptAttention), ("prompt_format", PromptFormat),
    ("attention_impl", AttentionImpl), ("remat", RematPolicy),
])
def test_a_bad_choice_names_the_field_and_every_accepted_value(field, kind):
    accepted = re.escape(str([member.value for member in kind]))
    with pytest.raises(ConfigError, match=rf"^{field} must be one of {accepted}, got 'bogus'$"):
        override(PRESETS["test"], **{field: "bogus"})


@pytest.mark.parametrize("field, kind", [
    ("pooling", Pooling), ("frame_pooling", FramePooling), ("block", VisionBlock),
    ("position_embedding", PositionEmbedding),
])
def test_a_bad_vision_choice_names_the_field_and_every_accepted_value(field, kind):
    accepted = re.escape(str([member.value for member in kind]))
    with pytest.raises(ConfigError, match=rf"^vision\.{field} must be one of {accepted}, got 3$"):
        dataclasses.replace(PRESETS["test"].vision, **{field: 3})
