"""Reading CUT3R checkpoints: the published .pth layout, safely; key renames; safetensors.

The published weights cannot be here, so each test writes a real file of the same layout
from a tiny random model (``torch.save`` of ``{"model", "args": OmegaConf, "epoch"}``) and
reads it back with our loader.
"""
import builtins
import json
import math
import os
import pickle

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file

from vlm3r_ros.engine.checkpoint import (
    DPT_ALIASES, CheckpointError, build_cut3r, config_to_json, convert_pth_to_safetensors,
    load_cut3r, normalize_state_dict, read_cut3r_checkpoint, restricted_torch_load,
    save_cut3r_safetensors)
from vlm3r_ros.models.cut3r.tiny import TINY_CONFIGS, random_cut3r

pytestmark = pytest.mark.usefixtures('torch_single_thread')

FRAME_HW = (64, 96)  # tiny frames: every head works at any multiple of 16


# ------------------------------------------------------------------ helpers
def constructor_string(config):
    """The official-style constructor string for a config (what the training script pickles)."""
    def literal(value):
        if isinstance(value, str) and value in ('inf', '-inf'):
            return value  # the names inf / -inf, as in the official strings
        if isinstance(value, list):
            return '(' + ', '.join(literal(v) for v in value) + ')'
        return repr(value)

    kwargs = config.to_official_kwargs()
    kwargs.update(freeze='encoder', patch_embed_cls='ManyAR_PatchEmbed')
    return 'ARCroco3DStereo(ARCroco3DStereoConfig(' + ', '.join(
        f'{k}={literal(v)}' for k, v in kwargs.items()) + '))'


def training_args(constructor):
    """An OmegaConf training config like the one the official train.py pickles into ckpt['args']."""
    return OmegaConf.create({
        'model': constructor,
        'pretrained': 'checkpoints/cut3r_512_dpt_4_64.pth',
        'train_dataset': '1000 @ ARKitScenes_Multi(split="train", resolution=[(512, 384)])',
        'lr': 1e-6, 'min_lr': 1e-8, 'epochs': 10, 'batch_size': 4, 'seed': 0,
        'resolution': [[512, 384], [512, 336]],
        'optimizer': {'name': 'AdamW', 'betas': [0.9, 0.95], 'weight_decay': 0.05},
        'fixed_length': True, 'num_views': 64, 'output_dir': '${pretrained}',
    })


def save_published_pth(path, model, constructor=None, **extra):
    ckpt = {'model': model.state_dict(),
            'args': training_args(constructor or constructor_string(model.config)),
            'epoch': 3, **extra}
    torch.save(ckpt, path)
    return path


def frames(n=3, seed=0, hw=FRAME_HW):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 3, *hw, generator=gen) * 2 - 1


def stream_outputs(model, inputs):
    """Every output of a short stream, heads included, as a flat list of tensors."""
    state = model.init_state(1)
    outs = [state.state_feat, state.mem]
    for frame in inputs:
        out, state = model.step(state, frame, with_heads=True)
        h = out.heads
        outs += [out.camera_token, out.patch_tokens, out.enc_feat, out.pose_token_in, state.state_feat,
                 state.mem, h.pts3d_in_self_view, h.conf_self, h.pts3d_in_other_view, h.conf,
                 h.camera_pose, h.camera_c2w, h.rgb]
    return outs


def assert_same_outputs(model_a, model_b, inputs):
    a, b = stream_outputs(model_a, inputs), stream_outputs(model_b, inputs)
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.dtype == y.dtype and x.shape == y.shape, i
        assert torch.equal(x, y), f'output #{i} differs by {float((x - y).abs().max())}'


def assert_same_weights(model, state_dict):
    ours = model.state_dict()
    assert set(ours) == set(state_dict)
    for key, value in state_dict.items():
        assert torch.equal(ours[key], value), key


@pytest.fixture(scope='module')
def tiny_linear():
    return random_cut3r('tiny_linear', seed=3)


@pytest.fixture(scope='module')
def tiny_dpt():
    return random_cut3r('tiny_dpt', seed=4)


@pytest.fixture(scope='module')
def inputs():
    return frames()


# ------------------------------------------------------- (a) the published .pth
@pytest.mark.parametrize('name', ['tiny_linear', 'tiny_dpt'])
def test_published_pth_layout_reads_config_and_every_tensor(tmp_path, name, request):
    model = request.getfixturevalue(name)
    path = save_published_pth(tmp_path / 'cut3r.pth', model)
    config, state_dict = read_cut3r_checkpoint(path)
    # config equality field by field (from_official_kwargs keeps dpt_layer_dims as a list)
    for field in TINY_CONFIGS[name].__dataclass_fields__:
        got, want = getattr(config, field), getattr(model.config, field)
        assert (list(got) if isinstance(got, (list, tuple)) else got) == \
               (list(want) if isinstance(want, (list, tuple)) else want), field
    original = model.state_dict()
    assert set(state_dict) == set(original)
    for key, value in original.items():
        assert torch.equal(state_dict[key], value), key


@pytest.mark.parametrize('name', ['tiny_linear', 'tiny_dpt'])
def test_published_pth_loads_to_an_identical_model(tmp_path, name, request, inputs):
    model = request.getfixturevalue(name)
    path = save_published_pth(tmp_path / 'cut3r.pth', model)
    loaded = load_cut3r(path)
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert_same_weights(loaded, model.state_dict())
    assert_same_outputs(loaded, model, inputs)


def test_the_constructor_string_of_the_real_checkpoint_reads(tmp_path, full_size_keys):
    """The real constructor string, pickled inside OmegaConf args, gives the public config."""
    from vlm3r_ros.models.cut3r import PUBLIC_CONFIGS

    entry = full_size_keys['models']['cut3r_512_dpt_4_64']
    path = tmp_path / 'args_only.pth'
    torch.save({'model': {'pose_token': torch.zeros(1, 1, 768)},
                'args': training_args(entry['constructor_in_official_config']), 'epoch': 3}, path)
    config, state_dict = read_cut3r_checkpoint(path)
    assert config == PUBLIC_CONFIGS['cut3r_512_dpt_4_64']
    assert list(state_dict) == ['pose_token']


def test_args_as_argparse_namespace_and_bare_state_dict(tmp_path, tiny_linear, inputs):
    import argparse

    path = tmp_path / 'namespace.pth'
    torch.save({'model': tiny_linear.state_dict(),
                'args': argparse.Namespace(model=constructor_string(tiny_linear.config), lr=1e-4)}, path)
    assert_same_outputs(load_cut3r(path), tiny_linear, inputs[:1])
    bare = tmp_path / 'bare.pth'
    torch.save(tiny_linear.state_dict(), bare)
    with pytest.raises(CheckpointError, match='pass the config explicitly'):
        read_cut3r_checkpoint(bare)
    assert_same_outputs(load_cut3r(bare, config=tiny_linear.config), tiny_linear, inputs[:1])


def test_legacy_non_zip_pth_reads(tmp_path, tiny_linear):
    path = tmp_path / 'legacy.pth'
    torch.save({'model': tiny_linear.state_dict(), 'args': training_args(constructor_string(tiny_linear.config))},
               path, _use_new_zipfile_serialization=False)
    _, state_dict = read_cut3r_checkpoint(path)
    assert_same_weights(build_cut3r(tiny_linear.config, state_dict), tiny_linear.state_dict())


# ------------------------------------------ (b) why torch's own safe loader is not enough
def test_torch_weights_only_load_refuses_the_published_layout(tmp_path, tiny_linear):
    path = save_published_pth(tmp_path / 'cut3r.pth', tiny_linear)
    with pytest.raises(pickle.UnpicklingError, match='[Ww]eights only load failed'):
        torch.load(path, weights_only=True)
    # ...while the same file without the pickled OmegaConf config is fine for it
    plain = tmp_path / 'plain.pth'
    torch.save({'model': tiny_linear.state_dict(), 'epoch': 3}, plain)
    assert set(torch.load(plain, weights_only=True)['model']) == set(tiny_linear.state_dict())


# ------------------------------------------------------------------ (c) security
class RunsShell:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


class RunsExec:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f'open({self.marker!r}, "w").write("pwned")',)


class RunsEval:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.eval, (f'__import__("pathlib").Path({self.marker!r}).touch()',)


PAYLOADS = {'os.system': RunsShell, 'builtins.exec': RunsExec, 'builtins.eval': RunsEval}


@pytest.mark.parametrize('payload', sorted(PAYLOADS))
def test_the_payloads_are_live_under_plain_pickle(tmp_path, payload):
    """Control: unpickling these objects the ordinary way DOES run their code."""
    marker = tmp_path / 'PWNED'
    pickle.loads(pickle.dumps({'args': PAYLOADS[payload](marker)}))
    assert marker.exists()


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
@pytest.mark.parametrize('payload', sorted(PAYLOADS))
def test_malicious_args_run_no_code_and_need_an_explicit_config(tmp_path, payload, legacy, tiny_linear, inputs):
    marker = tmp_path / 'PWNED'
    path = tmp_path / 'evil.pth'
    torch.save({'model': tiny_linear.state_dict(), 'args': PAYLOADS[payload](marker), 'epoch': 3}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match="no constructor string at ckpt\\['args'\\].model"):
        read_cut3r_checkpoint(path)
    assert not marker.exists(), 'reading the checkpoint executed the pickled payload'
    ckpt = restricted_torch_load(path)
    assert not marker.exists()
    assert type(ckpt['args']).__name__ in ('system', 'exec', 'eval')  # an inert stand-in
    loaded = load_cut3r(path, config=tiny_linear.config)
    assert not marker.exists()
    assert_same_outputs(loaded, tiny_linear, inputs[:1])


@pytest.mark.parametrize('payload', sorted(PAYLOADS))
def test_payload_beside_a_valid_constructor_is_inert(tmp_path, payload, tiny_linear, inputs):
    marker = tmp_path / 'PWNED'
    args = {'model': constructor_string(tiny_linear.config), 'hook': PAYLOADS[payload](marker)}
    path = tmp_path / 'evil.pth'
    torch.save({'model': tiny_linear.state_dict(), 'args': args, 'optimizer': PAYLOADS[payload](marker)}, path)
    loaded = load_cut3r(path)
    assert not marker.exists()
    assert_same_outputs(loaded, tiny_linear, inputs[:1])


def test_payload_inside_the_state_dict_is_refused(tmp_path, tiny_linear):
    marker = tmp_path / 'PWNED'
    sd = dict(tiny_linear.state_dict())
    sd['pose_token'] = RunsShell(marker)
    path = tmp_path / 'evil.pth'
    torch.save({'model': sd, 'args': training_args(constructor_string(tiny_linear.config))}, path)
    with pytest.raises(CheckpointError, match='not tensors.*pose_token'):
        load_cut3r(path)
    assert not marker.exists()


def test_code_in_the_constructor_string_is_not_evaluated(tmp_path, tiny_linear):
    """The official load_model eval()s ckpt['args'].model; we parse it."""
    marker = tmp_path / 'PWNED'
    constructor = constructor_string(tiny_linear.config).replace(
        'enc_depth=2', f"enc_depth=__import__('os').system('touch {marker}')")
    assert '__import__' in constructor
    path = save_published_pth(tmp_path / 'evil.pth', tiny_linear, constructor=constructor)
    with pytest.raises(CheckpointError, match='not a literal'):
        load_cut3r(path)
    assert not marker.exists()


# ------------------------------------------------------------ (d) key renames
def test_module_prefixed_keys_load(tmp_path, tiny_dpt, inputs):
    sd = {f'module.{k}': v for k, v in tiny_dpt.state_dict().items()}
    path = tmp_path / 'ddp.pth'
    torch.save({'model': sd, 'args': training_args(constructor_string(tiny_dpt.config))}, path)
    loaded = load_cut3r(path)
    assert_same_weights(loaded, tiny_dpt.state_dict())
    assert_same_outputs(loaded, tiny_dpt, inputs[:1])


def test_prefix_is_kept_unless_every_key_has_it(tiny_dpt):
    sd = dict(tiny_dpt.state_dict())
    sd['module.extra'] = torch.zeros(1)
    assert 'module.extra' in normalize_state_dict(sd)
    with pytest.raises(CheckpointError, match='module.extra'):
        build_cut3r(tiny_dpt.config, sd)


def test_missing_state_decoder_is_copied_from_the_image_decoder(tiny_linear):
    sd = {k: v for k, v in tiny_linear.state_dict().items() if not k.startswith('dec_blocks_state.')}
    assert len(sd) < len(tiny_linear.state_dict())
    model = build_cut3r(tiny_linear.config, sd)
    copied = {k[len('dec_blocks_state.'):]: v for k, v in model.state_dict().items()
              if k.startswith('dec_blocks_state.')}
    assert copied
    for key, value in copied.items():
        assert torch.equal(value, tiny_linear.state_dict()[f'dec_blocks.{key}']), key
    # and a checkpoint that has its own state decoder keeps it
    original = tiny_linear.state_dict()
    assert not torch.equal(original['dec_blocks_state.0.mlp.fc1.weight'], original['dec_blocks.0.mlp.fc1.weight'])
    assert_same_weights(build_cut3r(tiny_linear.config, original), original)


def _alias_keys(state_dict):
    return [k for k in state_dict if any(alias in k for _, alias in DPT_ALIASES)]


def test_only_primary_dpt_keys_load(tiny_dpt, inputs):
    sd = tiny_dpt.state_dict()
    aliases = _alias_keys(sd)
    assert len(aliases) == 12  # three adapters x layer_rn.0..3
    model = build_cut3r(tiny_dpt.config, {k: v for k, v in sd.items() if k not in aliases})
    assert_same_weights(model, sd)
    assert_same_outputs(model, tiny_dpt, inputs[:1])


def test_only_alias_dpt_keys_load(tiny_dpt):
    sd = tiny_dpt.state_dict()
    primaries = [k for k in sd if any(primary in k for primary, _ in DPT_ALIASES)]
    assert len(primaries) == 12
    model = build_cut3r(tiny_dpt.config, {k: v for k, v in sd.items() if k not in primaries})
    assert_same_weights(model, sd)


def test_alias_pair_with_different_values_is_refused(tiny_dpt):
    sd = {k: v.clone() for k, v in tiny_dpt.state_dict().items()}
    key = 'downstream_head.dpt_cross.scratch.layer_rn.2.weight'
    sd[key] += 1e-3
    with pytest.raises(CheckpointError, match='layer3_rn.weight') as exc:
        build_cut3r(tiny_dpt.config, sd)
    assert key in str(exc.value)
    # identical copies (what safetensors and the fixtures store) are fine
    build_cut3r(tiny_dpt.config, {k: v.clone() for k, v in tiny_dpt.state_dict().items()})


# ------------------------------------------------------------- (e) safetensors
def test_safetensors_round_trip(tmp_path, tiny_dpt, inputs):
    dst = save_cut3r_safetensors(tiny_dpt.config, tiny_dpt.state_dict(), tmp_path / 'out' / 'cut3r.safetensors')
    assert dst == tmp_path / 'out' / 'cut3r.safetensors' and dst.is_file()
    sidecar = dst.with_suffix('.json')
    assert sidecar.is_file()
    doc = json.loads(sidecar.read_text())
    assert doc == config_to_json(tiny_dpt.config)
    with safe_open(str(dst), framework='pt') as f:
        stored = set(f.keys())
        assert json.loads(f.metadata()['cut3r_config']) == doc
    # each aliased tensor is stored once; the loader re-creates its twin
    assert not _alias_keys(stored) and len(stored) == len(tiny_dpt.state_dict()) - 12
    loaded = load_cut3r(dst)
    assert_same_weights(loaded, tiny_dpt.state_dict())
    assert_same_outputs(loaded, tiny_dpt, inputs)

    sidecar.unlink()
    assert_same_outputs(load_cut3r(dst), tiny_dpt, inputs[:1])  # config from the metadata


def test_convert_pth_to_safetensors(tmp_path, tiny_linear, inputs):
    src = save_published_pth(tmp_path / 'cut3r_224_linear_4.pth', tiny_linear)
    dst = convert_pth_to_safetensors(src, tmp_path / 'cut3r.safetensors')
    with safe_open(str(dst), framework='pt') as f:
        assert f.metadata()['source'] == 'cut3r_224_linear_4.pth'
    assert_same_outputs(load_cut3r(dst), tiny_linear, inputs[:1])


def test_safetensors_without_any_config_is_refused(tmp_path, tiny_linear):
    path = tmp_path / 'raw.safetensors'
    save_file({k: v.contiguous() for k, v in tiny_linear.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match='raw.json'):
        load_cut3r(path)
    assert_same_weights(load_cut3r(path, config=tiny_linear.config), tiny_linear.state_dict())


@pytest.mark.parametrize('damage', ['truncated', 'zeros', 'bad header'])
def test_corrupt_safetensors_is_a_checkpoint_error(tmp_path, tiny_linear, damage):
    good = save_cut3r_safetensors(tiny_linear.config, tiny_linear.state_dict(), tmp_path / 'good.safetensors')
    data = good.read_bytes()
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes({'truncated': data[:len(data) // 2], 'zeros': bytes(200),
                     'bad header': data[:8] + b'{garbage' + data[16:]}[damage])
    with pytest.raises(CheckpointError, match='bad.safetensors'):
        load_cut3r(bad, config=tiny_linear.config)


def test_wrong_model_for_the_config_lists_missing_and_unexpected_keys(tmp_path, tiny_linear, tiny_dpt):
    path = save_cut3r_safetensors(tiny_linear.config, tiny_linear.state_dict(), tmp_path / 'w.safetensors')
    path.with_suffix('.json').write_text(json.dumps(config_to_json(tiny_dpt.config)))
    with pytest.raises(CheckpointError) as exc:
        load_cut3r(path)
    text = str(exc.value)
    assert str(path) in text
    missing = set(tiny_dpt.state_dict()) - set(tiny_linear.state_dict())
    unexpected = set(tiny_linear.state_dict()) - set(tiny_dpt.state_dict())
    assert f'missing keys ({len(missing)})' in text and min(missing) in text
    assert f'unexpected keys ({len(unexpected)})' in text
    assert all(key in text for key in unexpected)  # 12 of them: all listed
    assert 'register_tokens.weight: file (16, 64) vs model (25, 64)' in text


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / 'nowhere' / 'cut3r_512_dpt_4_64.pth'
    with pytest.raises(CheckpointError, match='not found') as exc:
        load_cut3r(path)
    assert str(path) in str(exc.value)


def test_unknown_suffix_is_refused(tmp_path, tiny_linear):
    path = tmp_path / 'cut3r.onnx'
    torch.save({'model': tiny_linear.state_dict()}, path)
    with pytest.raises(CheckpointError, match="unknown checkpoint type '.onnx'"):
        load_cut3r(path)
    with pytest.raises(CheckpointError, match='.safetensors'):
        save_cut3r_safetensors(tiny_linear.config, tiny_linear.state_dict(), tmp_path / 'x.pth')


def test_truncated_pth_is_a_checkpoint_error(tmp_path, tiny_linear):
    path = save_published_pth(tmp_path / 'cut3r.pth', tiny_linear)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='not a readable torch checkpoint'):
        load_cut3r(path)


def test_junk_pth_is_a_checkpoint_error(tmp_path):
    path = tmp_path / 'cut3r.pth'
    path.write_bytes(b'this is not a checkpoint ' * 8)
    with pytest.raises(CheckpointError, match='cut3r.pth'):
        read_cut3r_checkpoint(path)


def test_pth_without_a_model_dict_is_refused(tmp_path):
    path = tmp_path / 'weird.pth'
    torch.save({'model': 'not a dict', 'epoch': 1}, path)
    with pytest.raises(CheckpointError, match="'model' state dict"):
        read_cut3r_checkpoint(path)
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match='list'):
        read_cut3r_checkpoint(path)


def test_half_precision_file_loads_as_float32_weights(tmp_path, tiny_linear):
    sd = {k: v.half() for k, v in tiny_linear.state_dict().items()}
    model = build_cut3r(tiny_linear.config, sd)
    assert model.dtype == torch.float32
    for key, value in model.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, sd[key].float()), key
    assert math.isfinite(float(model.pose_token.abs().sum()))


def test_malformed_sidecar_json_is_a_checkpoint_error(tmp_path, tiny_linear):
    path = save_cut3r_safetensors(tiny_linear.config, tiny_linear.state_dict(), tmp_path / 'x.safetensors')
    path.with_suffix('.json').write_text('{not json')
    with pytest.raises(CheckpointError, match='x.json'):
        load_cut3r(path)


def test_a_loaded_model_does_not_depend_on_its_file(tmp_path, tiny_linear):
    path = tmp_path / 'cut3r.pth'
    torch.save({'model': tiny_linear.state_dict()}, path)
    loaded = load_cut3r(path, config=tiny_linear.config)
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    other = tmp_path / 'other.pth'
    torch.save({'model': random_cut3r('tiny_linear', seed=99).state_dict()}, other)
    data, new = path.read_bytes(), other.read_bytes()
    with open(path, 'r+b') as f:  # same layout, rewritten in place without truncation
        f.write(new[:len(data)])
    changed = [k for k, v in loaded.state_dict().items() if not torch.equal(v, before[k])]
    assert not changed, f'{len(changed)} weights changed with the file, e.g. {changed[:3]}'
