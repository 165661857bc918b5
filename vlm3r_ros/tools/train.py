"""vlm3r-train: instruction-tune VLM-3R (LoRA on the LLM, fusion block and projector trained fully).

Defaults are the official run's (VITA-Group/VLM-3R scripts/VLM_3R/train_vsibench.sh). One process:

    vlm3r-train --data qa.jsonl --output-dir runs/a --base LLaVA-Video-7B-Qwen2 \\
        --adapter vlm-3r-llava-qwen2-lora --cut3r cut3r_512_dpt_4_64.pth

Several GPUs or CPU processes (DDP from the library; gloo on CPU):

    torchrun --nproc_per_node 8 -m vlm3r_ros.tools.train --data ... [--deepspeed zero2.json]

The output folder is the official adapter layout (adapter_config.json, adapter_model.safetensors,
non_lora_trainables.bin, config.json): vlm3r-ask --base BASE --adapter OUTPUT_DIR loads it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

PROG = "vlm3r-train"


def build_parser() -> argparse.ArgumentParser:
    from vlm3r_ros.tools.model_options import OVERRIDES_HELP

    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", required=True, metavar="FILE[:WEIGHT]",
                   help="QA rows (vlm3r-gen-qa .jsonl/.json/.parquet) or official LLaVA JSON with 'conversations'; "
                        "repeat for a mix; WEIGHT repeats (2) or subsamples (0.5) a file's rows")
    p.add_argument("--data-root", help="where the rows' videos / frame folders are (default: each file's folder)")
    p.add_argument("--output-dir", required=True, help="checkpoints, metrics.jsonl, loss.png and the final adapter")
    p.add_argument("--base", type=Path, help="local LLaVA-Video-7B-Qwen2 folder")
    p.add_argument("--adapter", type=Path, help="local VLM-3R adapter folder to start from (its fusion block, "
                                                "projector and LoRA merged in); without it, training starts "
                                                "from the plain base and a fusion block the base lacks is freshly "
                                                "initialised, as the official run from LLaVA-Video-7B-Qwen2")
    p.add_argument("--cut3r", type=Path, help="CUT3R checkpoint (cut3r_512_dpt_4_64.pth)")
    p.add_argument("--vlm-config-overrides", metavar="JSON", help=OVERRIDES_HELP)
    p.add_argument("--tiny-random", action="store_true", help="tiny random models (tests; nothing downloaded)")
    p.add_argument("--seed", type=int, default=0, help="seed of data order, dropout and --tiny-random weights")
    p.add_argument("--num-frames", type=int, default=32,
                   help="frames sampled per video, exactly as the official run (np.linspace over the video; "
                        "a shorter one repeats frames; default 32)")
    p.add_argument("--feature-cache", help="read SigLIP/CUT3R features from this vlm3r-cache-features folder")
    p.add_argument("--time-instruction", action=argparse.BooleanOptionalAction, default=True,
                   help="put the official time instruction ('The video lasts for ... seconds, ...') before each first "
                        "question, as the official run (--add_time_instruction True; default). The official "
                        "evaluation, and vlm3r-eval / vlm3r-ask, ask without it: --no-time-instruction trains on "
                        "exactly the prompt they ask")
    g = p.add_argument_group("LoRA and trained parts (official defaults)")
    g.add_argument("--lora-r", type=int, default=128)
    g.add_argument("--lora-alpha", type=float, default=256)
    g.add_argument("--lora-dropout", type=float, default=0.05)
    g.add_argument("--fusion-dropout", type=float, default=0.1, help="the fusion block's dropout in training")
    g = p.add_argument_group("optimisation (official defaults)")
    g.add_argument("--lr", type=float, default=2e-5)
    g.add_argument("--scheduler", default="cosine", help="transformers lr_scheduler_type (default cosine)")
    g.add_argument("--warmup-ratio", type=float, default=0.03)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--per-device-batch", type=int, default=1)
    g.add_argument("--grad-accum", type=int, default=16)
    g.add_argument("--epochs", type=float, default=5.0)
    g.add_argument("--max-steps", type=int, default=-1, help="optimizer steps; overrides --epochs when > 0")
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto: fp32 on CPU, bf16 on a GPU that has it, else fp16")
    g.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    g.add_argument("--deepspeed", help="DeepSpeed JSON config (e.g. ZeRO-2 as the official run)")
    g.add_argument("--fsdp", default="", help="transformers' fsdp option, e.g. 'full_shard auto_wrap'")
    g.add_argument("--sequential", action="store_true", help="no shuffling: file order every epoch")
    g.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    g = p.add_argument_group("checkpoints and logs")
    g.add_argument("--save-steps", type=int, default=500)
    g.add_argument("--save-total-limit", type=int)
    g.add_argument("--logging-steps", type=int, default=1)
    g.add_argument("--resume", nargs="?", const="auto",
                   help="resume from a checkpoint folder (no value: the newest in --output-dir)")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def load_base(args, dtype: torch.dtype):
    """The starting model through the project's one loading entry (engine.loading), as a LoadedBase."""
    from vlm3r_ros.engine.loading import load_models
    from vlm3r_ros.tools.model_options import model_source
    from vlm3r_ros.train.export import write_base_folder
    from vlm3r_ros.train.run import LoadedBase

    loaded = load_models(model_source(args, fresh_fusion_without_adapter=True), torch.device("cpu"), dtype)
    pipe = loaded.pipeline
    if loaded.report is not None and loaded.report.fusion_block_fresh and int(os.environ.get("RANK", "0")) == 0:
        print(f"{PROG}: no --adapter and no fusion block in {args.base}: the fusion block is freshly initialised "
              f"(Linear N(0, 0.02), LayerNorm 1/0, attention in_proj Xavier; as the official run from "
              f"LLaVA-Video-7B-Qwen2) and trained with the projector and LoRA", file=sys.stderr)
    if args.tiny_random:  # no base on disk: write it, so that the adapter has a base to load against
        base_dir = Path(args.output_dir) / "base"
        if int(os.environ.get("RANK", "0")) == 0:
            write_base_folder(pipe.vlm, base_dir)
        return LoadedBase(pipe.vlm, pipe.cut3r, pipe.tokenizer, str(base_dir))
    return LoadedBase(pipe.vlm, pipe.cut3r, pipe.tokenizer, str(args.base))


def check_args(args) -> None:
    from vlm3r_ros.errors import UserError as ToolError

    for name in ("num_frames", "per_device_batch", "grad_accum", "lora_r", "save_steps", "logging_steps"):
        if getattr(args, name) < 1:
            raise ToolError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.tiny_random:
        given = [f"--{n}" for n in ("base", "adapter", "cut3r") if getattr(args, n) is not None]
        if given:
            raise ToolError(f"--tiny-random replaces --base, --adapter and --cut3r; drop {', '.join(given)}")
    else:
        missing = [f"--{n}" for n in ("base", "cut3r") if getattr(args, n) is None]
        if missing:
            raise ToolError(f"missing {', '.join(missing)} (or --tiny-random); --adapter is optional (without it a "
                            f"fusion block the base lacks is freshly initialised)")


def options_from_args(args):
    from vlm3r_ros.train.run import TrainOptions

    return TrainOptions(
        output_dir=args.output_dir, data=args.data, data_root=args.data_root, num_frames=args.num_frames,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        fusion_dropout=args.fusion_dropout, learning_rate=args.lr, lr_scheduler_type=args.scheduler,
        warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay, per_device_batch=args.per_device_batch,
        grad_accum=args.grad_accum, epochs=args.epochs, max_steps=args.max_steps, save_steps=args.save_steps,
        save_total_limit=args.save_total_limit, logging_steps=args.logging_steps, seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing, precision=args.precision, deepspeed=args.deepspeed,
        fsdp=args.fsdp, resume=args.resume, sequential=args.sequential, feature_cache=args.feature_cache,
        time_instruction=args.time_instruction,
        dataloader_workers=args.workers, max_grad_norm=args.max_grad_norm, progress=args.progress)


def strategy(trainer) -> str:
    """How the run was distributed, named by the wrapper the Trainer put around the model."""
    wrapper = type(trainer.model_wrapped).__name__
    if trainer.is_fsdp_enabled:
        return f"FSDP ({wrapper})"
    if trainer.is_deepspeed_enabled:
        return f"DeepSpeed ({wrapper})"
    return f"DDP ({wrapper})" if trainer.args.world_size > 1 else "one process"


def main(argv: list[str] | None = None) -> int:
    from vlm3r_ros.errors import UserError as ToolError
    from vlm3r_ros.train.data import TrainDataError
    from vlm3r_ros.train.feature_cache import StaleCacheError
    from vlm3r_ros.train.run import compute_dtype, resolve_precision, train

    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        opts = options_from_args(args)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        base = load_base(args, compute_dtype(resolve_precision(opts.precision, device)))
        trainer = train(opts, base)
    except (ToolError, TrainDataError, StaleCacheError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if trainer.is_world_process_zero():
        print(f"{PROG}: adapter saved to {opts.output_dir} (base {base.name}); {trainer.state.global_step} "
              f"optimizer steps, world size {trainer.args.world_size}, {strategy(trainer)}; metrics in "
              f"{opts.output_dir}/metrics.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
