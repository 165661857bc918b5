"""Indoor rooms generated from a seed: a furnished room whose ground truth is known exactly.

``generate_scene(seed)`` draws a rectangular or L-shaped room and furnishes it: a table with
chairs around it and small things on its top, furniture against the walls (sofa, bed,
cabinets, TV), and a few free-standing objects (lamp, plant, trash can, ball). Footprints never
overlap and stay inside the room. The same seed always gives the same scene (numpy's PCG64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..data.scene_graph import ObjectInstance, OrientedBox
from .core import Appearance, Room, RoomAppearance, SimError, SimScene, yaw_axes
from .shapes import natural_proportions


@dataclass(frozen=True)
class Kind:
    """One kind of object: its category (the name questions use), shape and size ranges (m)."""

    category: str
    shape: str
    width: tuple[float, float]  # along the object's x
    depth: tuple[float, float]  # along y (the front faces +y)
    height: tuple[float, float]
    palette: tuple[tuple[float, float, float], ...]


WOODS = ((0.55, 0.36, 0.20), (0.42, 0.27, 0.15), (0.70, 0.52, 0.32), (0.30, 0.20, 0.12))
FABRICS = ((0.20, 0.35, 0.60), (0.55, 0.15, 0.15), (0.25, 0.45, 0.30), (0.45, 0.45, 0.48), (0.60, 0.45, 0.20))
BRIGHTS = ((0.85, 0.20, 0.20), (0.20, 0.55, 0.85), (0.95, 0.75, 0.15), (0.30, 0.70, 0.35), (0.70, 0.30, 0.70))

KINDS = {
    "table": Kind("table", "table", (1.0, 1.6), (0.7, 1.0), (0.72, 0.78), WOODS),
    "chair": Kind("chair", "chair", (0.42, 0.5), (0.42, 0.5), (0.85, 1.0), WOODS + FABRICS),
    "sofa": Kind("sofa", "sofa", (1.6, 2.2), (0.8, 0.95), (0.8, 0.9), FABRICS),
    "bed": Kind("bed", "bed", (1.4, 1.8), (1.9, 2.1), (0.9, 1.1), WOODS),
    "cabinet": Kind("cabinet", "cabinet", (0.6, 1.0), (0.4, 0.55), (1.6, 2.0), WOODS + ((0.85, 0.85, 0.82),)),
    "tv": Kind("tv", "tv", (0.9, 1.3), (0.3, 0.35), (1.1, 1.4), ((0.12, 0.12, 0.13), (0.25, 0.25, 0.27))),
    "lamp": Kind("lamp", "lamp", (0.3, 0.4), (0.3, 0.4), (1.4, 1.7), ((0.95, 0.90, 0.70), (0.90, 0.80, 0.60))),
    "trash can": Kind("trash can", "trash_can", (0.25, 0.35), (0.25, 0.35), (0.35, 0.5), BRIGHTS),
    "plant": Kind("plant", "plant", (0.4, 0.6), (0.4, 0.6), (0.8, 1.3), ((0.15, 0.50, 0.18), (0.25, 0.60, 0.20))),
    "ball": Kind("ball", "ball", (0.22, 0.26), (0.22, 0.26), (0.22, 0.26), ((1.0, 1.0, 1.0),)),
    "toy duck": Kind("toy duck", "duck", (0.18, 0.26), (0.18, 0.26), (0.18, 0.26), ((1.0, 1.0, 1.0),)),
    "teddy bear": Kind("teddy bear", "teddy", (0.3, 0.4), (0.3, 0.4), (0.3, 0.4),
                       ((0.60, 0.40, 0.22), (0.75, 0.55, 0.35))),
    "cup": Kind("cup", "mug", (0.1, 0.12), (0.1, 0.12), (0.1, 0.12),
                ((0.9, 0.9, 0.88), (0.8, 0.25, 0.2), (0.2, 0.4, 0.8))),
}
ON_TABLE = ("toy duck", "teddy bear", "cup")
ROUND = ("lamp", "trash can", "plant")  # round shapes: width == depth
WALL_COLORS = ((0.86, 0.83, 0.76), (0.78, 0.84, 0.86), (0.88, 0.80, 0.74), (0.80, 0.85, 0.78), (0.90, 0.88, 0.84))
FLOOR_COLORS = ((0.55, 0.42, 0.30), (0.62, 0.58, 0.52), (0.45, 0.34, 0.26), (0.50, 0.50, 0.55))


class _Layout:
    """Objects placed so far, with their floor footprints for overlap tests."""

    def __init__(self, room: Room, rng: np.random.Generator):
        self.room, self.rng = room, rng
        self.objects: list[ObjectInstance] = []
        self.appearance: dict[int, Appearance] = {}
        self.floor_objects: list[OrientedBox] = []  # what stands on the floor

    def size_of(self, kind: Kind) -> np.ndarray:
        proportions = natural_proportions(kind.shape)
        if proportions is not None:  # meshes keep their proportions: one scale for the largest side
            return proportions * self.rng.uniform(*kind.height)
        w = self.rng.uniform(*kind.width)
        d = w if kind.category in ROUND else self.rng.uniform(*kind.depth)
        return np.array([w, d, self.rng.uniform(*kind.height)])

    def fits(self, box: OrientedBox, gap: float) -> bool:
        corners = box.corners()[::2, :2]  # the 4 footprint corners
        samples = np.vstack([corners, box.centroid[:2], (corners + np.roll(corners, 1, axis=0)) / 2])
        if not self.room.contains(samples, margin=0.02).all():
            return False
        return not any(_footprints_overlap(box, other, gap) for other in self.floor_objects)

    def add(self, kind: Kind, box: OrientedBox, color=None, on_floor: bool = True) -> int:
        iid = len(self.objects)
        self.objects.append(ObjectInstance(iid, kind.category, box))
        if color is None:
            color = kind.palette[int(self.rng.integers(len(kind.palette)))]
        self.appearance[iid] = Appearance(kind.shape, tuple(color))
        if on_floor:
            self.floor_objects.append(box)
        return iid

    def place_free(self, kind: Kind, gap: float = 0.25, tries: int = 200) -> OrientedBox | None:
        size = self.size_of(kind)
        for _ in range(tries):
            xy = self.rng.uniform([self.room.x_min, self.room.y_min], [self.room.x_max, self.room.y_max])
            yaw = self.rng.uniform(-math.pi, math.pi)
            box = OrientedBox.create([xy[0], xy[1], size[2] / 2], size, yaw_axes(yaw))
            if self.fits(box, gap):
                return box
        return None

    def place_against_wall(self, kind: Kind, gap: float = 0.2, tries: int = 200) -> OrientedBox | None:
        """Back (-y side) against a wall, front facing into the room."""
        size = self.size_of(kind)
        poly = self.room.floor
        ccw = _signed_area(poly) > 0
        for _ in range(tries):
            k = int(self.rng.integers(len(poly)))
            a, b = poly[k], poly[(k + 1) % len(poly)]
            edge = b - a
            length = float(np.linalg.norm(edge))
            if length < size[0] + 0.2:
                continue
            along = edge / length
            inward = np.array([-along[1], along[0]]) if ccw else np.array([along[1], -along[0]])
            t = self.rng.uniform(size[0] / 2 + 0.1, length - size[0] / 2 - 0.1)
            centre = a + along * t + inward * (size[1] / 2 + 0.03)
            yaw = math.atan2(inward[1], inward[0]) - math.pi / 2  # object +y -> inward
            box = OrientedBox.create([centre[0], centre[1], size[2] / 2], size, yaw_axes(yaw))
            if self.fits(box, gap):
                return box
        return None


def _signed_area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2


def _footprints_overlap(a: OrientedBox, b: OrientedBox, gap: float) -> bool:
    """Separating-axis test of the two footprint rectangles, each grown by gap / 2."""
    for box in (a, b):
        for axis in box.axes[:2, :2]:
            pa = a.corners()[:, :2] @ axis
            pb = b.corners()[:, :2] @ axis
            if pa.max() + gap / 2 < pb.min() - gap / 2 or pb.max() + gap / 2 < pa.min() - gap / 2:
                return False
    return True


def _room(rng: np.random.Generator) -> Room:
    width, depth = rng.uniform(4.5, 7.0), rng.uniform(4.0, 6.0)
    height = rng.uniform(2.5, 3.0)
    if rng.random() < 0.3:  # L-shaped: cut a corner off
        cut_w, cut_d = width * rng.uniform(0.3, 0.4), depth * rng.uniform(0.3, 0.4)
        floor = np.array([[0, 0], [width, 0], [width, depth - cut_d], [width - cut_w, depth - cut_d],
                          [width - cut_w, depth], [0, depth]], dtype=np.float64)
        return Room(floor, height)
    return Room.rectangle(0.0, 0.0, width, depth, height)


def generate_scene(seed: int = 0, name: str | None = None) -> SimScene:
    """A furnished room from ``seed`` (any non-negative integer)."""
    if int(seed) != seed or seed < 0:
        raise SimError(f"generate_scene: seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    room = _room(rng)
    layout = _Layout(room, rng)

    # The table group first, near the middle, so that there is room for the chairs around it.
    table_kind = KINDS["table"]
    size = layout.size_of(table_kind)
    centre = room.center[:2] + rng.uniform(-0.4, 0.4, size=2)
    yaw = rng.choice([0.0, math.pi / 2]) + rng.uniform(-0.3, 0.3)
    table = OrientedBox.create([centre[0], centre[1], size[2] / 2], size, yaw_axes(yaw))
    if not layout.fits(table, 0.3):
        table = layout.place_free(table_kind, gap=0.3)
    if table is not None:
        table_id = layout.add(table_kind, table)
        chair_color = KINDS["chair"].palette[int(rng.integers(len(KINDS["chair"].palette)))]
        sides = rng.permutation(4)[: int(rng.integers(2, 5))]
        for side in sides:
            chair = _chair_at_side(layout, table, int(side))
            if chair is not None and layout.fits(chair, 0.05):
                layout.add(KINDS["chair"], chair, chair_color)
        _things_on_top(layout, layout.objects[table_id].box, int(rng.integers(1, 3)))

    wall_kinds = ["sofa", "cabinet"] + (["bed"] if rng.random() < 0.4 else []) + (["tv"] if rng.random() < 0.7 else [])
    wall_kinds += ["cabinet"] if rng.random() < 0.5 else []
    for category in wall_kinds:
        box = layout.place_against_wall(KINDS[category])
        if box is not None:
            layout.add(KINDS[category], box)

    free_kinds = [c for c, p in (("lamp", 0.8), ("plant", 0.7), ("trash can", 0.6), ("ball", 0.5)) if rng.random() < p]
    for category in free_kinds:
        box = layout.place_free(KINDS[category])
        if box is not None:
            layout.add(KINDS[category], box)

    look = RoomAppearance(
        floor_color=FLOOR_COLORS[int(rng.integers(len(FLOOR_COLORS)))],
        wall_colors=tuple(WALL_COLORS[int(i)] for i in rng.permutation(len(WALL_COLORS))[:3]),
        floor_checker=float(rng.choice([0.4, 0.5, 0.6])))
    return SimScene(name=name or f"sim_{seed:04d}", room=room, objects=layout.objects,
                    appearance=layout.appearance, room_appearance=look, seed=int(seed))


def _chair_at_side(layout: _Layout, table: OrientedBox, side: int) -> OrientedBox | None:
    """A chair facing the table from one of its four sides (0: +x, 1: +y, 2: -x, 3: -y)."""
    size = layout.size_of(KINDS["chair"])
    axis = table.axes[0 if side % 2 == 0 else 1, :2]
    sign = 1.0 if side < 2 else -1.0
    half = table.axes_lengths[0 if side % 2 == 0 else 1] / 2
    outward = sign * axis
    centre = table.centroid[:2] + outward * (half + size[1] / 2 + 0.12)
    yaw = math.atan2(-outward[1], -outward[0]) - math.pi / 2  # chair front (+y) towards the table
    return OrientedBox.create([centre[0], centre[1], size[2] / 2], size, yaw_axes(yaw))


def _things_on_top(layout: _Layout, table: OrientedBox, count: int):
    """Small objects standing on the table top, apart from each other."""
    top_z = table.centroid[2] + table.axes_lengths[2] / 2
    placed: list[OrientedBox] = []
    categories = layout.rng.permutation(ON_TABLE)[:count]
    for category in categories:
        kind = KINDS[str(category)]
        size = layout.size_of(kind)
        for _ in range(50):
            reach = np.maximum(table.axes_lengths[:2] / 2 - size[:2].max() / 2 - 0.05, 0)  # stay 5 cm off the edge
            local = layout.rng.uniform(-1, 1, size=2) * reach
            centre = table.centroid[:2] + local @ table.axes[:2, :2]
            yaw = layout.rng.uniform(-math.pi, math.pi)
            box = OrientedBox.create([centre[0], centre[1], top_z + size[2] / 2], size, yaw_axes(yaw))
            inside_top = _footprint_within(box, table)
            if inside_top and not any(_footprints_overlap(box, other, 0.05) for other in placed):
                placed.append(box)
                layout.add(kind, box, on_floor=False)
                break


def _footprint_within(inner: OrientedBox, outer: OrientedBox) -> bool:
    corners = inner.corners()[::2, :2]
    local = (corners - outer.centroid[:2]) @ outer.axes[:2, :2].T
    return bool(np.all(np.abs(local) <= outer.axes_lengths[:2] / 2))
