"""VLM-3R reasoning model: SigLIP tower, 3-D fusion, projector, pooling and a Qwen2 LLM.

Two halves, so a streaming engine can do the first at ingest time:

* per frame (:meth:`Vlm3rModel.frame_features`): SigLIP(384x384 frame) -> fuse with that
  frame's CUT3R tokens -> mm_projector -> 2x2 pool: (g*g, H) tokens per frame;
* per question (:meth:`Vlm3rModel.generate`): newline layout of the chosen frames, splice
  into the prompt embeddings at the ``<image>`` token, greedy decoding with a KV cache;
  :meth:`Vlm3rModel.prefill_prefix` computes the cache of everything before the question
  once (:class:`VisualPrefix`), so further questions about the same frames reuse it.

Sub-modules are named after the official checkpoint (``fusion_block.*``, ``mm_projector.*``,
``image_newline``); the official prefixes (``model.``, ``model.vision_tower.vision_tower``)
are mapped in one table in :mod:`vlm3r_ros.engine.vlm_checkpoint`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers import (DynamicCache, GenerationConfig, Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig,
                          SiglipVisionModel, StoppingCriteria, StoppingCriteriaList)
from transformers.generation.streamers import BaseStreamer

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
    stopped: bool  # True when a stop token ended generation (else max_new_tokens or a stop event)
    prefilled_tokens: int = 0  # prompt tokens run through the LLM for this question (the rest was cached)


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
    def prefill_prefix(self, head_ids, pooled_frames: torch.Tensor, base: "VisualPrefix | None" = None
                       ) -> "VisualPrefix":
        """The LLM's KV cache of ``[head_ids, visual tokens of pooled_frames]``: everything of the prompt
        before the question, so that questions about the same frames prefill only their own text.

        ``base``, a prefix of the same head over the first ``base.frames`` of these frames, is
        extended: its cache is cropped to the tokens of those frames (the newline layout's
        frame-local tokens) and only the rest is run. ``base`` itself is left as it was.
        """
        head = [int(i) for i in head_ids]
        visual = self.visual_sequence(pooled_frames)
        embeds = torch.cat([self.llm.get_input_embeddings()(torch.tensor(head, dtype=torch.long,
                                                                         device=self.device)), visual])
        if base is not None:
            keep = len(head) + base.frames * self.config.tokens_per_frame
            if tuple(head) != base.head_ids or base.frames > pooled_frames.shape[0] or keep > base.length:
                raise Vlm3rInputError("the base prefix was not built from the same prompt head and leading frames")
            cache = fork_cache(base.cache)
            cache.crop(keep - base.length)  # drop the tokens that follow the shared frames (0: none)
        else:
            keep, cache = 0, DynamicCache(config=self.llm.config)
        if keep < embeds.shape[0]:
            self.llm(inputs_embeds=embeds[None, keep:], cache=cache, use_cache=True, logits_to_keep=1)
        return VisualPrefix(cache, tuple(head), int(pooled_frames.shape[0]), int(embeds.shape[0]),
                            computed_tokens=int(embeds.shape[0] - keep))

    @torch.inference_mode()
    def generate(self, input_ids, pooled_frames: torch.Tensor, *, max_new_tokens: int = 16,
                 stop_token_ids: tuple[int, ...] = (), prefix: "VisualPrefix | None" = None,
                 streamer: BaseStreamer | None = None, stop_event=None) -> Vlm3rGeneration:
        """Greedy decoding (the official eval setting) from a prompt with one ``<image>`` token,
        with transformers' ``generate`` over a ``DynamicCache``.

        ``prefix`` (:meth:`prefill_prefix` of the text before ``<image>`` and these frames) is
        reused: only the question's tokens are prefilled. ``streamer`` gets the new token ids
        as they come (transformers' streamer protocol; the first ``put`` is the empty prompt).
        ``stop_event`` (a ``threading.Event``) stops decoding after the step in progress.
        """
        ids = torch.as_tensor(input_ids, dtype=torch.long).flatten()
        embeds, visual_tokens = self.prompt_embeds(ids, pooled_frames, max_new_tokens)
        if prefix is not None:
            head = tuple(ids[:int((ids == IMAGE_TOKEN_INDEX).nonzero()[0])].tolist())
            if head != prefix.head_ids or prefix.length != len(head) + visual_tokens \
                    or prefix.frames != pooled_frames.shape[0]:
                raise Vlm3rInputError("the cached prefix was built for another prompt head or other frames")
            cache = fork_cache(prefix.cache)
        else:
            cache = DynamicCache(config=self.llm.config)
        prefilled = embeds.shape[0] - cache.get_seq_length()
        stops = [int(i) for i in stop_token_ids]
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                                  eos_token_id=stops or None, pad_token_id=stops[0] if stops else 0)
        criteria = StoppingCriteriaList([_EventStop(stop_event)]) if stop_event is not None else None
        out = self.llm.generate(inputs_embeds=embeds[None], attention_mask=torch.ones(
            1, embeds.shape[0], dtype=torch.long, device=self.device), cache=cache, generation_config=config,
            stopping_criteria=criteria, streamer=streamer)
        generated = [int(t) for t in out[0].tolist()]
        stopped = bool(generated) and generated[-1] in stops
        if stopped:
            generated = generated[:-1]
        return Vlm3rGeneration(generated, embeds.shape[0], visual_tokens, stopped, prefilled_tokens=prefilled)


@dataclass
class VisualPrefix:
    """The LLM's KV state of a prompt's head (system + user header) and the visual tokens of a set of
    frames: what every question about those frames shares. Read-only once built (:func:`fork_cache`)."""

    cache: DynamicCache
    head_ids: tuple[int, ...]
    frames: int  # frames whose tokens it holds
    length: int  # tokens in the cache
    computed_tokens: int = 0  # tokens prefilled to build it (the rest came from a base prefix)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.cache.layers
                   for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None)


def fork_cache(cache: DynamicCache) -> DynamicCache:
    """A new DynamicCache over the same tensors. DynamicLayer ``update`` (torch.cat) and ``crop``
    (a slice) replace a layer's tensors instead of writing into them, so whatever the fork does,
    the original keeps its contents: one cached prefix serves many questions, also at once."""
    fork = copy.copy(cache)
    fork.layers = [copy.copy(layer) for layer in cache.layers]
    return fork


class _EventStop(StoppingCriteria):
    """Stops generation once ``event`` is set (checked after every decoding step)."""

    def __init__(self, event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
