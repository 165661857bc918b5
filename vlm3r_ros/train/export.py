"""Writing what training produces in the official layouts.

* The adapter folder, as the official ``train.py`` saves it at the end of a LoRA run:
  ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT's ``save_pretrained``; keys
  ``base_model.model.model.layers.N.<linear>.lora_{A,B}.weight``), ``non_lora_trainables.bin``
  (``torch.save`` of every trained non-LoRA parameter under PEFT's prefix:
  ``base_model.model.model.fusion_block.*`` and ``base_model.model.model.mm_projector.*``),
  a LLaVA ``config.json``, and ``vlm3r_config_overrides.json`` (the SigLIP and fusion sizes, which a
  LLaVA config.json does not carry: pass it as ``--vlm-config-overrides`` for a model that is not
  the released size). :func:`vlm3r_ros.engine.vlm_checkpoint.load_vlm3r` and the
  official ``load_pretrained_model`` read this folder.
* A base folder (``config.json`` + ``model.safetensors`` in the LLaVA-Qwen key layout) for a
  model that has none on disk (``--tiny-random``), so that the adapter can be loaded against it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save_file

from vlm3r_ros.engine.vlm_checkpoint import ours_to_official
from vlm3r_ros.models.vlm.config import Vlm3rConfig
from vlm3r_ros.models.vlm.modeling_vlm3r import Vlm3rModel

PEFT_PREFIX = "base_model.model."
NON_LORA_FILE = "non_lora_trainables.bin"


def llava_config(config: Vlm3rConfig, **extra) -> dict:
    """The LlavaQwenConfig fields our loader reads (Qwen2 sizes + ``mm_*``)."""
    q = config.llm
    doc = {
        "architectures": ["LlavaQwenForCausalLM"], "model_type": "llava",
        "hidden_size": q.hidden_size, "intermediate_size": q.intermediate_size,
        "num_hidden_layers": q.num_hidden_layers, "num_attention_heads": q.num_attention_heads,
        "num_key_value_heads": q.num_key_value_heads, "vocab_size": q.vocab_size,
        "max_position_embeddings": q.max_position_embeddings, "rope_theta": q.rope_theta,
        "rms_norm_eps": q.rms_norm_eps, "hidden_act": "silu", "tie_word_embeddings": False,
        "mm_hidden_size": config.vision.hidden_size, "mm_projector_type": "mlp2x_gelu",
        "mm_patch_merge_type": "spatial_unpad", "mm_vision_select_layer": -2,
        "mm_spatial_pool_mode": config.pool_mode, "mm_spatial_pool_stride": config.pool_stride,
        "mm_newline_position": config.newline_mode, "spatial_tower_select_feature": config.select_feature,
        "spatial_feature_dim": config.spatial_dim, "fusion_block": "cross_attention",
        "tokenizer_model_max_length": config.max_context_tokens,
    }
    doc.update(extra)
    return doc


OVERRIDES_FILE = "vlm3r_config_overrides.json"


def config_overrides_for(config: Vlm3rConfig) -> dict:
    """The sizes a LLaVA config.json does not carry (SigLIP, fusion heads), as the JSON object that
    ``load_vlm3r(config_overrides=...)`` / ``--vlm-config-overrides`` take. Needed to load a model of
    other sizes than the released one (a tiny one, say)."""
    from dataclasses import asdict

    return {"vision": asdict(config.vision), "fusion_num_heads": config.fusion_num_heads}


def write_base_folder(vlm: Vlm3rModel, folder: str | Path) -> Path:
    """``vlm`` (no LoRA) as a LLaVA-Video-Qwen2 base folder in the official key names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {ours_to_official(k): v.detach().to("cpu").contiguous() for k, v in vlm.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(llava_config(vlm.config), indent=1))
    (folder / OVERRIDES_FILE).write_text(json.dumps(config_overrides_for(vlm.config)))
    return folder


def non_lora_state(model) -> dict[str, torch.Tensor]:
    """Every trained parameter without ``lora_`` in its name, under the official names."""
    out = {}
    for name, param in model.vlm.named_parameters():
        if param.requires_grad and "lora_" not in name:
            out[PEFT_PREFIX + ours_to_official(name)] = param.detach().to("cpu").clone()
    return out


def save_adapter(model, folder: str | Path, *, base_name: str = "", config: Vlm3rConfig | None = None,
                 state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
    """The official adapter folder of a :class:`~vlm3r_ros.train.model.TrainableVlm3r`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    peft_model = model.vlm.llm
    peft_model.peft_config["default"].base_model_name_or_path = base_name or None
    lora_state = None
    if state_dict is not None:  # gathered by the trainer (FSDP / ZeRO-3): take the LoRA part from it
        from peft import get_peft_model_state_dict

        prefix = "vlm.llm."
        lora_state = get_peft_model_state_dict(
            peft_model, state_dict={k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)})
    # save_embedding_layers=False: PEFT would otherwise look the base up (on the Hub) to see if the vocabulary changed
    peft_model.save_pretrained(str(folder), state_dict=lora_state, safe_serialization=True,
                               save_embedding_layers=False)
    torch.save(non_lora_state(model), folder / NON_LORA_FILE)
    config = config or model.vlm.config
    (folder / "config.json").write_text(json.dumps(llava_config(config), indent=1))
    (folder / OVERRIDES_FILE).write_text(json.dumps(config_overrides_for(config)))
    return folder


@torch.no_grad()
def load_trainables(model, folder: str | Path) -> None:
    """Set the trained parameters of ``model`` from an adapter folder it saved (resume)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from vlm3r_ros.engine.vlm_checkpoint import official_to_ours

    folder = Path(folder)
    lora = load_file(str(folder / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model.vlm.llm, lora)
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"{folder}: LoRA keys this model does not have: {result.unexpected_keys[:5]}")
    raw = torch.load(folder / NON_LORA_FILE, map_location="cpu", weights_only=True)
    params = dict(model.vlm.named_parameters())
    for key, value in raw.items():
        ours = official_to_ours(key[len(PEFT_PREFIX):])
        if ours not in params:
            raise RuntimeError(f"{folder / NON_LORA_FILE}: {key} is not a parameter of this model")
        params[ours].copy_(value)
