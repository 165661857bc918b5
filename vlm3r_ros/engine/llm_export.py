"""The LLM half of VLM-3R as a standard Hugging Face Qwen2 checkpoint, for a serving engine (vLLM).

:func:`export_llm` writes, from a loaded :class:`Vlm3rModel` (the LLaVA-Video-Qwen2 base with the
VLM-3R LoRA merged and the vocabulary resized to the tokenizer, exactly as
:func:`~vlm3r_ros.engine.vlm_checkpoint.load_vlm3r` builds it for the local backend):

* ``config.json`` + ``model.safetensors`` (sharded when large): transformers'
  ``Qwen2ForCausalLM.save_pretrained`` of the model's own LLM, so the weights are the ones
  the local backend runs, key for key (``model.embed_tokens``, ``model.layers.N``, ``lm_head``);
* ``tokenizer.json`` + ``tokenizer_config.json``: the model's tokenizer through transformers'
  ``PreTrainedTokenizerFast`` (eos ``<|im_end|>``, pad ``<|endoftext|>``);
* ``generation_config.json``: greedy, 16 new tokens, stop at ``<|im_end|>`` (the official eval);
* ``vlm3r_export.json``: where it came from and the per-question payload size.

The served model gets no visual tokens of its own: every question arrives as prompt
embeddings (vLLM ``--enable-prompt-embeds``), so the vision side is not exported.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedTokenizerFast

from vlm3r_ros.engine.llm_backend import InputEmbeddingsOnly
from vlm3r_ros.models.vlm.modeling_vlm3r import Vlm3rModel
from vlm3r_ros.models.vlm.prompting import ENDOFTEXT, ENDOFTEXT_ID, EVAL_MAX_NEW_TOKENS, IM_END, IM_END_ID

EXPORT_INFO = "vlm3r_export.json"


def export_llm(vlm: Vlm3rModel, tokenizer, out_dir: str | Path, *, source: str = "",
               max_shard_size: str = "5GB") -> Path:
    """Write ``vlm``'s LLM (in its current dtype) + tokenizer + generation config to ``out_dir``."""
    if isinstance(vlm.llm, InputEmbeddingsOnly):
        raise ValueError("this model was loaded without its LLM layers (llm_layers=False): load the whole model "
                         "to export it")
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    rows = vlm.llm.get_input_embeddings().num_embeddings
    if rows != vocab:
        raise ValueError(f"the LLM has {rows} embedding rows but the tokenizer {vocab} tokens: load it with "
                         f"tokenizer_size={vocab} (as the official loader resizes it) before exporting")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    llm = vlm.llm
    llm.config.bos_token_id = ENDOFTEXT_ID  # as Qwen2's released configs
    llm.config.eos_token_id = IM_END_ID
    llm.config.pad_token_id = ENDOFTEXT_ID
    llm.config.architectures = ["Qwen2ForCausalLM"]
    llm.save_pretrained(out, safe_serialization=True, max_shard_size=max_shard_size)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=IM_END, pad_token=ENDOFTEXT,
                                   model_max_length=vlm.config.max_context_tokens)
    fast.save_pretrained(out)
    GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=EVAL_MAX_NEW_TOKENS, bos_token_id=ENDOFTEXT_ID,
                     eos_token_id=[IM_END_ID], pad_token_id=ENDOFTEXT_ID).save_pretrained(out)
    h = vlm.config.llm.hidden_size
    info = {
        "format": "Hugging Face Qwen2ForCausalLM: the LLM half of VLM-3R (LoRA merged, vocabulary resized to "
                  "the tokenizer); questions arrive as prompt embeddings",
        "source": source,
        "dtype": str(vlm.dtype).replace("torch.", ""),
        "hidden_size": h,
        "vocab_size": rows,
        "tokens_per_frame": vlm.config.tokens_per_frame,
        "max_context_tokens": vlm.config.max_context_tokens,
        "payload_bytes_per_token": prompt_bytes_per_token(h, vlm.dtype),
    }
    (out / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return out


def prompt_bytes_per_token(hidden: int, dtype: torch.dtype) -> int:
    return hidden * torch.empty((), dtype=dtype).element_size()
