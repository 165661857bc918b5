"""Our CUT3R has exactly the keys, shapes and dtypes of the two published checkpoints.

The published weights (3 GB each) are not here; full_size_keys.json lists every key of the
official ``ARCroco3DStereo`` built from the checkpoints' constructor strings. We build the
full-size model on the meta device (no memory, no init) and compare, then check that a
state dict with exactly those keys loads strictly. Key mismatches are exercised on a tiny
model, where they must raise CheckpointError naming the key.
"""
import pytest
import torch

from vlm3r_ros.engine.checkpoint import CheckpointError, build_cut3r, check_state_dict
from vlm3r_ros.models.cut3r import PUBLIC_CONFIGS, Cut3rConfig, Cut3rModel
from vlm3r_ros.models.cut3r.config import parse_constructor_string
from vlm3r_ros.models.cut3r.tiny import random_cut3r

pytestmark = pytest.mark.usefixtures('torch_single_thread')

PUBLIC_NAMES = ['cut3r_512_dpt_4_64', 'cut3r_224_linear_4']


def _meta_model(name):
    with torch.device('meta'):
        return Cut3rModel(PUBLIC_CONFIGS[name])


def _dtype_name(dtype):
    return str(dtype).removeprefix('torch.')


def test_both_public_models_are_listed(full_size_keys):
    assert set(full_size_keys['models']) == set(PUBLIC_NAMES) == set(PUBLIC_CONFIGS)


@pytest.mark.parametrize('name', PUBLIC_NAMES)
def test_state_dict_keys_shapes_and_dtypes_match(full_size_keys, name):
    entry = full_size_keys['models'][name]
    listed = {k['key']: (tuple(k['shape']), k['dtype']) for k in entry['keys']}
    assert len(listed) == len(entry['keys']) == entry['num_keys']  # no duplicates in the listing
    model = _meta_model(name)
    sd = model.state_dict()
    assert all(t.is_meta for t in sd.values())
    ours = {k: (tuple(v.shape), _dtype_name(v.dtype)) for k, v in sd.items()}
    missing = sorted(set(listed) - set(ours))
    extra = sorted(set(ours) - set(listed))
    assert not missing and not extra, f'{name}: missing {missing[:10]}, extra {extra[:10]}'
    wrong = sorted(f'{k}: ours {ours[k]} vs official {listed[k]}' for k in listed if ours[k] != listed[k])
    assert not wrong, f'{name}: {wrong[:10]}'


@pytest.mark.parametrize('name', PUBLIC_NAMES)
def test_a_state_dict_with_exactly_the_listed_keys_loads_strictly(full_size_keys, name):
    entry = full_size_keys['models'][name]
    model = _meta_model(name)
    sd = {k['key']: torch.empty(k['shape'], device='meta', dtype=getattr(torch, k['dtype']))
          for k in entry['keys']}
    result = model.load_state_dict(sd, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    # our own pre-load check agrees
    check_state_dict(model, sd)
    # the key set is tight: one key fewer is refused by the strict load
    dropped = dict(sd)
    dropped.pop(entry['keys'][-1]['key'])
    with pytest.raises(RuntimeError, match='Missing key'):
        _meta_model(name).load_state_dict(dropped, strict=True, assign=True)


@pytest.mark.parametrize('name', PUBLIC_NAMES)
def test_unique_parameter_count(full_size_keys, name):
    entry = full_size_keys['models'][name]
    model = _meta_model(name)
    params = dict(model.named_parameters())  # aliased tensors are listed once
    assert len(params) == entry['num_unique_tensors']
    assert sum(p.numel() for p in params.values()) == entry['unique_parameters']
    assert sum(4 * p.numel() for p in params.values()) == entry['unique_float32_bytes']
    # summing over all state_dict keys counts the aliased DPT convs twice, as listed
    assert sum(t.numel() for t in model.state_dict().values()) == entry['total_elements_over_all_keys']


@pytest.mark.parametrize('name', PUBLIC_NAMES)
def test_aliased_key_groups_are_one_tensor(full_size_keys, name):
    groups = full_size_keys['models'][name]['aliased_key_groups']
    if name == 'cut3r_512_dpt_4_64':
        assert len(groups) == 12  # 4 per DPT adapter, three adapters
    else:
        assert groups == []
    sd = _meta_model(name).state_dict(keep_vars=True)
    for group in groups:
        first = sd[group[0]]
        assert all(sd[key] is first for key in group[1:]), group


@pytest.mark.parametrize('name', PUBLIC_NAMES)
@pytest.mark.parametrize('which', ['constructor_after_load_model_rewrite', 'constructor_in_official_config'])
def test_constructor_strings_parse_to_the_public_config(full_size_keys, name, which):
    text = full_size_keys['models'][name][which]
    assert Cut3rConfig.from_constructor_string(text) == PUBLIC_CONFIGS[name]
    kwargs = parse_constructor_string(text)
    assert kwargs['head_type'] == PUBLIC_CONFIGS[name].head_type


# --------------------------------------------------- mismatches (tiny model, cheap)
@pytest.fixture(scope='module')
def tiny_dpt():
    return random_cut3r('tiny_dpt', seed=1)


def _error_text(model, sd):
    with pytest.raises(CheckpointError) as exc:
        check_state_dict(model, sd)
    return str(exc.value)


def test_check_state_dict_accepts_the_models_own_state_dict(tiny_dpt):
    check_state_dict(tiny_dpt, tiny_dpt.state_dict())


def test_dropping_one_key_is_named(tiny_dpt):
    sd = tiny_dpt.state_dict()
    key = 'dec_blocks_state.2.cross_attn.projv.bias'
    del sd[key]
    text = _error_text(tiny_dpt, sd)
    assert 'missing keys (1)' in text and key in text
    assert 'unexpected keys' not in text


def test_adding_one_key_is_named(tiny_dpt):
    sd = tiny_dpt.state_dict()
    key = 'downstream_head.dpt_self.scratch.layer5_rn.weight'
    sd[key] = torch.zeros(3)
    text = _error_text(tiny_dpt, sd)
    assert 'unexpected keys (1)' in text and key in text
    assert 'missing keys' not in text


def test_changing_one_shape_is_named(tiny_dpt):
    sd = tiny_dpt.state_dict()
    key = 'pose_retriever.mem'
    sd[key] = torch.zeros(1, 9, 64)  # local_mem_size 8 in the model
    text = _error_text(tiny_dpt, sd)
    assert 'mis-shaped keys (1)' in text and key in text
    assert '(1, 9, 64)' in text and '(1, 8, 64)' in text


def test_integer_tensor_is_named(tiny_dpt):
    sd = tiny_dpt.state_dict()
    key = 'pose_token'
    sd[key] = torch.zeros(sd[key].shape, dtype=torch.int64)
    text = _error_text(tiny_dpt, sd)
    assert 'non-float tensors (1)' in text and key in text


def test_build_cut3r_refuses_a_mismatched_state_dict(tiny_dpt):
    sd = tiny_dpt.state_dict()
    del sd['enc_norm.weight']
    with pytest.raises(CheckpointError, match='enc_norm.weight'):
        build_cut3r(tiny_dpt.config, sd)
