"""The CUT3R-only demo (``python -m vlm3r_ros.tools.demo --cut3r-only``): CUT3R with tiny random
weights over the rendered sample frames, writing OUT/cut3r/ (trajectory.tum, points.ply,
summary.json). It checks the pipeline, not the model: the geometry is meaningless.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from vlm3r_ros.engine.checkpoint import save_cut3r_safetensors
from vlm3r_ros.engine.cut3r_run import TINY_RANDOM_NOTE, RunOptions, run_pipeline
from vlm3r_ros.engine.cut3r_stream import Cut3rStream
from vlm3r_ros.engine.loading import load_cut3r_model
from vlm3r_ros.errors import UserError
from vlm3r_ros.media import sample_scene
from vlm3r_ros.media.frames import FrameSource
from vlm3r_ros.models.cut3r.tiny import random_cut3r

BANNER = "=" * 78
REAL_WEIGHTS_HINT = "vlm3r-cut3r --weights /path/cut3r_512_dpt_4_64.pth --input VIDEO --out DIR"
DEFAULT_OUT = Path("out/demo")


def cut3r_only(args) -> int:
    """CUT3R with tiny random weights over the rendered frames, into OUT/cut3r/."""
    out = args.out or DEFAULT_OUT
    n_frames = sample_scene.DEFAULT_FRAMES if args.frames is None else args.frames
    if n_frames < 1:
        print(f"demo: error: --frames must be >= 1, got {n_frames}", file=sys.stderr)
        return 2
    if out.exists() and not out.is_dir():
        print(f"demo: error: --out {out} exists and is not a folder", file=sys.stderr)
        return 2

    print(BANNER)
    print("CUT3R DEMO WITH TINY RANDOM WEIGHTS: the poses and points below are MEANINGLESS.")
    print("It checks the pipeline (frames -> CUT3R -> tokens, trajectory, point cloud), not the model.")
    print(f"With real weights: {REAL_WEIGHTS_HINT}")
    print(BANNER)

    frames_dir = out / "frames"
    start = time.perf_counter()
    if sample_scene.is_complete(frames_dir, n_frames):
        print(f"[1/3] sample frames: {frames_dir} (already complete, kept)")
    else:
        sample_scene.write_sequence(frames_dir, n_frames)
        print(f"[1/3] sample frames: rendered {n_frames} frames of "
              f"{sample_scene.DEFAULT_SIZE[0]}x{sample_scene.DEFAULT_SIZE[1]} into {frames_dir} "
              f"({time.perf_counter() - start:.1f} s)")

    weights = out / "cut3r_tiny_random.safetensors"
    random_model = random_cut3r("tiny_dpt", seed=0)
    save_cut3r_safetensors(random_model.config, random_model.state_dict(), weights, source="tiny random (demo)")
    model = load_cut3r_model(weights)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[2/3] tiny random CUT3R ({model.config.head_type} head, {n_params / 1e6:.2f} M parameters) saved to "
          f"{weights} and loaded back with load_cut3r")

    stream = Cut3rStream(model, preprocessing="vlm3r")
    source = FrameSource(frames_dir)
    label = f"{weights} ({TINY_RANDOM_NOTE})"
    try:
        result = run_pipeline(stream, source, out / "cut3r", RunOptions(progress=not args.no_progress),
                              weights_label=label)
    except UserError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    print(f"[3/3] ran CUT3R (preprocessing vlm3r: SigLIP 384 -> {result.image_hw[1]}x{result.image_hw[0]}) "
          f"over {result.frames} frames")
    print()
    print(f"  {'frame':>5}  {'step (s)':>8}")
    for i, seconds in enumerate(result.step_seconds):
        print(f"  {i:>5}  {seconds:>8.3f}")
    s = result.summary
    print(f"  mean step {s['mean_step_seconds']:.3f} s, median {s['median_step_seconds']:.3f} s")
    d = result.camera_token_shape[-1]
    print(f"  camera token z'_t: {'x'.join(map(str, result.camera_token_shape))} (1xD, D={d}); "
          f"patch tokens F'_t: {'x'.join(map(str, result.patch_tokens_shape))} "
          f"(NxD, N={result.grid_hw[0]}x{result.grid_hw[1]} patches)")
    print()
    print("Output files:")
    for path in result.files.values():
        print(f"  {path}")
    print(f"  ({s['points_written']:,} points in points.ply; ground truth of the rendered camera in "
          f"{frames_dir / sample_scene.GROUNDTRUTH_TUM})")
    print()
    print(BANNER)
    print("REMINDER: tiny random weights, meaningless geometry. For real outputs:")
    print(f"  {REAL_WEIGHTS_HINT}")
    print(BANNER)
    return 0
