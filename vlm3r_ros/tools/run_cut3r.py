"""Run CUT3R over a video or a folder of images; write the camera trajectory and a point cloud.

    vlm3r-cut3r --weights cut3r_512_dpt_4_64.pth --input VIDEO_OR_FOLDER --out DIR
    vlm3r-cut3r --tiny-random --input FOLDER --out DIR      # pipeline test, meaningless outputs

Input: a video file (mp4, mov, mkv, avi, ...; decoded by imageio-ffmpeg), a folder of
images (png/jpg/jpeg/bmp, sorted by name with numbers compared numerically) or one image.
A corrupt image in a folder is skipped with a warning and counted.

Writes into DIR:
  trajectory.tum  one line per frame, ``timestamp tx ty tz qx qy qz qw``: the camera-to-world
                  pose; world = the first frame's camera frame (OpenCV: x right, y down,
                  z forward), in the model's metre-like units. timestamp = source frame index / fps.
  points.ply      binary little-endian, float x y z + uchar red green blue: every frame's
                  ``pts3d_in_other_view`` (world frame) where conf > --min-conf, every
                  --point-stride-th pixel, at most --max-points (an even random subset,
                  fixed seed), coloured from the model's input image.
  summary.json    frame counts, timings, token shapes, weights and options.

``--min-conf`` defaults to 1.5, the point-cloud threshold of CUT3R's own demo
(``--vis_threshold``); confidences are >= 1 by construction.

Published checkpoints (``cut3r_512_dpt_4_64.pth``, ``cut3r_224_linear_4.pth``) are linked
from the CUT3R project (https://github.com/CUT3R/CUT3R). Nothing is downloaded: pass the
local path. A ``.pth`` is read without executing its pickle; a ``.safetensors`` needs its
``.json`` config beside it (``vlm3r-convert-cut3r`` writes both).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vlm3r_ros.engine.loading import DTYPES, load_cut3r_model
from vlm3r_ros.errors import UserError
from vlm3r_ros.media.frames import FrameSource
from vlm3r_ros.media.writers import PointSampler, write_ply, write_tum
from vlm3r_ros.tools.model_options import parse_device

DEFAULT_MIN_CONF = 1.5
DEFAULT_POINT_STRIDE = 4
DEFAULT_MAX_POINTS = 2_000_000
TINY_RANDOM_NOTE = "tiny random weights: meaningless outputs, for testing the pipeline"


def default_preprocessing(model, tiny_random: bool) -> str:
    """vlm3r for tiny random weights; otherwise what the checkpoint was trained with."""
    if tiny_random:
        return "vlm3r"
    return "cut3r224" if model.config.head_type == "linear" else "cut3r512"


# ---------------------------------------------------------------------- output
def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """Model input (3, H, W) in [-1, 1] -> (H, W, 3) uint8 colours."""
    rgb = ((image.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return rgb.permute(1, 2, 0).numpy()


# -------------------------------------------------------------------- pipeline
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
    from tqdm import tqdm

    from vlm3r_ros.models.cut3r import Cut3rInputError
    from vlm3r_ros.models.cut3r.processing import ImageFormatError

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
        raise UserError(f"no frame of {source.path} could be processed ({len(result.skipped)} skipped)")

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


# ------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm3r-cut3r", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", "-i", type=Path, required=True, help="video file, image folder or image")
    parser.add_argument("--out", "-o", type=Path, required=True, help="output folder (created if needed)")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--weights", type=Path, help="CUT3R checkpoint (.pth as published, or .safetensors)")
    weights.add_argument("--tiny-random", action="store_true", help=f"use {TINY_RANDOM_NOTE}")
    parser.add_argument("--config", help="architecture of a .pth without a constructor string: "
                                         "cut3r_512_dpt_4_64 or cut3r_224_linear_4")
    parser.add_argument("--preprocessing", choices=["vlm3r", "cut3r512", "cut3r224"],
                        help="cut3r512 (default for dpt weights), cut3r224 (default for linear weights) or "
                             "vlm3r (SigLIP 384 -> 432x432; default with --tiny-random)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="default float32")
    parser.add_argument("--max-frames", type=int, help="stop after this many processed frames")
    parser.add_argument("--stride", type=int, default=1, help="use every k-th frame (default 1)")
    parser.add_argument("--fps", type=float, help="frame rate for timestamps (default: the video's; 30 for images)")
    parser.add_argument("--min-conf", type=float, default=DEFAULT_MIN_CONF,
                        help=f"keep points with confidence above this (>= 1; default {DEFAULT_MIN_CONF:g}, "
                             f"as CUT3R's demo)")
    parser.add_argument("--point-stride", type=int, default=DEFAULT_POINT_STRIDE,
                        help=f"keep every k-th pixel in x and y (default {DEFAULT_POINT_STRIDE})")
    parser.add_argument("--max-points", type=int, default=DEFAULT_MAX_POINTS,
                        help=f"cap on points written, an even random subset (default {DEFAULT_MAX_POINTS:,})")
    parser.add_argument("--seed", type=int, default=0, help="seed of --tiny-random weights (default 0)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _check_numbers(args) -> None:
    for name in ("stride", "point_stride", "max_frames", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.max_points < 0:
        raise UserError(f"--max-points must be >= 0, got {args.max_points}")
    if args.fps is not None and not args.fps > 0:
        raise UserError(f"--fps must be > 0, got {args.fps}")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} exists and is not a folder")


def main(argv: list[str] | None = None) -> int:
    from vlm3r_ros.engine.cut3r_stream import Cut3rStream

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_numbers(args)
        device = parse_device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.tiny_random and args.config:
            raise UserError("--config applies to --weights only (--tiny-random uses the tiny dpt config)")
        source = FrameSource(args.input, fps=args.fps)  # input errors before the (slow) model load
        start = time.perf_counter()
        try:
            model = load_cut3r_model(args.weights, tiny_random=args.tiny_random, config_name=args.config,
                                     device=device, dtype=DTYPES[args.dtype], seed=args.seed)
        except BaseException:
            source.close()  # stops ffmpeg
            raise
        load_seconds = time.perf_counter() - start
        preprocessing = args.preprocessing or default_preprocessing(model, args.tiny_random)
        label = f"tiny-random (seed {args.seed}; {TINY_RANDOM_NOTE})" if args.tiny_random else str(args.weights)
        if args.tiny_random:
            print(f"WARNING: --tiny-random: {TINY_RANDOM_NOTE}", file=sys.stderr)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"CUT3R {model.config.head_type} head, {n_params / 1e6:.1f} M parameters, {args.dtype} on {device}, "
              f"loaded in {load_seconds:.1f} s; preprocessing {preprocessing}; input {args.input}")
        stream = Cut3rStream(model, preprocessing=preprocessing)
        opts = RunOptions(min_conf=args.min_conf, point_stride=args.point_stride, max_points=args.max_points,
                          stride=args.stride, max_frames=args.max_frames, progress=not args.no_progress)
        result = run_pipeline(stream, source, args.out, opts, weights_label=label,
                              extra_summary={"load_seconds": load_seconds})
    except UserError as exc:
        print(f"vlm3r-cut3r: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlm3r-cut3r: interrupted; no outputs written", file=sys.stderr)
        return 130
    s = result.summary
    print(f"{s['frames']} frames ({s['skipped']} skipped), mean step {s['mean_step_seconds']:.3f} s, "
          f"camera token {tuple(s['camera_token_shape'])}, patch tokens {tuple(s['patch_tokens_shape'])}")
    print(f"wrote {result.out_dir / 'trajectory.tum'}, {result.out_dir / 'points.ply'} "
          f"({s['points_written']:,} points), {result.out_dir / 'summary.json'}")
    if args.tiny_random:
        print(f"NOTE: {TINY_RANDOM_NOTE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
