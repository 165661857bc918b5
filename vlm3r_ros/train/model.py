"""VLM-3R set up for instruction tuning as the official run (VITA-Group/VLM-3R ``llava/train/train.py``
with ``scripts/VLM_3R/train_vsibench.sh``):

* PEFT LoRA on the Qwen2 LLM: ``r=128``, ``lora_alpha=256``, ``lora_dropout=0.05``, ``bias="none"``,
  ``task_type="CAUSAL_LM"``, ``target_modules`` = the full dotted name of every ``nn.Linear`` of the
  LLM except ``lm_head`` (``find_all_linear_names``: ``model.layers.N.self_attn.q_proj``, ...).
* ``--tune_fusion_block True --tune_mm_mlp_adapter True``: the fusion block and the projector are
  trained fully. ``model.requires_grad_(False)`` comes first, so everything else is frozen:
  SigLIP, CUT3R (``--tune_spatial_tower False``), the embeddings, ``lm_head`` and
  ``image_newline`` (not trained: it keeps the base model's value).
* Dropout as in training: the fusion block's ``Dropout(0.1)`` and the LoRA dropout are active in
  ``train()``; both can be set to 0 (tests that compare runs exactly do).

The frozen encoders run without gradients, inside the forward (``pixels``), or not at all when
the batch carries cached features (``vision`` / ``camera`` / ``patch``, :mod:`.feature_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlm3r_ros.models.vlm.modeling_vlm3r import Vlm3rModel

from .conversation import IGNORE_INDEX

# Official hyper-parameters (scripts/VLM_3R/train_vsibench.sh; lora_dropout: the dataclass default)
LORA_R, LORA_ALPHA, LORA_DROPOUT = 128, 256, 0.05
FUSION_DROPOUT = 0.1
TRAINED_PREFIXES = ("fusion_block.", "mm_projector.")


@dataclass(frozen=True)
class LoraOptions:
    r: int = LORA_R
    alpha: float = LORA_ALPHA
    dropout: float = LORA_DROPOUT


def official_lora_targets(llm: nn.Module) -> list[str]:
    """``find_all_linear_names``: every Linear of the LLM by full dotted name, ``lm_head`` removed."""
    return sorted(name for name, m in llm.named_modules() if isinstance(m, nn.Linear) and name != "lm_head")


@torch.no_grad()
def encode_clip(vlm: Vlm3rModel, cut3r: nn.Module, pixels: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The frozen half of one clip (F, 3, 384, 384): SigLIP layer -2 output (F, 729, Dv) and CUT3R
    camera (F, 1, Ds) / patch (F, N, Ds) tokens from one fresh CUT3R stream over the frames in
    order (as the evaluation)."""
    from vlm3r_ros.engine.cut3r_stream import Cut3rStream
    from vlm3r_ros.models.cut3r.processing import siglip_to_cut3r

    vision = vlm.vision_features(pixels)
    stream = Cut3rStream(cut3r, preprocessing="vlm3r")
    dtype = next(cut3r.parameters()).dtype
    cams, patches = [], []
    for frame in pixels:
        step = stream.step(siglip_to_cut3r(frame.to(cut3r.device, dtype)))
        cams.append(step.camera_token)
        patches.append(step.patch_tokens)
    return vision, torch.stack(cams), torch.stack(patches)


class TrainableVlm3r(nn.Module):
    """A :class:`Vlm3rModel` with LoRA on its LLM, its fusion block and projector trainable, and a
    frozen CUT3R for the clips that come as pixels. ``forward`` returns ``{"loss", "logits"}``."""

    def __init__(self, vlm: Vlm3rModel, cut3r: nn.Module | None = None, *, lora: LoraOptions = LoraOptions(),
                 fusion_dropout: float = FUSION_DROPOUT, trainable_dtype: torch.dtype = torch.float32):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        vlm.requires_grad_(False)
        if cut3r is not None:
            cut3r.requires_grad_(False).eval()
        self.lora_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                                      task_type="CAUSAL_LM", target_modules=official_lora_targets(vlm.llm))
        vlm.llm = get_peft_model(vlm.llm, self.lora_config)
        vlm.fusion_block.dropout.p = fusion_dropout
        for name, param in vlm.named_parameters():
            if "lora_" in name or name.startswith(TRAINED_PREFIXES):
                param.data = param.data.to(trainable_dtype)  # fp32 master weights under bf16/fp16 autocast
                param.requires_grad_(True)
        self.vlm = vlm
        self.cut3r = cut3r
        self.encoder_calls = 0  # frozen-encoder runs (a cached-feature run must leave it at 0)

    # -------------------------------------------------------------- parameters
    def trainable_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def train(self, mode: bool = True):
        super().train(mode)
        self.vlm.vision_tower.eval()  # frozen parts never train (SigLIP has no dropout; CUT3R: to be sure)
        if self.cut3r is not None:
            self.cut3r.eval()
        return self

    def activation_checkpointing_enable(self) -> None:
        """Checkpoint the LLM's decoder layers (the activations of a 6,720-token sequence)."""
        self.vlm.llm.base_model.model.activation_checkpointing_enable({"use_reentrant": False})

    # ------------------------------------------------------------------ encoders
    def encode_clip(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.cut3r is None:
            raise RuntimeError("this batch has pixels but the model has no CUT3R: build it with cut3r, or train "
                               "from cached features (vlm3r-cache-features)")
        self.encoder_calls += 1
        return encode_clip(self.vlm, self.cut3r, pixels)

    # ------------------------------------------------------------------ forward
    def visual_tokens(self, vision: torch.Tensor, camera: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
        """The trained half: fusion -> projector -> pool -> newline layout, (T, H)."""
        vlm = self.vlm
        dtype = vlm.fusion_block.clip_norm.weight.dtype
        fused = vlm.fuse(vision.to(vlm.device, dtype), camera.to(dtype), patch.to(dtype))
        return vlm.visual_sequence(vlm.pool(vlm.mm_projector(fused)))

    def forward(self, input_ids: list[torch.Tensor], labels: list[torch.Tensor],
                pixels: list[torch.Tensor] | None = None, vision: list[torch.Tensor] | None = None,
                camera: list[torch.Tensor] | None = None, patch: list[torch.Tensor] | None = None) -> dict:
        rows, targets = [], []
        for i, ids in enumerate(input_ids):
            if vision is not None:
                feats = vision[i], camera[i], patch[i]
            elif pixels is not None:
                feats = self.encode_clip(pixels[i])
            else:
                raise ValueError("a batch needs 'pixels' or cached 'vision'/'camera'/'patch' features")
            visual = self.visual_tokens(*feats)
            e = self.vlm.splice(ids, visual)
            where = int((ids == -200).nonzero()[0, 0])
            lab = torch.cat([labels[i][:where].to(e.device),
                             torch.full((visual.shape[0],), IGNORE_INDEX, device=e.device),
                             labels[i][where + 1:].to(e.device)])
            rows.append(e)
            targets.append(lab)
        length = max(r.shape[0] for r in rows)
        if length > self.vlm.config.max_context_tokens:
            raise ValueError(f"a training sequence has {length} tokens, over the model's "
                             f"{self.vlm.config.max_context_tokens}-token context; use fewer frames")
        embeds = torch.stack([F.pad(r, (0, 0, 0, length - r.shape[0])) for r in rows])  # right padding
        mask = torch.stack([torch.arange(length, device=embeds.device) < r.shape[0] for r in rows]).long()
        target = torch.stack([F.pad(t, (0, length - t.shape[0]), value=IGNORE_INDEX) for t in targets])
        causal_lm = self.vlm.llm.base_model.model  # the Qwen2ForCausalLM under PEFT's wrapper
        hidden = causal_lm.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        # next-token loss, mean over the answer tokens of the batch (transformers' causal LM loss);
        # lm_head only where there is a label: full-vocabulary logits of every visual token would
        # take gigabytes
        target = target[:, 1:]
        keep = target != IGNORE_INDEX
        logits = causal_lm.lm_head(hidden[:, :-1][keep]).float()
        loss = F.cross_entropy(logits, target[keep])
        return {"loss": loss, "logits": logits}


@torch.no_grad()
def trainable_scale_tiny(vlm: Vlm3rModel, seed: int = 1) -> Vlm3rModel:
    """Give a tiny *random* model's frozen LLM the scales of a trained one, so a short run can train it.

    transformers initialises Qwen2 with std 0.02 everywhere. In a 64-wide model that has two effects,
    both measured (docs/training.md, "Overfitting the tiny model"):

    * the text embeddings are some ten times smaller than the visual tokens the projector makes, and
      the logits span about +-0.3 (every token about equally likely);
    * each decoder layer's attention and MLP write about 2 % of the residual stream, so the hidden
      state that predicts the answer is the embedding of the prompt's last token ("\n") whatever the
      room or question (pairwise cosine over the 16 overfit samples >= 0.9993): LoRA starts from zero
      and must first make the layers 50x stronger before any question or visual token reaches the
      answer.

    So: embeddings N(0, 1), lm_head N(0, 1/H), the final norm doubled (logits of std ~2), and every
    Linear of the decoder layers N(0, 1/fan_in) (each layer's update about as large as the residual,
    as in a trained transformer; the same question in the other room then has cosine ~0.45).
    For tests and benchmarks on tiny random weights only; a real base needs nothing of the kind.
    """
    llm = vlm.llm
    g = torch.Generator().manual_seed(seed)
    embed, head = llm.model.embed_tokens.weight, llm.lm_head.weight
    embed.copy_(torch.randn(embed.shape, generator=g).to(embed.dtype))
    head.copy_((torch.randn(head.shape, generator=g) / head.shape[1] ** 0.5).to(head.dtype))
    llm.model.norm.weight.mul_(2.0)
    for module in llm.model.layers.modules():
        if isinstance(module, nn.Linear):
            w = module.weight
            w.copy_((torch.randn(w.shape, generator=g) / w.shape[1] ** 0.5).to(w.dtype))
    return vlm
