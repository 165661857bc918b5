"""CUT3R output heads: pose decoder, DPT and linear dense heads, and their post-processing.

Both heads take the four decoder hooks ``[dec[0], dec[D/2][:, 1:], dec[3D/4][:, 1:], dec[D]]``
(the last one keeps the camera token in slot 0) and return channels-last dense maps.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Cut3rConfig
from .layers import Cut3rConditionModulationBlock, Cut3rMlp, Cut3rRoPE2D


# What a step can compute beyond the tokens, each by its own part of a head:
#   pose          camera_pose (+ camera_c2w)   the pose MLP on the camera token (cheap)
#   world_points  pts3d_in_other_view, conf    the camera-modulated blocks + one DPT head
#   self_points   pts3d_in_self_view, conf_self one DPT head
#   rgb           rgb                          one DPT head (checkpoints with an rgb head)
HEAD_OUTPUTS = ("pose", "world_points", "self_points", "rgb")


# ----------------------------------------------------------------- post-processing
def depth_exp(xyz: torch.Tensor, pos_z: bool = False) -> torch.Tensor:
    """(..., 3) raw -> points: direction * expm1(norm). ``pos_z`` flips rays with z < 0."""
    if pos_z:
        xyz = xyz * torch.sign(xyz[..., -1:])
    d = xyz.norm(dim=-1, keepdim=True)
    return xyz / d.clamp(min=1e-8) * torch.expm1(d)


def conf_exp(x: torch.Tensor, vmin: float, vmax: float) -> torch.Tensor:
    return vmin + x.exp().clamp(max=vmax - vmin)


def rgb_from_logits(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Logits -> colours in [-1, 1] (the normalised image range)."""
    return (torch.sigmoid(x) * (1 - 2 * eps) + eps - 0.5) * 2


def pose_exp(raw: torch.Tensor) -> torch.Tensor:
    """(B, 7) raw -> [tx, ty, tz, qw, qx, qy, qz]: t * expm1(|t|)/|t|, unit quaternion with qw >= 0."""
    trans, quat = raw[..., :3], raw[..., 3:7]
    d = trans.norm(dim=-1, keepdim=True)
    trans = trans * (torch.expm1(d) / d.clamp(min=1e-8))
    quat = F.normalize(quat, p=2, dim=-1)
    quat = torch.where(quat[..., :1] < 0, -quat, quat)
    return torch.cat([trans, quat], dim=-1)


def pose_to_c2w(pose: torch.Tensor) -> torch.Tensor:
    """(B, 7) [t, qw, qx, qy, qz] -> (B, 4, 4) camera-to-world matrix (OpenCV camera axes)."""
    t, q = pose[:, :3], pose[:, 3:7]
    r, i, j, k = q.unbind(-1)
    two_s = 2.0 / (q * q).sum(-1)
    rot = torch.stack((
        1 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r),
        two_s * (i * j + k * r), 1 - two_s * (i * i + k * k), two_s * (j * k - i * r),
        two_s * (i * k - j * r), two_s * (j * k + i * r), 1 - two_s * (i * i + j * j),
    ), -1).reshape(-1, 3, 3)
    c2w = torch.eye(4, dtype=pose.dtype, device=pose.device).repeat(len(pose), 1, 1)
    c2w[:, :3, :3] = rot
    c2w[:, :3, 3] = t
    return c2w


def _points_and_conf(fmap: torch.Tensor, cfg: Cut3rConfig, pos_z: bool = False):
    """(B, 4, H, W) raw -> points (B, H, W, 3) and confidence (B, H, W)."""
    fmap = fmap.permute(0, 2, 3, 1)
    return depth_exp(fmap[..., :3], pos_z), conf_exp(fmap[..., 3], cfg.conf_mode[1], cfg.conf_mode[2])


class Cut3rPoseDecoder(nn.Module):
    """Camera token (B, D) -> raw pose (B, 7)."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.mlp = Cut3rMlp(dim, int(dim * mlp_ratio), 7)

    def forward(self, token: torch.Tensor) -> torch.Tensor:
        return self.mlp(token)


# ----------------------------------------------------------------------- DPT head
class Cut3rResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class Cut3rFusionBlock(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = Cut3rResidualConvUnit(features)  # noqa: N815 (checkpoint key)
        self.resConfUnit2 = Cut3rResidualConvUnit(features)  # noqa: N815

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Cut3rDPTScratch(nn.Module):
    def __init__(self, layer_dims, features: int):
        super().__init__()
        self.layer1_rn = nn.Conv2d(layer_dims[0], features, 3, padding=1, bias=False)
        self.layer2_rn = nn.Conv2d(layer_dims[1], features, 3, padding=1, bias=False)
        self.layer3_rn = nn.Conv2d(layer_dims[2], features, 3, padding=1, bias=False)
        self.layer4_rn = nn.Conv2d(layer_dims[3], features, 3, padding=1, bias=False)
        # The official module registers the same four convs a second time under this list;
        # checkpoints carry both key sets for the one tensor.
        self.layer_rn = nn.ModuleList([self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn])
        self.refinenet1 = Cut3rFusionBlock(features)
        self.refinenet2 = Cut3rFusionBlock(features)
        self.refinenet3 = Cut3rFusionBlock(features)
        self.refinenet4 = Cut3rFusionBlock(features)  # its resConfUnit1 is never used


class _Upsample(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class Cut3rDPTAdapter(nn.Module):
    """Four token maps (patch grid) -> dense (B, out_channels, H, W)."""

    def __init__(self, token_dims, layer_dims, feature_dim: int, last_dim: int, out_channels: int):
        super().__init__()
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(token_dims[0], layer_dims[0], 1),
                          nn.ConvTranspose2d(layer_dims[0], layer_dims[0], 4, stride=4)),
            nn.Sequential(nn.Conv2d(token_dims[1], layer_dims[1], 1),
                          nn.ConvTranspose2d(layer_dims[1], layer_dims[1], 2, stride=2)),
            nn.Sequential(nn.Conv2d(token_dims[2], layer_dims[2], 1)),
            nn.Sequential(nn.Conv2d(token_dims[3], layer_dims[3], 1),
                          nn.Conv2d(layer_dims[3], layer_dims[3], 3, stride=2, padding=1)),
        ])
        self.scratch = Cut3rDPTScratch(layer_dims, feature_dim)
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, 3, padding=1),
            _Upsample(),
            nn.Conv2d(feature_dim // 2, last_dim, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(last_dim, out_channels, 1),
        )

    def forward(self, hooks: list[torch.Tensor], grid_hw: tuple[int, int]) -> torch.Tensor:
        gh, gw = grid_hw
        # (B, N, C) -> (B, C, gh, gw), then per-hook resampling to strides 4, 8, 16, 32
        maps = [h.transpose(1, 2).reshape(h.shape[0], h.shape[2], gh, gw) for h in hooks]
        maps = [post(m) for post, m in zip(self.act_postprocess, maps)]
        maps = [rn(m) for rn, m in zip(self.scratch.layer_rn, maps)]
        path = self.scratch.refinenet4(maps[3])[:, :, : maps[2].shape[2], : maps[2].shape[3]]
        path = self.scratch.refinenet3(path, maps[2])
        path = self.scratch.refinenet2(path, maps[1])
        path = self.scratch.refinenet1(path, maps[0])
        return self.head(path)


def _final_transform(cfg: Cut3rConfig, rope: Cut3rRoPE2D) -> nn.ModuleList:
    return nn.ModuleList([
        Cut3rConditionModulationBlock(cfg.dec_embed_dim, cfg.dec_num_heads, 4.0, rope) for _ in range(2)
    ])


def _modulate(camera: torch.Tensor, patches: torch.Tensor, blocks: nn.ModuleList, pos: torch.Tensor):
    """Patch tokens (B, N, D) modulated by the camera token (B, D): the other-view head's input."""
    cross = patches
    for blk in blocks:
        cross = blk(cross, camera, pos)
    return cross


class Cut3rDPTHead(nn.Module):
    """DPT head of ``cut3r_512_dpt_4_64``: self-view points, other-view points, rgb, pose."""

    def __init__(self, cfg: Cut3rConfig, rope: Cut3rRoPE2D):
        super().__init__()
        self.cfg = cfg
        token_dims = (cfg.enc_embed_dim, cfg.dec_embed_dim, cfg.dec_embed_dim, cfg.dec_embed_dim)
        dpt = dict(token_dims=token_dims, layer_dims=cfg.dpt_layer_dims,
                   feature_dim=cfg.dpt_feature_dim, last_dim=cfg.dpt_last_dim)
        self.dpt_self = Cut3rDPTAdapter(out_channels=4, **dpt)
        self.final_transform = _final_transform(cfg, rope)
        self.dpt_cross = Cut3rDPTAdapter(out_channels=4, **dpt)
        if cfg.rgb_head:
            self.dpt_rgb = Cut3rDPTAdapter(out_channels=3, **dpt)
        self.pose_head = Cut3rPoseDecoder(cfg.dec_embed_dim)

    def forward(self, hooks: list[torch.Tensor], image_hw: tuple[int, int], pos: torch.Tensor,
                wanted=HEAD_OUTPUTS) -> dict:
        """Only the ``wanted`` outputs (see ``modeling_cut3r.HEAD_OUTPUTS``); the first three
        hooks may be None when no dense output is wanted."""
        p = self.cfg.patch_size
        grid = (image_hw[0] // p, image_hw[1] // p)
        camera, patches = hooks[-1][:, 0], hooks[-1][:, 1:]  # (B, D), (B, N, D)
        out = {}
        if "self_points" in wanted:
            out["pts3d_in_self_view"], out["conf_self"] = _points_and_conf(
                self.dpt_self(hooks[:-1] + [patches], grid), self.cfg)
        if "rgb" in wanted and self.cfg.rgb_head:
            out["rgb"] = rgb_from_logits(self.dpt_rgb(hooks[:-1] + [patches], grid).permute(0, 2, 3, 1))
        if "pose" in wanted:
            out["camera_pose"] = pose_exp(self.pose_head(camera))
        if "world_points" in wanted:
            cross = _modulate(camera, patches, self.final_transform, pos)
            out["pts3d_in_other_view"], out["conf"] = _points_and_conf(
                self.dpt_cross(hooks[:-1] + [cross], grid), self.cfg)
        return out


class Cut3rLinearHead(nn.Module):
    """Linear head of ``cut3r_224_linear_4``: each token predicts a 16x16 pixel block."""

    def __init__(self, cfg: Cut3rConfig, rope: Cut3rRoPE2D):
        super().__init__()
        self.cfg = cfg
        d, hidden, px = cfg.dec_embed_dim, int(cfg.mlp_ratio * cfg.dec_embed_dim), cfg.patch_size ** 2
        self.proj = Cut3rMlp(d, hidden, 4 * px)
        if cfg.rgb_head:
            self.rgb_proj = Cut3rMlp(d, hidden, 3 * px)
        self.pose_head = Cut3rPoseDecoder(d)
        self.final_transform = _final_transform(cfg, rope)
        self.cross_proj = Cut3rMlp(d, hidden, 4 * px)

    def _unpatchify(self, feat: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        # (B, N, C*p*p) -> (B, C, H, W)
        p = self.cfg.patch_size
        b = feat.shape[0]
        feat = feat.transpose(1, 2).reshape(b, -1, image_hw[0] // p, image_hw[1] // p)
        return F.pixel_shuffle(feat, p)

    def forward(self, hooks: list[torch.Tensor], image_hw: tuple[int, int], pos: torch.Tensor,
                wanted=HEAD_OUTPUTS) -> dict:
        camera, patches = hooks[-1][:, 0], hooks[-1][:, 1:]  # (B, D), (B, N, D)
        out = {}
        if "self_points" in wanted:
            out["pts3d_in_self_view"], out["conf_self"] = _points_and_conf(
                self._unpatchify(self.proj(patches), image_hw), self.cfg, pos_z=True)
        if "rgb" in wanted and self.cfg.rgb_head:
            out["rgb"] = rgb_from_logits(self._unpatchify(self.rgb_proj(patches), image_hw).permute(0, 2, 3, 1))
        if "pose" in wanted:
            out["camera_pose"] = pose_exp(self.pose_head(camera))
        if "world_points" in wanted:
            cross = _modulate(camera, patches, self.final_transform, pos)
            out["pts3d_in_other_view"], out["conf"] = _points_and_conf(
                self._unpatchify(self.cross_proj(cross), image_hw), self.cfg)
        return out
