"""Loading VLM-3R: the LLaVA-Video-Qwen2 base folder, plus the VLM-3R LoRA adapter folder.

The official loader (``llava/model/builder.py``, spec in ``test/fixtures/reference/vlm3r/README.md``
section 4) loads the base with transformers, overwrites the fusion block and projector
from ``non_lora_trainables.bin``, merges the LoRA with PEFT and shrinks the vocabulary to
the tokenizer. We do the same without transformers' loader or PEFT:

1. config: the base ``config.json`` (Qwen2 fields + ``mm_*``); an adapter ``config.json``
   overrides its ``mm_*`` / ``spatial_*`` settings (the official loader reads the config
   from the LoRA folder); ``config_overrides`` (our field names) override both, as the
   official ``overwrite_config`` does.
2. model: built on the meta device (no random init, no memory), non-persistent buffers
   (RoPE frequencies, SigLIP position ids) computed by transformers' own init.
3. weights: base shards (safetensors, or ``.bin`` read with ``torch.load(weights_only=True)``:
   no pickle code ever runs), then ``non_lora_trainables.bin`` on top; every key renamed
   by :data:`KEY_RENAMES` or dropped by :data:`DROPPED_KEYS` (with its reason, reported);
   anything else, and any missing or mis-shaped key, is a :class:`CheckpointError`. The
   load is strict: base + non-LoRA trainables must cover every parameter.
4. LoRA merged: ``W += scale * B @ A`` (scale ``alpha / r``, or ``alpha / sqrt(r)`` with
   rsLoRA), in float32, then cast; every pair is checked against the LLM's Linear layers.
   What a plain merge cannot reproduce is refused: DoRA, ``modules_to_save`` (VLM-3R puts
   its trained non-LoRA weights in non_lora_trainables.bin instead), trained biases,
   per-module rank/alpha patterns.
5. vocabulary resized to ``tokenizer_size`` (the official ``resize_token_embeddings``):
   shrinking keeps the first rows; growing appends the mean row (see :func:`resize_vocabulary`).

Weights are cast to the target dtype as they are read (the LoRA targets too: the merge
upcasts them to float32), so peak memory is about the model in the target dtype plus one
shard. The dtype defaults to float16 on CUDA (the official evaluation) and float32 on CPU;
float16 works on CPU but is slow. Non-persistent buffers keep their own dtype (RoPE
frequencies stay float32). The SigLIP and fusion-head sizes are not in a LLaVA config.json
(the official code hard-codes them): defaults are the released model's, and other sizes
come through ``config_overrides``.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn

from vlm3r_ros.engine.checkpoint import CheckpointError
from vlm3r_ros.engine.llm_backend import is_llm_layer_key, strip_llm_layers
from vlm3r_ros.models.vlm.config import Vlm3rConfig, Vlm3rConfigError, check_overrides
from vlm3r_ros.models.vlm.modeling_vlm3r import Vlm3rModel

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# The one table of renames: official key prefix -> our key prefix. A prefix ending in
# "." renames a whole sub-tree; any other entry is an exact key.
# ---------------------------------------------------------------------------
KEY_RENAMES: tuple[tuple[str, str], ...] = (
    ("model.vision_tower.vision_tower.vision_model.", "vision_tower."),  # SigLIP -> SiglipVisionModel
    ("model.fusion_block.", "fusion_block."),
    ("model.mm_projector.", "mm_projector."),
    ("model.image_newline", "image_newline"),
    ("model.embed_tokens.", "llm.model.embed_tokens."),
    ("model.layers.", "llm.model.layers."),
    ("model.norm.", "llm.model.norm."),
    ("lm_head.", "llm.lm_head."),
)

# Keys dropped on purpose (regex on the official key, reason). Each one is logged and
# listed in the LoadReport. ``{deleted_layer}`` is the SigLIP layer VLM-3R deletes: the
# last of the checkpoint's layers, index 26 at full size (= our num_hidden_layers).
_SIGLIP = r"model\.vision_tower\.vision_tower\.vision_model\."
DROPPED_KEYS: tuple[tuple[str, str], ...] = (
    (_SIGLIP + r"encoder\.layers\.{deleted_layer}\.",
     "SigLIP's last encoder layer: VLM-3R deletes it and uses the layer before (select layer -2)"),
    (_SIGLIP + r"head\.", "SigLIP attention-pooling head: replaced by Identity in VLM-3R, never used"),
    (_SIGLIP + r"embeddings\.position_ids$", "index buffer (arange), recomputed at build"),
    (r"model\.spatial_tower\.", "CUT3R weights: loaded from the CUT3R checkpoint (load_cut3r), not from here"),
    (r"model\.vision_resampler\.", "spatial_pool resampler: no parameters in the modes used, never called"),
    (r"(.*\.)?rotary_emb\.inv_freq$", "RoPE frequency buffer, recomputed from rope_theta at build"),
)

LLM_LAYERS_SKIPPED = "LLM layer: not loaded with llm_backend openai (the LLM server runs it)"

# PEFT prefixes and the official non_lora_trainables strip rule.
PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
# LLaVA config keys an adapter's config.json overrides (the training run's settings).
ADAPTER_CONFIG_OVERRIDES = ("mm_", "spatial_", "tokenizer_model_max_length")
# Qwen2 sizes a base and its adapter's config.json must agree on (vocab_size may differ: the
# official loader forces the base's 152064 and resizes afterwards).
_QWEN2_ARCH = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")


# ----------------------------------------------------------------------- report
@dataclass
class DroppedKey:
    key: str  # the official key, as stored in the file
    reason: str
    file: str


@dataclass
class LoadReport:
    """What :func:`load_vlm3r` read, dropped, merged and resized."""

    config: Vlm3rConfig
    files: list[str] = field(default_factory=list)  # every file read, in order
    tensors_loaded: int = 0  # model tensors set from the files (base + non-LoRA trainables)
    non_lora_overrides: list[str] = field(default_factory=list)  # our keys non_lora_trainables replaced/added
    dropped: list[DroppedKey] = field(default_factory=list)
    lora_pairs_merged: int = 0
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_scale: float | None = None  # alpha / r, or alpha / sqrt(r) with rsLoRA
    adapter_base_model: str | None = None  # adapter_config.json's base_model_name_or_path
    vocab_resize: tuple[int, int] | None = None  # (rows before, rows after)
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    fusion_block_fresh: bool = False  # no fusion weights in the files: initialised (fresh_fusion_block)

    def dropped_by_reason(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for d in self.dropped:
            out.setdefault(d.reason, []).append(d.key)
        return out

    def summary(self) -> str:
        lines = [f"VLM-3R loaded: {self.tensors_loaded} tensors from {len(self.files)} files "
                 f"({self.dtype}, {self.device})"]
        if self.non_lora_overrides:
            lines.append(f"  non_lora_trainables: {len(self.non_lora_overrides)} tensors")
        if self.lora_scale is not None:
            lines.append(f"  LoRA: {self.lora_pairs_merged} pairs merged, r={self.lora_rank}, "
                         f"alpha={self.lora_alpha}, scale={self.lora_scale:g}")
        for reason, keys in self.dropped_by_reason().items():
            lines.append(f"  dropped {len(keys)} keys ({reason}), e.g. {keys[0]}")
        if self.vocab_resize:
            lines.append(f"  vocabulary resized {self.vocab_resize[0]} -> {self.vocab_resize[1]}")
        if self.fusion_block_fresh:
            lines.append("  fusion block: not in the files, freshly initialised (init_fusion_block_fresh)")
        return "\n".join(lines)


# ------------------------------------------------------------------ key mapping
def official_to_ours(key: str) -> str | None:
    """Our key for an official key, or None when no rename applies."""
    for old, new in KEY_RENAMES:
        if key == old or (old.endswith(".") and key.startswith(old)):
            return new + key[len(old):]
    return None


def ours_to_official(key: str) -> str:
    """The official key for one of ours (for messages)."""
    for old, new in KEY_RENAMES:
        if key == new or (new.endswith(".") and key.startswith(new)):
            return old + key[len(new):]
    return key


def drop_reason(key: str, config: Vlm3rConfig) -> str | None:
    """Why an official key is knowingly not loaded, or None."""
    for pattern, reason in DROPPED_KEYS:
        if re.match(pattern.format(deleted_layer=config.vision.num_hidden_layers), key):
            return reason
    return None


def strip_non_lora_prefix(keys: Iterable[str]) -> dict[str, str]:
    """The official rule: drop a leading ``base_model.``; then, if any key starts with
    ``model.model.``, drop one leading ``model.`` from every key that has it. -> {file key: official key}."""
    stripped = {k: k[len("base_model."):] if k.startswith("base_model.") else k for k in keys}
    if any(v.startswith("model.model.") for v in stripped.values()):
        stripped = {k: v[len("model."):] if v.startswith("model.") else v for k, v in stripped.items()}
    return stripped


# ------------------------------------------------------------------------ files
def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"missing {what}: {path}")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    """A ``.bin`` state dict with ``weights_only=True``: tensors only, no pickle code runs."""
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, TypeError,
            AttributeError, IndexError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: refused or unreadable .bin (read with weights_only=True, which allows "
                              f"only tensors and plain containers): {type(exc).__name__}: {first}") from None
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in sd.items()):
        raise CheckpointError(f"{path}: expected a flat dict of name -> tensor, got {type(sd).__name__}")
    return dict(sd)


def _safetensors_load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            # get_tensor returns views of the memory-mapped file: load_vlm3r copies them
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"missing weights file: {path}")
    return _safetensors_load(path) if path.suffix == ".safetensors" else _torch_load(path)


def _shards_from_index(index_path: Path) -> list[tuple[Path, set[str]]]:
    weight_map = _read_json(index_path, "weights index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: no 'weight_map' (key -> shard file)")
    shards: dict[str, set[str]] = {}
    for key, name in weight_map.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise CheckpointError(f"{index_path}: shard {name!r} is not a file name in {index_path.parent}")
        shards.setdefault(name, set()).add(key)
    return [(index_path.parent / name, shards[name]) for name in sorted(shards)]


def base_weight_files(base_dir: Path) -> list[tuple[Path, set[str] | None]]:
    """The base folder's weight files, each with the keys its index puts there (None: no index).
    Safetensors are preferred over .bin, as transformers does."""
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (base_dir / index).is_file():
            return _shards_from_index(base_dir / index)
        if (base_dir / single).is_file():
            return [(base_dir / single, None)]
    raise CheckpointError(
        f"no weights in {base_dir}: expected model.safetensors.index.json + shards, model.safetensors, "
        f"pytorch_model.bin.index.json + shards, or pytorch_model.bin")


def _read_base(files: list[tuple[Path, set[str] | None]]) -> Iterable[tuple[Path, dict[str, torch.Tensor]]]:
    for path, listed in files:
        sd = _read_weights(path)
        absent = sorted((listed or set()) - set(sd))
        if absent:
            raise CheckpointError(f"the index lists {len(absent)} keys in {path} that it does not hold, "
                                  f"e.g. {absent[:5]}: the download is incomplete or the index is stale")
        yield path, sd


# ----------------------------------------------------------------------- config
def _merge_configs(base_doc: Mapping[str, Any], adapter_doc: Mapping[str, Any] | None,
                   adapter_path: Path | None) -> dict[str, Any]:
    doc = dict(base_doc)
    if adapter_doc:
        clash = [f"{k}: base {base_doc[k]!r}, adapter {adapter_doc[k]!r}" for k in _QWEN2_ARCH
                 if k in base_doc and k in adapter_doc and base_doc[k] != adapter_doc[k]]
        if clash:
            raise CheckpointError(f"{adapter_path}: the adapter was trained on another base model "
                                  f"({'; '.join(clash)}); pass the base it was made for")
        doc.update({k: v for k, v in adapter_doc.items() if k.startswith(ADAPTER_CONFIG_OVERRIDES)})
    return doc


def config_from_docs(doc: Mapping[str, Any], source: str, overrides: Mapping[str, Any] | None = None) -> Vlm3rConfig:
    """Vlm3rConfig from a (merged) LLaVA-Qwen2 config; refuses settings our model does not implement."""
    unsupported = {
        "mm_projector_type": ("mlp2x_gelu",), "fusion_block": ("cross_attention",),
        "rope_scaling": (None,), "use_sliding_window": (False,), "hidden_act": ("silu",),
    }
    for key, allowed in unsupported.items():
        if key in doc and doc[key] not in allowed:
            raise CheckpointError(f"{source}: {key}={doc[key]!r} is not supported (this model implements "
                                  f"{key}={allowed[0]!r})")
    overrides = dict(overrides or {})
    try:
        check_overrides(overrides)
    except Vlm3rConfigError as exc:  # our input, not the checkpoint's: no config.json hint
        raise CheckpointError(f"config_overrides: {exc}") from None
    try:
        return Vlm3rConfig.from_llava_config(doc, **overrides)
    except (Vlm3rConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: cannot build the VLM-3R config: {exc} (fix the config.json, or pass "
                              f"config_overrides, a JSON object of Vlm3rConfig fields such as {OVERRIDES_EXAMPLE}: "
                              f"the SigLIP and fusion sizes are not in a LLaVA config.json)") from None


OVERRIDES_EXAMPLE = '{"fusion_num_heads": 16, "vision": {"hidden_size": 1024, "num_attention_heads": 16}}'


def name_overrides(message: str, name: str) -> str:
    """``message`` with ``config_overrides`` called what the user sets (an option, a parameter)."""
    return message.replace("config_overrides", name)


# ------------------------------------------------------------------------- LoRA
@dataclass(frozen=True)
class LoraSettings:
    r: int
    alpha: float
    scale: float
    target_modules: tuple[str, ...] | str | None
    base_model: str | None


def lora_settings(doc: Mapping[str, Any], source: str) -> LoraSettings:
    """Read a PEFT ``adapter_config.json``; refuse what a plain ``W += s * B @ A`` merge cannot do."""
    def refuse(cond: bool, msg: str):
        if cond:
            raise CheckpointError(f"{source}: {msg}")

    refuse(doc.get("peft_type", "LORA") != "LORA", f"peft_type {doc.get('peft_type')!r} is not LORA")
    refuse(bool(doc.get("use_dora")), "DoRA adapters (use_dora=true) are not supported: merging needs the "
                                      "magnitude vectors and column norms; merge it with PEFT and pass the result")
    refuse(bool(doc.get("modules_to_save")),
           f"modules_to_save={doc.get('modules_to_save')!r} is not supported (VLM-3R's adapter trains its non-LoRA "
           f"weights into non_lora_trainables.bin instead)")
    refuse(bool(doc.get("rank_pattern")) or bool(doc.get("alpha_pattern")),
           "per-module rank_pattern/alpha_pattern is not supported")
    refuse(doc.get("bias", "none") != "none" or bool(doc.get("lora_bias")),
           f"trained biases (bias={doc.get('bias')!r}, lora_bias={doc.get('lora_bias')!r}) are not supported")
    refuse(bool(doc.get("fan_in_fan_out")), "fan_in_fan_out=true (Conv1D targets) is not supported")
    for name in ("trainable_token_indices", "layer_replication", "target_parameters"):
        refuse(bool(doc.get(name)), f"{name}={doc.get(name)!r} is not supported")
    r, alpha = doc.get("r"), doc.get("lora_alpha")
    refuse(not isinstance(r, int) or isinstance(r, bool) or r <= 0, f"r must be a positive integer, got {r!r}")
    refuse(not isinstance(alpha, (int, float)) or isinstance(alpha, bool),
           f"lora_alpha must be a number, got {alpha!r}")
    scale = alpha / math.sqrt(r) if doc.get("use_rslora") else alpha / r
    targets = doc.get("target_modules")
    if isinstance(targets, list):
        targets = tuple(str(t) for t in targets)
    elif isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as exc:
            refuse(True, f"target_modules {targets!r} is not a valid regex ({exc})")
    elif targets is not None:
        refuse(True, f"target_modules must be a list or a regex string, got {targets!r}")
    return LoraSettings(r, float(alpha), scale, targets, doc.get("base_model_name_or_path"))


def _is_target(module: str, targets: tuple[str, ...] | str | None) -> bool:
    """PEFT's matching: a list entry equals the name or is its dotted suffix; a string is a full regex."""
    if targets is None:
        return True
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return any(module == t or module.endswith("." + t) for t in targets)


def _lora_pairs(sd: Mapping[str, torch.Tensor], source: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{official module name: {"A": tensor, "B": tensor}} from PEFT keys."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    unknown, adapters = [], set()
    for key, value in sd.items():
        m = _LORA_KEY.match(key[len(PEFT_PREFIX):]) if key.startswith(PEFT_PREFIX) else None
        if m is None:
            hint = " (DoRA magnitude)" if "lora_magnitude_vector" in key else \
                " (LoRA on an embedding)" if "lora_embedding_" in key else ""
            unknown.append(key + hint)
            continue
        adapters.add(m["adapter"])
        pairs.setdefault(m["module"], {})[m["ab"]] = value
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} keys that are not PEFT LoRA A/B weights "
                              f"('{PEFT_PREFIX}<module>.lora_A[.<adapter>].weight'): {sorted(unknown)[:10]}")
    if len(adapters) > 1:
        raise CheckpointError(f"{source}: weights of several adapters {sorted(map(str, adapters))}; expected one")
    half = sorted(f"{m} (only lora_{next(iter(p))})" for m, p in pairs.items() if len(p) != 2)
    if half:
        raise CheckpointError(f"{source}: LoRA modules without both A and B: {half[:10]}")
    return pairs


@torch.no_grad()
def merge_lora(model: Vlm3rModel, pairs: Mapping[str, Mapping[str, torch.Tensor]], lora: LoraSettings,
               source: Path) -> int:
    """``W += scale * B @ A`` in float32 for every pair, after checking all of them."""
    n_layers = model.config.llm.num_hidden_layers
    problems, plan = [], []
    for module in sorted(pairs):
        a, b = pairs[module]["A"], pairs[module]["B"]
        ours = official_to_ours(module + ".weight")
        target = None
        if ours is not None and ours.startswith("llm."):
            try:
                target = model.get_submodule(ours[:-len(".weight")])
            except AttributeError:
                pass
        if not isinstance(target, nn.Linear):
            problems.append(f"{module}: no such Linear in this base's LLM (it has {n_layers} layers, hidden size "
                            f"{model.config.llm.hidden_size})")
            continue
        if not _is_target(module, lora.target_modules):
            problems.append(f"{module}: has LoRA weights but is not in adapter_config target_modules")
            continue
        out_f, in_f = target.weight.shape
        if tuple(a.shape) != (lora.r, in_f) or tuple(b.shape) != (out_f, lora.r) or not a.is_floating_point() \
                or not b.is_floating_point():
            problems.append(f"{module}: lora_A {tuple(a.shape)} {a.dtype} / lora_B {tuple(b.shape)} {b.dtype}, but "
                            f"a rank-{lora.r} LoRA of this base's {out_f}x{in_f} weight needs float A ({lora.r}, "
                            f"{in_f}) and B ({out_f}, {lora.r})")
            continue
        plan.append((target, a, b))
    if isinstance(lora.target_modules, tuple):
        named = [t for t in lora.target_modules if "." in t and t not in pairs]
        if named:
            problems.append(f"target_modules names {len(named)} modules with no LoRA weights in the file, "
                            f"e.g. {named[:3]}")
    if problems:
        raise CheckpointError(f"{source}: the LoRA adapter does not fit this base model "
                              f"(adapter made for {lora.base_model or 'an unnamed base'}):"
                              + _block("problems", problems))
    for target, a, b in plan:
        w = target.weight
        merged = w.float() + lora.scale * (b.to(w.device, torch.float32) @ a.to(w.device, torch.float32))
        w.copy_(merged.to(w.dtype))
    return len(plan)


# ------------------------------------------------------------------- vocabulary
@torch.no_grad()
def resize_vocabulary(model: Vlm3rModel, size: int) -> tuple[int, int] | None:
    """Shrink (keep the first ``size`` rows) or grow ``embed_tokens`` and ``lm_head``.

    Shrinking is exactly what the official ``resize_token_embeddings(len(tokenizer))`` does.
    Grown rows are set to the mean of the existing rows (transformers' default
    ``mean_resizing`` samples around that mean with covariance 1e-9 x the rows' covariance;
    we use the mean itself, so a load is deterministic).
    """
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise CheckpointError(f"tokenizer_size must be a positive integer (len(tokenizer)), got {size!r}")
    embed, head = model.llm.get_input_embeddings(), getattr(model.llm, "lm_head", None)  # no head: llm_layers=False
    old = embed.num_embeddings
    if size == old:
        return None

    def resized(w: torch.Tensor) -> nn.Parameter:
        if size < old:
            new = w[:size].clone()
        else:
            mean = w.float().mean(dim=0, keepdim=True).to(w.dtype)
            new = torch.cat([w, mean.expand(size - old, -1)], dim=0)
        return nn.Parameter(new, requires_grad=False)

    embed.weight, embed.num_embeddings = resized(embed.weight), size
    if head is not None:
        head.weight, head.out_features = resized(head.weight), size
    model.llm.config.vocab_size = size
    if hasattr(model.llm, "vocab_size"):
        model.llm.vocab_size = size
    model.config = model.config.replace(llm=replace(model.config.llm, vocab_size=size))
    return old, size


# ------------------------------------------------------------------------ build
def _materialize_non_persistent_buffers(model: nn.Module, device: torch.device) -> None:
    """Buffers not in any state dict (RoPE inv_freq, SigLIP position_ids) computed as
    transformers computes them when it loads onto the meta device: its ``_init_weights``."""
    from transformers import PreTrainedModel

    for owner in (m for m in model.modules() if isinstance(m, PreTrainedModel)):
        for module in owner.modules():
            names = [n for n in module._non_persistent_buffers_set
                     if module._buffers.get(n) is not None and module._buffers[n].is_meta]
            if names:
                for n in names:
                    module._buffers[n] = torch.empty_like(module._buffers[n], device=device)
                owner._init_weights(module)  # parameters are still on meta: only the buffers get values


def _block(title: str, items: list[str]) -> str:
    if not items:
        return ""
    shown = "\n    ".join(items[:25])
    more = f"\n    ... and {len(items) - 25} more" if len(items) > 25 else ""
    return f"\n  {title} ({len(items)}):\n    {shown}{more}"


def _check_against_model(model: Vlm3rModel, sd: Mapping[str, torch.Tensor], origin: Mapping[str, str],
                         unknown: list[str], have_adapter: bool) -> None:
    """Raise CheckpointError listing missing, unexpected, mis-shaped and non-float keys."""
    expected = model.state_dict()
    missing = sorted(f"{k} (file key {ours_to_official(k)})" for k in set(expected) - set(sd))
    unexpected = sorted(unknown + [f"{origin[k]} (-> {k})" for k in set(sd) - set(expected)])
    misshaped = sorted(f"{origin[k]}: file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
                       for k in set(expected) & set(sd) if sd[k].shape != expected[k].shape)
    not_float = sorted(f"{origin[k]}: {sd[k].dtype}" for k in set(expected) & set(sd) if not sd[k].is_floating_point())
    if not (missing or unexpected or misshaped or not_float):
        return
    c = model.config
    hint = ""
    if any(k.startswith("fusion_block.") for k in set(expected) - set(sd)) and not have_adapter:
        hint = "\n  The fusion block comes from the VLM-3R adapter's non_lora_trainables.bin: pass adapter_dir."
    raise CheckpointError(
        f"the weights do not match this VLM-3R architecture (SigLIP {c.vision.hidden_size}x"
        f"{c.vision.num_hidden_layers}, Qwen2 {c.llm.hidden_size}x{c.llm.num_hidden_layers}, "
        f"vocab {c.llm.vocab_size}):"
        + _block("missing keys (our names)", missing) + _block("unexpected keys (file names)", unexpected)
        + _block("mis-shaped keys", misshaped) + _block("non-float tensors", not_float) + hint
        + "\n  Are these the right folders, and do config.json / config_overrides describe them?")


def _collect(files: Iterable[tuple[Path, Mapping[str, torch.Tensor]]], names: Mapping[str, str] | None,
             config: Vlm3rConfig, report: LoadReport, out: dict[str, torch.Tensor], origin: dict[str, str],
             unknown: list[str], convert, skip_llm_layers: bool = False) -> list[str]:
    """Rename/drop every key of ``files`` into ``out`` (our names). -> our keys set from these files."""
    set_here = []
    for path, sd in files:
        report.files.append(str(path))
        for file_key in list(sd):
            key = names[file_key] if names is not None else file_key
            reason = drop_reason(key, config)
            if reason is not None:
                report.dropped.append(DroppedKey(file_key, reason, path.name))
                continue
            ours = official_to_ours(key)
            if ours is None:
                unknown.append(f"{file_key} (in {path.name})")
                continue
            if skip_llm_layers and is_llm_layer_key(ours):
                sd.pop(file_key)
                report.dropped.append(DroppedKey(file_key, LLM_LAYERS_SKIPPED, path.name))
                continue
            if ours in out and names is None:
                raise CheckpointError(f"{file_key} appears in two base weight files ({origin[ours]} and {path.name})")
            tensor = sd.pop(file_key)  # free the file's copy as we go
            out[ours] = convert(tensor) if tensor.is_floating_point() else tensor
            origin[ours] = f"{file_key} (in {path.name})"
            set_here.append(ours)
    return set_here


# ------------------------------------------------------------------ fresh fusion block
DEFAULT_INITIALIZER_RANGE = 0.02  # Qwen2's initializer_range (LLaVA-Video-7B-Qwen2's config.json)


@torch.no_grad()
def init_fusion_block_fresh(block: nn.Module, std: float = DEFAULT_INITIALIZER_RANGE, seed: int = 0) -> nn.Module:
    """Initialise a fusion block that no checkpoint holds, as the official training does when it
    starts from the plain LLaVA-Video base (VITA-Group/VLM-3R ``llava/train/train.py`` ``get_model``
    puts ``fusion_block`` into the config passed to ``from_pretrained``, so ``LlavaMetaModel.__init__``
    (``llava/model/llava_arch.py``) builds ``CrossAttentionFusion`` (``multimodal_fusion_block/
    builder.py``) while the base loads; its keys are missing from the base, so transformers
    initialises them with the model's ``_init_weights``):

    * every ``nn.Linear`` (the q/k/v and out projections, ``cross_attention.out_proj``):
      N(0, ``initializer_range``), bias 0 (Qwen2's ``_init_weights``);
    * ``nn.LayerNorm``: weight 1, bias 0;
    * ``nn.MultiheadAttention``'s packed ``in_proj`` (a bare parameter, no ``nn.Linear``, so
      ``_init_weights`` does not touch it): PyTorch's own init, Xavier-uniform weight over the
      whole (3E, E) packing, bias 0. What the official run leaves there depends on the
      transformers commit it pins (docs/training.md); we did not verify it and use PyTorch's.

    Seeded (``seed``), so every process of a distributed run starts from the same block.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    for module in block.modules():
        if isinstance(module, nn.Linear):
            module.weight.copy_(torch.randn(module.weight.shape, generator=g) * std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, nn.MultiheadAttention):
            # as its own _reset_parameters: Xavier over the whole (3E, E) packing (fan_out 3E, fan_in E)
            nn.init.xavier_uniform_(module.in_proj_weight, generator=g)
            module.in_proj_bias.zero_()
    return block


def _fresh_fusion_tensors(config: Vlm3rConfig, std: float) -> dict[str, torch.Tensor]:
    from vlm3r_ros.models.vlm.fusion import Vlm3rFusionBlock

    block = Vlm3rFusionBlock(config.vision.hidden_size, config.spatial_dim, config.fusion_num_heads)
    init_fusion_block_fresh(block, std)
    return {f"fusion_block.{k}": v for k, v in block.state_dict().items()}


def _resolve_dtype(device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise CheckpointError(f"dtype must be a floating torch.dtype (float32, float16, bfloat16), got {dtype!r}")
    return dtype


def load_vlm3r(base_dir: str | Path, adapter_dir: str | Path | None = None, *,
               device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               tokenizer_size: int | None = None,
               config_overrides: Mapping[str, Any] | None = None,
               llm_layers: bool = True, fresh_fusion_block: bool = False) -> tuple[Vlm3rModel, LoadReport]:
    """Load the LLaVA-Video-Qwen2 base (+ the VLM-3R LoRA adapter) into a ready :class:`Vlm3rModel`.

    Args:
        base_dir: folder with ``config.json`` and the weights (sharded or single safetensors,
            or ``.bin`` read with ``weights_only=True``).
        adapter_dir: the VLM-3R LoRA folder (``adapter_config.json``, ``adapter_model.safetensors``
            or ``.bin``, ``non_lora_trainables.bin``, optional ``config.json``), or None.
        device, dtype: where the model ends up. dtype defaults to float16 on CUDA (the official
            evaluation) and float32 on CPU (float16 works on CPU but is slow).
        tokenizer_size: ``len(tokenizer)`` (151,646 for Qwen2): ``embed_tokens`` and ``lm_head``
            are resized to it, as the official loader does. None keeps the checkpoint's rows.
        config_overrides: :class:`Vlm3rConfig` fields applied last (the official
            ``overwrite_config``), e.g. ``{"pool_mode": "average"}``, or the SigLIP / fusion
            settings a checkpoint's config.json does not carry. ``vision`` / ``llm`` take a
            mapping of their fields, applied on top of the config.json's (as JSON gives them:
            :func:`~vlm3r_ros.models.vlm.config.parse_config_overrides`), or a whole settings object.
        llm_layers: False loads the robot's part only (llm_backend ``openai``): everything but the
            LLM's decoder layers, final norm and LM head (their keys are dropped unread, the LoRA,
            which targets only those layers, is not merged); the input embeddings stay.
        fresh_fusion_block: when neither the base nor the adapter holds the fusion block (training
            from the plain LLaVA-Video base), initialise it as the official training does
            (:func:`init_fusion_block_fresh`) instead of refusing; ``report.fusion_block_fresh``
            says it happened. A partial fusion block is still an error.

    Returns:
        (model in eval mode without gradients, :class:`LoadReport`).

    Raises:
        CheckpointError: a missing or malformed file, a refused pickle, an unknown, missing or
            mis-shaped key, a LoRA that does not fit this base, or an unsupported setting.
    """
    base_dir = Path(base_dir)
    if not base_dir.is_dir():
        raise CheckpointError(f"base model folder not found: {base_dir} (the local LLaVA-Video-Qwen2 checkpoint)")
    device = torch.device(device)
    dtype = _resolve_dtype(device, dtype)

    base_doc = _read_json(base_dir / "config.json", "base model config")
    lora, adapter_doc, adapter = None, None, None
    if adapter_dir is not None:
        adapter = Path(adapter_dir)
        if not adapter.is_dir():
            raise CheckpointError(f"adapter folder not found: {adapter} (the local VLM-3R LoRA checkpoint)")
        lora = lora_settings(_read_json(adapter / "adapter_config.json", "PEFT adapter config"),
                             str(adapter / "adapter_config.json"))
        if (adapter / "config.json").is_file():
            adapter_doc = _read_json(adapter / "config.json", "adapter model config")
    doc = _merge_configs(base_doc, adapter_doc, adapter / "config.json" if adapter else None)
    config = config_from_docs(doc, str(base_dir / "config.json"), config_overrides)
    report = LoadReport(config=config, device=str(device), dtype=dtype)

    with torch.device("meta"):
        model = Vlm3rModel(config)
        if not llm_layers:
            strip_llm_layers(model)
    _materialize_non_persistent_buffers(model, device)

    # Safetensors tensors are views of the memory-mapped file: always copy (the model must own
    # its weights; a file changed under a running node must not change or crash it).
    def convert(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype, copy=True)

    sd: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unknown: list[str] = []
    _collect(_read_base(base_weight_files(base_dir)), None, config, report, sd, origin, unknown, convert,
             not llm_layers)
    if adapter is not None and (adapter / "non_lora_trainables.bin").is_file():
        path = adapter / "non_lora_trainables.bin"
        raw = _torch_load(path)
        report.non_lora_overrides = _collect([(path, raw)], strip_non_lora_prefix(raw), config, report, sd,
                                             origin, unknown, convert, not llm_layers)
    if fresh_fusion_block:
        expected = [k for k in model.state_dict() if k.startswith("fusion_block.")]
        absent = [k for k in expected if k not in sd]
        if absent and len(absent) < len(expected):
            raise CheckpointError(f"the files hold part of the fusion block ({len(expected) - len(absent)} of "
                                  f"{len(expected)} tensors; missing e.g. {absent[:3]}): refusing to initialise the "
                                  f"rest fresh")
        if absent:
            std = float(base_doc.get("initializer_range", DEFAULT_INITIALIZER_RANGE))
            for key, value in _fresh_fusion_tensors(config, std).items():
                sd[key] = convert(value)
                origin[key] = "fresh initialisation (init_fusion_block_fresh)"
            report.fusion_block_fresh = True
    _check_against_model(model, sd, origin, unknown, adapter is not None)
    model.load_state_dict(sd, strict=True, assign=True)
    model.requires_grad_(False)
    report.tensors_loaded = len(sd) - sum(k.startswith("fusion_block.") for k in sd) * report.fusion_block_fresh
    del sd

    if lora is not None and llm_layers:
        path = next((adapter / n for n in ("adapter_model.safetensors", "adapter_model.bin")
                     if (adapter / n).is_file()), None)
        if path is None:
            raise CheckpointError(f"no LoRA weights in {adapter}: expected adapter_model.safetensors or "
                                  f"adapter_model.bin")
        report.files.append(str(path))
        report.lora_pairs_merged = merge_lora(model, _lora_pairs(_read_weights(path), path), lora, path)
        report.lora_rank, report.lora_alpha, report.lora_scale = lora.r, lora.alpha, lora.scale
        report.adapter_base_model = lora.base_model

    if tokenizer_size is not None:
        report.vocab_resize = resize_vocabulary(model, tokenizer_size)
    report.config = model.config

    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"internal: tensors left without values after loading: {left[:10]}")
    model.eval()
    log.info("%s", report.summary())
    return model, report
