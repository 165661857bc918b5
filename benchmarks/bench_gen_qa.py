"""Time of each QA generator, and of vlm3r-gen-qa for all types, on one synthetic scene.

    python benchmarks/bench_gen_qa.py [--objects 30] [--unique 22] [--frames 300] [--repeats 3]

The scene: ``--objects`` boxes in an 8 x 8 m room, each turned by a random angle about z
(so object distances take the general box-box path), ``--unique`` of them in categories of
their own, the rest chairs and tables; ``--frames`` camera poses on a circle, 5 objects visible
per frame. Prints each generator's rows and median time over ``--repeats`` calls in both ``compat``
modes, the time of the official sampled and the exact box distance for a turned and an
axis-aligned pair, and the wall time of one ``vlm3r-gen-qa`` run over every type (a child process, import time included).
Numbers go into notes; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vlm3r_ros.data.metadata import save_scene_graphs
from vlm3r_ros.data.qa.common import COMPAT_MODES, AnswerBalancer, box_distance, make_rng, sampled_box_distance
from vlm3r_ros.data.qa.registry import get_generator, question_types
from vlm3r_ros.data.scene_graph import FrameAnnotation, ObjectInstance, OrientedBox, SceneGraph


def turned_about_z(yaw: float) -> list[list[float]]:
    c, s = float(np.cos(yaw)), float(np.sin(yaw))
    return [[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]]


def camera_pose(k: int) -> np.ndarray:
    """Camera on a 2 m circle at 1.5 m height, turning slowly (OpenCV axes)."""
    yaw = 0.02 * k
    forward = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    pose = np.eye(4)
    pose[:3, :3] = np.stack([np.cross(down, forward), down, forward], axis=1)
    pose[:3, 3] = [4 + 2 * np.cos(0.01 * k), 4 + 2 * np.sin(0.01 * k), 1.5]
    return pose


def synthetic_scene(num_objects: int, num_unique: int, num_frames: int, seed: int = 0) -> SceneGraph:
    rng = np.random.default_rng(seed)
    shared = num_objects - num_unique
    categories = [("chair" if i % 3 else "table") for i in range(shared)] + [f"object{i}" for i in range(num_unique)]
    objects = []
    for iid, category in enumerate(categories):
        x, y = rng.uniform(0, 8, 2)
        size = rng.uniform(0.3, 1.5, 3)
        objects.append(ObjectInstance(iid, category, OrientedBox.create(
            [x, y, size[2] / 2], size, turned_about_z(rng.uniform(0, np.pi)))))
    k_matrix = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    frames = [FrameAnnotation(10 * k, camera_pose(k), k_matrix,
                              {int(i): None for i in rng.choice(num_objects, 5, replace=False)})
              for k in range(num_frames)]
    return SceneGraph("bench", objects, frames, room_size=64.0, dataset="scannet", video_path="bench.mp4", fps=30.0)


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objects", type=int, default=30)
    p.add_argument("--unique", type=int, default=22)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    scene = synthetic_scene(args.objects, args.unique, args.frames)
    print(f"scene: {args.objects} objects ({args.unique} unique, turned about z), {args.frames} frames; "
          f"{os.cpu_count()} CPUs; median of {args.repeats}")
    for qtype in question_types():
        generator = get_generator(qtype)
        for compat in COMPAT_MODES:
            def call():
                return generator(scene, make_rng(0, qtype), balancer=AnswerBalancer(), compat=compat)
            rows = call()
            print(f"  {qtype:30s} {compat:8s} {len(rows):3d} rows {median_ms(call, args.repeats):9.1f} ms")
    turned_a = OrientedBox.create([0, 0, 0], [1, 1, 1], turned_about_z(0.3))
    turned_b = OrientedBox.create([3, 1, 0], [1, 2, 1], turned_about_z(1.0))
    aligned_a = OrientedBox.axis_aligned([0, 0, 0], [1, 1, 1])
    aligned_b = OrientedBox.axis_aligned([3, 1, 0], [4, 2, 1])
    print(f"box_distance: turned pair {median_ms(lambda: box_distance(turned_a, turned_b), 200):.3f} ms, "
          f"axis-aligned pair {median_ms(lambda: box_distance(aligned_a, aligned_b), 200):.3f} ms")
    print(f"sampled_box_distance (official, grids sampled each call): turned pair "
          f"{median_ms(lambda: sampled_box_distance(turned_a, turned_b), 20):.2f} ms, axis-aligned pair "
          f"{median_ms(lambda: sampled_box_distance(aligned_a, aligned_b), 20):.2f} ms")
    with tempfile.TemporaryDirectory() as folder:
        save_scene_graphs([scene], folder, "scannet", "val")
        command = [str(Path(sys.executable).with_name("vlm3r-gen-qa")), "--root", folder, "--dataset", "scannet",
                   "--split", "val", "--out", str(Path(folder) / "qa.jsonl")]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        print(f"vlm3r-gen-qa, all types: {time.perf_counter() - start:.2f} s wall ({done.stderr.strip()})")


if __name__ == "__main__":
    main()
