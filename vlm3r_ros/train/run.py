"""One training run: options (official defaults) -> data -> model -> ``Vlm3rTrainer`` -> adapter folder.

Defaults are the official run's (``scripts/VLM_3R/train_vsibench.sh``): lr 2e-5, cosine schedule,
warmup ratio 0.03, weight decay 0, per-device batch 1, gradient accumulation 16, 5 epochs,
gradient checkpointing, 32 uniformly sampled frames, LoRA r 128 / alpha 256, bf16 on a GPU, the
time instruction before each first question (``--add_time_instruction True``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import DataSource, Vlm3rTrainDataset, check_media, load_mix, parse_source
from .model import FUSION_DROPOUT, LORA_ALPHA, LORA_DROPOUT, LORA_R, LoraOptions, TrainableVlm3r
from .trainer import MetricsLog, Vlm3rTrainer

log = logging.getLogger(__name__)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainOptions:
    output_dir: str
    data: list[str] = field(default_factory=list)  # FILE[:WEIGHT]
    data_root: str | None = None
    num_frames: int = 32
    lora_r: int = LORA_R
    lora_alpha: float = LORA_ALPHA
    lora_dropout: float = LORA_DROPOUT
    fusion_dropout: float = FUSION_DROPOUT
    learning_rate: float = 2e-5
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    per_device_batch: int = 1
    grad_accum: int = 16
    epochs: float = 5.0
    max_steps: int = -1
    save_steps: int = 500
    save_total_limit: int | None = None
    logging_steps: int = 1
    seed: int = 0
    gradient_checkpointing: bool = True
    precision: str = "auto"
    deepspeed: str | None = None
    fsdp: str = ""
    resume: str | None = None  # a checkpoint folder, or "auto": the newest in output_dir
    sequential: bool = False  # no shuffling: the file order, every epoch
    feature_cache: str | None = None
    time_instruction: bool = True  # the official --add_time_instruction True (its evaluation asks without)
    dataloader_workers: int = 0
    max_grad_norm: float = 1.0
    progress: bool = True


@dataclass
class LoadedBase:
    """What the trainer starts from (engine loading gives it; --tiny-random builds it)."""

    vlm: object  # Vlm3rModel, LoRA not merged in yet
    cut3r: object | None
    tokenizer: object
    name: str  # base_model_name_or_path written into adapter_config.json


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        if precision != "fp32" and device.type != "cuda":
            raise ValueError(f"--precision {precision} needs a CUDA GPU; on {device.type} train in fp32")
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def compute_dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def training_arguments(opts: TrainOptions, precision: str, use_cpu: bool):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=opts.output_dir, per_device_train_batch_size=opts.per_device_batch,
        gradient_accumulation_steps=opts.grad_accum, learning_rate=opts.learning_rate,
        lr_scheduler_type=opts.lr_scheduler_type, warmup_steps=opts.warmup_ratio,  # < 1: a ratio
        weight_decay=opts.weight_decay,
        num_train_epochs=opts.epochs, max_steps=opts.max_steps, save_strategy="steps", save_steps=opts.save_steps,
        save_total_limit=opts.save_total_limit, logging_steps=opts.logging_steps, seed=opts.seed,
        data_seed=opts.seed, bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=use_cpu,
        deepspeed=opts.deepspeed, fsdp=opts.fsdp, report_to="none", remove_unused_columns=False,
        dataloader_num_workers=opts.dataloader_workers, max_grad_norm=opts.max_grad_norm,
        disable_tqdm=not opts.progress, ddp_find_unused_parameters=False,
    )


def build_trainer(opts: TrainOptions, base: LoadedBase, *, samples=None, features=None) -> Vlm3rTrainer:
    """The trainer for ``opts`` (the model is moved to the trainer's device by the Trainer)."""
    use_cpu = not torch.cuda.is_available()
    device = torch.device("cpu" if use_cpu else "cuda")
    precision = resolve_precision(opts.precision, device)
    if samples is None:
        sources: list[DataSource] = [parse_source(s, opts.data_root) for s in opts.data]
        samples = load_mix(sources, seed=opts.seed)
    if features is None:
        check_media(samples)
    if features is None and opts.feature_cache:
        from .feature_cache import FeatureCache

        features = FeatureCache(opts.feature_cache).reader(base, opts.num_frames)
        features.check_all(samples)  # a stale or missing entry fails here, before training starts
    dataset = Vlm3rTrainDataset(samples, base.tokenizer, num_frames=opts.num_frames, features=features,
                                time_instruction=opts.time_instruction)

    dtype = compute_dtype(precision)
    base.vlm.to_dtype(dtype)
    if base.cut3r is not None:
        base.cut3r.to(dtype=dtype)
    model = TrainableVlm3r(base.vlm, None if features is not None else base.cut3r,
                           lora=LoraOptions(opts.lora_r, opts.lora_alpha, opts.lora_dropout),
                           fusion_dropout=opts.fusion_dropout)
    if opts.gradient_checkpointing:
        model.activation_checkpointing_enable()
    args = training_arguments(opts, precision, use_cpu)
    trainer = Vlm3rTrainer(model=model, args=args, train_dataset=dataset, callbacks=[MetricsLog(opts.output_dir)],
                           base_name=base.name, sequential=opts.sequential)
    if opts.fsdp and not trainer.is_fsdp_enabled:
        # accelerate (1.15) turns FSDP on for GPU-like devices only; elsewhere it would quietly run DDP
        raise ValueError(f"--fsdp {opts.fsdp!r} cannot apply here: accelerate uses FSDP only on GPUs/accelerators, "
                         f"and this run is {trainer.accelerator.distributed_type.value} (on CPU, leave --fsdp out: "
                         f"several processes then run DDP over gloo)")
    return trainer


def newest_checkpoint(output_dir: str | Path) -> str | None:
    found = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])
                   if p.name.split("-")[-1].isdigit() else -1)
    return str(found[-1]) if found else None


def train(opts: TrainOptions, base: LoadedBase, **kwargs) -> Vlm3rTrainer:
    """Train, save the final adapter into ``output_dir`` and return the trainer."""
    trainer = build_trainer(opts, base, **kwargs)
    resume = opts.resume
    if resume == "auto":
        resume = newest_checkpoint(opts.output_dir)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(opts.output_dir)
    return trainer
