"""Architecture configuration of the VLM-3R reasoning model (LLaVA-Video-Qwen2 + fusion).

Defaults are the published model: SigLIP so400m-patch14-384 truncated to 26 layers, the
cross-attention fusion block (18 heads of 64), the mlp2x_gelu projector, Qwen2-7B.
Values tagged [unverified] in ``test/fixtures/reference/vlm3r/README.md`` come from the code's
defaults and the Qwen2-7B architecture; a real checkpoint's ``config.json`` overrides them
(see :func:`Vlm3rConfig.from_llava_config`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

SELECT_FEATURES = ("all", "patch_tokens", "camera_tokens")
POOL_MODES = ("bilinear", "average", "max")
NEWLINE_MODES = ("grid", "frame", "one_token", "no_token")


class Vlm3rConfigError(ValueError):
    """A VLM-3R configuration we cannot build, with the reason."""


@dataclass(frozen=True)
class SiglipSettings:
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 26  # 27 in the checkpoint; VLM-3R deletes the last one
    num_attention_heads: int = 16
    image_size: int = 384
    patch_size: int = 14
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size  # 27


@dataclass(frozen=True)
class Qwen2Settings:
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    vocab_size: int = 152064
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6


@dataclass(frozen=True)
class Vlm3rConfig:
    vision: SiglipSettings = field(default_factory=SiglipSettings)
    llm: Qwen2Settings = field(default_factory=Qwen2Settings)
    spatial_dim: int = 768  # CUT3R decoder width
    fusion_num_heads: int = 18  # hard-coded by the official fusion builder
    select_feature: str = "all"  # camera token first, then the patch tokens
    pool_mode: str = "bilinear"  # lmms-eval default; "average" in the README demo
    newline_mode: str = "grid"
    pool_stride: int = 2
    max_context_tokens: int = 32768  # tokenizer_model_max_length of training

    @property
    def pooled_grid(self) -> int:
        g = self.vision.grid
        return -(-g // self.pool_stride) if self.pool_mode == "bilinear" else g // self.pool_stride

    @property
    def tokens_per_frame(self) -> int:
        """Visual tokens one frame contributes to the prompt (210 for bilinear + grid)."""
        g = self.pooled_grid
        return {"grid": g * (g + 1), "frame": g * g + 1}.get(self.newline_mode, g * g)

    def validate(self) -> "Vlm3rConfig":
        def need(cond, msg):
            if not cond:
                raise Vlm3rConfigError(msg)

        need(self.select_feature in SELECT_FEATURES or all(
            p.strip() in ("patch_tokens", "camera_tokens") for p in self.select_feature.split(",")),
            f"select_feature must be one of {SELECT_FEATURES} or a comma list of patch_tokens/camera_tokens, "
            f"got {self.select_feature!r}")
        need(self.pool_mode in POOL_MODES, f"pool_mode must be one of {POOL_MODES}, got {self.pool_mode!r}")
        need(self.newline_mode in NEWLINE_MODES, f"newline_mode must be one of {NEWLINE_MODES}, got {self.newline_mode!r}")
        need(self.vision.hidden_size % self.fusion_num_heads == 0,
             f"fusion_num_heads={self.fusion_num_heads} must divide the SigLIP width {self.vision.hidden_size}")
        need(self.llm.num_attention_heads % self.llm.num_key_value_heads == 0, "kv heads must divide query heads")
        # 384 is not a multiple of 14: the "valid" patch convolution drops the last 6 pixels (27x27 patches).
        need(self.vision.image_size >= self.vision.patch_size, "image_size must be at least patch_size")
        return self

    def replace(self, **changes) -> "Vlm3rConfig":
        return replace(self, **changes).validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "Vlm3rConfig":
        try:
            vision = SiglipSettings(**doc.get("vision", {}))
            llm = Qwen2Settings(**doc.get("llm", {}))
            rest = {k: v for k, v in doc.items() if k not in ("vision", "llm")}
            return cls(vision=vision, llm=llm, **rest).validate()
        except TypeError as exc:
            raise Vlm3rConfigError(f"unknown or malformed VLM-3R config entry: {exc}") from None

    @classmethod
    def from_llava_config(cls, doc: Mapping[str, Any], **overrides) -> "Vlm3rConfig":
        """Read a LLaVA-Qwen2 ``config.json`` (base or adapter folder)."""
        llm_names = {f.name for f in fields(Qwen2Settings)}
        llm = Qwen2Settings(**{k: doc[k] for k in llm_names if k in doc})
        kw: dict[str, Any] = {"llm": llm}
        if "mm_hidden_size" in doc:
            kw["vision"] = replace(SiglipSettings(), hidden_size=int(doc["mm_hidden_size"]))
        if "spatial_tower_select_feature" in doc:
            # The training script passes "all_tokens", which the official encode_images rejects;
            # the run is named "..._all_tokens_..." and the paper concatenates F' and z', so read
            # it as "all" (camera token first).
            select = doc["spatial_tower_select_feature"]
            kw["select_feature"] = "all" if select == "all_tokens" else select
        if "spatial_feature_dim" in doc:
            kw["spatial_dim"] = int(doc["spatial_feature_dim"])
        for key, name, allowed in (("mm_spatial_pool_mode", "pool_mode", POOL_MODES),
                                   ("mm_newline_position", "newline_mode", NEWLINE_MODES)):
            if key in doc:
                if doc[key] not in allowed:
                    raise Vlm3rConfigError(f"{key}={doc[key]!r} is not supported; expected one of {allowed}")
                kw[name] = doc[key]
        if "tokenizer_model_max_length" in doc:
            kw["max_context_tokens"] = int(doc["tokenizer_model_max_length"])
        check_overrides(overrides)
        for name, value in overrides.items():
            if name in _NESTED and isinstance(value, Mapping):
                # on top of what config.json gave (e.g. mm_hidden_size), not on the defaults
                nested = kw.get(name, _NESTED[name]())
                kw[name] = replace(nested, **value)
            else:
                kw[name] = value
        return cls(**kw).validate()


_NESTED = {"vision": SiglipSettings, "llm": Qwen2Settings}


def _check_value(where: str, name: str, value: Any, default: Any) -> None:
    """A value of the default's type: positive for numbers (every size, count and epsilon is)."""
    if isinstance(default, bool) or isinstance(default, str):
        ok = type(value) is type(default)
        want = type(default).__name__
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        want = "a positive integer"
    else:  # float: an integer is fine too (JSON writes 1000000.0 as 1000000)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        want = "a positive number"
    if not ok:
        raise Vlm3rConfigError(f"config override {where}{name}={value!r}: must be {want}")


def check_overrides(overrides: Mapping[str, Any]) -> None:
    """Refuse unknown names and wrongly typed values in :class:`Vlm3rConfig` overrides.

    ``vision`` / ``llm`` take a :class:`SiglipSettings` / :class:`Qwen2Settings` (replaces the
    whole) or a mapping of their fields (applied on top of the checkpoint's config.json).
    Cross-field rules (e.g. fusion_num_heads dividing the SigLIP width) are checked by
    :meth:`Vlm3rConfig.validate` once the config.json is known.
    """
    if not isinstance(overrides, Mapping):
        raise Vlm3rConfigError(f"config overrides must be a mapping of Vlm3rConfig fields, "
                               f"got {type(overrides).__name__}")
    top = {f.name: f for f in fields(Vlm3rConfig)}
    unknown = [k for k in overrides if k not in top]
    if unknown:
        raise Vlm3rConfigError(f"unknown config override(s) {sorted(map(str, unknown))}; valid: "
                               f"{', '.join(top)}")
    defaults = Vlm3rConfig()
    for name, value in overrides.items():
        if name in _NESTED:
            cls = _NESTED[name]
            if isinstance(value, cls):
                continue
            if not isinstance(value, Mapping):
                raise Vlm3rConfigError(f"config override {name} must be a mapping of {cls.__name__} fields, "
                                       f"got {value!r}")
            valid = [f.name for f in fields(cls)]
            unknown = [k for k in value if k not in valid]
            if unknown:
                raise Vlm3rConfigError(f"unknown {name} config override(s) {sorted(map(str, unknown))}; valid: "
                                       f"{', '.join(valid)}")
            for key, v in value.items():
                _check_value(f"{name}.", key, v, getattr(getattr(defaults, name), key))
        else:
            _check_value("", name, value, getattr(defaults, name))


def parse_config_overrides(text: str | None) -> dict[str, Any]:
    """Overrides from a JSON object (a node parameter or a command-line option); empty -> {}.

    E.g. ``{"fusion_num_heads": 16, "vision": {"hidden_size": 1024}}``. Names and value
    types are checked here (:func:`check_overrides`), so a typo fails before any weight loads.
    """
    if text is None or not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Vlm3rConfigError(f"config overrides are not valid JSON ({exc}): {text!r}") from None
    if not isinstance(doc, dict):
        raise Vlm3rConfigError(f"config overrides must be a JSON object of Vlm3rConfig fields, e.g. "
                               f'{{"fusion_num_heads": 16, "vision": {{"hidden_size": 1024}}}}; got {text!r}')
    check_overrides(doc)
    return doc
