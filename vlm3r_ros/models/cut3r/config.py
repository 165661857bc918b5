"""Architecture configuration of CUT3R (the official ``ARCroco3DStereo``).

A config is plain data. It can come from three places, all validated by
:meth:`Cut3rConfig.validate`:

* the presets of the two published checkpoints (:data:`PUBLIC_CONFIGS`);
* the keyword arguments of the official ``ARCroco3DStereoConfig`` (as stored in the
  parity fixtures' JSON, or in our own safetensors side-car JSON);
* the constructor string that the official training script pickles into a ``.pth``
  (``"ARCroco3DStereo(ARCroco3DStereoConfig(state_size=768, ...))"``). That string is
  parsed with :mod:`ast` into literals and never evaluated.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

INF = math.inf

# Official defaults of the DPT adapter widths (hard-coded in the official head).
DPT_FEATURE_DIM = 256
DPT_LAST_DIM = 128
DPT_LAYER_DIMS = (96, 192, 384, 768)

# Keyword arguments that change no key, shape or number on the inference path.
_IGNORED_KWARGS = {
    "freeze",  # training-time freezing
    "patch_embed_cls",  # ManyAR_PatchEmbed vs PatchEmbedDust3R: same keys, same math here
    "landscape_only",  # the official loader forces False; we never transpose
    "img_size",  # only sizes bookkeeping in the patch embedding
    "mask_ratio",  # CroCo pre-training only
    "norm_layer",  # always LayerNorm(eps=1e-6) in the released models
    "depth_head",
    "pose_conf_head",
}


class Cut3rConfigError(ValueError):
    """A CUT3R configuration that we cannot build, with the reason."""


@dataclass(frozen=True)
class Cut3rConfig:
    """Every number that decides CUT3R's keys, shapes and arithmetic.

    Defaults are those of the released ``cut3r_512_dpt_4_64`` checkpoint.
    """

    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    state_dec_num_heads: int = 16
    state_size: int = 768
    local_mem_size: int = 256
    ray_enc_depth: int = 2
    mlp_ratio: float = 4.0
    patch_size: int = 16
    rope_base: float = 100.0
    head_type: str = "dpt"  # "dpt" | "linear"
    rgb_head: bool = True
    pose_head: bool = True
    state_pe: str = "2d"
    depth_mode: tuple = ("exp", -INF, INF)
    conf_mode: tuple = ("exp", 1.0, INF)
    pose_mode: tuple = ("exp", -INF, INF)
    dpt_feature_dim: int = DPT_FEATURE_DIM
    dpt_last_dim: int = DPT_LAST_DIM
    dpt_layer_dims: tuple = DPT_LAYER_DIMS
    # Official image size hint, kept only to report what a checkpoint was trained at.
    img_size: tuple = (512, 512)

    # ------------------------------------------------------------------ derived
    @property
    def enc_head_dim(self) -> int:
        return self.enc_embed_dim // self.enc_num_heads

    @property
    def state_width(self) -> int:
        """Columns of the 2-D state-token grid (rounded up to even, as officially)."""
        width = int(self.state_size ** 0.5)
        return width + 1 if width % 2 == 1 else width

    @property
    def head_hooks(self) -> tuple[int, int, int, int]:
        """Decoder outputs that feed the heads: 0, D*2//4, D*3//4, D."""
        d = self.dec_depth
        return (0, d * 2 // 4, d * 3 // 4, d)

    # --------------------------------------------------------------- validation
    def validate(self) -> "Cut3rConfig":
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise Cut3rConfigError(msg)

        for name in ("enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim",
                     "dec_depth", "dec_num_heads", "state_dec_num_heads", "state_size",
                     "local_mem_size", "patch_size"):
            value = getattr(self, name)
            need(isinstance(value, int) and value > 0, f"{name} must be a positive int, got {value!r}")
        need(self.head_type in ("dpt", "linear"), f"head_type must be 'dpt' or 'linear', got {self.head_type!r}")
        need(self.pose_head, "pose_head=False is not supported: VLM-3R needs the camera token")
        need(self.state_pe == "2d", f"only state_pe='2d' (both public checkpoints) is supported, got {self.state_pe!r}")
        for heads_name, dim in (("enc_num_heads", self.enc_embed_dim), ("dec_num_heads", self.dec_embed_dim),
                                ("state_dec_num_heads", self.dec_embed_dim)):
            heads = getattr(self, heads_name)
            need(dim % heads == 0, f"{heads_name}={heads} does not divide the width {dim}")
            need((dim // heads) % 4 == 0, f"2-D RoPE needs a head width that is a multiple of 4; "
                                          f"{dim}/{heads_name}={dim // heads}")
        need((2 * self.dec_embed_dim) % self.dec_num_heads == 0,
             "the pose retriever runs 2*dec_embed_dim wide with dec_num_heads heads")
        # The ray-map encoder hard-codes 16 heads; its weights must still load.
        need(self.enc_embed_dim % 64 == 0,
             f"enc_embed_dim must be a multiple of 64 (16 ray-map heads x RoPE), got {self.enc_embed_dim}")
        for mode_name in ("depth_mode", "conf_mode", "pose_mode"):
            mode = getattr(self, mode_name)
            need(len(mode) == 3 and mode[0] == "exp", f"{mode_name} must be ('exp', lo, hi), got {mode!r}")
        need(self.depth_mode[1:] == (-INF, INF) and self.pose_mode[1:] == (-INF, INF),
             "bounded depth/pose modes are not used by any released checkpoint")
        need(self.conf_mode[2] == INF, "conf_mode upper bound must be inf")
        for name in ("rgb_head", "pose_head"):
            need(isinstance(getattr(self, name), bool), f"{name} must be true or false, got {getattr(self, name)!r}")
        need(isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0,
             f"mlp_ratio must be a positive number, got {self.mlp_ratio!r}")
        need(isinstance(self.dpt_layer_dims, tuple) and len(self.dpt_layer_dims) == 4,
             f"dpt_layer_dims needs a tuple of 4 entries, got {self.dpt_layer_dims!r}")
        for name, value in (("dpt_feature_dim", self.dpt_feature_dim), ("dpt_last_dim", self.dpt_last_dim),
                            *(("dpt_layer_dims", v) for v in self.dpt_layer_dims)):
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                 f"{name} must hold positive ints, got {value!r}")
        need(self.dpt_feature_dim % 2 == 0, f"dpt_feature_dim must be even, got {self.dpt_feature_dim}")
        return self

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_official_kwargs(cls, kwargs: Mapping[str, Any],
                             structural_overrides: Mapping[str, Any] | None = None) -> "Cut3rConfig":
        """Build from ``ARCroco3DStereoConfig`` keyword arguments (JSON-friendly).

        ``'inf'`` / ``'-inf'`` strings stand for infinities, as in the fixture JSON.
        """
        try:
            return cls._from_official_kwargs(kwargs, structural_overrides)
        except Cut3rConfigError:
            raise
        except (TypeError, ValueError, IndexError, AttributeError) as exc:
            raise Cut3rConfigError(f"malformed CUT3R config value ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _from_official_kwargs(cls, kwargs, structural_overrides):
        if not isinstance(kwargs, Mapping):
            raise Cut3rConfigError(f"config kwargs must be a mapping, got {type(kwargs).__name__}")
        kw = {k: _decode_inf(v) for k, v in kwargs.items()}
        out: dict[str, Any] = {}
        unknown = {}
        pos_embed = kw.pop("pos_embed", "RoPE100")
        if not (isinstance(pos_embed, str) and pos_embed.startswith("RoPE")):
            raise Cut3rConfigError(f"only RoPE position embeddings are supported, got pos_embed={pos_embed!r}")
        try:
            out["rope_base"] = float(pos_embed[len("RoPE"):])
        except ValueError:
            raise Cut3rConfigError(f"pos_embed must look like 'RoPE100', got {pos_embed!r}") from None
        output_mode = kw.pop("output_mode", "pts3d+pose")
        if output_mode != "pts3d+pose":
            raise Cut3rConfigError(f"only output_mode='pts3d+pose' is supported, got {output_mode!r}")
        if "norm_im2_in_dec" in kw and kw.pop("norm_im2_in_dec") is not True:
            raise Cut3rConfigError("norm_im2_in_dec=False is not supported")
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in kw.items():
            if key in names:
                out[key] = value
            elif key not in _IGNORED_KWARGS:
                unknown[key] = value
        if unknown:
            raise Cut3rConfigError(f"unknown CUT3R config arguments: {sorted(unknown)}")
        for key in ("depth_mode", "conf_mode", "pose_mode"):
            if key in out:
                m = out[key]
                if not isinstance(m, (list, tuple)) or len(m) != 3:
                    raise Cut3rConfigError(f"{key} must be ('exp', lo, hi), got {m!r}")
                out[key] = (m[0], float(m[1]), float(m[2]))
        for key in ("img_size", "dpt_layer_dims"):
            if key in out:
                if not isinstance(out[key], (list, tuple)):
                    raise Cut3rConfigError(f"{key} must be a list, got {out[key]!r}")
                out[key] = tuple(out[key])
        for key, value in (structural_overrides or {}).items():
            if key in ("dpt_feature_dim", "dpt_last_dim"):
                out[key] = int(value)
            elif key == "dpt_layer_dims":
                out[key] = tuple(int(v) for v in value)
        return cls(**out).validate()

    @classmethod
    def from_constructor_string(cls, text: str) -> "Cut3rConfig":
        """Parse ``ARCroco3DStereo(ARCroco3DStereoConfig(k=v, ...))`` without eval."""
        return cls.from_official_kwargs(parse_constructor_string(text))

    def to_official_kwargs(self) -> dict[str, Any]:
        """JSON-friendly kwargs that :meth:`from_official_kwargs` reads back."""
        kw: dict[str, Any] = {
            "pos_embed": f"RoPE{self.rope_base:g}",
            "output_mode": "pts3d+pose",
        }
        for f in dataclasses.fields(self):
            if f.name == "rope_base":
                continue
            value = getattr(self, f.name)
            kw[f.name] = _encode_inf(list(value) if isinstance(value, tuple) else value)
        return kw


def _decode_inf(value: Any) -> Any:
    if isinstance(value, str) and value in ("inf", "+inf", "-inf"):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_decode_inf(v) for v in value]
    return value


def _encode_inf(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, list):
        return [_encode_inf(v) for v in value]
    return value


def parse_constructor_string(text: str) -> dict[str, Any]:
    """Read the keyword arguments out of the official constructor string.

    Accepts ``ARCroco3DStereo(ARCroco3DStereoConfig(...))`` and the bare
    ``ARCroco3DStereoConfig(...)``. Values must be literals (numbers, strings,
    booleans, tuples/lists, ``inf``); anything else is refused.
    """
    if not isinstance(text, str) or len(text) > 10_000:
        raise Cut3rConfigError("the constructor must be a string of at most 10,000 characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise Cut3rConfigError(f"cannot parse the CUT3R constructor string: {exc.msg}: {text[:200]!r}") from None
    call = tree.body
    if isinstance(call, ast.Call) and _call_name(call) == "ARCroco3DStereo":
        if len(call.args) != 1 or call.keywords:
            raise Cut3rConfigError("ARCroco3DStereo(...) must wrap exactly one ARCroco3DStereoConfig(...)")
        call = call.args[0]
    if not (isinstance(call, ast.Call) and _call_name(call) == "ARCroco3DStereoConfig"):
        raise Cut3rConfigError(f"not a CUT3R constructor (expected ARCroco3DStereoConfig(...)): {text[:200]!r}")
    if call.args:
        raise Cut3rConfigError("ARCroco3DStereoConfig takes keyword arguments only")
    kwargs = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise Cut3rConfigError("**kwargs are not allowed in the constructor string")
        kwargs[kw.arg] = _literal(kw.value, kw.arg)
    return kwargs


def _call_name(call: ast.Call) -> str | None:
    return call.func.id if isinstance(call.func, ast.Name) else None


def _literal(node: ast.AST, name: str) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if isinstance(node, ast.Name) and node.id in ("inf", "True", "False", "None"):
        return {"inf": INF, "True": True, "False": False, "None": None}[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, (ast.Tuple, ast.List)):
        return [_literal(elt, name) for elt in node.elts]
    raise Cut3rConfigError(f"argument {name!r} of the constructor string is not a literal: {ast.dump(node)[:120]}")


# The two published checkpoints (constructor strings in full_size_keys.json).
PUBLIC_CONFIGS: dict[str, Cut3rConfig] = {
    "cut3r_512_dpt_4_64": Cut3rConfig(head_type="dpt", img_size=(512, 512)),
    "cut3r_224_linear_4": Cut3rConfig(head_type="linear", img_size=(224, 224)),
}
