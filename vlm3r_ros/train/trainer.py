"""VLM-3R instruction tuning on Hugging Face ``Trainer``.

The distributed strategies are the library's: one process, DDP (``torchrun --nproc_per_node N``
or ``accelerate launch``; gloo on CPU, NCCL on GPU), DeepSpeed ZeRO (``deepspeed=`` a JSON
config, as the official run's ``scripts/zero2.json``) and FSDP (``fsdp=``). What is ours:

* checkpoints (every ``save_steps`` and at the end) hold the official adapter layout
  (:func:`.export.save_adapter`) instead of a full model, and resume reads it back;
* :class:`MetricsLog` writes every logged metric as a JSON line and draws the loss curve.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME

from .data import collate
from .export import load_trainables, save_adapter

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"


class Vlm3rTrainer(Trainer):
    """``Trainer`` whose saved model is the VLM-3R adapter folder (LoRA + non-LoRA trainables)."""

    def __init__(self, *args, base_name: str = "", sequential: bool = False, **kwargs):
        kwargs.setdefault("data_collator", collate)
        super().__init__(*args, **kwargs)
        self.base_name = base_name
        self.sequential = sequential

    def training_step(self, *args, **kwargs):
        # gradients even when the caller left them off globally (torch.set_grad_enabled(False) elsewhere
        # in the process, as an inference library may do): the Trainer does not switch them on itself
        with torch.enable_grad():
            return super().training_step(*args, **kwargs)

    def _get_train_sampler(self, *args, **kwargs):
        if self.sequential:  # the same order in every run (tests compare runs step by step)
            return torch.utils.data.SequentialSampler(self.train_dataset)
        return super()._get_train_sampler(*args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        save_adapter(model, output_dir, base_name=self.base_name, state_dict=state_dict)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_trainables(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)


class MetricsLog(TrainerCallback):
    """Appends each log (loss, learning rate, grad norm, step, epoch) to ``metrics.jsonl`` and draws
    ``loss.png`` at every save and at the end (main process only)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.folder.mkdir(parents=True, exist_ok=True)
            record = {"step": state.global_step, "epoch": state.epoch, **logs}
            with open(self.folder / METRICS_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_loss(self.folder / METRICS_FILE, self.folder / LOSS_PLOT)

    def on_train_end(self, args, state, control, **kwargs):
        self.on_save(args, state, control)


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss(metrics_file: str | Path, out: str | Path, title: str = "VLM-3R training loss") -> Path | None:
    """The training loss per optimizer step (from ``metrics.jsonl``) as a PNG; None without points."""
    points = [(r["step"], r["loss"]) for r in read_metrics(metrics_file) if "loss" in r]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 60 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return Path(out)
