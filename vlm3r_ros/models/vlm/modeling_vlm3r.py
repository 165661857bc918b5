"""VLM-3R reasoning model: SigLIP tower, 3-D fusion, projector, pooling and a Qwen2 LLM.

Two halves, so a streaming engine can do the first at ingest time:

* per frame (:meth:`Vlm3rModel.frame_features`): SigLIP(384x384 frame) -> fuse with that
  frame's CUT3R tokens -> mm_projector -> 2x2 pool: (g*g, H) tokens per frame;
* per question (:meth:`Vlm3rModel.generate`): newline layout of the chosen frames, splice
  into the prompt embeddings at the ``<image>`` token, greedy decoding with a KV cache.

Sub-modules are named after the official checkpoint (``fusion_block.*``, ``mm_projector.*``,
``image_newline``); the official prefixes (``model.``, ``model.vision_tower.vision_tower``)
are mapped in one table in :mod:`vlm3r_ros.engine.vlm_checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

from .config import Vlm3rConfig
from .fusion import Vlm3rFusionBlock, select_spatial_tokens
from .projector import add_newlines, build_projector, pool_2d

IMAGE_TOKEN_INDEX = -200


class Vlm3rInputError(ValueError):
    """Inputs the model cannot take (shapes, token counts, context length)."""


@dataclass
class Vlm3rGeneration:
    token_ids: list[int]  # generated ids, without the prompt, stop token excluded
    prompt_tokens: int  # text + visual tokens fed to the LLM
    visual_tokens: int
    stopped: bool  # True when a stop token ended generation (else max_new_tokens)


def splice_embeddings(input_ids, visual: torch.Tensor, embed: nn.Embedding) -> torch.Tensor:
    """Embed the prompt ids and insert ``visual`` (T, H) in place of the one -200 token -> (L-1+T, H)."""
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=embed.weight.device).flatten()
    where = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten()
    if len(where) != 1:
        raise Vlm3rInputError(f"the prompt must hold exactly one <image> token, found {len(where)}")
    text = torch.cat([ids[:where[0]], ids[where[0] + 1:]])
    if bool((text < 0).any()) or bool((text >= embed.num_embeddings).any()):
        raise Vlm3rInputError(f"prompt token ids outside the vocabulary of {embed.num_embeddings}")
    i = int(where[0])
    before, after = embed(ids[:i]), embed(ids[i + 1:])
    return torch.cat([before, visual.to(device=before.device, dtype=before.dtype), after], dim=0)


def siglip_config(cfg: Vlm3rConfig) -> SiglipVisionConfig:
    v = cfg.vision
    return SiglipVisionConfig(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                              num_hidden_layers=v.num_hidden_layers, num_attention_heads=v.num_attention_heads,
                              image_size=v.image_size, patch_size=v.patch_size, layer_norm_eps=v.layer_norm_eps,
                              hidden_act=v.hidden_act, vision_use_head=False)


def qwen2_config(cfg: Vlm3rConfig) -> Qwen2Config:
    q = cfg.llm
    return Qwen2Config(hidden_size=q.hidden_size, intermediate_size=q.intermediate_size,
                       num_hidden_layers=q.num_hidden_layers, num_attention_heads=q.num_attention_heads,
                       num_key_value_heads=q.num_key_value_heads, vocab_size=q.vocab_size,
                       max_position_embeddings=q.max_position_embeddings, rope_theta=q.rope_theta,
                       rms_norm_eps=q.rms_norm_eps, tie_word_embeddings=False, use_cache=True)


class Vlm3rModel(nn.Module):
    def __init__(self, config: Vlm3rConfig):
        super().__init__()
        self.config = config.validate()
        h = config.llm.hidden_size
        self.vision_tower = SiglipVisionModel(siglip_config(config))
        self.fusion_block = Vlm3rFusionBlock(config.vision.hidden_size, config.spatial_dim, config.fusion_num_heads)
        self.mm_projector = build_projector(config.vision.hidden_size, h)
        self.image_newline = nn.Parameter(torch.zeros(h))
        self.llm = Qwen2ForCausalLM(qwen2_config(config))

    @property
    def device(self) -> torch.device:
        return self.image_newline.device

    def to_dtype(self, dtype: torch.dtype) -> "Vlm3rModel":
        """Cast the parameters only: buffers such as Qwen2's RoPE ``inv_freq`` stay float32
        (``.to(float16)`` would round the smallest frequencies below float16's normal range)."""
        for param in self.parameters():
            param.data = param.data.to(dtype)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.image_newline.dtype

    # ------------------------------------------------------------- per frame
    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(F, 3, 384, 384) in [-1, 1] -> (F, 729, Dv): output of the 26th layer, before post_layernorm."""
        v = self.config.vision
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, v.image_size, v.image_size):
            raise Vlm3rInputError(f"pixels must be (F, 3, {v.image_size}, {v.image_size}), got {tuple(pixels.shape)}")
        x = self.vision_tower.embeddings(pixels.to(device=self.device, dtype=self.dtype))
        return self.vision_tower.encoder(inputs_embeds=x).last_hidden_state

    def fuse(self, vision: torch.Tensor, camera_tokens: torch.Tensor, patch_tokens: torch.Tensor) -> torch.Tensor:
        """SigLIP (F, 729, Dv) + CUT3R camera (F, 1, Ds) and patch (F, N, Ds) tokens -> (F, 729, Dv)."""
        kv = select_spatial_tokens(camera_tokens.to(self.device), patch_tokens.to(self.device),
                                   self.config.select_feature)
        fused, _ = self.fusion_block(vision, kv)
        return fused

    def pool(self, projected: torch.Tensor) -> torch.Tensor:
        return pool_2d(projected, self.config.vision.grid, self.config.pool_mode, self.config.pool_stride)

    @torch.inference_mode()
    def frame_features(self, pixels: torch.Tensor, camera_tokens: torch.Tensor,
                       patch_tokens: torch.Tensor) -> torch.Tensor:
        """The per-frame half: (F, 3, 384, 384) + CUT3R tokens -> pooled (F, g*g, H) LLM-space tokens."""
        if camera_tokens.ndim != 3 or patch_tokens.ndim != 3 or camera_tokens.shape[0] != pixels.shape[0] \
                or patch_tokens.shape[0] != pixels.shape[0]:
            raise Vlm3rInputError(f"CUT3R tokens must be (F, 1, D) and (F, N, D) for F={pixels.shape[0]} frames, "
                                  f"got {tuple(camera_tokens.shape)} and {tuple(patch_tokens.shape)}")
        for name, t in (("camera", camera_tokens), ("patch", patch_tokens)):
            if t.shape[-1] != self.config.spatial_dim:
                raise Vlm3rInputError(f"CUT3R {name} tokens are {t.shape[-1]} wide; this model expects "
                                      f"{self.config.spatial_dim} (is the CUT3R checkpoint the right one?)")
        fused = self.fuse(self.vision_features(pixels), camera_tokens, patch_tokens)
        return self.pool(self.mm_projector(fused))

    # ----------------------------------------------------------- per question
    def visual_sequence(self, pooled_frames: torch.Tensor) -> torch.Tensor:
        """(F, g*g, H) pooled frames in time order -> (T, H) with the newline layout."""
        return add_newlines(pooled_frames.to(self.device, self.dtype), self.image_newline, self.config.newline_mode)

    def splice(self, input_ids: torch.Tensor | list[int], visual: torch.Tensor) -> torch.Tensor:
        return splice_embeddings(input_ids, visual, self.llm.get_input_embeddings())

    @torch.inference_mode()
    def prompt_embeds(self, input_ids, pooled_frames: torch.Tensor,
                      max_new_tokens: int = 16) -> tuple[torch.Tensor, int]:
        """The LLM's input: (L, H) prompt embeddings with the visual tokens spliced in, and the
        visual token count. Refuses a prompt that cannot fit ``max_new_tokens`` in the context.
        Everything an LLM server needs to answer (llm_backend ``openai``) is in these embeddings."""
        visual = self.visual_sequence(pooled_frames)
        embeds = self.splice(input_ids, visual)
        total = embeds.shape[0] + max_new_tokens - 1  # the last generated token is never fed back
        if total > self.config.max_context_tokens:
            raise Vlm3rInputError(
                f"{embeds.shape[0]} prompt tokens ({visual.shape[0]} visual) + {max_new_tokens} new tokens exceed "
                f"the {self.config.max_context_tokens}-token context; use fewer frames")
        return embeds, visual.shape[0]

    @torch.inference_mode()
    def generate(self, input_ids, pooled_frames: torch.Tensor, *, max_new_tokens: int = 16,
                 stop_token_ids: tuple[int, ...] = ()) -> Vlm3rGeneration:
        """Greedy decoding (the official eval setting) from a prompt with one ``<image>`` token."""
        embeds, visual_tokens = self.prompt_embeds(input_ids, pooled_frames, max_new_tokens)
        out = self.llm(inputs_embeds=embeds[None], use_cache=True, logits_to_keep=1)
        cache, generated, stopped = out.cache, [], False
        next_id = int(out.logits[0, -1].argmax())
        for _ in range(max_new_tokens):
            if next_id in stop_token_ids:
                stopped = True
                break
            generated.append(next_id)
            if len(generated) == max_new_tokens:
                break
            out = self.llm(input_ids=torch.tensor([[next_id]], device=self.device), cache=cache,
                           use_cache=True, logits_to_keep=1)
            cache = out.cache
            next_id = int(out.logits[0, -1].argmax())
        return Vlm3rGeneration(generated, embeds.shape[0], visual_tokens, stopped)
