"""CUT3R (``ARCroco3DStereo``): a recurrent 3-D reconstruction model, streaming API.

Every frame is encoded by a ViT (``enc_blocks``), then two decoder stacks run side by
side: ``dec_blocks`` over ``[camera token, image tokens]`` and ``dec_blocks_state`` over
the recurrent state tokens, each layer cross-attending to the other stream's previous
output. The normalised last layer gives the camera token z'_t and the patch tokens F'_t
that VLM-3R injects into its language model; the heads turn them into point maps and a
camera pose. A pose-retriever memory carries the camera-token input between frames.

The model is functional: :meth:`Cut3rModel.step` takes a :class:`Cut3rState` and returns
the outputs plus a NEW state, so a failed step leaves the caller's state untouched. A step
reads only the state (fixed size), never past frames: time and memory per frame are
constant. Attribute names equal the official checkpoint keys.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from .config import Cut3rConfig
from .heads import HEAD_OUTPUTS, Cut3rDPTHead, Cut3rLinearHead, pose_to_c2w
from .layers import (Cut3rDecoderBlock, Cut3rEncoderBlock, Cut3rLinear, Cut3rRoPE2D, Cut3rTensorCache,
                     layer_norm, onednn_linear_available)


class Cut3rInputError(ValueError):
    """A frame (or mask) the model cannot take; nothing was changed."""


@dataclass(frozen=True)
class Cut3rState:
    """Recurrent state of B independent streams."""

    state_feat: torch.Tensor  # (B, state_size, dec_dim) recurrent state tokens
    mem: torch.Tensor  # (B, local_mem_size, 2*dec_dim) pose-retriever memory
    steps: torch.Tensor  # (B,) int64 frames stepped since the stream was created

    @property
    def batch_size(self) -> int:
        return self.state_feat.shape[0]


@dataclass
class Cut3rHeadOutput:
    """Dense and pose outputs of one step (float32, channels-last); None where not asked for.

    Points are metres-like units of the model; the world frame is the first frame's
    camera frame (OpenCV axes: x right, y down, z forward).
    """

    pts3d_in_self_view: torch.Tensor | None = None  # (B, H, W, 3) points in this frame's camera frame
    conf_self: torch.Tensor | None = None  # (B, H, W) confidence >= 1
    pts3d_in_other_view: torch.Tensor | None = None  # (B, H, W, 3) points in the world (first-frame) frame
    conf: torch.Tensor | None = None  # (B, H, W) confidence >= 1
    camera_pose: torch.Tensor | None = None  # (B, 7) [tx, ty, tz, qw, qx, qy, qz], camera-to-world
    camera_c2w: torch.Tensor | None = None  # (B, 4, 4) camera-to-world matrix
    rgb: torch.Tensor | None = None  # (B, H, W, 3) colours in [-1, 1], None without an rgb head


@dataclass
class Cut3rStepOutput:
    camera_token: torch.Tensor  # (B, 1, dec_dim) z'_t: camera slot of the normalised last layer
    patch_tokens: torch.Tensor  # (B, N, dec_dim) F'_t, row-major over the patch grid
    enc_feat: torch.Tensor  # (B, N, enc_dim) image-encoder output
    pose_token_in: torch.Tensor  # (B, 1, dec_dim) camera-token input of the decoder
    grid_hw: tuple[int, int]  # patch grid (H/16, W/16)
    heads: Cut3rHeadOutput | None = None


class Cut3rPatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        # one positions tensor per grid: the RoPE tables are cached per positions tensor
        self.positions = Cut3rTensorCache()

    def grid_positions(self, b: int, gh: int, gw: int, device: torch.device) -> torch.Tensor:
        """(B, gh*gw, 2) int64 (row, col) of a row-major patch grid (cached; never change it in place)."""
        def make():
            rows = torch.arange(gh, device=device).repeat_interleave(gw)
            cols = torch.arange(gw, device=device).repeat(gh)
            return torch.stack([rows, cols], dim=-1)[None].expand(b, -1, -1)

        return self.positions.get((b, gh, gw, device, torch.is_inference_mode_enabled()), make)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.proj(images)  # (B, D, gh, gw)
        b, _, gh, gw = x.shape
        return x.flatten(2).transpose(1, 2), self.grid_positions(b, gh, gw, x.device)


class Cut3rPoseRetriever(nn.Module):
    """``LocalMemory``: a small token memory read and written by 2-D-free decoder blocks."""

    def __init__(self, cfg: Cut3rConfig):
        super().__init__()
        d = cfg.dec_embed_dim
        self.dim = d
        self.proj_q = Cut3rLinear(cfg.enc_embed_dim, d)
        self.masked_token = nn.Parameter(torch.zeros(1, 1, d))
        self.mem = nn.Parameter(torch.zeros(1, cfg.local_mem_size, 2 * d))
        self.write_blocks = nn.ModuleList([Cut3rDecoderBlock(2 * d, cfg.dec_num_heads, 4.0, None) for _ in range(2)])
        self.read_blocks = nn.ModuleList([Cut3rDecoderBlock(2 * d, cfg.dec_num_heads, 4.0, None) for _ in range(2)])

    def inquire(self, global_feat: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        # global_feat (B, 1, enc) -> predicted camera-token input (B, 1, dec)
        x = self.proj_q(global_feat)
        x = torch.cat([x, self.masked_token.expand(x.shape[0], -1, -1)], dim=-1)
        for blk in self.read_blocks:
            x = blk(x, mem, None, None)
        return x[..., -self.dim:]

    def update_mem(self, mem: torch.Tensor, global_feat: torch.Tensor, camera_token: torch.Tensor) -> torch.Tensor:
        feat = torch.cat([self.proj_q(global_feat), camera_token], dim=-1)  # (B, 1, 2*dec)
        for blk in self.write_blocks:
            mem = blk(mem, feat, None, None)
        return mem


class Cut3rModel(nn.Module):
    def __init__(self, config: Cut3rConfig):
        super().__init__()
        cfg = config.validate()
        if cfg.dec_depth < 2:
            raise ValueError("dec_depth must be at least 2 (the heads hook dec[D/2] and dec[3D/4])")
        self.config = cfg
        enc, dec = cfg.enc_embed_dim, cfg.dec_embed_dim
        rope = Cut3rRoPE2D(cfg.rope_base)

        self.pose_token = nn.Parameter(torch.zeros(1, 1, dec))
        self.masked_img_token = nn.Parameter(torch.zeros(1, enc))  # used only for missing images
        self.masked_ray_map_token = nn.Parameter(torch.zeros(1, enc))  # ray-map branch, unused here
        self.patch_embed = Cut3rPatchEmbed(3, enc, cfg.patch_size)
        self.patch_embed_ray_map = Cut3rPatchEmbed(6, enc, cfg.patch_size)
        self.enc_blocks = nn.ModuleList([
            Cut3rEncoderBlock(enc, cfg.enc_num_heads, cfg.mlp_ratio, rope, round_qk_fp16=True)
            for _ in range(cfg.enc_depth)
        ])
        self.enc_norm = layer_norm(enc)
        # The ray-map encoder (16 heads, hard-coded) is in every checkpoint but has no
        # numeric effect on the image-only path; it is loaded and never run.
        self.enc_blocks_ray_map = nn.ModuleList([
            Cut3rEncoderBlock(enc, 16, 4.0, rope) for _ in range(cfg.ray_enc_depth)
        ])
        self.enc_norm_ray_map = layer_norm(enc)

        self.decoder_embed = Cut3rLinear(enc, dec)
        self.dec_blocks = nn.ModuleList([
            Cut3rDecoderBlock(dec, cfg.dec_num_heads, cfg.mlp_ratio, rope) for _ in range(cfg.dec_depth)
        ])
        self.dec_norm = layer_norm(dec)
        self.pose_retriever = Cut3rPoseRetriever(cfg)
        self.register_tokens = nn.Embedding(cfg.state_size, enc)
        self.decoder_embed_state = Cut3rLinear(enc, dec)
        self.dec_blocks_state = nn.ModuleList([
            Cut3rDecoderBlock(dec, cfg.state_dec_num_heads, cfg.mlp_ratio, rope) for _ in range(cfg.dec_depth)
        ])
        self.dec_norm_state = layer_norm(dec)
        head_cls = Cut3rDPTHead if cfg.head_type == "dpt" else Cut3rLinearHead
        self.downstream_head = head_cls(cfg, rope)
        self.positions = Cut3rTensorCache()  # state and decoder positions, reused so RoPE tables are too
        # CPU float32 linears on oneDNN: ~10 % faster steps here, parity kept (docs/cut3r.md)
        self.set_linear_kernel("onednn")

    # ------------------------------------------------------------------ state
    @property
    def device(self) -> torch.device:
        return self.pose_token.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pose_token.dtype

    def state_positions(self, batch_size: int) -> torch.Tensor:
        """(B, state_size, 2) int64 RoPE (row, col) of the state tokens on a grid of even width
        (cached, so the RoPE tables are too: never change it in place)."""
        def make():
            width = self.config.state_width
            index = torch.arange(self.config.state_size, device=self.device)
            return torch.stack([index // width, index % width], dim=-1)[None].expand(batch_size, -1, -1)

        key = ("state", batch_size, self.device, torch.is_inference_mode_enabled())
        return self.positions.get(key, make)

    def _decoder_positions(self, pos: torch.Tensor) -> torch.Tensor:
        """(B, N, 2) patch positions -> (B, 1+N, 2) with the camera token at (-1, -1) (cached)."""
        def make():
            cam_pos = torch.full((pos.shape[0], 1, 2), -1, dtype=pos.dtype, device=pos.device)
            return torch.cat([cam_pos, pos], dim=1), pos  # pos pinned: its address is part of the key

        key = ("decoder", pos.data_ptr(), tuple(pos.shape), pos.stride(), pos.device,
               torch.is_inference_mode_enabled())
        return self.positions.get(key, make)[0]

    @torch.inference_mode()
    def init_state(self, batch_size: int = 1) -> Cut3rState:
        """The state before any frame: embedded register tokens and the learned memory."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        state = self.decoder_embed_state(self.register_tokens.weight)[None].expand(batch_size, -1, -1)
        mem = self.pose_retriever.mem.expand(batch_size, -1, -1)
        steps = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        return Cut3rState(state.clone(), mem.clone(), steps)

    def set_linear_kernel(self, kernel: str) -> str:
        """``"onednn"``: CPU float32 linear layers on oneDNN's GEMM (see :class:`Cut3rLinear`);
        ``"default"``: torch's. Returns the kernel in use (``"default"`` where oneDNN is missing)."""
        if kernel not in ("default", "onednn"):
            raise ValueError(f"linear kernel must be 'default' or 'onednn', got {kernel!r}")
        use = kernel == "onednn" and onednn_linear_available()
        for module in self.modules():
            if isinstance(module, Cut3rLinear):
                module.onednn = use
        self.linear_kernel = "onednn" if use else "default"
        return self.linear_kernel

    # ---------------------------------------------------------------- checks
    def check_frames(self, frames: torch.Tensor, state: Cut3rState | None = None) -> None:
        """Raise :class:`Cut3rInputError` unless ``frames`` is a valid (B, 3, H, W) batch."""
        p = self.config.patch_size
        if not isinstance(frames, torch.Tensor):
            raise Cut3rInputError(f"frames must be a torch.Tensor, got {type(frames).__name__}")
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise Cut3rInputError(f"frames must be (B, 3, H, W) normalised RGB, got shape {tuple(frames.shape)}")
        if not frames.is_floating_point():
            raise Cut3rInputError(f"frames must be floating point in [-1, 1], got {frames.dtype}")
        h, w = frames.shape[-2:]
        if h % p or w % p or h == 0 or w == 0:
            raise Cut3rInputError(f"frame size {h}x{w} (HxW) is not a positive multiple of the patch size {p}; "
                                  f"resize or crop first (see vlm3r_ros.models.cut3r.processing)")
        if not bool(torch.isfinite(frames).all()):
            raise Cut3rInputError("frames contain NaN or inf")
        if state is not None and frames.shape[0] != state.batch_size:
            raise Cut3rInputError(f"batch of {frames.shape[0]} frames for a state of {state.batch_size} streams")

    def _mask(self, value, batch: int, name: str) -> torch.Tensor:
        try:
            mask = torch.as_tensor(value, device=self.device)
        except (TypeError, ValueError, RuntimeError):
            raise Cut3rInputError(f"{name} must be a bool or a (B,) bool tensor, got {type(value).__name__}") from None
        if mask.dtype != torch.bool:
            raise Cut3rInputError(f"{name} must be a bool or a (B,) bool tensor, got {mask.dtype}")
        if mask.ndim == 0:
            mask = mask.expand(batch)
        if mask.shape != (batch,):
            raise Cut3rInputError(f"{name} must have shape ({batch},), got {tuple(mask.shape)}")
        return mask

    # ------------------------------------------------------------------- step
    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> encoder tokens (B, N, enc_dim) and their (row, col) positions."""
        x, pos = self.patch_embed(frames.to(device=self.device, dtype=self.dtype))
        for blk in self.enc_blocks:
            x = blk(x, pos)
        return self.enc_norm(x), pos

    def head_outputs(self, heads=None, with_heads: bool = False) -> frozenset[str]:
        """The validated set of :data:`HEAD_OUTPUTS` a step computes.

        ``with_heads=True`` means every head the checkpoint has (rgb only with an rgb head);
        ``heads`` names a subset. Raises :class:`Cut3rInputError` for an unknown name, for rgb
        on a checkpoint without an rgb head, or for both arguments at once.
        """
        available = HEAD_OUTPUTS if self.config.rgb_head else tuple(h for h in HEAD_OUTPUTS if h != "rgb")
        if heads is None:
            return frozenset(available) if with_heads else frozenset()
        if with_heads:
            raise Cut3rInputError("pass either with_heads=True (every head) or heads=[...] (a subset), not both")
        if isinstance(heads, str):
            heads = (heads,)
        wanted = frozenset(heads)
        unknown = sorted(wanted - set(available))
        if unknown:
            raise Cut3rInputError(f"unknown head output(s) {unknown}; this checkpoint has {list(available)}")
        return wanted

    @torch.inference_mode()
    def step(self, state: Cut3rState, frames: torch.Tensor, *, update=True, reset=False,
             with_heads: bool = False, heads=None) -> tuple[Cut3rStepOutput, Cut3rState]:
        """Process one frame per stream.

        Args:
            state: the streams' state (not modified).
            frames: (B, 3, H, W) images normalised to [-1, 1]; H and W multiples of 16.
            update: bool or (B,) bool. False reads the state without changing it.
            reset: bool or (B,) bool. After this frame's outputs, return the stream to its
                initial state (official ``view['reset']``; the next frame still uses the
                pose retriever, not the start-of-stream pose token).
            with_heads: also run every head (points, confidences, pose, rgb).
            heads: or only these of :data:`HEAD_OUTPUTS` (e.g. ``("pose",)``): the parts of the
                head that nothing asked for are not run. Empty: tokens only.
        Returns:
            (outputs, new_state).
        """
        self.check_frames(frames, state)
        wanted = self.head_outputs(heads, with_heads)
        b = frames.shape[0]
        update_mask = self._mask(update, b, "update")
        reset_mask = self._mask(reset, b, "reset")
        image_hw = (frames.shape[-2], frames.shape[-1])

        enc_feat, pos = self.encode(frames)  # (B, N, enc)
        global_feat = enc_feat.mean(dim=1, keepdim=True)  # (B, 1, enc)
        first = (state.steps == 0)[:, None, None]
        cam_in = self.pose_token.expand(b, -1, -1)
        if not bool(first.all()):
            cam_in = torch.where(first, cam_in, self.pose_retriever.inquire(global_feat, state.mem))

        hooks = self.config.head_hooks
        dense = bool(wanted - {"pose"})  # a dense head reads the middle decoder layers too
        new_state_feat, tokens, mids = self._decode(state.state_feat, enc_feat, pos, cam_in,
                                                    keep=hooks[1:3] if dense else ())
        camera_token = tokens[:, :1]
        new_mem = self.pose_retriever.update_mem(state.mem, global_feat, camera_token)

        head_out = None
        if wanted:
            head_in = [enc_feat, mids[hooks[1]][:, 1:], mids[hooks[2]][:, 1:]] if dense else [None] * 3
            head_out = self._run_heads(head_in + [tokens], image_hw, pos, wanted)

        keep = ~update_mask[:, None, None]
        state_feat = torch.where(keep, state.state_feat, new_state_feat)
        mem = torch.where(keep, state.mem, new_mem)
        if bool(reset_mask.any()):
            init = self.init_state(b)
            r = reset_mask[:, None, None]
            state_feat = torch.where(r, init.state_feat, state_feat)
            mem = torch.where(r, init.mem, mem)
        new_state = replace(state, state_feat=state_feat, mem=mem, steps=state.steps + 1)
        out = Cut3rStepOutput(camera_token=camera_token, patch_tokens=tokens[:, 1:], enc_feat=enc_feat,
                              pose_token_in=cam_in, grid_hw=(image_hw[0] // self.config.patch_size,
                                                             image_hw[1] // self.config.patch_size),
                              heads=head_out)
        return out, new_state

    def _decode(self, state_feat, enc_feat, pos, cam_in, keep=()):
        b = enc_feat.shape[0]
        x = torch.cat([cam_in, self.decoder_embed(enc_feat)], dim=1)  # (B, 1+N, dec)
        xpos = self._decoder_positions(pos)  # (B, 1+N, 2)
        spos = self.state_positions(b)
        s = state_feat
        mids = {}
        for depth, (blk_s, blk_x) in enumerate(zip(self.dec_blocks_state, self.dec_blocks), start=1):
            # both streams read the other stream's PREVIOUS layer output
            s, x = blk_s(s, x, spos, xpos), blk_x(x, s, xpos, spos)
            if depth in keep:
                mids[depth] = x
        return self.dec_norm_state(s), self.dec_norm(x), mids

    def _run_heads(self, head_in, image_hw, pos, wanted: frozenset[str]) -> Cut3rHeadOutput:
        head_dtype = next(self.downstream_head.parameters()).dtype
        raw = self.downstream_head([h if h is None else h.to(head_dtype) for h in head_in], image_hw, pos, wanted)
        out = Cut3rHeadOutput(**{k: v.float() for k, v in raw.items()})
        if out.camera_pose is not None:
            out.camera_c2w = pose_to_c2w(out.camera_pose)
        return out
