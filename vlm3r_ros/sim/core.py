"""The backend-neutral simulation core: scene, camera trajectory, renderer interface, simulation.

A :class:`SimScene` is a room (floor polygon and height) plus object instances, each a category
and an oriented 3D box (:class:`~vlm3r_ros.data.scene_graph.ObjectInstance`) with an appearance
the renderer draws inside that box. A :class:`Trajectory` is camera poses over time with one
set of :class:`Intrinsics`. A :class:`Renderer` (pybullet here, Habitat for users who have it)
turns a pose into a :class:`RenderedFrame`. A :class:`Simulation` ties the three together,
yields the frames in order and gives the ground-truth :class:`SceneGraph` of exactly the frames
it rendered, which is what the QA generators read.

Conventions (those of :mod:`vlm3r_ros.data.scene_graph`): world frame metric, z up; poses are
camera-to-world 4x4 with OpenCV camera axes (x right, y down, z forward); intrinsics in pixels
with pixel centres at integer coordinates (OpenCV). No ROS imports here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Protocol, Sequence

import numpy as np

from ..data.scene_graph import FrameAnnotation, ObjectInstance, OrientedBox, SceneGraph, finite_array, floor_area

SCENE_FORMAT = "vlm3r_sim_scene/1"
TRAJECTORY_FORMAT = "vlm3r_sim_trajectory/1"
DEFAULT_SIZE = (640, 480)
DEFAULT_HFOV_DEG = 60.0


class SimError(ValueError):
    """Bad simulator input (scene, trajectory, intrinsics, options), said plainly."""


def _floats(value, shape: tuple[int, ...], what: str) -> np.ndarray:
    return finite_array(value, shape, what, error=SimError)


# ------------------------------------------------------------------------------------ camera
@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of a width x height image (pixels, OpenCV pixel centres)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self):
        if int(self.width) != self.width or int(self.height) != self.height or self.width < 1 or self.height < 1:
            raise SimError(f"intrinsics: width and height must be positive integers, got {self.width}x{self.height}")
        for name in ("fx", "fy", "cx", "cy"):
            if not math.isfinite(getattr(self, name)):
                raise SimError(f"intrinsics: {name} must be finite, got {getattr(self, name)}")
        if self.fx <= 0 or self.fy <= 0:
            raise SimError(f"intrinsics: focal lengths must be > 0 pixels, got fx={self.fx}, fy={self.fy}")

    @classmethod
    def from_hfov(cls, width: int = DEFAULT_SIZE[0], height: int = DEFAULT_SIZE[1],
                  hfov_deg: float = DEFAULT_HFOV_DEG) -> "Intrinsics":
        """Square pixels, principal point at the image centre, horizontal field of view in degrees."""
        if not 0 < hfov_deg < 180:
            raise SimError(f"intrinsics: hfov must be in (0, 180) degrees, got {hfov_deg}")
        f = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
        return cls(int(width), int(height), f, f, (width - 1) / 2, (height - 1) / 2)

    def matrix(self) -> np.ndarray:
        """K, (3, 3)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def hfov_deg(self) -> float:
        return math.degrees(2 * math.atan(self.width / (2 * self.fx)))

    def scaled(self, width: int, height: int) -> "Intrinsics":
        """The same camera resampled to width x height (pixel centres stay consistent)."""
        sx, sy = width / self.width, height / self.height
        return Intrinsics(int(width), int(height), self.fx * sx, self.fy * sy,
                          (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5)

    def project(self, points_camera: np.ndarray) -> np.ndarray:
        """Pixel coordinates (N, 2) of camera-frame points (N, 3) with z > 0."""
        p = np.asarray(points_camera, dtype=np.float64)
        return np.stack([self.fx * p[:, 0] / p[:, 2] + self.cx, self.fy * p[:, 1] / p[:, 2] + self.cy], axis=-1)

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy}

    @classmethod
    def from_dict(cls, data: Mapping, what: str = "intrinsics") -> "Intrinsics":
        missing = [k for k in ("width", "height", "fx", "fy", "cx", "cy") if k not in data]
        if missing:
            raise SimError(f"{what}: missing {missing}; expected width, height, fx, fy, cx, cy")
        return cls(int(data["width"]), int(data["height"]), float(data["fx"]), float(data["fy"]),
                   float(data["cx"]), float(data["cy"]))


@dataclass
class RenderedFrame:
    """What a renderer returns for one pose."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray | None = None  # (H, W) float32, metres along the optical axis (z); inf = nothing
    instance_ids: np.ndarray | None = None  # (H, W) int32, instance id or -1 (floor, walls, background)


class Renderer(Protocol):
    """A simulator backend: draws the scene it was built with from a camera pose."""

    def render(self, camera_to_world: np.ndarray, intrinsics: Intrinsics) -> RenderedFrame: ...

    def close(self) -> None: ...


def look_at(eye, target, up=(0.0, 0.0, 1.0), roll_rad: float = 0.0) -> np.ndarray:
    """Camera-to-world (4, 4), OpenCV axes, at ``eye`` looking at ``target`` (z-up world)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    forward = target - eye
    if np.linalg.norm(forward) < 1e-9:
        raise SimError(f"look_at: eye and target coincide at {eye.tolist()}")
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:
        raise SimError("look_at: viewing direction is parallel to 'up'; give another up vector")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    if roll_rad:
        c, s = math.cos(roll_rad), math.sin(roll_rad)
        right, down = c * right + s * down, -s * right + c * down
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, eye
    return pose


def _check_pose(pose, what: str) -> np.ndarray:
    pose = _floats(pose, (4, 4), what)
    r = pose[:3, :3]
    if not np.allclose(r @ r.T, np.eye(3), atol=1e-5) or np.linalg.det(r) < 0 or not np.allclose(pose[3], [0, 0, 0, 1]):
        raise SimError(f"{what}: expected a rigid camera-to-world 4x4 (rotation with det +1, last row 0 0 0 1)")
    return pose


# -------------------------------------------------------------------------------- trajectory
@dataclass
class Trajectory:
    """Camera poses over time: times (N,) seconds from 0, camera_to_world (N, 4, 4) OpenCV."""

    times: np.ndarray
    camera_to_world: np.ndarray
    intrinsics: Intrinsics

    def __post_init__(self):
        self.times = np.asarray(self.times, dtype=np.float64).reshape(-1)
        poses = np.asarray(self.camera_to_world, dtype=np.float64)
        if poses.ndim != 3 or poses.shape[1:] != (4, 4) or len(poses) != len(self.times):
            raise SimError(f"trajectory: expected camera_to_world of shape ({len(self.times)}, 4, 4) "
                           f"(one pose per time), got {poses.shape}")
        if len(self.times) == 0:
            raise SimError("trajectory: no poses; a trajectory needs at least one")
        if not np.all(np.isfinite(self.times)) or self.times[0] < 0 or np.any(np.diff(self.times) <= 0):
            raise SimError("trajectory: times must be finite, >= 0 and strictly increasing")
        self.camera_to_world = np.stack([_check_pose(p, f"trajectory pose {i}") for i, p in enumerate(poses)])
        if not isinstance(self.intrinsics, Intrinsics):
            raise SimError(f"trajectory: intrinsics must be an Intrinsics, got {type(self.intrinsics).__name__}")

    def __len__(self) -> int:
        return len(self.times)

    @property
    def fps(self) -> float | None:
        """Frame rate when the times are evenly spaced (1 % tolerance), else None."""
        if len(self.times) < 2:
            return None
        dt = np.diff(self.times)
        return float(1.0 / dt.mean()) if np.allclose(dt, dt.mean(), rtol=0.01) else None

    @property
    def positions(self) -> np.ndarray:
        return self.camera_to_world[:, :3, 3]

    def with_intrinsics(self, intrinsics: Intrinsics) -> "Trajectory":
        return Trajectory(self.times.copy(), self.camera_to_world.copy(), intrinsics)

    def to_dict(self) -> dict:
        return {
            "format": TRAJECTORY_FORMAT,
            "intrinsics": self.intrinsics.to_dict(),
            "frames": [{"time": float(t), "camera_to_world": p.tolist()}
                       for t, p in zip(self.times, self.camera_to_world)],
        }

    @classmethod
    def from_dict(cls, data: Mapping, what: str = "trajectory") -> "Trajectory":
        if not isinstance(data, Mapping) or data.get("format") != TRAJECTORY_FORMAT:
            got = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise SimError(f"{what}: expected a {TRAJECTORY_FORMAT!r} object, got format {got!r}")
        frames = data.get("frames")
        if not isinstance(frames, list) or not frames:
            raise SimError(f"{what}: 'frames' must be a non-empty list of {{time, camera_to_world}}")
        try:
            times = [float(f["time"]) for f in frames]
            poses = [_floats(f["camera_to_world"], (4, 4), f"{what}.frames[{i}].camera_to_world")
                     for i, f in enumerate(frames)]
        except (KeyError, TypeError) as exc:
            raise SimError(f"{what}: every frame needs 'time' and 'camera_to_world' ({exc})") from exc
        intrinsics = Intrinsics.from_dict(data.get("intrinsics") or {}, f"{what}.intrinsics")
        return cls(np.array(times), np.stack(poses), intrinsics)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict()), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Trajectory":
        return cls.from_dict(_read_structured(Path(path), "trajectory file"), str(path))


# ------------------------------------------------------------------------------- scene
@dataclass(frozen=True)
class Room:
    """A room: floor polygon (K, 2) in metres (z = 0 is the floor), ceiling height."""

    floor: np.ndarray
    height: float = 2.7

    def __post_init__(self):
        floor = _floats(self.floor, (-1, 2), "room.floor") if np.size(self.floor) else np.zeros((0, 2))
        if len(floor) < 3:
            raise SimError(f"room.floor: need >= 3 (x, y) vertices in order, got {len(floor)}")
        object.__setattr__(self, "floor", floor)
        if not (self.height > 0 and math.isfinite(self.height)):
            raise SimError(f"room.height: must be > 0 metres, got {self.height}")
        if self.area <= 0:
            raise SimError("room.floor: the polygon has zero area")

    @classmethod
    def rectangle(cls, x_min: float, y_min: float, x_max: float, y_max: float, height: float = 2.7) -> "Room":
        return cls(np.array([[x_min, y_min], [x_max, y_min], [x_max, y_max], [x_min, y_max]], dtype=np.float64), height)

    x_min = property(lambda self: float(self.floor[:, 0].min()))
    x_max = property(lambda self: float(self.floor[:, 0].max()))
    y_min = property(lambda self: float(self.floor[:, 1].min()))
    y_max = property(lambda self: float(self.floor[:, 1].max()))

    @property
    def area(self) -> float:
        return floor_area(self.floor)

    @property
    def center(self) -> np.ndarray:
        """Centre of the room's 3D extent, (3,)."""
        return np.array([(self.x_min + self.x_max) / 2, (self.y_min + self.y_max) / 2, self.height / 2])

    def edges(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(self.floor[i], self.floor[(i + 1) % len(self.floor)]) for i in range(len(self.floor))]

    def contains(self, xy, margin: float = 0.0) -> np.ndarray:
        """Which points (N, 2) lie inside the floor polygon, at least ``margin`` from every wall."""
        pts = np.atleast_2d(np.asarray(xy, dtype=np.float64))
        x, y = pts[:, 0], pts[:, 1]
        inside = np.zeros(len(pts), dtype=bool)
        for a, b in self.edges():  # even-odd ray casting
            crosses = (a[1] > y) != (b[1] > y)
            with np.errstate(divide="ignore", invalid="ignore"):
                x_cross = a[0] + (y - a[1]) * (b[0] - a[0]) / (b[1] - a[1])
            inside ^= crosses & (x < x_cross)
        if margin > 0:
            inside &= self.distance_to_walls(pts) >= margin
        return inside

    def distance_to_walls(self, xy) -> np.ndarray:
        pts = np.atleast_2d(np.asarray(xy, dtype=np.float64))
        best = np.full(len(pts), np.inf)
        for a, b in self.edges():
            ab = b - a
            t = np.clip(((pts - a) @ ab) / (ab @ ab), 0.0, 1.0)
            best = np.minimum(best, np.linalg.norm(pts - (a + t[:, None] * ab), axis=1))
        return best


@dataclass(frozen=True)
class Appearance:
    """How a renderer draws an object inside its box: a shape of the catalogue
    (vlm3r_ros.sim.shapes.SHAPES: primitives such as 'box', 'table', 'chair', and pybullet_data
    models such as 'duck', 'teddy') and a linear RGB colour in [0, 1]."""

    shape: str = "box"
    color: tuple[float, float, float] = (0.6, 0.6, 0.6)


@dataclass(frozen=True)
class RoomAppearance:
    floor_color: tuple[float, float, float] = (0.55, 0.42, 0.30)
    wall_colors: tuple[tuple[float, float, float], ...] = ((0.82, 0.80, 0.74),)  # cycled over the walls
    ceiling_color: tuple[float, float, float] = (0.92, 0.92, 0.90)
    floor_checker: float = 0.5  # side (m) of the floor's checker pattern; 0 = plain


def yaw_axes(yaw_rad: float) -> np.ndarray:
    """Box axes (rows) of an upright object turned by yaw about +z, (3, 3)."""
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def box_yaw(box: OrientedBox, what: str = "box") -> float:
    """The yaw of an upright box (its third axis is +z); refuses tilted boxes."""
    if not np.allclose(box.axes[2], [0, 0, 1], atol=1e-6):
        raise SimError(f"{what}: only upright objects (third box axis +z) are supported, got axes {box.axes.tolist()}")
    return math.atan2(box.axes[0, 1], box.axes[0, 0])


@dataclass
class SimScene:
    """A room with object instances (category + oriented box) and their appearance."""

    name: str
    room: Room
    objects: list[ObjectInstance]
    appearance: dict[int, Appearance] = field(default_factory=dict)
    room_appearance: RoomAppearance = field(default_factory=RoomAppearance)
    seed: int | None = None  # the generator seed, when procedurally generated
    source: str | None = None  # a backend's own scene file (Habitat), when there is one

    def __post_init__(self):
        ids = [o.instance_id for o in self.objects]
        if len(set(ids)) != len(ids):
            raise SimError(f"scene {self.name}: duplicate instance ids {sorted({i for i in ids if ids.count(i) > 1})}")
        if any(i < 0 for i in ids):
            raise SimError(f"scene {self.name}: instance ids must be >= 0 (-1 means 'no object'), got {sorted(ids)}")
        unknown = set(self.appearance) - set(ids)
        if unknown:
            raise SimError(f"scene {self.name}: appearance given for unknown instances {sorted(unknown)}")

    def appearance_of(self, instance_id: int) -> Appearance:
        return self.appearance.get(instance_id, Appearance())

    def scene_graph(self, frames: Sequence[FrameAnnotation] = (), fps: float | None = None) -> SceneGraph:
        """The ground-truth scene graph (z-up metric world, as the QA generators expect)."""
        return SceneGraph(scene_name=self.name, objects=list(self.objects), frames=list(frames),
                          room_size=self.room.area, room_center=self.room.center, dataset="sim", fps=fps,
                          floor=self.room.floor.copy(), obstacles=[o.box for o in self.objects])

    # --- the scene file ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        objects = []
        for o in self.objects:
            app = self.appearance_of(o.instance_id)
            objects.append({
                "id": o.instance_id, "category": o.category, "shape": app.shape,
                "center": _rounded(o.box.centroid), "size": _rounded(o.box.axes_lengths),
                "yaw_deg": round(math.degrees(box_yaw(o.box, f"object {o.instance_id}")), 6),
                "color": _rounded(app.color),
            })
        ra = self.room_appearance
        out = {
            "format": SCENE_FORMAT, "name": self.name,
            "room": {"floor": _rounded(self.room.floor), "height": self.room.height,
                     "floor_color": list(ra.floor_color), "wall_colors": [list(c) for c in ra.wall_colors],
                     "ceiling_color": list(ra.ceiling_color), "floor_checker": ra.floor_checker},
            "objects": objects,
        }
        if self.seed is not None:
            out["seed"] = self.seed
        if self.source is not None:
            out["source"] = self.source
        return out

    @classmethod
    def from_dict(cls, data: Mapping, what: str = "scene") -> "SimScene":
        if not isinstance(data, Mapping) or data.get("format") != SCENE_FORMAT:
            got = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise SimError(f"{what}: expected a {SCENE_FORMAT!r} object (see docs/sim.md), got format {got!r}")
        room_data = data.get("room")
        if not isinstance(room_data, Mapping) or "floor" not in room_data:
            raise SimError(f"{what}: 'room' must be an object with 'floor' ([[x, y], ...]) and 'height'")
        room = Room(room_data["floor"], float(room_data.get("height", 2.7)))
        defaults = RoomAppearance()
        room_app = RoomAppearance(
            floor_color=_color(room_data.get("floor_color", defaults.floor_color), f"{what}.room.floor_color"),
            wall_colors=tuple(_color(c, f"{what}.room.wall_colors")
                              for c in room_data.get("wall_colors", defaults.wall_colors)),
            ceiling_color=_color(room_data.get("ceiling_color", defaults.ceiling_color), f"{what}.room.ceiling_color"),
            floor_checker=float(room_data.get("floor_checker", defaults.floor_checker)),
        )
        if not room_app.wall_colors:
            raise SimError(f"{what}.room.wall_colors: give at least one colour")
        objects, appearance = [], {}
        for k, o in enumerate(data.get("objects") or []):
            where = f"{what}.objects[{k}]"
            if not isinstance(o, Mapping):
                raise SimError(f"{where}: expected an object, got {type(o).__name__}")
            missing = [key for key in ("category", "center", "size") if key not in o]
            if missing:
                raise SimError(f"{where}: missing {missing}; each object needs category, center [x, y, z] "
                               f"(box centre, m), size [sx, sy, sz] (m) and optionally id, shape, yaw_deg, color")
            iid = int(o.get("id", k))
            box = OrientedBox.create(_floats(o["center"], (3,), f"{where}.center"),
                                     _floats(o["size"], (3,), f"{where}.size"),
                                     yaw_axes(math.radians(float(o.get("yaw_deg", 0.0)))), what=where)
            if np.any(box.axes_lengths <= 0):
                raise SimError(f"{where}.size: every side must be > 0 m, got {box.axes_lengths.tolist()}")
            objects.append(ObjectInstance(iid, str(o["category"]), box))
            color = _color(o.get("color", (0.6, 0.6, 0.6)), f"{where}.color")
            appearance[iid] = Appearance(str(o.get("shape", "box")), color)
        return cls(name=str(data.get("name", "sim_scene")), room=room, objects=objects, appearance=appearance,
                   room_appearance=room_app, seed=data.get("seed"), source=data.get("source"))

    def save(self, path: str | Path) -> Path:
        """Write the scene file: JSON, or YAML when the name ends in .yaml/.yml."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml
            path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        else:
            path.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SimScene":
        return cls.from_dict(_read_structured(Path(path), "scene file"), str(path))


def _rounded(values, digits: int = 6) -> list:
    return np.round(np.asarray(values, dtype=np.float64), digits).tolist()


def _color(value, what: str) -> tuple[float, float, float]:
    c = _floats(value, (3,), what)
    if np.any(c < 0) or np.any(c > 1):
        raise SimError(f"{what}: colour components must be in [0, 1], got {c.tolist()}")
    return tuple(float(x) for x in c)


def _read_structured(path: Path, what: str) -> dict:
    if not path.is_file():
        raise SimError(f"{what} not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json.JSONDecodeError or yaml.YAMLError
        raise SimError(f"{path}: not a valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'} "
                       f"{what} ({exc})") from exc
    if not isinstance(data, dict):
        raise SimError(f"{path}: expected an object at the top of the {what}, got {type(data).__name__}")
    return data


# ------------------------------------------------------------------------ camera paths
def _free_space_sampler(room: Room, obstacles: Sequence[OrientedBox], wall_margin: float, obstacle_margin: float,
                        rng: np.random.Generator):
    """A function drawing one floor point (2,) in free space, or None after many misses."""
    def free(xy: np.ndarray) -> np.ndarray:
        ok = room.contains(xy, wall_margin)
        for box in obstacles:
            ok &= ~_in_footprint(box, xy, obstacle_margin)
        return ok

    def draw() -> np.ndarray | None:
        for _ in range(2000):
            xy = rng.uniform([room.x_min, room.y_min], [room.x_max, room.y_max])
            if free(xy[None])[0]:
                return xy
        return None

    return draw, free


def _in_footprint(box: OrientedBox, xy: np.ndarray, margin: float) -> np.ndarray:
    """Which points (N, 2) lie within ``margin`` of the box's floor footprint (upright boxes)."""
    local = (np.atleast_2d(xy) - box.centroid[:2]) @ box.axes[:2, :2].T  # (N, 2) in box axes
    return np.all(np.abs(local) <= box.axes_lengths[:2] / 2 + margin, axis=-1)


def _scene_parts(scene_or_room) -> tuple[Room, list[OrientedBox]]:
    if isinstance(scene_or_room, SimScene):
        return scene_or_room.room, [o.box for o in scene_or_room.objects]
    if isinstance(scene_or_room, Room):
        return scene_or_room, []
    raise SimError(f"expected a SimScene or a Room, got {type(scene_or_room).__name__}")


def _smooth_noise(rng: np.random.Generator, times: np.ndarray, amplitude: float, period_s: float) -> np.ndarray:
    """Band-limited noise over ``times``: a few random sinusoids slower than ``period_s``."""
    out = np.zeros_like(times)
    for _ in range(3):
        freq = rng.uniform(0.3, 1.0) / period_s
        out += np.sin(2 * math.pi * freq * times + rng.uniform(0, 2 * math.pi))
    return amplitude * out / 3


def handheld_walk(scene, seed: int = 0, n: int = 60, fps: float = 10.0, intrinsics: Intrinsics | None = None,
                  speed: float = 0.5, eye_height: float = 1.45, sweep_deg: float = 35.0) -> Trajectory:
    """A person walking a loop around the room with a camera in hand.

    The path is a smooth closed curve through free floor points around the room centre, walked
    at ``speed`` m/s; the camera looks towards the room centre, sweeping left and right by
    ``sweep_deg``, pitched down 10 to 25 degrees, with small shakes in position, roll and
    pitch. ``scene`` is a SimScene (tall objects are walked around) or a Room.
    """
    _check_counts(n, fps)
    room, boxes = _scene_parts(scene)
    rng = np.random.default_rng(seed)
    tall = [b for b in boxes if b.maximum[2] > eye_height - 0.25]  # the camera passes over lower furniture
    draw, free = _free_space_sampler(room, tall, wall_margin=0.45, obstacle_margin=0.3, rng=rng)
    centre = room.center[:2]
    path = None
    for _attempt in range(50):
        pts = [draw() for _ in range(6)]
        if any(p is None for p in pts):
            break
        pts = np.array(sorted(pts, key=lambda q: math.atan2(q[1] - centre[1], q[0] - centre[0])))
        dense = _closed_catmull_rom(pts, 40)
        if free(dense).all():
            path = dense
            break
    if path is None:
        raise SimError(f"handheld_walk: found no free loop in scene after 50 tries (seed {seed}); "
                       f"the room may be too small or too full for a walk")
    times = np.arange(n) / fps
    along = _arc_positions(path, speed * times + rng.uniform(0, _length(path, closed=True)), closed=True)
    z = eye_height + _smooth_noise(rng, times, 0.04, 2.0)
    eye = np.column_stack([along, z]) + np.column_stack([_smooth_noise(rng, times, 0.02, 1.0),
                                                         _smooth_noise(rng, times, 0.02, 1.0), np.zeros(n)])
    to_centre = centre - eye[:, :2]
    yaw = np.arctan2(to_centre[:, 1], to_centre[:, 0]) + math.radians(sweep_deg) * np.sin(
        2 * math.pi * times / 6.0 + rng.uniform(0, 2 * math.pi))
    pitch = -np.radians(17.5 + 7.5 * np.sin(2 * math.pi * times / 4.0 + rng.uniform(0, 2 * math.pi)))
    pitch += _smooth_noise(rng, times, math.radians(1.5), 0.7)
    roll = _smooth_noise(rng, times, math.radians(2.0), 0.8)
    poses = np.stack([_pose_from_angles(e, y, p, r) for e, y, p, r in zip(eye, yaw, pitch, roll)])
    return Trajectory(times, poses, intrinsics or Intrinsics.from_hfov())


def robot_patrol(scene, seed: int = 0, n: int = 60, fps: float = 10.0, intrinsics: Intrinsics | None = None,
                 speed: float = 0.4, turn_rate_deg: float = 45.0, camera_height: float = 0.8,
                 pitch_deg: float = -8.0, robot_radius: float = 0.3) -> Trajectory:
    """A wheeled robot patrolling free space: it turns in place towards the next waypoint at
    ``turn_rate_deg`` per second, then drives straight at ``speed`` m/s; the camera is fixed on
    the robot at ``camera_height`` and ``pitch_deg``, with no roll. Waypoints avoid every object
    footprint by ``robot_radius`` and straight legs are checked to stay free."""
    _check_counts(n, fps)
    room, boxes = _scene_parts(scene)
    rng = np.random.default_rng(seed)
    draw, free = _free_space_sampler(room, boxes, wall_margin=robot_radius + 0.15, obstacle_margin=robot_radius,
                                     rng=rng)
    start = draw()
    if start is None:
        raise SimError(f"robot_patrol: no free floor for a robot of radius {robot_radius} m in this scene")
    dt = 1.0 / fps
    position, heading = start.copy(), rng.uniform(-math.pi, math.pi)
    states = []  # (x, y, heading) per frame
    target = None
    turn_step, drive_step = math.radians(turn_rate_deg) * dt, speed * dt
    misses = 0
    while len(states) < n:
        if target is None:
            candidate = draw()
            if candidate is None or np.linalg.norm(candidate - position) < 0.8:
                misses += 1
                if misses > 200:
                    raise SimError("robot_patrol: found no reachable waypoint; the free space is too small")
                continue
            leg = position + np.linspace(0, 1, 50)[:, None] * (candidate - position)
            if not free(leg).all():
                misses += 1
                if misses > 200:
                    raise SimError("robot_patrol: found no straight free leg; the free space is too cluttered")
                continue
            target, misses = candidate, 0
        states.append((position[0], position[1], heading))
        wanted = math.atan2(target[1] - position[1], target[0] - position[0])
        error = (wanted - heading + math.pi) % (2 * math.pi) - math.pi
        if abs(error) > 1e-6:  # turn in place first
            heading += math.copysign(min(abs(error), turn_step), error)
            continue
        to_go = target - position
        distance = float(np.linalg.norm(to_go))
        if distance <= drive_step:
            position, target = target.copy(), None
        else:
            position = position + to_go / distance * drive_step
    times = np.arange(n) * dt
    poses = np.stack([_pose_from_angles(np.array([x, y, camera_height]), h, math.radians(pitch_deg), 0.0)
                      for x, y, h in states])
    return Trajectory(times, poses, intrinsics or Intrinsics.from_hfov())


def scan_turn(scene, seed: int = 0, n: int = 60, fps: float = 10.0, intrinsics: Intrinsics | None = None,
              eye_height: float = 1.4, pitch_deg: float = -15.0, turns: float = 1.0) -> Trajectory:
    """A person standing on free floor near the room centre and turning on the spot at an even
    rate, ``turns`` full turns over the run. It starts facing the direction with the fewest
    objects, so objects come into view one after another: the path for first-appearance
    questions, which the walking and patrolling cameras (seeing most of a small room in their
    first frame) rarely allow."""
    _check_counts(n, fps)
    room, boxes = _scene_parts(scene)
    rng = np.random.default_rng(seed)
    tall = [b for b in boxes if b.maximum[2] > eye_height - 0.25]
    draw, _free = _free_space_sampler(room, tall, wall_margin=0.6, obstacle_margin=0.3, rng=rng)
    candidates = [q for q in (draw() for _ in range(20)) if q is not None]
    if not candidates:
        raise SimError(f"scan_turn: no free floor to stand on in this scene (seed {seed})")
    centre = room.center[:2]
    spot = min(candidates, key=lambda q: float(np.linalg.norm(q - centre)))
    # Start where the fewest object centres lie within half a field of view of the heading.
    intrinsics = intrinsics or Intrinsics.from_hfov()
    half_fov = math.atan(intrinsics.width / 2 / intrinsics.fx)
    bearings = np.array([math.atan2(b.centroid[1] - spot[1], b.centroid[0] - spot[0]) for b in boxes])
    headings = np.linspace(-math.pi, math.pi, 72, endpoint=False)
    in_view = [int(np.sum(np.abs((bearings - h + math.pi) % (2 * math.pi) - math.pi) < half_fov)) for h in headings]
    start = float(headings[int(np.argmin(in_view))])
    times = np.arange(n) / fps
    yaw = start + 2 * math.pi * turns * np.arange(n) / max(n, 1)
    eye = np.array([spot[0], spot[1], eye_height])
    poses = np.stack([_pose_from_angles(eye, y, math.radians(pitch_deg), 0.0) for y in yaw])
    return Trajectory(times, poses, intrinsics)


TRAJECTORY_KINDS = {"handheld": handheld_walk, "patrol": robot_patrol, "scan": scan_turn}


def _check_counts(n: int, fps: float):
    if int(n) != n or n < 1:
        raise SimError(f"trajectory: the number of frames must be a positive integer, got {n}")
    if not (fps > 0 and math.isfinite(fps)):
        raise SimError(f"trajectory: fps must be > 0, got {fps}")


def _pose_from_angles(eye: np.ndarray, yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world (OpenCV axes) at ``eye`` looking along yaw (about +z from +x) and pitch
    (positive looks up), rolled about the optical axis."""
    forward = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)])
    return look_at(eye, eye + forward, roll_rad=roll)


def _closed_catmull_rom(points: np.ndarray, per_segment: int) -> np.ndarray:
    """Dense points (M, 2) of the closed Catmull-Rom curve through ``points`` (K, 2)."""
    k = len(points)
    out = []
    s = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    for i in range(k):
        p0, p1, p2, p3 = (points[(i + j) % k] for j in (-1, 0, 1, 2))
        out.append(0.5 * (2 * p1 + (-p0 + p2) * s + (2 * p0 - 5 * p1 + 4 * p2 - p3) * s ** 2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * s ** 3))
    return np.concatenate(out)


def _length(path: np.ndarray, closed: bool) -> float:
    pts = np.vstack([path, path[:1]]) if closed else path
    return float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())


def _arc_positions(path: np.ndarray, distances: np.ndarray, closed: bool) -> np.ndarray:
    """Points at arc-length ``distances`` along the polyline (wrapping when closed), (N, 2)."""
    pts = np.vstack([path, path[:1]]) if closed else path
    cumulative = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    d = np.mod(distances, cumulative[-1]) if closed else np.clip(distances, 0, cumulative[-1])
    return np.column_stack([np.interp(d, cumulative, pts[:, 0]), np.interp(d, cumulative, pts[:, 1])])


# -------------------------------------------------------------------------------- simulation
@dataclass
class SimFrame:
    index: int  # 0.. in trajectory order; the frame_id of the ground truth
    time: float  # seconds from the start of the trajectory
    camera_to_world: np.ndarray  # (4, 4) OpenCV camera
    rendered: RenderedFrame


class Simulation:
    """A scene seen along a trajectory by a renderer.

    Iterating renders every pose in order. ``ground_truth(indices)`` is the scene graph of the
    frames given (default: every frame rendered so far), frame_id = trajectory index. Visible
    instances and their 2D boxes come from the renderer's instance ids when it has them (at
    least ``min_visible_pixels`` pixels), else from projecting each box's grid points with a
    depth test against the rendered depth (or none, when there is no depth either).
    """

    def __init__(self, scene: SimScene, trajectory: Trajectory, renderer: Renderer, *,
                 min_visible_pixels: int | None = None):
        self.scene, self.trajectory, self.renderer = scene, trajectory, renderer
        intr = trajectory.intrinsics
        # 1/5000 of the image (61 pixels at 640x480, 4 at 160x120): specks do not count as seen.
        self.min_visible_pixels = (max(1, round(intr.width * intr.height / 5000)) if min_visible_pixels is None
                                   else int(min_visible_pixels))
        self._visible: dict[int, dict[int, tuple[float, float, float, float]]] = {}

    def __len__(self) -> int:
        return len(self.trajectory)

    def render(self, index: int) -> SimFrame:
        if not 0 <= index < len(self.trajectory):
            raise IndexError(f"frame index {index} outside the trajectory's 0..{len(self.trajectory) - 1}")
        pose = self.trajectory.camera_to_world[index]
        rendered = self.renderer.render(pose, self.trajectory.intrinsics)
        self._visible[index] = self.visible_instances(rendered, pose)
        return SimFrame(index, float(self.trajectory.times[index]), pose.copy(), rendered)

    def __iter__(self) -> Iterator[SimFrame]:
        for i in range(len(self.trajectory)):
            yield self.render(i)

    def visible_instances(self, rendered: RenderedFrame, camera_to_world: np.ndarray
                          ) -> dict[int, tuple[float, float, float, float]]:
        """instance id -> 2D box (x1, y1, x2, y2): pixel centres of the extreme pixels, inclusive."""
        if rendered.instance_ids is not None:
            ids = rendered.instance_ids
            found, counts = np.unique(ids[ids >= 0], return_counts=True)
            out = {}
            for iid, count in zip(found.tolist(), counts.tolist()):
                if count < self.min_visible_pixels:
                    continue
                rows, cols = np.nonzero(ids == iid)
                out[int(iid)] = (float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max()))
            return out
        return self._visible_by_projection(rendered, camera_to_world)

    def _visible_by_projection(self, rendered: RenderedFrame, camera_to_world: np.ndarray) -> dict:
        intr = self.trajectory.intrinsics
        world_to_camera = np.linalg.inv(camera_to_world)
        out = {}
        for obj in self.scene.objects:
            pts = obj.box.grid_points(spacing=0.05, max_per_axis=12)
            cam = pts @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
            cam = cam[cam[:, 2] > 1e-3]
            if not len(cam):
                continue
            uv = intr.project(cam)
            col, row = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
            keep = (col >= 0) & (col < intr.width) & (row >= 0) & (row < intr.height)
            if rendered.depth is not None:
                # a grid point inside the box may lie behind its own surface: allow the box's size
                slack = 0.05 + float(obj.box.axes_lengths.max())
                keep[keep] &= cam[keep, 2] <= rendered.depth[row[keep], col[keep]] + slack
            if keep.sum() == 0:
                continue
            u, v = uv[keep, 0], uv[keep, 1]
            u_lo, u_hi = np.clip([u.min(), u.max()], 0, intr.width - 1)
            v_lo, v_hi = np.clip([v.min(), v.max()], 0, intr.height - 1)
            out[obj.instance_id] = (float(u_lo), float(v_lo), float(u_hi), float(v_hi))
        return out

    def ground_truth(self, frame_indices: Sequence[int] | None = None, *, seen_only: bool = True) -> SceneGraph:
        """The scene graph whose frames are exactly ``frame_indices`` (sorted, unique; frames not
        rendered yet are rendered now). Default: every frame rendered so far.

        With ``seen_only`` (default) it holds only the objects those frames show: a question
        must be answerable from the video, so a chair no frame shows is not counted, measured
        or offered as a choice. ``seen_only=False`` keeps every object of the scene."""
        indices = sorted(self._visible) if frame_indices is None else sorted({int(i) for i in frame_indices})
        intr = self.trajectory.intrinsics
        frames = []
        for i in indices:
            if i not in self._visible:
                self.render(i)
            frames.append(FrameAnnotation(frame_id=i, camera_to_world=self.trajectory.camera_to_world[i].copy(),
                                          intrinsics=intr.matrix(), visible=dict(self._visible[i])))
        graph = self.scene.scene_graph(frames, fps=self.trajectory.fps)
        if seen_only:
            seen = {iid for f in frames for iid in f.visible}
            graph.objects = [o for o in graph.objects if o.instance_id in seen]
        return graph

    def close(self) -> None:
        self.renderer.close()

    def __enter__(self) -> "Simulation":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
