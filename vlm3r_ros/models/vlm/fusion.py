"""The Spatial-Visual-View fusion block (official ``CrossAttentionFusion``).

Each frame's SigLIP tokens (queries) attend to that frame's CUT3R tokens (keys/values):

    a = clip_norm(v); b = spatial_encoder_norm(s)
    attn = MHA(clip_query_proj(a), spatial_encoder_key_proj(b), spatial_encoder_value_proj(b))
    fused = v + out_norm(out_proj(attn))          # norm BEFORE the residual, raw v in the residual

Note the stacked projections: the block's own q/k/v Linears, then the packed ``in_proj`` of
``nn.MultiheadAttention``; its ``out_proj``, then the block's ``out_proj``.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class Vlm3rFusionBlock(nn.Module):
    def __init__(self, vision_dim: int, spatial_dim: int, num_heads: int = 18):
        super().__init__()
        self.clip_norm = nn.LayerNorm(vision_dim)
        self.spatial_encoder_norm = nn.LayerNorm(spatial_dim)
        self.clip_query_proj = nn.Linear(vision_dim, vision_dim)
        self.spatial_encoder_key_proj = nn.Linear(spatial_dim, vision_dim)
        self.spatial_encoder_value_proj = nn.Linear(spatial_dim, vision_dim)
        self.cross_attention = nn.MultiheadAttention(vision_dim, num_heads, batch_first=True)
        self.out_proj = nn.Linear(vision_dim, vision_dim)
        self.out_norm = nn.LayerNorm(vision_dim)
        self.dropout = nn.Dropout(0.1)  # identity at inference

    def forward(self, vision: torch.Tensor, spatial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """vision (F, Nv, Dv), spatial (F, Ns, Ds) -> fused (F, Nv, Dv), head-mean attention (F, Nv, Ns)."""
        spatial = spatial.to(vision.dtype)
        a = self.clip_norm(vision)
        b = self.spatial_encoder_norm(spatial)
        attn, weights = self.cross_attention(self.clip_query_proj(a), self.spatial_encoder_key_proj(b),
                                             self.spatial_encoder_value_proj(b), need_weights=True)
        fused = self.out_norm(self.out_proj(attn)) + vision
        return self.dropout(fused), weights


def select_spatial_tokens(camera: torch.Tensor, patches: torch.Tensor, select_feature: str) -> torch.Tensor:
    """camera (F, 1, Ds), patches (F, N, Ds) -> the key/value set: 'all' puts the camera token first."""
    if select_feature == "all":
        parts = ["camera_tokens", "patch_tokens"]
    else:
        parts = [p.strip() for p in select_feature.split(",")]
    chosen = {"camera_tokens": camera, "patch_tokens": patches}
    try:
        return torch.cat([chosen[p] for p in parts], dim=1)
    except KeyError as exc:
        raise ValueError(f"unknown spatial feature {exc.args[0]!r} in select_feature={select_feature!r}") from None
