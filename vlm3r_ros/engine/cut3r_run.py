"""CUT3R over a whole video or image folder, offline: the trajectory, a point cloud and a summary.

What ``vlm3r-cut3r`` and the CUT3R-only demo run. Every frame goes through one
:class:`~vlm3r_ros.engine.cut3r_stream.Cut3rStream` with its heads; the output folder gets

  trajectory.tum  one line per frame, ``timestamp tx ty tz qx qy qz qw``: the camera-to-world
                  pose; world = the first frame's camera frame (OpenCV: x right, y down,
                  z forward), in the model's metre-like units. timestamp = source frame index / fps.
  points.ply      every frame's ``pts3d_in_other_view`` (world frame) where conf > ``min_conf``,
                  every ``point_stride``-th pixel, at most ``max_points`` (an even random subset,
                  fixed seed), coloured from the model's input image.
  summary.json    frame counts, timings, token shapes, weights and options.

An unreadable frame, or one the model refuses, is skipped with a warning and counted.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vlm3r_ros.media.frames import FrameSource, MediaError
from vlm3r_ros.media.writers import PointSampler, write_ply, write_tum
from vlm3r_ros.models.cut3r import Cut3rInputError
from vlm3r_ros.models.cut3r.processing import ImageFormatError

DEFAULT_MIN_CONF = 1.5  # the point-cloud threshold of CUT3R's own demo (--vis_threshold)
DEFAULT_POINT_STRIDE = 4
DEFAULT_MAX_POINTS = 2_000_000
TINY_RANDOM_NOTE = "tiny random weights: meaningless outputs, for testing the pipeline"


def default_preprocessing(model, tiny_random: bool) -> str:
    """vlm3r for tiny random weights; otherwise what the checkpoint was trained with."""
    if tiny_random:
        return "vlm3r"
    return "cut3r224" if model.config.head_type == "linear" else "cut3r512"


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """Model input (3, H, W) in [-1, 1] -> (H, W, 3) uint8 colours."""
    rgb = ((image.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return rgb.permute(1, 2, 0).numpy()


@dataclass
class RunOptions:
    min_conf: float = DEFAULT_MIN_CONF
    point_stride: int = DEFAULT_POINT_STRIDE
    max_points: int = DEFAULT_MAX_POINTS
    stride: int = 1
    max_frames: int | None = None
    progress: bool = True


@dataclass
class RunResult:
    out_dir: Path
    frames: int = 0
    skipped: list[str] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    camera_token_shape: tuple[int, ...] = ()
    patch_tokens_shape: tuple[int, ...] = ()
    grid_hw: tuple[int, int] = (0, 0)
    image_hw: tuple[int, int] = (0, 0)
    points_written: int = 0
    points_candidates: int = 0
    summary: dict = field(default_factory=dict)

    @property
    def files(self) -> dict[str, Path]:
        return {name: self.out_dir / name for name in ("trajectory.tum", "points.ply", "summary.json")}


def run_pipeline(stream, source: FrameSource, out_dir: str | Path, options: RunOptions | None = None,
                 weights_label: str = "", extra_summary: dict | None = None) -> RunResult:
    """Stream ``source`` through ``stream`` (a :class:`Cut3rStream`) and write the three output files."""
    opts = options or RunOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = RunResult(out_dir=out)
    sampler = PointSampler(opts.max_points)
    poses: list[tuple[float, np.ndarray]] = []
    total = None
    if source.total is not None:
        total = -(-source.total // opts.stride)
        if opts.max_frames is not None:
            total = min(total, opts.max_frames)
    bar = tqdm(total=total, unit="frame", file=sys.stderr, disable=not opts.progress, desc="CUT3R")
    try:
        for frame in source.frames(opts.stride):
            if frame.image is None:
                result.skipped.append(frame.name)
                tqdm.write(f"warning: skipping unreadable {frame.name}: {frame.error}", file=sys.stderr)
                bar.update(1)
                continue
            try:
                res = stream.step(frame.image, with_heads=True)
            except (ImageFormatError, Cut3rInputError) as exc:
                result.skipped.append(frame.name)
                tqdm.write(f"warning: skipping {frame.name}: {exc}", file=sys.stderr)
                bar.update(1)
                continue
            heads = res.heads
            poses.append((frame.index / source.fps, heads.camera_pose[0].double().cpu().numpy()))
            s = opts.point_stride
            pts = heads.pts3d_in_other_view[0, ::s, ::s].cpu().numpy().reshape(-1, 3)
            conf = heads.conf[0, ::s, ::s].cpu().numpy().reshape(-1)
            rgb = image_to_uint8(res.image)[::s, ::s].reshape(-1, 3)
            keep = (conf > opts.min_conf) & np.isfinite(pts).all(axis=1)
            result.points_candidates += int(keep.sum())
            sampler.add(pts[keep], rgb[keep])
            result.frames += 1
            result.step_seconds.append(res.step_seconds)
            result.camera_token_shape = tuple(res.camera_token.shape)
            result.patch_tokens_shape = tuple(res.patch_tokens.shape)
            result.grid_hw = tuple(res.grid_hw)
            result.image_hw = tuple(res.image.shape[-2:])
            bar.update(1)
            if opts.max_frames is not None and result.frames >= opts.max_frames:
                break
    finally:
        bar.close()
        source.close()
    if result.frames == 0:
        raise MediaError(f"no frame of {source.path} could be processed ({len(result.skipped)} skipped)")

    frame_note = "world = first frame's camera frame (OpenCV: x right, y down, z forward); model units"
    write_tum(out / "trajectory.tum", poses, [f"CUT3R camera-to-world trajectory of {source.path}",
                                              frame_note, f"weights: {weights_label}"])
    records = sampler.result()
    result.points_written = len(records)
    write_ply(out / "points.ply", records, [f"CUT3R points (conf > {opts.min_conf:g}) of {source.path}",
                                            "world = first frame's camera frame (OpenCV axes)"])
    model = stream.model
    result.summary = {
        "input": str(source.path),
        "input_kind": "video" if source.is_video else "images",
        "fps": source.fps,
        "frames": result.frames,
        "skipped": len(result.skipped),
        "skipped_names": result.skipped[:100],
        "mean_step_seconds": statistics.fmean(result.step_seconds),
        "median_step_seconds": statistics.median(result.step_seconds),
        "camera_token_shape": list(result.camera_token_shape),
        "patch_tokens_shape": list(result.patch_tokens_shape),
        "grid_hw": list(result.grid_hw),
        "image_hw": list(result.image_hw),
        "weights": weights_label,
        "head_type": model.config.head_type,
        "preprocessing": stream.preprocessing,
        "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "stride": opts.stride,
        "min_conf": opts.min_conf,
        "point_stride": opts.point_stride,
        "max_points": opts.max_points,
        "points_above_conf": result.points_candidates,
        "points_written": result.points_written,
        "files": {k: str(v) for k, v in result.files.items()},
        **(extra_summary or {}),
    }
    (out / "summary.json").write_text(json.dumps(result.summary, indent=2) + "\n")
    return result
