"""The spatio-temporal scene graph: what a 3D-annotated video knows about its scene.

One :class:`SceneGraph` per video: the room (floor area and centre), the object instances
(category and oriented 3D box) and, per frame, the camera-to-world pose, the intrinsics and
which instances are visible (with their 2D boxes). The QA generators read only this, so any
source works: ScanNet-style metadata JSON (:mod:`vlm3r_ros.data.metadata`), a user's own
scenes in the same schema (docs/data.md), or the simulator (vlm3r_ros.sim).

Conventions (those of the ScanNet metadata the official pipeline reads):
- world frame metric (metres), z up; poses are camera-to-world 4x4 with an OpenCV camera
  (x right, y down, z forward);
- an oriented box is centroid + axesLengths + normalizedAxes, where normalizedAxes holds the
  three unit axes as ROWS (9 numbers, row-major); axesLengths[i] is the full length along
  axis i.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np


class SceneGraphError(ValueError):
    """A scene description we cannot use, with what is wrong and where."""


def finite_array(value, shape: tuple[int, ...], what: str, error: type[Exception] = SceneGraphError) -> np.ndarray:
    """``value`` as a float64 array of ``shape``, all finite; else ``error`` naming ``what``."""
    try:
        out = np.asarray(value, dtype=np.float64).reshape(shape)
    except (TypeError, ValueError) as exc:
        raise error(f"{what}: expected {math.prod(shape)} numbers (shape {shape}), got {value!r}") from exc
    if not np.all(np.isfinite(out)):
        raise error(f"{what}: non-finite values in {value!r}")
    return out


@dataclass(frozen=True)
class OrientedBox:
    """A 3D box: centre, full side lengths, and unit axes as rows of ``axes`` (3, 3)."""

    centroid: np.ndarray  # (3,)
    axes_lengths: np.ndarray  # (3,)
    axes: np.ndarray  # (3, 3), row i is the unit direction of side i

    @classmethod
    def create(cls, centroid, axes_lengths, axes=None, *, what: str = "box") -> "OrientedBox":
        c = finite_array(centroid, (3,), f"{what}.centroid")
        lengths = finite_array(axes_lengths, (3,), f"{what}.axesLengths")
        if np.any(lengths < 0):
            raise SceneGraphError(f"{what}.axesLengths: lengths must be >= 0, got {lengths.tolist()}")
        r = np.eye(3) if axes is None else finite_array(axes, (3, 3), f"{what}.normalizedAxes")
        if not np.allclose(r @ r.T, np.eye(3), atol=1e-3):
            raise SceneGraphError(f"{what}.normalizedAxes: rows must be orthonormal, got {r.tolist()}")
        return cls(c, lengths, r)

    @classmethod
    def axis_aligned(cls, minimum, maximum, *, what: str = "box") -> "OrientedBox":
        lo, hi = finite_array(minimum, (3,), f"{what}.min"), finite_array(maximum, (3,), f"{what}.max")
        if np.any(hi < lo):
            raise SceneGraphError(f"{what}: max {hi.tolist()} is below min {lo.tolist()}")
        return cls((lo + hi) / 2, hi - lo, np.eye(3))

    def corners(self) -> np.ndarray:
        """The 8 corners, (8, 3)."""
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        return self.centroid + (signs * (self.axes_lengths / 2)) @ self.axes

    @property
    def minimum(self) -> np.ndarray:
        return self.corners().min(axis=0)

    @property
    def maximum(self) -> np.ndarray:
        return self.corners().max(axis=0)

    @property
    def volume(self) -> float:
        return float(np.prod(self.axes_lengths))

    def contains(self, points: np.ndarray, tol: float = 1e-9) -> np.ndarray:
        """Which of ``points`` (N, 3) lie inside the box (boundary included)."""
        local = (np.asarray(points, dtype=np.float64) - self.centroid) @ self.axes.T
        return np.all(np.abs(local) <= self.axes_lengths / 2 + tol, axis=-1)

    def distance_to(self, points: np.ndarray) -> np.ndarray:
        """Euclidean distance from each of ``points`` (N, 3) or (3,) to the closest point of
        the solid box (0 inside it); (N,) or a scalar array."""
        local = (np.asarray(points, dtype=np.float64) - self.centroid) @ self.axes.T
        outside = np.maximum(np.abs(local) - self.axes_lengths / 2, 0.0)
        return np.linalg.norm(outside, axis=-1)

    def grid_points(self, spacing: float = 0.05, max_per_axis: int = 40) -> np.ndarray:
        """Points on a regular grid filling the box, (N, 3): a deterministic stand-in for the
        object's point cloud when distances are measured between objects."""
        axes_pts = []
        for length in self.axes_lengths:
            n = int(min(max_per_axis, max(2, math.ceil(length / spacing) + 1)))
            axes_pts.append(np.linspace(-length / 2, length / 2, n))
        grid = np.stack(np.meshgrid(*axes_pts, indexing="ij"), axis=-1).reshape(-1, 3)
        return self.centroid + grid @ self.axes

    def to_metadata(self) -> dict:
        return {
            "centroid": self.centroid.tolist(),
            "axesLengths": self.axes_lengths.tolist(),
            "normalizedAxes": self.axes.reshape(-1).tolist(),
            "min": self.minimum.tolist(),
            "max": self.maximum.tolist(),
        }


@dataclass(frozen=True)
class ObjectInstance:
    instance_id: int
    category: str
    box: OrientedBox


@dataclass(frozen=True)
class FrameAnnotation:
    """One video frame: its index in the video, pose, intrinsics and visible instances."""

    frame_id: int
    camera_to_world: np.ndarray  # (4, 4), OpenCV camera
    intrinsics: np.ndarray | None = None  # (3, 3) K, pixels
    visible: Mapping[int, tuple[float, float, float, float] | None] = field(default_factory=dict)
    image_path: str | None = None  # colour image, when the frames are files

    @property
    def camera_position(self) -> np.ndarray:
        return self.camera_to_world[:3, 3]

    def world_to_camera(self, points_world: np.ndarray) -> np.ndarray:
        """World points (N, 3) in this frame's OpenCV camera (x right, y down, z forward)."""
        rotation = self.camera_to_world[:3, :3]
        # p_cam = R^T (p_world - t), written for row vectors
        return (np.asarray(points_world, dtype=np.float64) - self.camera_position) @ rotation


@dataclass
class SceneGraph:
    scene_name: str
    objects: list[ObjectInstance]
    frames: list[FrameAnnotation]
    room_size: float | None = None  # floor area, m^2
    room_center: np.ndarray | None = None  # (3,)
    dataset: str = "custom"
    video_path: str | None = None
    fps: float | None = None  # of the video the frame ids index
    # frame ids of every frame the frame metadata lists, pose-less ones included, sorted (the official
    # "of N" counts them, and camera movement numbers frames among them); None: the frames above
    metadata_frame_ids: tuple[int, ...] | None = None
    # free space, when known (a simulated room): floor polygon (K, 2) and every box that blocks the floor
    # (None: the objects'); route planning needs it, the other types ignore it
    floor: np.ndarray | None = None
    obstacles: list[OrientedBox] | None = None

    def __post_init__(self):
        ids = [o.instance_id for o in self.objects]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise SceneGraphError(f"scene {self.scene_name}: duplicate instance ids {dup}")
        known = set(ids)
        frame_ids = [f.frame_id for f in self.frames]
        if frame_ids != sorted(set(frame_ids)):
            raise SceneGraphError(f"scene {self.scene_name}: frame ids must be unique and increasing")
        for f in self.frames:
            unknown = set(f.visible) - known
            if unknown:
                raise SceneGraphError(f"scene {self.scene_name}, frame {f.frame_id}: visible instances "
                                      f"{sorted(unknown)} are not objects of the scene")
        if self.room_size is not None and not (self.room_size > 0 and math.isfinite(self.room_size)):
            raise SceneGraphError(f"scene {self.scene_name}: room_size must be a positive area in m^2, "
                                  f"got {self.room_size}")

    # --- queries the generators share ---------------------------------------------------------
    def instance(self, instance_id: int) -> ObjectInstance:
        for o in self.objects:
            if o.instance_id == instance_id:
                return o
        raise KeyError(f"scene {self.scene_name} has no instance {instance_id}")

    def category_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.objects:
            counts[o.category] = counts.get(o.category, 0) + 1
        return counts

    def instances_of(self, category: str) -> list[ObjectInstance]:
        return [o for o in self.objects if o.category == category]

    def unique_objects(self) -> list[ObjectInstance]:
        """Objects whose category occurs once in the scene (so its name identifies it)."""
        counts = self.category_counts()
        return [o for o in self.objects if counts[o.category] == 1]

    def first_seen(self) -> dict[int, int]:
        """instance id -> frame id of the first frame where it is visible."""
        out: dict[int, int] = {}
        for f in self.frames:
            for iid in f.visible:
                out.setdefault(iid, f.frame_id)
        return out

    # --- the official metadata layout ---------------------------------------------------------
    def to_metadata(self) -> tuple[dict, dict]:
        """(scene entry, frame entry) in the layout of {ds}_metadata_{split}.json and
        {ds}_frame_metadata_{split}.json (see vlm3r_ros.data.metadata)."""
        bboxes: dict[str, list] = {}
        for o in self.objects:
            bboxes.setdefault(o.category, []).append({"instance_id": int(o.instance_id), **o.box.to_metadata()})
        scene = {
            "dataset": self.dataset,
            "video_path": self.video_path,
            "room_size": self.room_size,
            "room_center": None if self.room_center is None else np.asarray(self.room_center).tolist(),
            "object_counts": self.category_counts(),
            "object_bboxes": bboxes,
        }
        if self.fps is not None:
            scene["fps"] = self.fps
        if self.floor is not None:  # our extension (the official files have no free space)
            scene["floor_polygon"] = np.asarray(self.floor, dtype=np.float64).tolist()
            if self.obstacles is not None:
                scene["obstacle_bboxes"] = [b.to_metadata() for b in self.obstacles]
        frames = []
        for f in self.frames:
            entry = {
                "frame_id": int(f.frame_id),
                "camera_pose_camera_to_world": f.camera_to_world.tolist(),
                # int()/float(): ids and boxes often come as numpy scalars, which json refuses
                "bboxes_2d": [{"instance_id": int(iid), "bbox_2d": None if box is None else [float(x) for x in box]}
                              for iid, box in f.visible.items()],
            }
            if f.intrinsics is not None:
                entry["camera_intrinsics"] = f.intrinsics.tolist()
            if f.image_path is not None:
                entry["file_path_color"] = f.image_path
            frames.append(entry)
        return scene, {"frames": frames}

    @classmethod
    def from_metadata(cls, scene_name: str, scene: Mapping, frames: Mapping | None = None) -> "SceneGraph":
        """Build from one scene's entries of the two metadata files (frames may be absent:
        then only the scene-level task types can be generated)."""
        if not isinstance(scene, Mapping):
            raise SceneGraphError(f"scene {scene_name}: metadata entry must be an object, got {type(scene).__name__}")
        objects: list[ObjectInstance] = []
        bboxes = scene.get("object_bboxes") or {}
        if not isinstance(bboxes, Mapping):
            raise SceneGraphError(f"scene {scene_name}: object_bboxes must map category -> list of boxes")
        next_id = 0
        for category, boxes in bboxes.items():
            for k, b in enumerate(boxes):
                what = f"scene {scene_name}, object_bboxes[{category!r}][{k}]"
                if "centroid" in b and "axesLengths" in b:
                    box = OrientedBox.create(b["centroid"], b["axesLengths"], b.get("normalizedAxes"), what=what)
                elif "min" in b and "max" in b:
                    box = OrientedBox.axis_aligned(b["min"], b["max"], what=what)
                else:
                    raise SceneGraphError(f"{what}: needs centroid + axesLengths (+ normalizedAxes) or min + max")
                iid = b.get("instance_id")
                # Older VSI-Bench metadata has no instance ids: number them in file order.
                iid = next_id if iid is None else int(iid)
                next_id = max(next_id, iid) + 1
                objects.append(ObjectInstance(iid, str(category), box))
        frame_list = []
        for k, f in enumerate((frames or {}).get("frames", [])):
            what = f"scene {scene_name}, frames[{k}]"
            pose = f.get("camera_pose_camera_to_world")
            if pose is None:
                continue  # the official pipeline skips frames without a pose, so do we
            k_mat = f.get("camera_intrinsics")
            visible = {}
            for v in f.get("bboxes_2d", []) or []:
                if v.get("instance_id") is None:
                    continue
                box2d = v.get("bbox_2d")
                visible[int(v["instance_id"])] = None if box2d is None else tuple(float(x) for x in box2d)
            frame_list.append(FrameAnnotation(
                frame_id=int(f["frame_id"]) if "frame_id" in f else k,
                camera_to_world=finite_array(pose, (4, 4), f"{what}.camera_pose_camera_to_world"),
                intrinsics=None if k_mat is None else _intrinsics(k_mat, f"{what}.camera_intrinsics"),
                visible=visible,
                image_path=f.get("file_path_color"),
            ))
        room_center = scene.get("room_center")
        return cls(
            scene_name=scene_name,
            objects=objects,
            frames=frame_list,
            room_size=None if scene.get("room_size") is None else float(scene["room_size"]),
            room_center=(None if room_center is None
                         else finite_array(room_center, (3,), f"scene {scene_name}.room_center")),
            dataset=str(scene.get("dataset", "custom")),
            video_path=scene.get("video_path"),
            fps=None if scene.get("fps") is None else float(scene["fps"]),
            metadata_frame_ids=(tuple(sorted(int(f.get("frame_id", k)) for k, f in enumerate(frames.get("frames", []))))
                                if frames else None),
            floor=(None if scene.get("floor_polygon") is None
                   else finite_array(scene["floor_polygon"], (-1, 2), f"scene {scene_name}.floor_polygon")),
            obstacles=(None if scene.get("obstacle_bboxes") is None else
                       [OrientedBox.create(b["centroid"], b["axesLengths"], b.get("normalizedAxes"),
                                           what=f"scene {scene_name}.obstacle_bboxes[{k}]")
                        for k, b in enumerate(scene["obstacle_bboxes"])]),
        )


def _intrinsics(value, what: str) -> np.ndarray:
    """K as 3x3 from a 3x3 or 4x4 matrix."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape == (4, 4):
        arr = arr[:3, :3]
    return finite_array(arr, (3, 3), what)


def floor_area(polygon_xy: Sequence[Sequence[float]] | Iterable) -> float:
    """Area (m^2) of a simple floor polygon given as (x, y) vertices in order (shoelace)."""
    p = np.asarray(list(polygon_xy), dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) < 3:
        raise SceneGraphError(f"floor polygon: need >= 3 (x, y) vertices, got shape {p.shape}")
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)
