"""Reading CUT3R checkpoints safely, and the one table of checkpoint key renames.

Two formats:

* ``.pth`` as published: a ``torch.save`` d dict whose ``model`` is the state dict and
  whose ``args`` is the pickled training config (an OmegaConf object) holding the
  constructor string in ``.model``. Plain ``torch.load(weights_only=True)`` refuses it and
  ``weights_only=False`` would execute arbitrary pickle. We unpickle with an allow-list:
  tensor-rebuilding globals are the ones torch's own ``weights_only`` loader trusts; every
  other class becomes an inert :class:`InertObject` that only records its arguments and
  state. The constructor string is then parsed (``ast``), never evaluated.
* ``.safetensors`` with a JSON config beside it (``X.safetensors`` + ``X.json``), as
  written by :func:`convert_pth_to_safetensors`. The config is also embedded in the
  safetensors metadata so a lone file still loads.
"""

from __future__ import annotations

import _compat_pickle
import json
import pickle
import types
from pathlib import Path
from typing import Any, Mapping

import torch

from vlm3r_ros.models.cut3r.config import Cut3rConfig, Cut3rConfigError
from vlm3r_ros.models.cut3r.modeling_cut3r import Cut3rModel

SIDECAR_FORMAT = "vlm3r_ros.cut3r-config/1"

# ---------------------------------------------------------------------------
# Key renames (the only place they live).
#   * a "module." prefix on every key (DataParallel/DDP saves) is removed;
#   * checkpoints without a state decoder get dec_blocks.* copied to dec_blocks_state.*
#     (what the official ARCroco3DStereo.load_state_dict does);
#   * each DPT adapter registers scratch.layerN_rn a second time as scratch.layer_rn.{N-1}:
#     one tensor, two keys. Files that store only one of the pair get the other filled in.
# ---------------------------------------------------------------------------
STRIP_PREFIX = "module."
STATE_DECODER_FROM = "dec_blocks."
STATE_DECODER_TO = "dec_blocks_state."
DPT_ALIASES = [(f"scratch.layer{n}_rn.", f"scratch.layer_rn.{n - 1}.") for n in range(1, 5)]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with what was expected and what came."""


# ----------------------------------------------------------------- restricted unpickler
class InertObject:
    """Stand-in for any class the restricted unpickler refuses to import. Runs no code."""

    _qualified_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items, obj.listitems = args, kwargs, None, {}, []
        return obj

    def __init__(self, *args, **kwargs):  # REDUCE calls cls(*args); nothing to do
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.listitems.append(value)

    def extend(self, values):
        self.listitems.extend(values)

    def __repr__(self) -> str:
        return f"<inert {self._qualified_name}>"


_INERT_CLASSES: dict[str, type] = {}


def _inert_class(qualified_name: str) -> type:
    if qualified_name not in _INERT_CLASSES:
        _INERT_CLASSES[qualified_name] = type(
            qualified_name.rsplit(".", 1)[-1], (InertObject,), {"_qualified_name": qualified_name})
    return _INERT_CLASSES[qualified_name]


def _trusted_globals() -> dict[str, Any]:
    from torch import _weights_only_unpickler as wou  # torch's own weights_only allow-list

    return dict(wou._get_allowed_globals())


class _RestrictedUnpickler(pickle.Unpickler):
    _trusted: dict[str, Any] | None = None

    def find_class(self, module: str, name: str):
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol-2 files name py2 modules
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if _RestrictedUnpickler._trusted is None:
            _RestrictedUnpickler._trusted = _trusted_globals()
        qualified = f"{module}.{name}"
        if qualified in self._trusted:
            return self._trusted[qualified]
        return _inert_class(qualified)


_RESTRICTED_PICKLE = types.SimpleNamespace(
    Unpickler=_RestrictedUnpickler, load=lambda f, **kw: _RestrictedUnpickler(f, **kw).load(),
    __name__="vlm3r_ros.restricted_pickle")


def restricted_torch_load(path: str | Path) -> Any:
    """``torch.load`` that rebuilds tensors but turns every other object into inert data."""
    # No mmap: a model must own its weights (a memory-mapped file rewritten or truncated
    # under a running node would change its weights or kill it with SIGBUS).
    try:
        return torch.load(str(path), map_location="cpu", pickle_module=_RESTRICTED_PICKLE, weights_only=False)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError,
            AttributeError, IndexError) as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None


def _field(obj: Any, name: str) -> Any:
    """Read attribute/key ``name`` from a plain container or an inert object (OmegaConf aware)."""
    if isinstance(obj, Mapping):
        return _node_value(obj.get(name))
    if isinstance(obj, InertObject):
        state = obj.state
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = state[0] or state[1]
        if isinstance(state, Mapping):
            if "_content" in state and isinstance(state["_content"], Mapping):  # OmegaConf DictConfig
                return _node_value(state["_content"].get(name))
            return _node_value(state.get(name))
        if name in obj.items:
            return _node_value(obj.items[name])
    return getattr(obj, name, None) if isinstance(obj, types.SimpleNamespace) else None


def _node_value(node: Any) -> Any:
    if isinstance(node, InertObject) and isinstance(node.state, Mapping) and "_val" in node.state:
        return node.state["_val"]  # OmegaConf value node
    return node


# ------------------------------------------------------------------------ reading
def read_cut3r_checkpoint(path: str | Path, config: Cut3rConfig | None = None
                          ) -> tuple[Cut3rConfig, dict[str, torch.Tensor]]:
    """Read a ``.pth`` or ``.safetensors`` CUT3R checkpoint without executing its contents."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"CUT3R checkpoint not found: {path} (give the local path to "
                              f"cut3r_512_dpt_4_64.pth or a converted .safetensors)")
    if path.suffix == ".safetensors":
        return _read_safetensors(path, config)
    if path.suffix in (".pth", ".pt", ".ckpt", ".bin"):
        return _read_pth(path, config)
    raise CheckpointError(f"{path}: unknown checkpoint type {path.suffix!r}; expected .pth or .safetensors")


def _read_pth(path: Path, config: Cut3rConfig | None):
    ckpt = restricted_torch_load(path)
    if isinstance(ckpt, Mapping) and "model" in ckpt and isinstance(ckpt["model"], Mapping):
        state_dict = ckpt["model"]
    elif isinstance(ckpt, Mapping) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state_dict = ckpt  # a bare state dict
    else:
        raise CheckpointError(f"{path}: expected a dict with a 'model' state dict (the published CUT3R layout), "
                              f"got {type(ckpt).__name__} with keys {list(ckpt)[:10] if isinstance(ckpt, Mapping) else '-'}")
    if config is None:
        constructor = _field(ckpt.get("args"), "model") if isinstance(ckpt, Mapping) else None
        if not isinstance(constructor, str):
            raise CheckpointError(f"{path}: no constructor string at ckpt['args'].model; pass the config explicitly "
                                  f"(e.g. --config cut3r_512_dpt_4_64)")
        try:
            config = Cut3rConfig.from_constructor_string(constructor)
        except Cut3rConfigError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state dict entries that are not tensors: {bad[:10]}")
    return config, dict(state_dict)


def _read_safetensors(path: Path, config: Cut3rConfig | None):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            # clone: safetensors maps the file, and a model must own its weights
            state_dict = {k: f.get_tensor(k).clone() for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if config is None:
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            text, source = sidecar.read_text(), str(sidecar)
        elif "cut3r_config" in metadata:
            text, source = metadata["cut3r_config"], f"{path} (embedded config)"
        else:
            raise CheckpointError(f"{path}: no config: expected {sidecar.name} beside it (or pass the config)")
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{source}: not valid JSON ({exc})") from None
        config = config_from_json(doc, source=source)
    return config, state_dict


def config_from_json(doc: Mapping[str, Any], source: str = "config") -> Cut3rConfig:
    """Our side-car JSON, or a parity-fixture JSON (``config_kwargs`` + ``structural_overrides``)."""
    if not isinstance(doc, Mapping):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(doc).__name__}")
    try:
        if "config_kwargs" in doc:
            return Cut3rConfig.from_official_kwargs(doc["config_kwargs"], doc.get("structural_overrides"))
        if "constructor" in doc:
            return Cut3rConfig.from_constructor_string(doc["constructor"])
    except Cut3rConfigError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    raise CheckpointError(f"{source}: no 'config_kwargs' or 'constructor' entry")


def config_to_json(config: Cut3rConfig) -> dict[str, Any]:
    return {"format": SIDECAR_FORMAT, "config_kwargs": config.to_official_kwargs()}


# ------------------------------------------------------------------- key mapping
def normalize_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply the rename table; refuse alias pairs whose two copies differ."""
    sd = dict(state_dict)
    if sd and all(k.startswith(STRIP_PREFIX) for k in sd):
        sd = {k[len(STRIP_PREFIX):]: v for k, v in sd.items()}
    if not any(k.startswith(STATE_DECODER_TO) for k in sd):
        sd.update({STATE_DECODER_TO + k[len(STATE_DECODER_FROM):]: v
                   for k, v in list(sd.items()) if k.startswith(STATE_DECODER_FROM)})
    for key in list(sd):
        for primary, alias in DPT_ALIASES:
            for a, b in ((primary, alias), (alias, primary)):
                if a in key:
                    twin = key.replace(a, b)
                    if twin not in sd:
                        sd[twin] = sd[key]
                    elif sd[twin] is not sd[key] and not torch.equal(sd[twin], sd[key]):
                        raise CheckpointError(f"aliased keys {key} and {twin} name one tensor but hold different values")
    return sd


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                       for k in set(expected) & set(state_dict) if state_dict[k].shape != expected[k].shape)
    not_float = sorted(k for k in set(expected) & set(state_dict) if not state_dict[k].is_floating_point())
    if missing or unexpected or misshaped or not_float:
        def block(title, items):
            if not items:
                return ""
            shown = "\n    ".join(items[:25])
            more = f"\n    ... and {len(items) - 25} more" if len(items) > 25 else ""
            return f"\n  {title} ({len(items)}):\n    {shown}{more}"
        raise CheckpointError(
            "the weights do not match this CUT3R architecture "
            f"({model.config.head_type} head, enc {model.config.enc_embed_dim}x{model.config.enc_depth}, "
            f"dec {model.config.dec_embed_dim}x{model.config.dec_depth}):"
            + block("missing keys", missing) + block("unexpected keys", unexpected)
            + block("mis-shaped keys", misshaped) + block("non-float tensors", not_float)
            + "\n  Is this the right file and config for this model?")


def build_cut3r(config: Cut3rConfig, state_dict: Mapping[str, torch.Tensor], *,
                device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Cut3rModel:
    """Build on the meta device (no random init), then load strictly and move to device/dtype.

    The model takes over the given tensors (no copy when they already have the target
    device and dtype): do not modify ``state_dict`` afterwards.
    """
    with torch.device("meta"):
        model = Cut3rModel(config)
    sd = normalize_state_dict(state_dict)
    check_state_dict(model, sd)
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    # The official code feeds the heads float32 inputs (`.float()`); keeping the heads in
    # float32 keeps exp-mapped depths and poses accurate when the trunk runs in half precision.
    model.downstream_head.float()
    return model


def load_cut3r(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               config: Cut3rConfig | None = None) -> Cut3rModel:
    """Read a checkpoint file (``.pth`` or ``.safetensors``) and return a ready model."""
    config, state_dict = read_cut3r_checkpoint(path, config)
    try:
        return build_cut3r(config, state_dict, device=device, dtype=dtype)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def save_cut3r_safetensors(config: Cut3rConfig, state_dict: Mapping[str, torch.Tensor], dst: str | Path,
                           source: str = "") -> Path:
    """Write ``dst`` (.safetensors, one copy per tensor) and its side-car ``.json`` config."""
    from safetensors.torch import save_file

    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"output must end in .safetensors, got {dst}")
    sd = normalize_state_dict(state_dict)
    with torch.device("meta"):
        check_state_dict(Cut3rModel(config), sd)
    # store each aliased tensor once (safetensors cannot alias); the loader re-creates the twin
    unique = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()
              if not any(alias in k for _, alias in DPT_ALIASES)}
    doc = json.dumps(config_to_json(config), indent=2) + "\n"
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(unique, str(dst), metadata={"cut3r_config": doc, "source": source})
    dst.with_suffix(".json").write_text(doc)
    return dst


def convert_pth_to_safetensors(src: str | Path, dst: str | Path, config: Cut3rConfig | None = None) -> Path:
    """Convert a published ``.pth`` (read without executing it) to ``.safetensors`` + ``.json``."""
    config, state_dict = read_cut3r_checkpoint(src, config)
    return save_cut3r_safetensors(config, state_dict, dst, source=Path(src).name)
