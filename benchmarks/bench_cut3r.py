"""CUT3R per-frame step time and peak memory: tokens only vs tokens + heads.

    python benchmarks/bench_cut3r.py [--skip-full] [--frames 20] [--full-frames 2]
                                     [--steady-frames 50] [--device cpu] [--dtype float32] [--threads N]

Configurations:
  full  the released cut3r_512_dpt_4_64 architecture (793 M parameters) with seeded random
        weights, at 512x384 (CUT3R's own 512 preprocessing of a 640x480 frame);
  tiny  the tiny dpt test config at 432x432 (VLM-3R's preprocessing).
Modes:
  tokens  the step VLM-3R needs: encoder, decoders, state update (camera + patch tokens);
  heads   the same step plus every head (points, confidences, pose, rgb).

Each (configuration, mode) runs in a fresh child process (this script with ``--child``), so
peak resident memory (``ru_maxrss``) is that configuration's own. A child steps one warm-up
frame, then the timed frames, and reports the median and minimum wall time per step and the
median CPU time of all threads (about threads x wall on an idle machine). When other
processes compete for the cores, torch's OpenMP threads wait at barriers and wall and CPU
time both balloon: compare runs only at a similar load average (printed), or use
``--threads 1``, which suffers least. Random weights cost the same compute as trained ones.
A last child streams ``--steady-frames`` tiny frames to show that the step time does not
grow with the frames seen (the state has a fixed size).
Numbers go into notes; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vlm3r_ros.ros.launching import run_for_result  # noqa: E402

CONFIGS = {
    # name: (architecture, preprocessing, shown input size)
    "full": ("cut3r_512_dpt_4_64", "cut3r512", "512x384"),
    "tiny": ("tiny_dpt", "vlm3r", "432x432"),
}
N_SOURCE_FRAMES = 4  # rendered once by the parent and cycled by the children
RESULT_PREFIX = "BENCH_RESULT "


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------- child
def run_child(args) -> int:
    import numpy as np
    import torch

    from vlm3r_ros.engine.cut3r_stream import Cut3rStream
    from vlm3r_ros.engine.loading import random_cut3r_model

    config_key, mode = args.child
    arch, preprocessing, _ = CONFIGS[config_key]
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rss_start = _rss_mib()

    t0 = time.perf_counter()
    model = random_cut3r_model(arch, seed=0, device=device, dtype=dtype)
    build_seconds = time.perf_counter() - t0
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rss_loaded = _rss_mib()

    images = np.load(args.frames_file)
    stream = Cut3rStream(model, preprocessing=preprocessing)
    pixels = [stream.prepare(img) for img in images]
    with_heads = mode == "heads"
    times, cpu_times = [], []
    shapes = None
    for i in range(1 + args.timed):
        cpu_start = time.process_time()
        res = stream.step(pixels[i % len(pixels)], with_heads=with_heads)
        if i > 0:
            times.append(res.step_seconds)
            cpu_times.append(time.process_time() - cpu_start)
        shapes = {"camera_token": list(res.camera_token.shape), "patch_tokens": list(res.patch_tokens.shape),
                  "image_hw": list(res.image.shape[-2:])}
        if with_heads and not bool(torch.isfinite(res.heads.pts3d_in_other_view).all()):
            shapes["non_finite_points"] = True
    out = {
        "config": config_key, "arch": arch, "mode": mode, "timed": len(times), "times": times,
        "median_s": statistics.median(times), "min_s": min(times), "cpu_median_s": statistics.median(cpu_times),
        "build_s": build_seconds,
        "param_bytes": param_bytes, "n_params": sum(p.numel() for p in model.parameters()),
        "rss_start_mib": rss_start, "rss_loaded_mib": rss_loaded,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(), "device": str(device), "dtype": args.dtype, **(shapes or {}),
    }
    if device.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(RESULT_PREFIX + json.dumps(out), flush=True)
    return 0


# --------------------------------------------------------------------- parent
def spawn(args, config_key: str, mode: str, timed: int, frames_file: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", config_key, mode, "--timed", str(timed),
           "--frames-file", frames_file, "--device", args.device, "--dtype", args.dtype]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    result = run_for_result(cmd, RESULT_PREFIX, f"{config_key}/{mode}")
    print(f"  {config_key:<5} {mode:<6} median {result['median_s']:.3f} s/frame over {result['timed']} frames "
          f"(CPU {result['cpu_median_s']:.3f} s), peak RSS {result['peak_rss_mib']:,.0f} MiB "
          f"(child wall {result['wall_s']:.0f} s, load average {os.getloadavg()[0]:.2f})", flush=True)
    return result


def print_table(results: list[dict]) -> None:
    print()
    header = (f"{'config':<20} {'input':>8} {'mode':<7} {'frames':>6} {'median s/frame':>15} {'min s':>8} "
              f"{'CPU s/frame':>12} {'peak RSS MiB':>13} {'RSS loaded MiB':>15} {'params MiB':>11}")
    print(header)
    print("-" * len(header))
    by_key = {}
    for r in results:
        by_key[(r["config"], r["mode"])] = r
        size = "x".join(str(v) for v in (r["image_hw"][1], r["image_hw"][0]))
        print(f"{r['arch']:<20} {size:>8} {r['mode']:<7} {r['timed']:>6} {r['median_s']:>15.4f} {r['min_s']:>8.4f} "
              f"{r['cpu_median_s']:>12.4f} "
              f"{r['peak_rss_mib']:>13,.0f} {r['rss_loaded_mib']:>15,.0f} {r['param_bytes'] / 2**20:>11,.1f}")
    print()
    for config_key in CONFIGS:
        tok, hds = by_key.get((config_key, "tokens")), by_key.get((config_key, "heads"))
        if tok and hds:
            print(f"{CONFIGS[config_key][0]}: heads/tokens time ratio {hds['median_s'] / tok['median_s']:.2f}, "
                  f"peak-memory ratio {hds['peak_rss_mib'] / tok['peak_rss_mib']:.2f}; "
                  f"camera token {tok['camera_token']}, patch tokens {tok['patch_tokens']}")


def run_parent(args) -> int:
    import numpy as np
    import torch

    from vlm3r_ros.media.sample_scene import generate_sequence

    print(f"torch {torch.__version__}, {args.device}, {args.dtype}, threads {args.threads or torch.get_num_threads()} "
          f"(of {os.cpu_count()} CPUs), load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="bench_cut3r_") as tmp:
        frames_file = str(Path(tmp) / "frames.npy")
        np.save(frames_file, np.stack(generate_sequence(N_SOURCE_FRAMES)))
        results = []
        plan = [] if args.skip_full else [("full", "tokens", args.full_frames), ("full", "heads", args.full_frames)]
        plan += [("tiny", "tokens", args.frames), ("tiny", "heads", args.frames)]
        for config_key, mode, timed in plan:
            results.append(spawn(args, config_key, mode, timed, frames_file))
        steady = spawn(args, "tiny", "heads", args.steady_frames, frames_file) if args.steady_frames >= 2 else None
    print_table(results)
    if steady:
        t = steady["times"]
        k = min(5, len(t) // 2)
        print(f"\nsteady state, tiny with heads over {len(t)} frames after warm-up: first frame {t[0]:.4f} s, "
              f"last frame {t[-1]:.4f} s; mean of first {k} {statistics.fmean(t[:k]):.4f} s, "
              f"mean of last {k} {statistics.fmean(t[-k:]):.4f} s")
        blocks = [t[i:i + 10] for i in range(0, len(t), 10)]
        print("  median per block of 10 frames: " + ", ".join(f"{statistics.median(b):.4f}" for b in blocks))
    print(f"load average {os.getloadavg()[0]:.2f} at end (other work on this machine inflates times)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-full", action="store_true", help="skip the full-size model (minutes on a CPU)")
    parser.add_argument("--frames", type=int, default=20, help="timed frames of the tiny model (default 20)")
    parser.add_argument("--full-frames", type=int, default=2, help="timed frames of the full model (default 2)")
    parser.add_argument("--steady-frames", type=int, default=50,
                        help="timed frames of the steady-state run (default 50; < 2 skips it)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--timed", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--frames-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.frames, args.full_frames) < 1:
        parser.error("--frames and --full-frames must be >= 1")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available to this torch ({torch.__version__})")
    return run_child(args) if args.child else run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
