"""The device and weight options that vlm3r-ask, vlm3r-eval and vlm3r-cut3r share, checked the same way."""

from __future__ import annotations

import torch

from vlm3r_ros.engine.devices import resolve_device
from vlm3r_ros.engine.loading import ModelSource
from vlm3r_ros.errors import UserError, one_line
from vlm3r_ros.models.vlm.config import Vlm3rConfigError, parse_config_overrides

OVERRIDES_HELP = ('VLM-3R config fields over the checkpoint\'s config.json, as a JSON object, e.g. '
                  '\'{"fusion_num_heads": 16, "vision": {"hidden_size": 1024}}\' ("vision" / "llm" take objects '
                  'of SigLIP / Qwen2 fields). Only for a model other than the released one: its SigLIP and fusion '
                  'sizes are not in config.json')
WEIGHTS_HELP = ("--base is the local LLaVA-Video-7B-Qwen2 folder, --adapter the local VLM-3R LoRA folder "
                "(Journey9ni/vlm-3r-llava-qwen2-lora), --cut3r the local cut3r_512_dpt_4_64.pth; nothing is "
                "downloaded. Use --tiny-random to test the pipeline without weights")


def parse_device(text: str) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' -> a usable torch.device (UserError if it is not usable here)."""
    if text == "auto":
        raise UserError("--device must be cpu, cuda or cuda:N, got 'auto'")
    try:
        return resolve_device(text)
    except ValueError as exc:
        raise UserError(f"--{exc}") from None


def config_overrides(args) -> dict:
    """``--vlm-config-overrides`` as a dict (UserError when it is not a JSON object of known fields).

    getattr: callers may pass an argparse.Namespace built without the option."""
    try:
        return parse_config_overrides(getattr(args, "vlm_config_overrides", None))
    except Vlm3rConfigError as exc:
        raise UserError(f"--vlm-config-overrides: {one_line(str(exc))}") from None


def weight_options(args) -> list[str]:
    """The weight options given, as the user typed them."""
    names = [f"--{name}" for name in ("base", "adapter", "cut3r") if getattr(args, name, None) is not None]
    if getattr(args, "vlm_config_overrides", None) is not None:
        names.append("--vlm-config-overrides")
    return names


def check_weight_args(args, not_found_hint: str = "") -> None:
    """--tiny-random or all of --base/--adapter/--cut3r, existing and of the right kind; overrides that parse."""
    given = weight_options(args)
    if args.tiny_random:
        if given:
            raise UserError(f"--tiny-random replaces --base, --adapter, --cut3r and --vlm-config-overrides; drop "
                            f"{', '.join(given)}")
        return
    missing = [f"--{name}" for name in ("base", "adapter", "cut3r") if getattr(args, name) is None]
    if missing:
        raise UserError(f"missing {', '.join(missing)}: {WEIGHTS_HELP}")
    for name, kind in (("base", "folder"), ("adapter", "folder"), ("cut3r", "file")):
        path = getattr(args, name)
        if not path.exists():
            raise UserError(f"--{name} not found: {path}{not_found_hint}")
        if (kind == "folder") != path.is_dir():
            raise UserError(f"--{name} {path} must be a {kind}")
    config_overrides(args)  # a typo fails here, before the input is read and the weights load


def model_source(args, *, fresh_fusion_without_adapter: bool = False) -> ModelSource:
    """The models --tiny-random / --base / --adapter / --cut3r / --vlm-config-overrides name.

    ``fresh_fusion_without_adapter`` (the training tools): with a base and no --adapter, a fusion
    block the base lacks is freshly initialised instead of refused."""
    if args.tiny_random:
        return ModelSource(tiny_random=True, seed=args.seed)
    return ModelSource(base=args.base, adapter=args.adapter, cut3r=args.cut3r, config_overrides=config_overrides(args),
                       fresh_fusion_block=fresh_fusion_without_adapter and args.adapter is None)
