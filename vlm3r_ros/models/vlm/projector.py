"""mlp2x_gelu projector, 2x2 spatial pooling and image-newline layout (LLaVA-Video)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def build_projector(vision_dim: int, llm_dim: int) -> nn.Sequential:
    """``mm_projector``: Linear -> GELU (exact erf) -> Linear, keys ``0.*`` and ``2.*``."""
    return nn.Sequential(nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))


def pool_2d(features: torch.Tensor, grid: int, mode: str = "bilinear", stride: int = 2) -> torch.Tensor:
    """(F, grid*grid, H) row-major -> (F, g*g, H) with g = ceil(grid/stride) (bilinear) or grid//stride."""
    f, n, h = features.shape
    if n != grid * grid:
        raise ValueError(f"expected {grid}x{grid}={grid * grid} tokens per frame, got {n}")
    x = features.view(f, grid, grid, h).permute(0, 3, 1, 2)  # (F, H, grid, grid)
    if mode == "bilinear":
        size = -(-grid // stride)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    elif mode == "average":
        x = F.avg_pool2d(x, stride)
    elif mode == "max":
        x = F.max_pool2d(x, stride)
    else:
        raise ValueError(f"unknown pool mode {mode!r}")
    return x.permute(0, 2, 3, 1).reshape(f, -1, h)


def add_newlines(pooled: torch.Tensor, newline: torch.Tensor, mode: str = "grid") -> torch.Tensor:
    """(F, g*g, H) pooled tokens -> the flat visual sequence (T, H) handed to the LLM.

    grid: a newline after every row of every frame; frame: one after each frame;
    one_token: one after all frames; no_token: none.
    """
    f, n, h = pooled.shape
    g = int(round(n ** 0.5))
    nl = newline.to(pooled.dtype)
    if mode == "grid":
        rows = pooled.view(f, g, g, h)
        return torch.cat([rows, nl.expand(f, g, 1, h)], dim=2).reshape(-1, h)
    if mode == "frame":
        return torch.cat([pooled, nl.expand(f, 1, h)], dim=1).reshape(-1, h)
    if mode == "one_token":
        return torch.cat([pooled.reshape(-1, h), nl.view(1, h)], dim=0)
    if mode == "no_token":
        return pooled.reshape(-1, h)
    raise ValueError(f"unknown newline mode {mode!r}")
