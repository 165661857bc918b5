"""Vlm3rConfig from a LLaVA config.json plus overrides, and the overrides' JSON form.

The node parameter ``vlm_config_overrides`` and ``--vlm-config-overrides`` of vlm3r-ask /
vlm3r-eval give the overrides as JSON, so ``vision`` / ``llm`` arrive as plain dicts.
"""
import json
from dataclasses import replace

import pytest

from vlm3r_ros.models.vlm.config import (
    Qwen2Settings, SiglipSettings, Vlm3rConfig, Vlm3rConfigError, check_overrides, parse_config_overrides)

# A small LLaVA-Qwen2 config.json: Qwen2 sizes + the SigLIP width (mm_hidden_size), nothing else of SigLIP.
DOC = {'hidden_size': 64, 'intermediate_size': 128, 'num_hidden_layers': 2, 'num_attention_heads': 4,
       'num_key_value_heads': 2, 'vocab_size': 1024, 'mm_hidden_size': 48, 'spatial_feature_dim': 32}


def test_without_overrides_the_siglip_and_fusion_sizes_are_the_released_models():
    # fusion_num_heads 18 does not divide the width 48: a non-default model needs overrides
    with pytest.raises(Vlm3rConfigError, match='fusion_num_heads=18 must divide the SigLIP width 48'):
        Vlm3rConfig.from_llava_config(DOC)


def test_vision_mapping_is_applied_on_top_of_the_config_json():
    cfg = Vlm3rConfig.from_llava_config(DOC, vision={'num_hidden_layers': 2, 'num_attention_heads': 4},
                                        fusion_num_heads=4)
    assert cfg.vision == replace(SiglipSettings(), hidden_size=48, num_hidden_layers=2, num_attention_heads=4)
    assert cfg.fusion_num_heads == 4 and cfg.spatial_dim == 32
    # the mapping may also change what the config.json said
    assert Vlm3rConfig.from_llava_config(DOC, vision={'hidden_size': 64}, fusion_num_heads=4).vision.hidden_size == 64


def test_llm_mapping_is_applied_on_top_of_the_config_json():
    cfg = Vlm3rConfig.from_llava_config(DOC, llm={'rope_theta': 10000, 'vocab_size': 2048}, fusion_num_heads=4)
    assert cfg.llm == Qwen2Settings(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, vocab_size=2048, rope_theta=10000)


def test_whole_settings_objects_still_replace():
    vision = SiglipSettings(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
    assert Vlm3rConfig.from_llava_config(DOC, vision=vision, fusion_num_heads=4).vision == vision


@pytest.mark.parametrize('overrides, message', [
    ({'fusion_heads': 4}, "unknown config override(s) ['fusion_heads']; valid: vision, llm, spatial_dim, "
                          "fusion_num_heads"),
    ({'vision': {'width': 48, 'layers': 2}}, "unknown vision config override(s) ['layers', 'width']; valid: "
                                             "hidden_size, intermediate_size"),
    ({'llm': {'hidden': 1}}, "unknown llm config override(s) ['hidden']; valid: hidden_size"),
    ({'vision': 48}, 'vision must be a mapping of SiglipSettings fields'),
    ({'fusion_num_heads': '4'}, "fusion_num_heads='4': must be a positive integer"),
    ({'fusion_num_heads': True}, 'fusion_num_heads=True: must be a positive integer'),
    ({'vision': {'num_hidden_layers': 0}}, 'vision.num_hidden_layers=0: must be a positive integer'),
    ({'llm': {'rope_theta': 'big'}}, "llm.rope_theta='big': must be a positive number"),
    ({'pool_mode': 2}, 'pool_mode=2: must be str'),
])
def test_unknown_names_and_wrong_types_are_refused(overrides, message):
    with pytest.raises(Vlm3rConfigError) as info:
        Vlm3rConfig.from_llava_config(DOC, **overrides)
    assert message in str(info.value)


def test_cross_field_rules_still_apply_to_overrides():
    with pytest.raises(Vlm3rConfigError, match='fusion_num_heads=5 must divide the SigLIP width 48'):
        Vlm3rConfig.from_llava_config(DOC, fusion_num_heads=5)
    with pytest.raises(Vlm3rConfigError, match='pool_mode must be one of'):
        Vlm3rConfig.from_llava_config(DOC, fusion_num_heads=4, pool_mode='median')


# ------------------------------------------------------------------ JSON
@pytest.mark.parametrize('text', ['', '   ', None])
def test_empty_text_is_no_overrides(text):
    assert parse_config_overrides(text) == {}


def test_json_object_round_trip():
    overrides = {'fusion_num_heads': 16, 'vision': {'hidden_size': 1024, 'layer_norm_eps': 1e-5},
                 'pool_mode': 'average'}
    assert parse_config_overrides(json.dumps(overrides)) == overrides


@pytest.mark.parametrize('text, message', [
    ('{"fusion_num_heads": 16', 'not valid JSON'),
    ("{'fusion_num_heads': 16}", 'not valid JSON'),
    ('[1, 2]', 'must be a JSON object of Vlm3rConfig fields'),
    ('16', 'must be a JSON object'),
    ('{"fusion_num_head": 16}', "unknown config override(s) ['fusion_num_head']"),
    ('{"vision": {"hidden": 1024}}', "unknown vision config override(s) ['hidden']"),
    ('{"vision": "so400m"}', 'vision must be a mapping of SiglipSettings fields'),
])
def test_bad_json_is_refused_with_the_reason(text, message):
    with pytest.raises(Vlm3rConfigError) as info:
        parse_config_overrides(text)
    assert message in str(info.value)


def test_check_overrides_accepts_the_settings_objects():
    check_overrides({'vision': SiglipSettings(), 'llm': Qwen2Settings(), 'spatial_dim': 32})
    with pytest.raises(Vlm3rConfigError, match='must be a mapping'):
        check_overrides([('spatial_dim', 32)])
