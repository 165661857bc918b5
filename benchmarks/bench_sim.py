"""Simulator speed: milliseconds per rendered frame of the pybullet backend, per image size.

    python benchmarks/bench_sim.py [--seeds 0 1 2] [--frames 30] [--sizes 640x480 432x432 384x384 160x120]

For each generated room (``--seeds``) and image size, a handheld walk of ``--frames`` poses is
rendered three ways:
  render      PyBulletRenderer.render alone (RGB + depth + instance ids);
  no_seg      the same with the segmentation mask turned off (RGB + depth);
  sim_frame   Simulation.render: render plus the ground-truth visibility of the frame (what
              the bridge pays per published frame).
640x480 is a camera's size; 432x432 is what the node resizes frames to for CUT3R (VLM-3R's
preprocessing) and 384x384 for SigLIP, so rendering at those sizes is what a run needs when
the bridge publishes at the node's working size; 160x120 is the tests' size.
Printed: median and minimum ms per frame over all seeds, frames per second from the median,
the time to build a room (pybullet client, textures, bodies), and the process's peak RSS.
TinyRenderer is single-threaded; numbers depend on the CPU and its load (printed).
Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vlm3r_ros.sim.core import Intrinsics, Simulation, handheld_walk  # noqa: E402
from vlm3r_ros.sim.procedural import generate_scene  # noqa: E402
from vlm3r_ros.sim.pybullet_backend import PyBulletRenderer  # noqa: E402
from vlm3r_ros.tools.cli import image_size  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--sizes", type=image_size, nargs="+", default=[(640, 480), (432, 432), (384, 384), (160, 120)])
    parser.add_argument("--hfov", type=float, default=60.0)
    args = parser.parse_args(argv)

    print(f"pybullet TinyRenderer, {len(args.seeds)} rooms x {args.frames} frames per size; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    build_ms = []
    results: dict[tuple[int, int], dict[str, list[float]]] = {}
    for seed in args.seeds:
        scene = generate_scene(seed)
        start = time.perf_counter()
        renderer = PyBulletRenderer(scene)
        build_ms.append((time.perf_counter() - start) * 1000)
        plain = PyBulletRenderer(scene, segmentation=False)
        for width, height in args.sizes:
            intr = Intrinsics.from_hfov(width, height, args.hfov)
            traj = handheld_walk(scene, seed=seed, n=args.frames, fps=10.0, intrinsics=intr)
            sim = Simulation(scene, traj, renderer)
            timings = results.setdefault((width, height), {"render": [], "no_seg": [], "sim_frame": []})
            renderer.render(traj.camera_to_world[0], intr)  # warm-up (first use of a size)
            for pose in traj.camera_to_world:
                t0 = time.perf_counter()
                renderer.render(pose, intr)
                t1 = time.perf_counter()
                plain.render(pose, intr)
                t2 = time.perf_counter()
                timings["render"].append((t1 - t0) * 1000)
                timings["no_seg"].append((t2 - t1) * 1000)
            for index in range(len(traj)):
                t0 = time.perf_counter()
                sim.render(index)
                timings["sim_frame"].append((time.perf_counter() - t0) * 1000)
        renderer.close()
        plain.close()

    print(f"room build: median {statistics.median(build_ms):.0f} ms ({len(scene.objects)} objects in the last room)")
    print(f"{'size':>9} | {'mode':>9} | {'median ms':>9} | {'min ms':>7} | {'fps':>6}")
    for (width, height), timings in results.items():
        for mode, values in timings.items():
            median = statistics.median(values)
            print(f"{width:>4}x{height:<4} | {mode:>9} | {median:9.1f} | {min(values):7.1f} | {1000 / median:6.1f}")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
