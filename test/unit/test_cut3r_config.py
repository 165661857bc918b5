"""CUT3R configuration: the constructor string is parsed as literals (never evaluated),
unsupported options are refused at the edge, and configs survive a JSON round trip."""
import json
import math

import pytest
import torch

from vlm3r_ros.engine.checkpoint import config_from_json
from vlm3r_ros.models.cut3r import PUBLIC_CONFIGS, Cut3rConfig, Cut3rConfigError, Cut3rModel
from vlm3r_ros.models.cut3r.config import parse_constructor_string
from vlm3r_ros.models.cut3r.tiny import TINY_CONFIGS

pytestmark = pytest.mark.usefixtures('torch_single_thread')

ALL_CONFIGS = {**PUBLIC_CONFIGS, **TINY_CONFIGS}

TINY_LINEAR_KWARGS = (
    "state_size=16, state_pe='2d', pos_embed='RoPE100', rgb_head=True, pose_head=True, "
    "head_type='linear', output_mode='pts3d+pose', depth_mode=('exp', -inf, inf), "
    "conf_mode=('exp', 1, inf), pose_mode=('exp', -inf, inf), enc_embed_dim=64, enc_depth=2, "
    "enc_num_heads=4, dec_embed_dim=32, dec_depth=4, dec_num_heads=4, state_dec_num_heads=4, "
    "local_mem_size=8, img_size=(224, 224)")


def _wrap(kwargs_text):
    return f'ARCroco3DStereo(ARCroco3DStereoConfig({kwargs_text}))'


# ------------------------------------------------------------------ parsing
def test_public_constructor_strings(full_size_keys):
    for name, entry in full_size_keys['models'].items():
        for which in ('constructor_in_official_config', 'constructor_after_load_model_rewrite'):
            kwargs = parse_constructor_string(entry[which])
            assert kwargs['enc_embed_dim'] == 1024 and kwargs['dec_depth'] == 12
            assert kwargs['depth_mode'] == ['exp', -math.inf, math.inf]
            assert kwargs['conf_mode'] == ['exp', 1, math.inf]
            assert kwargs['freeze'] == 'encoder'
            assert Cut3rConfig.from_constructor_string(entry[which]) == PUBLIC_CONFIGS[name]


def test_tiny_constructor_string():
    config = Cut3rConfig.from_constructor_string(_wrap(TINY_LINEAR_KWARGS))
    assert config == TINY_CONFIGS['tiny_linear']


def test_bare_config_call_and_extra_spaces():
    spaced = '  \n ARCroco3DStereo (  ARCroco3DStereoConfig(\n' + TINY_LINEAR_KWARGS.replace(
        ', ', ' ,\n\t   ').replace('=', ' =  ') + '  )  )  \n'
    assert Cut3rConfig.from_constructor_string(spaced) == TINY_CONFIGS['tiny_linear']
    bare = f'ARCroco3DStereoConfig({TINY_LINEAR_KWARGS})'
    assert Cut3rConfig.from_constructor_string(bare) == TINY_CONFIGS['tiny_linear']
    # the load_model rewrite removes every space
    squashed = _wrap(TINY_LINEAR_KWARGS).replace(' ', '')
    assert Cut3rConfig.from_constructor_string(squashed) == TINY_CONFIGS['tiny_linear']


def test_inf_values():
    kwargs = parse_constructor_string(
        _wrap("depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, +inf), a=-1.5, b=+2, c=inf, d=None"))
    assert kwargs['depth_mode'] == ['exp', -math.inf, math.inf]
    assert kwargs['conf_mode'] == ['exp', 1, math.inf]
    assert kwargs['a'] == -1.5 and kwargs['b'] == 2 and kwargs['c'] == math.inf and kwargs['d'] is None
    config = Cut3rConfig.from_official_kwargs(
        {'depth_mode': ['exp', '-inf', 'inf'], 'conf_mode': ['exp', 1, 'inf'], 'pose_mode': ['exp', '-inf', '+inf']})
    assert config.depth_mode == ('exp', -math.inf, math.inf)
    assert config.conf_mode == ('exp', 1.0, math.inf)
    assert config.pose_mode == ('exp', -math.inf, math.inf)


@pytest.mark.parametrize('value', [
    "__import__('os').system('touch {marker}')",
    "exec(\"open('{marker}', 'w').write('x')\")",
    "eval(\"__import__('pathlib').Path('{marker}').touch()\")",
    "(lambda: __import__('os').system('touch {marker}'))()",
    "[__import__('os').system('touch {marker}')][0]",
    "-__import__('os').system('touch {marker}')",
])
def test_code_in_a_value_is_refused_and_not_run(tmp_path, value):
    marker = tmp_path / 'PWNED'
    text = _wrap(f'state_size=16, enc_depth={value.format(marker=marker)}')
    with pytest.raises(Cut3rConfigError, match='enc_depth'):
        parse_constructor_string(text)
    with pytest.raises(Cut3rConfigError):
        Cut3rConfig.from_constructor_string(text)
    assert not marker.exists(), 'parsing the constructor string executed code'


@pytest.mark.parametrize('value, what', [
    ('int(3)', 'function call'),
    ('float("inf")', 'function call'),
    ('os.sep', 'attribute access'),
    ('math.inf', 'attribute access'),
    ('depth', 'a free name'),
    ('2 * 512', 'arithmetic'),
    ("f'{x}'", 'f-string'),
    ('{"a": 1}', 'dict display'),
    ('[i for i in range(3)]', 'comprehension'),
])
def test_non_literal_values_are_refused(value, what):
    with pytest.raises(Cut3rConfigError, match='not a literal'):
        parse_constructor_string(_wrap(f'enc_depth={value}'))


@pytest.mark.parametrize('text, match', [
    ("ARCroco3DStereo(ARCroco3DStereoConfig(**{'enc_depth': 2}))", r'\*\*kwargs'),
    ("ARCroco3DStereo(ARCroco3DStereoConfig(enc_depth=2, **extra))", r'\*\*kwargs'),
    ("ARCroco3DStereo(ARCroco3DStereoConfig(1024))", 'keyword arguments only'),
    ("ARCroco3DStereo(ARCroco3DStereoConfig(enc_depth=2), x=1)", 'exactly one'),
    ("ARCroco3DStereo()", 'exactly one'),
    ("os.system('touch x')", 'not a CUT3R constructor'),
    ("SomethingElse(enc_depth=2)", 'not a CUT3R constructor'),
    ("ARCroco3DStereo(ARCroco3DStereoConfig(enc_depth=2)", 'cannot parse'),
    ("import os", 'cannot parse'),
    ("x" * 10_001, 'at most 10,000'),
])
def test_malformed_constructor_strings_are_refused(text, match):
    with pytest.raises(Cut3rConfigError, match=match):
        parse_constructor_string(text)


def test_non_string_constructor_is_refused():
    with pytest.raises(Cut3rConfigError):
        parse_constructor_string(b"ARCroco3DStereoConfig()")


# --------------------------------------------------------- unsupported options
def test_unknown_kwargs_are_refused_by_name():
    with pytest.raises(Cut3rConfigError, match='frobnicate'):
        Cut3rConfig.from_constructor_string(_wrap(TINY_LINEAR_KWARGS + ', frobnicate=3'))
    with pytest.raises(Cut3rConfigError, match='unknown'):
        Cut3rConfig.from_official_kwargs({'enc_dim': 64})


def test_ignored_training_kwargs_are_accepted():
    text = _wrap(TINY_LINEAR_KWARGS + ", freeze='encoder', patch_embed_cls='ManyAR_PatchEmbed', "
                                      "landscape_only=True, mask_ratio=0.9, depth_head=False, pose_conf_head=False")
    assert Cut3rConfig.from_constructor_string(text) == TINY_CONFIGS['tiny_linear']


@pytest.mark.parametrize('override, match', [
    ("pos_embed='cosine'", 'RoPE'),
    ("head_type='foo'", 'head_type'),
    ("pose_head=False", 'pose_head'),
    ("dec_num_heads=16", 'multiple of 4'),  # 32 / 16 = head width 2
    ("enc_num_heads=32", 'multiple of 4'),  # 64 / 32 = head width 2
    ("state_dec_num_heads=16", 'multiple of 4'),
    ("dec_num_heads=5", 'does not divide'),
    ("enc_embed_dim=96, enc_num_heads=4", 'multiple of 64'),
    ("state_pe='1d'", 'state_pe'),
    ("output_mode='pts3d'", 'output_mode'),
    ("norm_im2_in_dec=False", 'norm_im2_in_dec'),
    ("depth_mode=('square', -inf, inf)", 'depth_mode'),
    ("depth_mode=('exp', 0, inf)", 'bounded'),
    ("conf_mode=('exp', 1, 10)", 'conf_mode'),
    ("enc_depth=0", 'enc_depth'),
    ("state_size=-5", 'state_size'),
    ("enc_depth=2.5", 'enc_depth'),
])
def test_unsupported_options_are_refused(override, match):
    # keyword arguments may not repeat in Python, so the override replaces the base entry
    base = dict(kv.split('=', 1) for kv in _split_kwargs(TINY_LINEAR_KWARGS))
    for kv in _split_kwargs(override):
        key, value = kv.split('=', 1)
        base[key] = value
    text = _wrap(', '.join(f'{k}={v}' for k, v in base.items()))
    with pytest.raises(Cut3rConfigError, match=match):
        Cut3rConfig.from_constructor_string(text)


def _split_kwargs(text):
    """Split 'a=1, b=(x, y)' at the top-level commas."""
    parts, depth, cur = [], 0, ''
    for ch in text:
        depth += ch in '(['
        depth -= ch in ')]'
        if ch == ',' and depth == 0:
            parts.append(cur.strip())
            cur = ''
        else:
            cur += ch
    return parts + [cur.strip()] if cur.strip() else parts


def test_dataclass_validate_refuses_unsupported_values_directly():
    with pytest.raises(Cut3rConfigError, match='multiple of 4'):
        Cut3rConfig(dec_embed_dim=768, dec_num_heads=128).validate()  # head width 6
    with pytest.raises(Cut3rConfigError, match='4 entries'):
        Cut3rConfig(dpt_layer_dims=(8, 16, 32)).validate()
    with pytest.raises(Cut3rConfigError, match='pose_head'):
        Cut3rModel(Cut3rConfig(pose_head=False))


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize('name', sorted(ALL_CONFIGS))
def test_official_kwargs_round_trip_is_equal(name):
    config = ALL_CONFIGS[name]
    kwargs = json.loads(json.dumps(config.to_official_kwargs()))  # as stored in a side-car JSON
    back = Cut3rConfig.from_official_kwargs(kwargs)
    assert back == config
    assert hash(back) == hash(config)


@pytest.mark.parametrize('name', sorted(ALL_CONFIGS))
def test_official_kwargs_round_trip_keeps_every_value(name):
    config = ALL_CONFIGS[name]
    kwargs = config.to_official_kwargs()
    text = json.dumps(kwargs)  # JSON-friendly: infinities become strings
    assert 'Infinity' not in text
    back = Cut3rConfig.from_official_kwargs(json.loads(text))
    for field in config.__dataclass_fields__:
        got, want = getattr(back, field), getattr(config, field)
        assert (list(got) if isinstance(got, (list, tuple)) else got) == \
               (list(want) if isinstance(want, (list, tuple)) else want), field
    # and it builds the same architecture
    with torch.device('meta'):
        shapes = {k: v.shape for k, v in Cut3rModel(config).state_dict().items()}
        back_shapes = {k: v.shape for k, v in Cut3rModel(back).state_dict().items()}
    assert shapes == back_shapes


def test_rope_base_round_trip():
    config = Cut3rConfig(rope_base=10000.0)
    assert config.to_official_kwargs()['pos_embed'] == 'RoPE10000'
    assert Cut3rConfig.from_official_kwargs({'pos_embed': 'RoPE10000'}).rope_base == 10000.0


# ---------------------------------------------------------------- fixture JSON
def _fixture_docs(cut3r_reference_dir):
    docs = {p.name: json.loads(p.read_text()) for p in sorted(cut3r_reference_dir.glob('cut3r_*.json'))}
    assert len(docs) >= 3, f'expected >= 3 fixture JSON files in {cut3r_reference_dir}'
    return docs


def test_fixture_json_configs_parse(cut3r_reference_dir):
    for name, doc in _fixture_docs(cut3r_reference_dir).items():
        config = config_from_json(doc, source=name)
        fields = Cut3rConfig.__dataclass_fields__
        for key, value in doc['config_kwargs'].items():
            if key in fields:
                got = getattr(config, key)
                want = [float(v) if isinstance(v, str) and 'inf' in v else v for v in value] \
                    if isinstance(value, list) else value
                assert (list(got) if isinstance(got, tuple) else got) == want, (name, key)
        overrides = doc.get('structural_overrides') or {}
        if config.head_type == 'dpt':
            assert overrides, f'{name}: a DPT fixture records its shrunken DPT widths'
            assert config.dpt_feature_dim == overrides['dpt_feature_dim']
            assert config.dpt_last_dim == overrides['dpt_last_dim']
            assert config.dpt_layer_dims == tuple(overrides['dpt_layer_dims'])
        # the constructor string says the same, apart from the structural overrides
        from_string = Cut3rConfig.from_constructor_string(doc['constructor'])
        assert from_string == Cut3rConfig.from_official_kwargs(doc['config_kwargs']), name
        # the config builds a model with exactly the fixture's parameter keys and shapes
        with torch.device('meta'):
            sd = Cut3rModel(config).state_dict()
        params = {k[len('param/'):]: v['shape'] for k, v in doc['tensors'].items() if k.startswith('param/')}
        assert {k: list(v.shape) for k, v in sd.items()} == params, name


# ------------------------------------------------------ malformed values (known bugs)
@pytest.mark.parametrize('kwargs', [
    {'pos_embed': 'RoPE'},
    {'pos_embed': 'RoPEabc'},
    {'conf_mode': ['exp', 'a', 'inf']},
    {'conf_mode': 'exp'},
    {'depth_mode': ['exp']},
    {'img_size': 5},
    {'dpt_layer_dims': 5},
], ids=['RoPE without base', 'RoPE bad base', 'conf_mode bad bound', 'conf_mode string',
        'depth_mode too short', 'img_size int', 'dpt_layer_dims int'])
def test_malformed_values_raise_config_error(kwargs):
    with pytest.raises(Cut3rConfigError):
        Cut3rConfig.from_official_kwargs(kwargs)


@pytest.mark.parametrize('kwargs', [{'rgb_head': 'no'}, {'mlp_ratio': 0}, {'dpt_feature_dim': 0}],
                         ids=['rgb_head string', 'mlp_ratio 0', 'dpt_feature_dim 0'])
def test_invalid_values_are_refused(kwargs):
    with pytest.raises(Cut3rConfigError):
        Cut3rConfig.from_official_kwargs(kwargs)
