"""A training / evaluation set from simulation: N procedural rooms -> videos + metadata + QA rows.

Each room (``vlm3r_ros.sim.procedural.generate_scene`` with its own seed) is rendered with the
pybullet backend along a generated trajectory; the frames become ``videos/<room>.mp4`` and the
ground truth of exactly those frames becomes the room's scene graph. Rooms are split by room
(no room is in two splits) and written in the official metadata layout
(``{dataset}_metadata_{split}.json`` + ``{dataset}_frame_metadata_{split}.json``, as
:mod:`vlm3r_ros.data.metadata` reads), and every registered question type is generated for
each split: ``qa_{split}_{benchmark}.jsonl`` (rows with ``video_path`` relative to the output
folder, the format vlm3r-gen-qa writes, vlm3r-train and vlm3r-eval read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass
class SimDatasetOptions:
    out: str
    rooms: int = 10
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, val, test
    frames: int = 32
    size: tuple[int, int] = (320, 240)
    fps: float = 10.0
    trajectory: str = "handheld"
    seed: int = 0
    dataset: str = "sim"
    types: list[str] | None = None  # None: every registered type


def split_rooms(n: int, fractions, seed: int) -> dict[str, list[int]]:
    """Room indices per split: a seeded shuffle cut by the fractions (every split with a share > 0 and
    n large enough gets at least one room)."""
    if n < 1:
        raise ValueError(f"rooms must be >= 1, got {n}")
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers (train, val, test), got {fractions}")
    f = f / f.sum()
    order = np.random.default_rng(seed).permutation(n).tolist()
    counts = np.floor(f * n).astype(int)
    for i in np.argsort(-(f * n - counts)):  # hand the remainder to the largest fractional parts
        if counts.sum() >= n:
            break
        counts[i] += 1
    for i in range(3):  # a wanted split never ends up empty when another can spare a room
        if f[i] > 0 and counts[i] == 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    out, start = {}, 0
    for name, c in zip(SPLITS, counts):
        out[name] = sorted(order[start:start + c])
        start += c
    return out


def render_room(index: int, opts: SimDatasetOptions, root: Path):
    """Render room ``index``; write its video; return its scene graph (video_path relative to root)."""
    from vlm3r_ros.media.sample_scene import write_video
    from vlm3r_ros.sim.core import Intrinsics
    from vlm3r_ros.sim.factory import make_simulation
    from vlm3r_ros.sim.procedural import generate_scene

    seed = opts.seed * 100_003 + index
    name = f"{opts.dataset}_room_{index:04d}"
    scene = generate_scene(seed, name=name)
    width, height = opts.size
    sim = make_simulation("pybullet", scene, seed=seed, trajectory_kind=opts.trajectory, n_frames=opts.frames,
                          fps=opts.fps, intrinsics=Intrinsics.from_hfov(width, height))
    with sim:
        images = [frame.rendered.rgb for frame in sim]
        graph = sim.ground_truth()
    video = Path("videos") / f"{name}.mp4"
    (root / video).parent.mkdir(parents=True, exist_ok=True)
    write_video(root / video, images, (width, height), fps=opts.fps)
    graph.video_path = str(video)
    graph.dataset = opts.dataset
    return graph


def make_sim_dataset(opts: SimDatasetOptions, progress: Callable[[int, int], None] | None = None) -> dict:
    """Render, split, write metadata and QA rows; returns a summary (also written to summary.json)."""
    from vlm3r_ros.data.metadata import save_scene_graphs
    from vlm3r_ros.data.qa.registry import get_spec, question_types
    from vlm3r_ros.data.qa.batch import generate

    root = Path(opts.out)
    root.mkdir(parents=True, exist_ok=True)
    types = opts.types or question_types()
    for t in types:
        get_spec(t)  # an unknown type fails before any rendering
    splits = split_rooms(opts.rooms, opts.fractions, opts.seed)
    graphs = {}
    for done, index in enumerate(range(opts.rooms), 1):
        graphs[index] = render_room(index, opts, root)
        if progress is not None:
            progress(done, opts.rooms)
    summary: dict = {"rooms": opts.rooms, "frames_per_room": opts.frames, "size": list(opts.size),
                     "seed": opts.seed, "splits": {}}
    for split, indices in splits.items():
        if not indices:
            continue
        scenes = {graphs[i].scene_name: graphs[i] for i in indices}
        save_scene_graphs(scenes, root, opts.dataset, split)
        rows = generate(scenes, types, opts.seed)
        files = {}
        for benchmark in ("vsibench", "vstibench"):
            part = [r for r in rows if get_spec(r["question_type"]).benchmark == benchmark]
            if part:
                path = root / f"qa_{split}_{benchmark}.jsonl"
                path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
                files[benchmark] = {"file": path.name, "rows": len(part)}
        summary["splits"][split] = {"rooms": sorted(scenes), "qa": files}
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
