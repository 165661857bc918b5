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
import sys
import time
from pathlib import Path

import torch

from vlm3r_ros.engine.cut3r_run import (DEFAULT_MAX_POINTS, DEFAULT_MIN_CONF, DEFAULT_POINT_STRIDE,
                                        TINY_RANDOM_NOTE, RunOptions, default_preprocessing, run_pipeline)
from vlm3r_ros.engine.cut3r_stream import Cut3rStream
from vlm3r_ros.engine.loading import DTYPES, load_cut3r_model
from vlm3r_ros.errors import UserError
from vlm3r_ros.media.frames import FrameSource
from vlm3r_ros.tools.model_options import parse_device



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
