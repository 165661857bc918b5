"""Reading and writing scene graphs in the metadata layout of the official data pipeline.

Two JSON files per dataset and split, both keyed by scene name:
- ``{ds}_metadata_{split}.json``: per scene ``video_path``, ``room_size`` (floor area, m^2),
  ``room_center``, ``object_counts`` and ``object_bboxes`` (category -> list of boxes with
  ``instance_id``, ``centroid``, ``axesLengths``, ``normalizedAxes``, ``min``, ``max``);
- ``{ds}_frame_metadata_{split}.json``: per scene ``frames``, a list of ``frame_id``,
  ``camera_pose_camera_to_world`` (4x4), ``camera_intrinsics`` (3x3 or 4x4), ``bboxes_2d``
  (``instance_id``, ``bbox_2d`` = [x1, y1, x2, y2] pixels) and optionally ``file_path_color``.
docs/data.md documents the schema for users' own scenes.
"""

from __future__ import annotations

import json
from pathlib import Path

from .scene_graph import SceneGraph, SceneGraphError


def metadata_paths(root: str | Path, dataset: str, split: str) -> tuple[Path, Path]:
    root = Path(root)
    return root / f"{dataset}_metadata_{split}.json", root / f"{dataset}_frame_metadata_{split}.json"


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise SceneGraphError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise SceneGraphError(f"{path}: expected an object keyed by scene name, got {type(data).__name__}")
    return data


def load_scene_graphs(scene_file: str | Path, frame_file: str | Path | None = None) -> dict[str, SceneGraph]:
    """All scenes of a metadata file (and its frame metadata file, when given), by name.

    A scene without frame metadata still loads: the per-frame task types then skip it."""
    scene_file = Path(scene_file)
    if not scene_file.is_file():
        raise SceneGraphError(f"scene metadata file not found: {scene_file}")
    scenes = _read_json(scene_file)
    frames: dict = {}
    if frame_file is not None:
        frame_file = Path(frame_file)
        if not frame_file.is_file():
            raise SceneGraphError(f"frame metadata file not found: {frame_file}")
        frames = _read_json(frame_file)
    return {name: SceneGraph.from_metadata(name, entry, frames.get(name)) for name, entry in scenes.items()}


def load_dataset(root: str | Path, dataset: str, split: str) -> dict[str, SceneGraph]:
    """Scenes of ``{root}/{dataset}_metadata_{split}.json`` (+ the frame file if present)."""
    scene_file, frame_file = metadata_paths(root, dataset, split)
    return load_scene_graphs(scene_file, frame_file if frame_file.is_file() else None)


def save_scene_graphs(graphs: dict[str, SceneGraph] | list[SceneGraph], root: str | Path,
                      dataset: str, split: str) -> tuple[Path, Path]:
    """Write the two metadata files; returns their paths."""
    if isinstance(graphs, list):
        graphs = {g.scene_name: g for g in graphs}
    scene_out, frame_out = {}, {}
    for name, g in graphs.items():
        scene_out[name], frame_out[name] = g.to_metadata()
    scene_file, frame_file = metadata_paths(root, dataset, split)
    scene_file.parent.mkdir(parents=True, exist_ok=True)
    scene_file.write_text(json.dumps(scene_out, indent=1), encoding="utf-8")
    frame_file.write_text(json.dumps(frame_out), encoding="utf-8")
    return scene_file, frame_file
