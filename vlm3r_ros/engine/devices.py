"""Resolving a device name ("auto", "cpu", "cuda", "cuda:N") to a usable torch.device."""

from __future__ import annotations

import re

import torch


def resolve_device(name: str) -> torch.device:
    """Raise ValueError (with what to do) unless ``name`` is usable on this machine."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name or ""):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available to this torch ({torch.__version__}); "
                             f"use cpu, or install a CUDA build of torch (see README.md)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device
