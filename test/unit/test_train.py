"""vlm3r-train on tiny random models (CPU): what is trained, what is saved, and that the
Hugging Face Trainer runs (one process, two gloo processes, resumed) agree.

The data are 16 QA rows over 2 tiny rooms (train_fixtures.py). Runs that are compared step by
step use no dropout and the file order (``sequential``), so any difference is the code's.
"""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlm3r_ros.engine.vlm3r_pipeline import Vlm3rPipeline
from vlm3r_ros.engine.vlm_checkpoint import load_vlm3r
from vlm3r_ros.models.vlm.prompting import build_prompt, tokenize_with_image
from vlm3r_ros.train.conversation import IGNORE_INDEX, ConversationError, encode_conversation, normalize_turns
from vlm3r_ros.train.data import TrainDataError, Vlm3rTrainDataset, collate, load_mix, parse_source
from vlm3r_ros.train.export import NON_LORA_FILE, write_base_folder
from vlm3r_ros.train.feature_cache import FeatureCache, StaleCacheError
from vlm3r_ros.train.model import encode_clip
from vlm3r_ros.train.run import TrainOptions, build_trainer, train

sys.path.insert(0, str(Path(__file__).parent))
import train_fixtures as tf  # noqa: E402

pytestmark = pytest.mark.usefixtures('torch_single_thread')
NF = 2  # frames per clip in these tests
# Logit scale: the tiny model's final norm is scaled up so that its logits span a range like a
# trained LLM's (about +-30) instead of +-5; otherwise a frozen random lm_head makes every token
# nearly equally likely and overfitting takes thousands of steps.
NORM_SCALE = 8.0


def tiny_base(seed=0):
    base = tf.tiny_base(seed)
    with torch.no_grad():
        base.vlm.llm.model.norm.weight.mul_(NORM_SCALE)
    return base


def exact_opts(out, data, **kw):
    """Options for runs compared step by step: no dropout, file order, small LoRA, fast."""
    base = dict(output_dir=str(out), data=[str(data)], num_frames=NF, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                fusion_dropout=0.0, learning_rate=1e-3, lr_scheduler_type='constant', warmup_ratio=0.0,
                grad_accum=1, max_steps=3, save_steps=1000, gradient_checkpointing=False, sequential=True,
                progress=False)
    base.update(kw)
    return TrainOptions(**base)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return tf.write_dataset(tmp_path_factory.mktemp('rooms'))


@pytest.fixture(scope='module')
def cache(data, tmp_path_factory):
    root = tmp_path_factory.mktemp('cache')
    base = tiny_base()
    FeatureCache(root).build(load_mix([parse_source(str(data))]), base.vlm, base.cut3r, NF)
    return root


def adapter_tensors(folder):
    sd = dict(load_file(str(Path(folder) / 'adapter_model.safetensors')))
    sd.update(torch.load(Path(folder) / NON_LORA_FILE, weights_only=True))
    return sd


# ------------------------------------------------------------------ sequences
def test_prompt_is_the_inference_prompt_and_only_answers_are_labelled():
    tok = tf.tokenizer()
    question = 'These are frames of a video.\nHow many chairs?\nPlease answer the question using a single word or phrase.'
    enc = encode_conversation(normalize_turns([{'from': 'human', 'value': question}, {'from': 'gpt', 'value': '3'}]),
                              tok)
    prompt = tokenize_with_image(build_prompt('How many chairs?'), tok)
    assert enc.input_ids[:len(prompt)] == prompt
    labelled = [t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX]
    assert labelled == tok.encode('3', add_special_tokens=False).ids + [tok.token_to_id('<|im_end|>')]
    assert all(lab == IGNORE_INDEX for lab in enc.labels[:len(prompt)])


def test_two_turn_conversation_labels_both_answers():
    tok = tf.tokenizer()
    turns = normalize_turns([{'from': 'human', 'value': '<image>\nQ1'}, {'from': 'gpt', 'value': 'yes'},
                             {'from': 'human', 'value': 'Q2'}, {'from': 'gpt', 'value': 'no'}])
    enc = encode_conversation(turns, tok)
    text = tok.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX],
                      skip_special_tokens=False)
    assert text == 'yes<|im_end|>no<|im_end|>'
    assert enc.input_ids.count(-200) == 1


@pytest.mark.parametrize('turns, message', [
    ([{'from': 'gpt', 'value': 'x'}, {'from': 'human', 'value': 'y'}], "turn 0 is 'assistant'"),
    ([{'from': 'human', 'value': 'q'}], 'user/assistant pairs'),
    ([{'from': 'human', 'value': '<image><image>q'}, {'from': 'gpt', 'value': 'a'}], 'one <image> marker'),
    ([{'from': 'robot', 'value': 'q'}, {'from': 'gpt', 'value': 'a'}], "role 'robot'"),
])
def test_bad_conversations_are_refused(turns, message):
    with pytest.raises(ConversationError, match=message):
        normalize_turns(turns)


def test_llava_json_and_weighted_mix(data, tmp_path):
    llava = [{'id': f'v{i}', 'video': 'room_a', 'conversations': [
        {'from': 'human', 'value': '<image>\nWhat room is this?'}, {'from': 'gpt', 'value': f'room {i}'}]}
        for i in range(4)]
    path = tmp_path / 'llava.json'
    path.write_text(json.dumps(llava))
    samples = load_mix([parse_source(f'{path}:0.5', data.parent), parse_source(f'{data}:2')], seed=1)
    assert len(samples) == 2 + 32
    assert sum(s.key.startswith('llava:') for s in samples) == 2
    assert samples[2].answer == 'A' and samples[3].answer == str((1 * 7) % 9 + 1)  # qa rows: letter / number
    with pytest.raises(TrainDataError, match='weight must be a positive'):
        parse_source(f'{data}:0')
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps([{'id': 1, 'conversations': llava[0]['conversations']}]))
    with pytest.raises(TrainDataError, match="field 'video'"):
        load_mix([parse_source(str(bad))])


# ------------------------------------------------------------------ what is trained
def plain_state(vlm):
    """The state dict of a LoRA-wrapped Vlm3rModel under the plain model's names, LoRA left out."""
    return {k.replace('base_model.model.', '', 1).replace('.base_layer.', '.'): v
            for k, v in vlm.state_dict().items() if 'lora_' not in k}


def test_only_lora_fusion_and_projector_train_and_frozen_parts_stay_bitwise(data, cache, tmp_path):
    from transformers import TrainerCallback

    base = tiny_base()
    before = {k: v.clone() for k, v in base.vlm.state_dict().items()}
    with_grad = []

    class GradProbe(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            with_grad.append(sorted(n for n, p in model.named_parameters() if p.grad is not None))

    trainer = build_trainer(exact_opts(tmp_path, data, max_steps=2, lora_dropout=0.05, fusion_dropout=0.1,
                                       feature_cache=str(cache)), base)
    trainer.add_callback(GradProbe())
    trainer.train()
    model = trainer.model
    trainable = model.trainable_names()
    lora = [n for n in trainable if 'lora_' in n]
    other = [n for n in trainable if 'lora_' not in n]
    assert len(lora) == 2 * 7 * 2  # A and B for 7 Linears in each of the 2 LLM layers
    assert sorted(n.split('.')[1] for n in other) == ['fusion_block'] * 18 + ['mm_projector'] * 4
    assert with_grad and all(names == sorted(trainable) for names in with_grad)
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group['params']}
    assert in_optimizer == {id(p) for n, p in model.named_parameters() if p.requires_grad}
    after = plain_state(model.vlm)
    assert set(after) == set(before)
    frozen = [k for k in before if not k.startswith(('fusion_block.', 'mm_projector.'))]
    assert 'image_newline' in frozen and 'llm.lm_head.weight' in frozen
    assert [k for k in frozen if not torch.equal(before[k], after[k])] == []
    assert not torch.equal(before['fusion_block.out_proj.weight'], after['fusion_block.out_proj.weight'])
    assert model.encoder_calls == 0 and model.cut3r is None  # cached features: no SigLIP / CUT3R run
