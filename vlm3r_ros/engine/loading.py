"""The one place that builds models for every entry point: CUT3R alone, or the whole VLM-3R pipeline.

``vlm3r-node``, ``vlm3r-ask``, ``vlm3r-eval``, ``vlm3r-cut3r``, the demo and the benchmarks all
load here, from local weight paths or as tiny seeded random models, with the same dtype and
device rules:

* dtype ``auto`` is float16 on CUDA (as the official evaluation) and float32 on CPU;
* tiny random CUT3R goes through :func:`~vlm3r_ros.engine.checkpoint.build_cut3r`, the path
  real weights take (float32 heads under half precision);
* the tokenizer is the base model's (or ``tokenizer_dir``); tiny random models use the real
  Qwen2 tokenizer built offline.

Every error the user must fix is a :class:`LoadError` with one line saying what to do;
``overrides_name`` is what the caller calls the VLM config overrides (an option, a parameter).
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vlm3r_ros.engine import checkpoint as cut3r_checkpoint
from vlm3r_ros.engine import vlm_checkpoint
from vlm3r_ros.engine.llm_backend import strip_llm_layers
from vlm3r_ros.engine.vlm3r_pipeline import Vlm3rPipeline
from vlm3r_ros.errors import UserError, one_line
from vlm3r_ros.models.cut3r import Cut3rModel
from vlm3r_ros.models.cut3r.config import PUBLIC_CONFIGS
from vlm3r_ros.models.cut3r.tiny import TINY_CONFIGS, init_random_, random_cut3r
from vlm3r_ros.models.vlm.tiny import TINY_VLM3R, random_vlm3r
from vlm3r_ros.models.vlm.tokenizer import TokenizerError, build_qwen2_tokenizer, load_tokenizer

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
OVERRIDES_OPTION = "--vlm-config-overrides"
CHECKPOINT_HELP = ("the published CUT3R checkpoints (cut3r_512_dpt_4_64.pth, cut3r_224_linear_4.pth) are linked "
                   "from https://github.com/CUT3R/CUT3R; download one and pass its local path with --weights, "
                   "or use --tiny-random to test the pipeline")


class LoadError(UserError):
    """Weights that cannot be loaded, or do not fit together (one line for the user)."""


def dtype_name_for(name: str | None, device: torch.device) -> str:
    """``auto`` / None -> float16 on CUDA, float32 on CPU; any other name as it is."""
    if name in (None, "auto"):
        return "float16" if device.type == "cuda" else "float32"
    return name


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    return DTYPES[dtype_name_for(name, device)]


# ------------------------------------------------------------------ CUT3R
def load_cut3r_model(weights: Path | None, *, tiny_random: bool = False, config_name: str | None = None,
                     device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """The CUT3R model to run: a checkpoint file, or tiny random weights (``tiny_random``)."""
    if tiny_random:
        model = random_cut3r("tiny_dpt", seed)
        return cut3r_checkpoint.build_cut3r(model.config, model.state_dict(), device=device, dtype=dtype)
    if weights is None:
        raise LoadError(f"give --weights PATH or --tiny-random; {CHECKPOINT_HELP}")
    if not weights.is_file():
        raise LoadError(f"CUT3R weights not found: {weights}; {CHECKPOINT_HELP}")
    config = None
    if config_name is not None:
        if config_name not in PUBLIC_CONFIGS:
            raise LoadError(f"--config must be one of {sorted(PUBLIC_CONFIGS)}, got {config_name!r}")
        config = PUBLIC_CONFIGS[config_name]
    try:  # load_cut3r in two steps, so that a read error and a build error read differently
        config, state_dict = cut3r_checkpoint.read_cut3r_checkpoint(weights, config)
    except cut3r_checkpoint.CheckpointError as exc:
        raise LoadError(one_line(str(exc))) from None
    except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:
        # checkpoint.py lets the legacy (non-zip) fallback's unpickling errors through
        raise LoadError(f"{weights}: not a readable torch checkpoint ({one_line(str(exc))})") from None
    except OSError as exc:
        raise LoadError(f"cannot read CUT3R weights {weights}: {exc.strerror or exc}") from None
    try:
        return cut3r_checkpoint.build_cut3r(config, state_dict, device=device, dtype=dtype)
    except cut3r_checkpoint.CheckpointError as exc:
        raise LoadError(f"{weights}: {one_line(str(exc))}") from None
    except torch.OutOfMemoryError:
        raise LoadError(f"out of memory loading {weights} to {device} as {dtype}; "
                        f"try --dtype float16/bfloat16 or another device") from None


def random_cut3r_model(arch: str, *, seed: int = 0, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32):
    """Seeded random weights at any architecture (a public one or a tiny one), for the benchmarks.

    Built on the meta device, so that each parameter is drawn once (a full-size model in seconds)."""
    config = PUBLIC_CONFIGS[arch] if arch in PUBLIC_CONFIGS else TINY_CONFIGS[arch]
    with torch.device("meta"):  # no default init: init_random_ draws every parameter once
        model = Cut3rModel(config)
    model.to_empty(device="cpu")
    init_random_(model, seed=seed)
    return model.eval().requires_grad_(False).to(device=device, dtype=dtype)


# ------------------------------------------------------------------ the whole pipeline
@dataclass(frozen=True)
class ModelSource:
    """Where the models come from: tiny random weights, or local weight paths."""

    tiny_random: bool = False
    seed: int = 0  # of the tiny random weights
    base: Path | None = None  # LLaVA-Video-Qwen2 base folder
    adapter: Path | None = None  # VLM-3R LoRA adapter folder
    cut3r: Path | None = None  # CUT3R checkpoint
    tokenizer_dir: Path | None = None  # None: the base's (the offline-built Qwen2 tokenizer for tiny_random)
    config_overrides: dict | None = None  # VLM-3R config fields over the checkpoint's config.json
    fresh_fusion_block: bool = False  # training from a base without fusion weights: initialise it


@dataclass
class LoadedModels:
    pipeline: Vlm3rPipeline
    label: str
    seconds: float
    report: object = None  # what load_vlm3r reported, when it ran


def load_models(source: ModelSource, device: torch.device, dtype: torch.dtype, *, with_geometry: bool = False,
                overrides_name: str = OVERRIDES_OPTION, llm=None) -> LoadedModels:
    """The tokenizer, VLM-3R and CUT3R, as a :class:`Vlm3rPipeline`.

    ``llm``: where the LLM half runs (:mod:`vlm3r_ros.engine.llm_backend`); None is the in-process
    LLM. Any other backend gets a model without the LLM layers (never read from the checkpoint)."""
    start = time.perf_counter()
    report = None
    if source.tiny_random:
        tokenizer = (_tokenizer(load_tokenizer, source.tokenizer_dir) if source.tokenizer_dir
                     else _tokenizer(build_qwen2_tokenizer))
        vlm = random_vlm3r(TINY_VLM3R, seed=source.seed).to(device=device).to_dtype(dtype)
        if llm is not None:
            strip_llm_layers(vlm)  # the same random weights as the local backend's; the server runs the layers
        cut3r = load_cut3r_model(None, tiny_random=True, device=device, dtype=dtype, seed=source.seed)
        label = f"tiny-random (seed {source.seed})"
    else:
        # the official loader reads the tokenizer from the base folder
        tokenizer = _tokenizer(load_tokenizer, source.tokenizer_dir or source.base)
        cut3r = load_cut3r_model(source.cut3r, device=device, dtype=dtype)  # first: smaller
        try:
            vlm, report = vlm_checkpoint.load_vlm3r(source.base, source.adapter, device=device, dtype=dtype,
                                                    tokenizer_size=tokenizer.get_vocab_size(with_added_tokens=True),
                                                    config_overrides=source.config_overrides,
                                                    llm_layers=llm is None,
                                                    fresh_fusion_block=source.fresh_fusion_block)
        except cut3r_checkpoint.CheckpointError as exc:  # vlm_checkpoint raises the same class
            raise LoadError(vlm_load_error(str(exc), overrides_name)) from None
        except torch.OutOfMemoryError:
            raise LoadError(f"out of memory loading VLM-3R to {device} as {str(dtype).replace('torch.', '')}; "
                            f"try --dtype float16/bfloat16 or another device") from None
        label = f"base {source.base}, adapter {source.adapter}, CUT3R {source.cut3r}"
    if llm is not None:
        label += f"; LLM half on {llm.settings.url} ({llm.settings.model})"
    try:
        pipeline = Vlm3rPipeline(vlm, cut3r, tokenizer, with_geometry=with_geometry, llm=llm)
    except ValueError as exc:  # mismatched CUT3R / VLM widths
        raise LoadError(one_line(str(exc))) from None
    return LoadedModels(pipeline, label, time.perf_counter() - start, report)


def vlm_load_error(message: str, overrides_name: str = OVERRIDES_OPTION) -> str:
    """One line for a VLM checkpoint error, naming ``overrides_name`` where the loader says config_overrides.

    The loader's key listings are long: when the hint falls outside the shortened line, it is added back."""
    text = vlm_checkpoint.name_overrides(message, overrides_name)
    line = one_line(text)
    if overrides_name in text and overrides_name not in line:
        line += f" (do config.json and {overrides_name} describe these weights?)"
    return line


def _tokenizer(fn, *args):
    try:
        return fn(*args)
    except TokenizerError as exc:
        raise LoadError(one_line(str(exc))) from None
