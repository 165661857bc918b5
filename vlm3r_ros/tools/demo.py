"""``make demo``: the CUT3R pipeline end to end on a generated sequence, on CPU, in seconds.

    python -m vlm3r_ros.tools.demo [--out out/demo] [--frames 12]

1. renders the synthetic sample sequence into OUT/frames (kept if already complete);
2. builds TINY RANDOM CUT3R weights, saves them as OUT/cut3r_tiny_random.safetensors and
   loads them back through ``load_cut3r`` (the loading path real checkpoints take);
3. runs the ``vlm3r-cut3r`` pipeline over the frames into OUT/cut3r/ (trajectory.tum,
   points.ply, summary.json) and prints per-frame step times and token shapes.

The weights are random: the poses and points are meaningless. For real outputs run
``vlm3r-cut3r --weights /path/cut3r_512_dpt_4_64.pth --input VIDEO --out DIR``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

BANNER = "=" * 78
REAL_WEIGHTS_HINT = "vlm3r-cut3r --weights /path/cut3r_512_dpt_4_64.pth --input VIDEO --out DIR"


def main(argv: list[str] | None = None) -> int:
    from vlm3r_ros.engine.checkpoint import load_cut3r, save_cut3r_safetensors
    from vlm3r_ros.engine.cut3r_stream import Cut3rStream
    from vlm3r_ros.models.cut3r.tiny import random_cut3r
    from vlm3r_ros.tools import run_cut3r, sample_data

    parser = argparse.ArgumentParser(prog="python -m vlm3r_ros.tools.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    parser.add_argument("--frames", type=int, default=sample_data.DEFAULT_FRAMES,
                        help=f"frames to render (default {sample_data.DEFAULT_FRAMES})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.frames < 1:
        print(f"demo: error: --frames must be >= 1, got {args.frames}", file=sys.stderr)
        return 2
    if args.out.exists() and not args.out.is_dir():
        print(f"demo: error: --out {args.out} exists and is not a folder", file=sys.stderr)
        return 2

    print(BANNER)
    print("CUT3R DEMO WITH TINY RANDOM WEIGHTS: the poses and points below are MEANINGLESS.")
    print("It checks the pipeline (frames -> CUT3R -> tokens, trajectory, point cloud), not the model.")
    print(f"With real weights: {REAL_WEIGHTS_HINT}")
    print(BANNER)

    frames_dir = args.out / "frames"
    start = time.perf_counter()
    if sample_data.is_complete(frames_dir, args.frames):
        print(f"[1/3] sample frames: {frames_dir} (already complete, kept)")
    else:
        sample_data.write_sequence(frames_dir, args.frames)
        print(f"[1/3] sample frames: rendered {args.frames} frames of "
              f"{sample_data.DEFAULT_SIZE[0]}x{sample_data.DEFAULT_SIZE[1]} into {frames_dir} "
              f"({time.perf_counter() - start:.1f} s)")

    weights = args.out / "cut3r_tiny_random.safetensors"
    random_model = random_cut3r("tiny_dpt", seed=0)
    save_cut3r_safetensors(random_model.config, random_model.state_dict(), weights, source="tiny random (demo)")
    model = load_cut3r(weights)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[2/3] tiny random CUT3R ({model.config.head_type} head, {n_params / 1e6:.2f} M parameters) saved to "
          f"{weights} and loaded back with load_cut3r")

    stream = Cut3rStream(model, preprocessing="vlm3r")
    source = run_cut3r.FrameSource(frames_dir)
    label = f"{weights} ({run_cut3r.TINY_RANDOM_NOTE})"
    try:
        result = run_cut3r.run_pipeline(stream, source, args.out / "cut3r",
                                        run_cut3r.RunOptions(progress=not args.no_progress), weights_label=label)
    except run_cut3r.ToolError as exc:
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
          f"{frames_dir / sample_data.GROUNDTRUTH_TUM})")
    print()
    print(BANNER)
    print("REMINDER: tiny random weights, meaningless geometry. For real outputs:")
    print(f"  {REAL_WEIGHTS_HINT}")
    print(BANNER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
