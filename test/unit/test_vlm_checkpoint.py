"""Loading VLM-3R from the official checkpoint layout: base folder + LoRA adapter folder.

The published weights cannot be here, so the test writes both folders itself, in the
official key layout, from a tiny random model: the LLaVA-Video-Qwen2 base (config.json,
sharded safetensors + index, or .bin files written with torch.save of plain tensors, plus
keys VLM-3R drops: SigLIP's last layer and pooling head, CUT3R, RoPE buffers) and the
VLM-3R adapter (adapter_config.json, PEFT LoRA A/B for every Qwen2 Linear,
non_lora_trainables.bin with the fusion block and projector, a config.json). The official
names are written out here by hand, independently of the loader's rename table.
"""
import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass, replace

import pytest
import torch
from safetensors.torch import save_file

from vlm3r_ros.engine.checkpoint import CheckpointError
from vlm3r_ros.engine.vlm_checkpoint import (
    KEY_RENAMES, LoadReport, drop_reason, load_vlm3r, official_to_ours, strip_non_lora_prefix)
from vlm3r_ros.models.vlm.config import Vlm3rConfig
from vlm3r_ros.models.vlm.modeling_vlm3r import IMAGE_TOKEN_INDEX, Vlm3rModel
from vlm3r_ros.models.vlm.tiny import TINY_VLM3R, random_vlm3r

pytestmark = pytest.mark.usefixtures('torch_single_thread')

VOCAB = 1024  # small stand-in for Qwen2's 152064 rows
TOKENIZER = 1000  # ... and for len(tokenizer) = 151646
CFG = TINY_VLM3R.replace(llm=replace(TINY_VLM3R.llm, vocab_size=VOCAB))
# SigLIP and fusion sizes are not in a LLaVA config.json (the official code hard-codes them)
OVERRIDES = {'vision': CFG.vision, 'fusion_num_heads': CFG.fusion_num_heads}
R, ALPHA = 4, 8
SCALE = ALPHA / R
LINEARS = ('self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj',
           'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj')
TARGETS = [f'model.layers.{i}.{m}' for i in range(CFG.llm.num_hidden_layers) for m in LINEARS]
SIGLIP = 'model.vision_tower.vision_tower.vision_model.'
PEFT = 'base_model.model.'


# ------------------------------------------------------------------ writers
def official_name(ours):
    """Our key -> the official LLaVA-Qwen key (written here by hand, not from the loader)."""
    if ours.startswith('vision_tower.'):
        return SIGLIP + ours[len('vision_tower.'):]
    if ours.startswith('llm.'):
        return ours[len('llm.'):]  # model.embed_tokens / model.layers / model.norm / lm_head
    return 'model.' + ours  # fusion_block.*, mm_projector.*, image_newline


def llava_config(cfg=CFG, **extra):
    """A LlavaQwenConfig-like config.json: Qwen2 fields + mm_* fields (as LLaVA-Video ships it)."""
    q = cfg.llm
    doc = {
        'architectures': ['LlavaQwenForCausalLM'], 'model_type': 'llava', 'torch_dtype': 'bfloat16',
        'hidden_size': q.hidden_size, 'intermediate_size': q.intermediate_size,
        'num_hidden_layers': q.num_hidden_layers, 'num_attention_heads': q.num_attention_heads,
        'num_key_value_heads': q.num_key_value_heads, 'vocab_size': q.vocab_size,
        'max_position_embeddings': q.max_position_embeddings, 'rope_theta': q.rope_theta,
        'rms_norm_eps': q.rms_norm_eps, 'hidden_act': 'silu', 'rope_scaling': None,
        'use_sliding_window': False, 'tie_word_embeddings': False, 'bos_token_id': 151643,
        'mm_hidden_size': cfg.vision.hidden_size, 'mm_vision_tower': 'google/siglip-so400m-patch14-384',
        'mm_projector_type': 'mlp2x_gelu', 'mm_patch_merge_type': 'spatial_unpad',
        'mm_vision_select_layer': -2, 'mm_spatial_pool_mode': 'average', 'mm_newline_position': 'grid',
        'mm_spatial_pool_stride': 2, 'image_aspect_ratio': 'anyres_max_9', 'tokenizer_model_max_length': 32768,
    }
    doc.update(extra)
    return doc


def write_weights(folder, tensors, fmt):
    """fmt: 'sharded-safetensors' | 'safetensors' | 'sharded-bin' | 'bin'."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.clone().contiguous() for k, v in tensors.items()}
    ext = 'safetensors' if 'safetensors' in fmt else 'bin'
    single = 'model.safetensors' if ext == 'safetensors' else 'pytorch_model.bin'

    def save(sd, name):
        if ext == 'safetensors':
            save_file(sd, str(folder / name), metadata={'format': 'pt'})
        else:
            torch.save(sd, folder / name)

    if not fmt.startswith('sharded'):
        save(tensors, single)
        return
    keys = list(tensors)
    stem = 'model' if ext == 'safetensors' else 'pytorch_model'
    shards = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for i, part in enumerate(shards):
        name = f'{stem}-{i + 1:05d}-of-{len(shards):05d}.{ext}'
        save({k: tensors[k] for k in part}, name)
        weight_map.update({k: name for k in part})
    total = sum(v.numel() * v.element_size() for v in tensors.values())
    (folder / f'{single}.index.json').write_text(json.dumps(
        {'metadata': {'total_size': total}, 'weight_map': weight_map}, indent=1))


def adapter_config(**extra):
    doc = {'peft_type': 'LORA', 'task_type': 'CAUSAL_LM', 'r': R, 'lora_alpha': ALPHA,
           'target_modules': TARGETS, 'lora_dropout': 0.05, 'bias': 'none', 'use_rslora': False,
           'use_dora': False, 'modules_to_save': None, 'fan_in_fan_out': False, 'inference_mode': True,
           'rank_pattern': {}, 'alpha_pattern': {}, 'init_lora_weights': True,
           'base_model_name_or_path': 'tiny-llava-video-qwen2'}
    doc.update(extra)
    return doc


def write_adapter(folder, parts, *, config=None, lora=None, adapter_name='', weights_fmt='safetensors',
                  model_config='default'):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'adapter_config.json').write_text(json.dumps(config or adapter_config(), indent=1))
    tag = f'.{adapter_name}' if adapter_name else ''
    sd = {}
    for module, (a, b) in (lora or parts.lora).items():
        sd[f'{PEFT}{module}.lora_A{tag}.weight'] = a.clone()
        sd[f'{PEFT}{module}.lora_B{tag}.weight'] = b.clone()
    if weights_fmt == 'safetensors':
        save_file(sd, str(folder / 'adapter_model.safetensors'))
    else:
        torch.save(sd, folder / 'adapter_model.bin')
    torch.save({f'{PEFT}model.{k}': v.clone() for k, v in parts.non_lora.items()},
               folder / 'non_lora_trainables.bin')
    if model_config == 'default':  # the training run's config: VLM-3R settings on top of the base's
        model_config = llava_config(fusion_block='cross_attention', spatial_tower='cut3r',
                                    spatial_tower_select_feature='all', spatial_feature_dim=CFG.spatial_dim,
                                    mm_spatial_pool_mode='bilinear')
    if model_config is not None:
        (folder / 'config.json').write_text(json.dumps(model_config, indent=1))
    return folder


@dataclass
class Parts:
    base: dict  # our key -> tensor: the LLaVA-Video base weights
    extras: dict  # official key -> tensor: keys the loader must drop (and report)
    non_lora: dict  # our key -> tensor: the adapter's fusion block + projector
    lora: dict  # official module -> (A (r, in), B (out, r))


def make_parts():
    base = dict(random_vlm3r(CFG, seed=0).state_dict())
    trained = random_vlm3r(CFG, seed=1).state_dict()
    non_lora = {k: v for k, v in trained.items() if k.startswith(('fusion_block.', 'mm_projector.'))}
    g = torch.Generator().manual_seed(2)
    extras = {}
    deleted = CFG.vision.num_hidden_layers  # the checkpoint's last SigLIP layer, deleted by VLM-3R
    for k, v in base.items():
        if k.startswith('vision_tower.encoder.layers.0.'):
            rest = k[len('vision_tower.encoder.layers.0.'):]
            extras[f'{SIGLIP}encoder.layers.{deleted}.{rest}'] = torch.randn(v.shape, generator=g)
    d = CFG.vision.hidden_size
    extras.update({
        SIGLIP + 'head.probe': torch.randn(1, 1, d, generator=g),
        SIGLIP + 'head.attention.in_proj_weight': torch.randn(3 * d, d, generator=g),
        SIGLIP + 'head.attention.in_proj_bias': torch.randn(3 * d, generator=g),
        SIGLIP + 'head.layernorm.weight': torch.randn(d, generator=g),
        SIGLIP + 'head.mlp.fc1.weight': torch.randn(CFG.vision.intermediate_size, d, generator=g),
        'model.layers.0.self_attn.rotary_emb.inv_freq': torch.randn(8, generator=g),
        'model.spatial_tower.spatial_tower.spatial_model.encoder.cut3r.enc_norm.weight': torch.randn(16, generator=g),
    })
    lora = {}
    for module in TARGETS:
        out_f, in_f = base[f'llm.{module}.weight'].shape
        lora[module] = (0.1 * torch.randn(R, in_f, generator=g), 0.1 * torch.randn(out_f, R, generator=g))
    return Parts(base, extras, non_lora, lora)


def base_tensors(parts, with_fusion=False, with_extras=True):
    sd = {official_name(k): v for k, v in parts.base.items() if with_fusion or not k.startswith('fusion_block.')}
    if with_extras:
        sd.update(parts.extras)
    return sd


def expected_state(parts, *, non_lora=True, lora=True, scale=SCALE):
    sd = {k: v.clone() for k, v in parts.base.items()}
    if non_lora:
        sd.update(parts.non_lora)
    if lora:
        for module, (a, b) in parts.lora.items():
            sd[f'llm.{module}.weight'] = sd[f'llm.{module}.weight'] + scale * (b @ a)
    return sd


def reference_model(state, config=CFG):
    """The in-memory model the loaded one must equal, built the plain way."""
    model = Vlm3rModel(config)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def assert_same_weights(model, expected, dtype=torch.float32):
    got = model.state_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert got[k].dtype == dtype, k
        torch.testing.assert_close(got[k], v.to(dtype), rtol=0, atol=1e-6, msg=k)


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def parts():
    return make_parts()


@pytest.fixture(scope='module')
def folders(parts, tmp_path_factory):
    """The standard pair: base as sharded safetensors (no fusion block, as LLaVA-Video) + adapter."""
    root = tmp_path_factory.mktemp('vlm3r_ckpt')
    base = root / 'LLaVA-Video-7B-Qwen2'
    write_weights(base, base_tensors(parts), 'sharded-safetensors')
    (base / 'config.json').write_text(json.dumps(llava_config(), indent=1))
    adapter = write_adapter(root / 'vlm-3r-llava-qwen2-lora', parts)
    return base, adapter


@pytest.fixture(scope='module')
def loaded(folders):
    return load_vlm3r(*folders, config_overrides=OVERRIDES)


def copy_base(folders, tmp_path):
    dst = tmp_path / 'base'
    shutil.copytree(folders[0], dst)
    return dst


def edit_shard_keys(base, edit):
    """Rewrite the sharded safetensors base with ``edit(dict)`` applied to all tensors (index kept in sync)."""
    from safetensors.torch import load_file

    index = json.loads((base / 'model.safetensors.index.json').read_text())
    tensors = {}
    for shard in sorted(set(index['weight_map'].values())):
        tensors.update(load_file(str(base / shard)))
        (base / shard).unlink()
    edit(tensors)
    (base / 'model.safetensors.index.json').unlink()
    write_weights(base, tensors, 'sharded-safetensors')


# -------------------------------------------------------------------- tests
def test_rename_table_maps_the_full_size_official_keys():
    """README section 4's official names land on the full-size model's keys, shapes as listed."""
    with torch.device('meta'):
        full = Vlm3rModel(Vlm3rConfig())
    sd = full.state_dict()
    cases = {
        'model.mm_projector.0.weight': (3584, 1152), 'model.mm_projector.2.bias': (3584,),
        'model.image_newline': (3584,),
        'model.fusion_block.cross_attention.in_proj_weight': (3456, 1152),
        'model.fusion_block.spatial_encoder_key_proj.weight': (1152, 768),
        'model.embed_tokens.weight': (152064, 3584), 'lm_head.weight': (152064, 3584),
        'model.layers.27.self_attn.o_proj.weight': (3584, 3584), 'model.norm.weight': (3584,),
        SIGLIP + 'encoder.layers.25.mlp.fc1.weight': (4304, 1152),
        SIGLIP + 'embeddings.patch_embedding.weight': (1152, 3, 14, 14),
        SIGLIP + 'post_layernorm.bias': (1152,),
    }
    for official, shape in cases.items():
        ours = official_to_ours(official)
        assert ours in sd and tuple(sd[ours].shape) == shape, official
    full_cfg = Vlm3rConfig()
    for dropped in (SIGLIP + 'encoder.layers.26.mlp.fc1.weight', SIGLIP + 'head.probe',
                    'model.spatial_tower.spatial_tower.spatial_model.encoder.cut3r.enc_norm.weight',
                    'model.vision_resampler.foo', 'model.layers.3.self_attn.rotary_emb.inv_freq'):
        assert drop_reason(dropped, full_cfg), dropped
    for kept in (SIGLIP + 'encoder.layers.25.mlp.fc1.weight', SIGLIP + 'encoder.layers.2.mlp.fc1.weight'):
        assert drop_reason(kept, full_cfg) is None
    assert official_to_ours('model.image_newline_extra') is None
    assert official_to_ours('something.else') is None
    assert len({new for _, new in KEY_RENAMES}) == len(KEY_RENAMES)


def test_official_non_lora_strip_rule():
    keys = [f'{PEFT}model.fusion_block.clip_norm.weight', f'{PEFT}model.mm_projector.0.bias']
    assert list(strip_non_lora_prefix(keys).values()) == ['model.fusion_block.clip_norm.weight',
                                                         'model.mm_projector.0.bias']
    assert strip_non_lora_prefix(['model.mm_projector.0.bias']) == {'model.mm_projector.0.bias':
                                                                    'model.mm_projector.0.bias'}


def test_strict_load_gives_base_plus_non_lora_plus_merged_lora(parts, loaded):
    model, report = loaded
    assert_same_weights(model, expected_state(parts))
    # the adapter's projector replaced the base's; the LoRA changed every target
    assert not torch.equal(model.mm_projector[0].weight, parts.base['mm_projector.0.weight'])
    assert not torch.equal(model.llm.model.layers[1].mlp.down_proj.weight, parts.base[
        'llm.model.layers.1.mlp.down_proj.weight'])
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    # the adapter's config.json overrides the base's mm_* settings (average -> bilinear)
    assert model.config.pool_mode == 'bilinear' and model.config.select_feature == 'all'
    assert isinstance(report, LoadReport)
    assert report.lora_pairs_merged == len(TARGETS) == 14
    assert (report.lora_rank, report.lora_alpha, report.lora_scale) == (R, ALPHA, SCALE)
    assert report.adapter_base_model == 'tiny-llava-video-qwen2'
    assert report.tensors_loaded == len(parts.base)
    assert sorted(report.non_lora_overrides) == sorted(parts.non_lora)
    assert [os.path.basename(f) for f in report.files] == [
        'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'non_lora_trainables.bin',
        'adapter_model.safetensors']
    assert report.vocab_resize is None


def test_report_lists_dropped_keys_with_reasons(parts, folders, caplog):
    with caplog.at_level(logging.INFO, logger='vlm3r_ros.engine.vlm_checkpoint'):
        _, report = load_vlm3r(*folders, config_overrides=OVERRIDES)
    dropped = {d.key: d.reason for d in report.dropped}
    assert set(dropped) == set(parts.extras)
    deleted = CFG.vision.num_hidden_layers
    layer_keys = [k for k in dropped if f'encoder.layers.{deleted}.' in k]
    assert len(layer_keys) == 16 and all('deletes' in dropped[k] for k in layer_keys)
    assert 'pooling head' in dropped[SIGLIP + 'head.probe']
    assert 'CUT3R' in dropped['model.spatial_tower.spatial_tower.spatial_model.encoder.cut3r.enc_norm.weight']
    assert 'RoPE' in dropped['model.layers.0.self_attn.rotary_emb.inv_freq']
    assert all(d.file.startswith('model-0000') for d in report.dropped)
    assert len(report.dropped_by_reason()) == 4
    text = caplog.text
    assert 'dropped 16 keys' in text and 'LoRA: 14 pairs merged' in text and 'scale=2' in text


def test_loaded_model_matches_in_memory_reference(parts, loaded):
    model, _ = loaded
    ref = reference_model(expected_state(parts))
    g = torch.Generator().manual_seed(3)
    pixels = torch.rand(2, 3, 384, 384, generator=g) * 2 - 1
    camera = torch.randn(2, 1, CFG.spatial_dim, generator=g)
    patches = torch.randn(2, 729, CFG.spatial_dim, generator=g)
    feats, ref_feats = model.frame_features(pixels, camera, patches), ref.frame_features(pixels, camera, patches)
    torch.testing.assert_close(feats, ref_feats, rtol=0, atol=1e-5)
    ids = [5, 17, IMAGE_TOKEN_INDEX, 99, 3]
    out = model.generate(ids, feats, max_new_tokens=6)
    assert out.token_ids == ref.generate(ids, ref_feats, max_new_tokens=6).token_ids
    assert out.visual_tokens == 2 * CFG.tokens_per_frame
    for name, buf in ref.named_buffers():  # RoPE frequencies and SigLIP position ids were computed
        assert torch.equal(dict(model.named_buffers())[name], buf), name


@pytest.mark.parametrize('fmt', ['safetensors', 'sharded-bin', 'bin'])
def test_other_base_layouts(parts, tmp_path, fmt):
    base = tmp_path / 'base'
    write_weights(base, base_tensors(parts), fmt)
    (base / 'config.json').write_text(json.dumps(llava_config()))
    adapter = write_adapter(tmp_path / 'adapter', parts, weights_fmt='bin', adapter_name='default')
    model, report = load_vlm3r(base, adapter, config_overrides=OVERRIDES)
    assert_same_weights(model, expected_state(parts))
    assert report.lora_pairs_merged == 14 and len(report.dropped) == len(parts.extras)
    assert os.path.basename(report.files[-1]) == 'adapter_model.bin'


def test_base_alone(parts, tmp_path):
    base = tmp_path / 'base'
    write_weights(base, base_tensors(parts, with_fusion=True), 'safetensors')
    (base / 'config.json').write_text(json.dumps(llava_config(spatial_feature_dim=CFG.spatial_dim)))
    model, report = load_vlm3r(base, config_overrides=OVERRIDES)
    assert_same_weights(model, expected_state(parts, non_lora=False, lora=False))
    assert report.lora_scale is None and report.lora_pairs_merged == 0 and not report.non_lora_overrides
    assert model.config.pool_mode == 'average'  # the base's own setting


def test_base_without_fusion_block_needs_the_adapter(folders):
    with pytest.raises(CheckpointError) as err:
        load_vlm3r(folders[0], config_overrides=OVERRIDES)
    msg = str(err.value)
    assert 'missing keys' in msg and 'fusion_block.cross_attention.in_proj_weight' in msg
    assert 'non_lora_trainables.bin: pass adapter_dir' in msg


def test_missing_key_is_listed(folders, tmp_path):
    base = copy_base(folders, tmp_path)
    edit_shard_keys(base, lambda sd: sd.pop('model.norm.weight'))
    with pytest.raises(CheckpointError, match=r'missing keys \(our names\) \(1\):\s+llm\.model\.norm\.weight '
                                              r'\(file key model\.norm\.weight\)'):
        load_vlm3r(base, folders[1], config_overrides=OVERRIDES)


def test_unexpected_keys_are_listed(folders, tmp_path):
    base = copy_base(folders, tmp_path)

    def add(sd):
        sd['model.layers.0.self_attn.extra_proj.weight'] = torch.zeros(2, 2)
        sd['model.some_new_module.weight'] = torch.zeros(2)
        sd[SIGLIP + f'encoder.layers.{CFG.vision.num_hidden_layers + 1}.mlp.fc1.weight'] = torch.zeros(2)
    edit_shard_keys(base, add)
    with pytest.raises(CheckpointError) as err:
        load_vlm3r(base, folders[1], config_overrides=OVERRIDES)
    msg = str(err.value)
    assert 'unexpected keys (file names) (3)' in msg
    assert 'model.layers.0.self_attn.extra_proj.weight (in model-0000' in msg
    assert 'model.some_new_module.weight (in model-0000' in msg
    assert 'encoder.layers.3.mlp.fc1.weight' in msg  # only the one deleted layer is dropped
    assert 'missing keys' not in msg


def test_misshaped_key_is_listed(folders, tmp_path):
    base = copy_base(folders, tmp_path)
    edit_shard_keys(base, lambda sd: sd.update({'model.norm.weight': torch.ones(CFG.llm.hidden_size + 1)}))
    with pytest.raises(CheckpointError, match=r'mis-shaped keys \(1\):\s+model\.norm\.weight \(in model-\d+-of-\d+'
                                              r'\.safetensors\): file \(65,\) vs model \(64,\)'):
        load_vlm3r(base, folders[1], config_overrides=OVERRIDES)


def test_non_lora_trainables_unknown_key(parts, folders, tmp_path):
    adapter = write_adapter(tmp_path / 'adapter', parts)
    sd = torch.load(adapter / 'non_lora_trainables.bin', weights_only=True)
    sd[f'{PEFT}model.fusion_block.extra.weight'] = torch.zeros(3)
    torch.save(sd, adapter / 'non_lora_trainables.bin')
    with pytest.raises(CheckpointError, match=r'base_model\.model\.model\.fusion_block\.extra\.weight '
                                              r'\(in non_lora_trainables\.bin\) \(-> fusion_block\.extra\.weight\)'):
        load_vlm3r(folders[0], adapter, config_overrides=OVERRIDES)


def test_lora_for_another_hidden_size_is_refused(parts, folders, tmp_path):
    wide = {m: (torch.zeros(R, 80 if a.shape[1] == 64 else a.shape[1]), torch.zeros(80 if b.shape[0] == 64
                                                                               else b.shape[0], R))
            for m, (a, b) in parts.lora.items()}
    adapter = write_adapter(tmp_path / 'adapter', parts, lora=wide)
    with pytest.raises(CheckpointError) as err:
        load_vlm3r(folders[0], adapter, config_overrides=OVERRIDES)
    msg = str(err.value)
    assert 'does not fit this base model (adapter made for tiny-llava-video-qwen2)' in msg
    assert 'model.layers.0.self_attn.q_proj: lora_A (4, 80) torch.float32 / lora_B (80, 4) torch.float32, but ' \
           "a rank-4 LoRA of this base's 64x64 weight needs float A (4, 64) and B (64, 4)" in msg
    assert 'problems (14)' in msg


def test_lora_for_a_layer_this_base_lacks_is_refused(parts, folders, tmp_path):
    lora = dict(parts.lora)
    lora['model.layers.5.self_attn.q_proj'] = parts.lora['model.layers.0.self_attn.q_proj']
    adapter = write_adapter(tmp_path / 'adapter', parts, lora=lora,
                            config=adapter_config(target_modules=TARGETS + ['model.layers.5.self_attn.q_proj']))
    with pytest.raises(CheckpointError, match=r'model\.layers\.5\.self_attn\.q_proj: no such Linear in this '
                                              r"base's LLM \(it has 2 layers, hidden size 64\)"):
        load_vlm3r(folders[0], adapter, config_overrides=OVERRIDES)


def test_adapter_config_for_another_base_is_refused(parts, folders, tmp_path):
    adapter = write_adapter(tmp_path / 'adapter', parts, model_config=llava_config(hidden_size=80))
    with pytest.raises(CheckpointError, match=r'trained on another base model \(hidden_size: base 64, adapter 80\)'):
        load_vlm3r(folders[0], adapter, config_overrides=OVERRIDES)


def test_lora_weights_must_be_complete_and_targeted(parts, folders, tmp_path):
    adapter = write_adapter(tmp_path / 'a', parts)
    from safetensors.torch import load_file
    sd = load_file(str(adapter / 'adapter_model.safetensors'))
    del sd[f'{PEFT}model.layers.1.mlp.up_proj.lora_B.weight']
    save_file(sd, str(adapter / 'adapter_model.safetensors'))
    with pytest.raises(CheckpointError, match=r'without both A and B: \[.model\.layers\.1\.mlp\.up_proj '
                                              r'\(only lora_A\)'):
        load_vlm3r(folders[0], adapter, config_overrides=OVERRIDES)
    adapter = write_adapter(tmp_path / 'b', parts, config=adapter_config(target_modules=['q_proj', 'v_proj']))
    with pytest.raises(CheckpointError, match=r'k_proj: has LoRA weights but is not in adapter_config target_modules'):
        load_vlm3r(folders[0], adapter, config_overrides=OVERRIDES)
    adapter = write_adapter(tmp_path / 'c', parts, lora={m: p for m, p in parts.lora.items() if 'layers.1.' not in m})
    with pytest.raises(CheckpointError, match=r'target_modules names 7 modules with no LoRA weights'):
        load_vlm3r(folders[0], adapter, config_overrides=OVERRIDES)


def test_rslora_scale(parts, folders, tmp_path):
    adapter = write_adapter(tmp_path / 'adapter', parts, config=adapter_config(use_rslora=True))
    model, report = load_vlm3r(folders[0], adapter, config_overrides=OVERRIDES)
    assert report.lora_scale == ALPHA / math.sqrt(R) == 4.0
    assert_same_weights(model, expected_state(parts, scale=4.0))


@pytest.mark.parametrize('change, message', [
    ({'use_dora': True}, 'DoRA adapters'),
    ({'modules_to_save': ['lm_head']}, "modules_to_save=\\['lm_head'\\] is not supported"),
    ({'bias': 'lora_only'}, 'trained biases'),
    ({'rank_pattern': {'q_proj': 8}}, 'rank_pattern'),
    ({'r': 0}, 'r must be a positive integer'),
    ({'peft_type': 'IA3'}, 'not LORA'),
])
def test_unsupported_adapter_settings_are_refused(parts, folders, tmp_path, change, message):
    adapter = write_adapter(tmp_path / 'adapter', parts, config=adapter_config(**change))
    with pytest.raises(CheckpointError, match=message):
        load_vlm3r(folders[0], adapter, config_overrides=OVERRIDES)


class _Payload:
    """Pickles as a call to os.system: what a malicious checkpoint carries."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


@pytest.mark.parametrize('where', ['base', 'non_lora', 'adapter'])
def test_malicious_pickle_is_refused_and_never_runs(parts, folders, tmp_path, where):
    marker = tmp_path / 'pwned'
    evil = {'model.norm.weight': torch.ones(CFG.llm.hidden_size), 'x': _Payload(marker)}
    base, adapter = folders
    if where == 'base':
        base = tmp_path / 'base'
        base.mkdir()
        shutil.copy(folders[0] / 'config.json', base)
        path = base / 'pytorch_model.bin'
    else:
        adapter = write_adapter(tmp_path / 'adapter', parts, weights_fmt='bin')
        path = adapter / ('non_lora_trainables.bin' if where == 'non_lora' else 'adapter_model.bin')
    torch.save(evil, path)
    # the payload is live: an unrestricted load would run it (checked on a copy with another marker)
    live = tmp_path / 'live.bin'
    torch.save({'x': _Payload(tmp_path / 'live_marker')}, live)
    torch.load(live, weights_only=False)
    assert (tmp_path / 'live_marker').exists()

    with pytest.raises(CheckpointError, match=rf'{path.name}: refused or unreadable \.bin \(read with '
                                              r'weights_only=True'):
        load_vlm3r(base, adapter, config_overrides=OVERRIDES)
    assert not marker.exists()


def test_missing_files_are_named(parts, folders, tmp_path):
    base = copy_base(folders, tmp_path)
    (base / 'config.json').unlink()
    with pytest.raises(CheckpointError, match=rf'missing base model config: {base / "config.json"}'):
        load_vlm3r(base, folders[1], config_overrides=OVERRIDES)
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'config.json').write_text(json.dumps(llava_config()))
    with pytest.raises(CheckpointError, match=rf'no weights in {empty}: expected model\.safetensors\.index\.json'):
        load_vlm3r(empty, config_overrides=OVERRIDES)
    with pytest.raises(CheckpointError, match=rf'base model folder not found: {tmp_path / "nowhere"}'):
        load_vlm3r(tmp_path / 'nowhere')
    base = copy_base(folders, tmp_path / 'b')
    (base / 'model-00002-of-00002.safetensors').unlink()
    with pytest.raises(CheckpointError, match=rf'missing weights file: {base / "model-00002-of-00002.safetensors"}'):
        load_vlm3r(base, folders[1], config_overrides=OVERRIDES)
    adapter = write_adapter(tmp_path / 'adapter', parts)
    (adapter / 'adapter_config.json').unlink()
    with pytest.raises(CheckpointError, match=rf'missing PEFT adapter config: {adapter / "adapter_config.json"}'):
        load_vlm3r(folders[0], adapter, config_overrides=OVERRIDES)
    adapter = write_adapter(tmp_path / 'adapter2', parts)
    (adapter / 'adapter_model.safetensors').unlink()
    with pytest.raises(CheckpointError, match=rf'no LoRA weights in {adapter}: expected adapter_model'):
        load_vlm3r(folders[0], adapter, config_overrides=OVERRIDES)


def test_bad_index_and_config(folders, tmp_path):
    base = copy_base(folders, tmp_path)
    index = json.loads((base / 'model.safetensors.index.json').read_text())
    index['weight_map']['model.norm.weight'] = '../elsewhere.safetensors'
    (base / 'model.safetensors.index.json').write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"shard '\.\./elsewhere\.safetensors' is not a file name"):
        load_vlm3r(base, folders[1], config_overrides=OVERRIDES)
    index = json.loads((folders[0] / 'model.safetensors.index.json').read_text())
    moved = next(k for k, shard in index['weight_map'].items() if shard.startswith('model-00002'))
    index['weight_map'][moved] = 'model-00001-of-00002.safetensors'  # a stale index
    (base / 'model.safetensors.index.json').write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf'the index lists 1 keys in .*model-00001-of-00002\.safetensors '
                                              rf"that it does not hold, e.g. \['{re.escape(moved)}'\]"):
        load_vlm3r(base, folders[1], config_overrides=OVERRIDES)
    base = copy_base(folders, tmp_path / 'b')
    (base / 'config.json').write_text('{"hidden_size": 64,')
    with pytest.raises(CheckpointError, match='config.json: not valid JSON'):
        load_vlm3r(base, folders[1], config_overrides=OVERRIDES)
    (base / 'config.json').write_text(json.dumps(llava_config(mm_projector_type='linear')))
    with pytest.raises(CheckpointError, match="mm_projector_type='linear' is not supported"):
        load_vlm3r(base, config_overrides=OVERRIDES)  # (an adapter's config.json would override it)
    (base / 'config.json').write_text(json.dumps(llava_config()))
    with pytest.raises(CheckpointError, match="select_feature must be one of"):
        load_vlm3r(base, folders[1], config_overrides={**OVERRIDES, 'select_feature': 'all_tokens'})


def test_vocabulary_shrinks_to_the_tokenizer(parts, folders):
    model, report = load_vlm3r(*folders, tokenizer_size=TOKENIZER, config_overrides=OVERRIDES)
    assert report.vocab_resize == (VOCAB, TOKENIZER)
    assert model.config.llm.vocab_size == model.llm.config.vocab_size == TOKENIZER
    expected = expected_state(parts)
    for key in ('llm.model.embed_tokens.weight', 'llm.lm_head.weight'):
        assert torch.equal(model.state_dict()[key], expected[key][:TOKENIZER])
    logits = model.llm(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, TOKENIZER)
    feats = model.frame_features(torch.zeros(1, 3, 384, 384), torch.zeros(1, 1, CFG.spatial_dim),
                                 torch.zeros(1, 729, CFG.spatial_dim))
    assert len(model.generate([7, IMAGE_TOKEN_INDEX, 8], feats, max_new_tokens=3).token_ids) == 3
    with pytest.raises(ValueError, match='outside the vocabulary of 1000'):
        model.generate([TOKENIZER, IMAGE_TOKEN_INDEX], feats, max_new_tokens=1)
    assert f'vocabulary resized {VOCAB} -> {TOKENIZER}' in report.summary()


def test_vocabulary_grows_with_mean_rows(parts, folders):
    model, report = load_vlm3r(*folders, tokenizer_size=VOCAB + 6, config_overrides=OVERRIDES)
    assert report.vocab_resize == (VOCAB, VOCAB + 6)
    expected = expected_state(parts)
    for key in ('llm.model.embed_tokens.weight', 'llm.lm_head.weight'):
        w = model.state_dict()[key]
        assert w.shape == (VOCAB + 6, CFG.llm.hidden_size)
        assert torch.equal(w[:VOCAB], expected[key])
        torch.testing.assert_close(w[VOCAB:], expected[key].mean(0).expand(6, -1))
    assert model.llm(input_ids=torch.tensor([[VOCAB + 5]])).logits.shape[-1] == VOCAB + 6
    with pytest.raises(CheckpointError, match='tokenizer_size must be a positive integer'):
        load_vlm3r(*folders, tokenizer_size=0, config_overrides=OVERRIDES)


def test_float16_merges_in_float32_then_casts(parts, folders):
    model, report = load_vlm3r(*folders, dtype=torch.float16, config_overrides=OVERRIDES)
    assert report.dtype == torch.float16 and model.dtype == torch.float16
    expected = expected_state(parts, lora=False)
    for module, (a, b) in parts.lora.items():
        key = f'llm.{module}.weight'
        expected[key] = (expected[key].half().float() + SCALE * (b @ a)).half()
    assert_same_weights(model, expected, dtype=torch.float16)
    rotary = model.llm.model.rotary_emb
    assert rotary.inv_freq.dtype == torch.float32  # RoPE frequencies stay float32
    with pytest.raises(CheckpointError, match='dtype must be a floating torch.dtype'):
        load_vlm3r(*folders, dtype=torch.int8, config_overrides=OVERRIDES)


def test_loaded_weights_do_not_depend_on_the_files(folders, tmp_path):
    """The model owns its weights: rewriting a (memory-mapped) safetensors shard changes nothing."""
    base = copy_base(folders, tmp_path)
    model, _ = load_vlm3r(base, folders[1], config_overrides=OVERRIDES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for shard in base.glob('model-*.safetensors'):  # zero every tensor's bytes in place
        with open(shard, 'r+b') as f:
            header = int.from_bytes(f.read(8), 'little')
            f.seek(8 + header)
            size = shard.stat().st_size - 8 - header
            f.write(bytes(size))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------- the user entry points, end to end
# The overrides as a user writes them: JSON, so ``vision`` is a plain object. The tiny base's
# config.json gives the SigLIP width (mm_hidden_size); depth, heads and the MLP size come from here.
CLI_OVERRIDES = {'vision': {'intermediate_size': CFG.vision.intermediate_size,
                            'num_hidden_layers': CFG.vision.num_hidden_layers,
                            'num_attention_heads': CFG.vision.num_attention_heads},
                 'fusion_num_heads': CFG.fusion_num_heads}


@pytest.fixture(scope='module')
def cli_weights(folders, tmp_path_factory):
    """(base with the real Qwen2 tokenizer, adapter, tiny CUT3R .safetensors whose width is CFG.spatial_dim)."""
    from vlm3r_ros.engine.checkpoint import save_cut3r_safetensors
    from vlm3r_ros.models.cut3r.tiny import random_cut3r
    from vlm3r_ros.models.vlm.tokenizer import save_tokenizer_json

    root = tmp_path_factory.mktemp('cli_weights')
    base = root / 'base'
    shutil.copytree(folders[0], base)  # the shared base folder stays as the other tests expect it
    save_tokenizer_json(base)
    cut3r = random_cut3r('tiny_dpt', seed=0)
    assert cut3r.config.dec_embed_dim == CFG.spatial_dim  # CUT3R's decoder width feeds the fusion block
    path = save_cut3r_safetensors(cut3r.config, cut3r.state_dict(), root / 'cut3r.safetensors')
    return base, folders[1], path


@pytest.fixture(scope='module')
def cli_frames(tmp_path_factory):
    from vlm3r_ros.media import sample_scene

    folder = tmp_path_factory.mktemp('cli_frames')
    sample_scene.write_sequence(folder, n_frames=3, size=(128, 96), seed=1)
    return folder


def run_ask(cli_weights, cli_frames, capsys, *extra):
    from vlm3r_ros.tools import ask

    base, adapter, cut3r = cli_weights
    code = ask.main(['--frames', str(cli_frames), '-q', 'How many chairs are in the room?', '--base', str(base),
                     '--adapter', str(adapter), '--cut3r', str(cut3r), '--num-frames', '2', '--max-new-tokens', '2',
                     '--no-progress', *extra])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and 'Traceback' not in err, err
    assert len(lines) == 1 and lines[0].startswith('vlm3r-ask: error: '), err
    return lines[0]


def test_vlm3r_ask_loads_a_non_default_model_with_json_overrides(cli_weights, cli_frames, capsys):
    code, out, err = run_ask(cli_weights, cli_frames, capsys, '--vlm-config-overrides', json.dumps(CLI_OVERRIDES),
                             '--json')
    assert code == 0, err
    doc = json.loads(out)
    assert isinstance(doc['answer'], str) and doc['frames_used'] == 2 and doc['meaningless'] is False
    assert f'{len(TARGETS)} pairs merged' in doc['load_report']


def test_vlm3r_ask_without_the_overrides_says_to_pass_them(cli_weights, cli_frames, capsys):
    line = one_line_error(*run_ask(cli_weights, cli_frames, capsys)[::2])
    # the released model's 18 fusion heads do not divide the tiny SigLIP width the config.json gives
    assert 'fusion_num_heads=18 must divide the SigLIP width 48' in line
    assert '--vlm-config-overrides' in line and 'config.json' in line


def test_vlm3r_ask_with_incomplete_overrides_points_at_them(cli_weights, cli_frames, capsys):
    # fusion heads fixed, SigLIP depth not: the weights do not fit; the key listing is long
    code, _, err = run_ask(cli_weights, cli_frames, capsys, '--vlm-config-overrides', '{"fusion_num_heads": 4}')
    line = one_line_error(code, err)
    assert 'do not match this VLM-3R architecture' in line and '--vlm-config-overrides' in line


@pytest.mark.parametrize('text, message', [
    ('{"fusion_num_heads": 4', '--vlm-config-overrides: config overrides are not valid JSON'),
    ('{"vision": {"layers": 2}}', "--vlm-config-overrides: unknown vision config override(s) ['layers']"),
])
def test_vlm3r_ask_refuses_bad_overrides_before_loading(cli_weights, cli_frames, capsys, text, message):
    line = one_line_error(*run_ask(cli_weights, cli_frames, capsys, '--vlm-config-overrides', text)[::2])
    assert message in line


def test_vlm3r_eval_passes_the_overrides_to_the_loader(cli_weights, tmp_path, capsys):
    from vlm3r_ros.tools import eval as eval_tool

    base, adapter, cut3r = cli_weights
    argv = [str(tmp_path / 'bench.jsonl'), '-o', str(tmp_path / 'r.jsonl'), '--base', str(base), '--adapter',
            str(adapter), '--cut3r', str(cut3r), '--vlm-config-overrides']
    # a bad value is refused before the benchmark is even read
    assert eval_tool.main(argv + ['[4]', '--no-progress']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('vlm3r-eval: error: --vlm-config-overrides: config overrides must '
                                               'be a JSON object'), err
    args = eval_tool.build_parser().parse_args(argv + [json.dumps(CLI_OVERRIDES)])
    eval_tool.check_args(args)
    backend = eval_tool.make_offline_backend(args)
    try:
        config = backend.pipeline.vlm.config
        assert config.fusion_num_heads == 4 and config.vision == CFG.vision
    finally:
        backend.close()


def test_node_loads_with_the_vlm_config_overrides_parameter(cli_weights):
    from vlm3r_ros.ros.node_settings import PARAMETERS, ConfigError, NodeSettings, build_engine

    base, adapter, cut3r = cli_weights
    values = {p.name: p.default for p in PARAMETERS}
    values.update(device='cpu', cut3r_weights=str(cut3r), vlm_base_dir=str(base), vlm_adapter_dir=str(adapter),
                  window_capacity=4, default_max_frames=2)
    with pytest.raises(ConfigError) as info:
        build_engine(NodeSettings(**{k: values[k] for k in NodeSettings.__dataclass_fields__}))
    assert "parameter 'vlm_config_overrides'" in str(info.value) and 'fusion_num_heads=18' in str(info.value)
    values['vlm_config_overrides'] = json.dumps(CLI_OVERRIDES)
    engine = build_engine(NodeSettings(**{k: values[k] for k in NodeSettings.__dataclass_fields__}))
    assert engine.pipeline.vlm.config.vision == CFG.vision


def test_robot_part_loads_without_llm_layers(parts, folders, loaded):
    """llm_layers=False (llm_backend openai): every tensor but the LLM's layers, norm and head, equal to the
    full load; those keys are dropped unread with their reason; the LoRA (LLM layers only) is not merged."""
    from vlm3r_ros.engine.llm_backend import InputEmbeddingsOnly
    from vlm3r_ros.engine.vlm_checkpoint import LLM_LAYERS_SKIPPED

    full, _ = loaded
    robot, report = load_vlm3r(*folders, config_overrides=OVERRIDES, llm_layers=False, tokenizer_size=TOKENIZER)
    assert isinstance(robot.llm, InputEmbeddingsOnly)
    robot_sd, full_sd = robot.state_dict(), full.state_dict()
    llm_layer_keys = {k for k in full_sd if k.startswith(('llm.model.layers.', 'llm.model.norm.', 'llm.lm_head.'))}
    assert len(llm_layer_keys) == 2 * 12 + 1 + 1  # 12 tensors per tiny Qwen2 layer, final norm, head
    assert set(robot_sd) == set(full_sd) - llm_layer_keys
    for key in robot_sd:
        if key != 'llm.model.embed_tokens.weight':
            assert torch.equal(robot_sd[key], full_sd[key]), key
    # the embedding table resized as the full load resizes it (first TOKENIZER rows)
    assert torch.equal(robot_sd['llm.model.embed_tokens.weight'], full_sd['llm.model.embed_tokens.weight'][:TOKENIZER])
    assert report.lora_pairs_merged == 0 and report.vocab_resize == (VOCAB, TOKENIZER)
    skipped = sorted(d.key for d in report.dropped if d.reason == LLM_LAYERS_SKIPPED)
    assert skipped == sorted(official_name(k) for k in llm_layer_keys)
    assert sum(p.numel() for p in robot.parameters()) < sum(p.numel() for p in full.parameters())
