"""vlm3r-export-llm: the LLM half as a standard Hugging Face Qwen2 checkpoint.

transformers' own loader reads the export back (AutoModelForCausalLM / AutoTokenizer /
GenerationConfig), and its generate(inputs_embeds=...) gives the token ids our in-process
LLM gives for the same prompt embeddings: what a serving engine loads is what the local
backend runs. The real vLLM server is in test/integration/test_llm_serving.py.
"""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from vlm3r_ros.engine.llm_backend import strip_llm_layers
from vlm3r_ros.engine.llm_export import EXPORT_INFO, export_llm
from vlm3r_ros.models.vlm.prompting import IM_END_ID, build_prompt, tokenize_with_image
from vlm3r_ros.models.vlm.tiny import random_vlm3r
from vlm3r_ros.models.vlm.tokenizer import build_qwen2_tokenizer
from vlm3r_ros.tools.export_llm import main

pytestmark = pytest.mark.usefixtures('torch_single_thread')


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp('export') / 'llm'
    assert main(['--tiny-random', '--seed', '3', '--dtype', 'float32', '--output', str(out)]) == 0
    return out


def test_export_is_a_standard_qwen2_checkpoint(exported):
    config = json.loads((exported / 'config.json').read_text())
    assert config['architectures'] == ['Qwen2ForCausalLM'] and config['model_type'] == 'qwen2'
    assert (config['vocab_size'], config['hidden_size'], config['eos_token_id']) == (151646, 64, IM_END_ID)
    assert (exported / 'model.safetensors').is_file()
    generation = GenerationConfig.from_pretrained(exported)
    assert generation.do_sample is False and generation.max_new_tokens == 16 and generation.eos_token_id == [IM_END_ID]
    info = json.loads((exported / EXPORT_INFO).read_text())
    assert info['payload_bytes_per_token'] == 64 * 4 and info['tokens_per_frame'] == 210
    # the tokenizer, through transformers, encodes as our offline-built Qwen2 tokenizer
    ours = build_qwen2_tokenizer()
    theirs = AutoTokenizer.from_pretrained(exported)
    text = build_prompt('How many chairs are in the room?', None).replace('<image>\n', '')
    assert theirs(text)['input_ids'] == ours.encode(text).ids
    assert theirs.eos_token == '<|im_end|>' and len(theirs) == 151646


def test_transformers_generates_our_token_ids_from_the_export(exported):
    vlm = random_vlm3r(seed=3)
    hf = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    for name, tensor in vlm.llm.state_dict().items():
        assert torch.equal(hf.state_dict()[name], tensor), name  # key for key, value for value
    ids = tokenize_with_image(build_prompt('How far is the door?', None), build_qwen2_tokenizer())
    pooled = torch.randn(3, 196, 64, generator=torch.Generator().manual_seed(0))
    ours = vlm.generate(ids, pooled, max_new_tokens=12, stop_token_ids=(IM_END_ID,)).token_ids
    embeds, _ = strip_llm_layers(random_vlm3r(seed=3)).prompt_embeds(ids, pooled, 12)
    with torch.no_grad():
        out = hf.generate(inputs_embeds=embeds[None], max_new_tokens=12, do_sample=False, eos_token_id=IM_END_ID,
                          pad_token_id=151643)
    theirs = out[0].tolist()  # with inputs_embeds only, generate returns the new tokens alone
    if theirs[-1] == IM_END_ID:
        theirs = theirs[:-1]  # ours never includes its stop token
    assert ours and theirs == ours


def test_export_refuses_what_it_cannot_write(tmp_path, capsys):
    robot = strip_llm_layers(random_vlm3r(seed=0))
    with pytest.raises(ValueError, match='without its LLM layers'):
        export_llm(robot, build_qwen2_tokenizer(), tmp_path / 'x')
    assert main(['--output', str(tmp_path / 'y')]) == 2
    assert 'either --base' in capsys.readouterr().err
    assert main(['--base', str(tmp_path), '--output', str(tmp_path / 'y')]) == 2
    assert '--adapter is required' in capsys.readouterr().err
