"""VSI-Bench route planning (the eighth type) from a room whose free space is known.

The published questions (VSI-Bench ``route_planning``, 194 of them, written from Habitat walks) read
"You are a robot beginning at the {start} facing the {facing}. You want to navigate to the
{destination}. You will perform the following actions (Note: for each [please fill in], choose
either 'turn back,' 'turn left,' or 'turn right.'): 1. [please fill in] 2. Go forward until the
{waypoint} 3. [please fill in] 4. Go forward until the {destination}. You have reached the final
destination." with options such as ``"A. Turn Left, Turn Right"`` (the official
``ROUTE_PLAN_TEMPLATE`` of VLM-3R's ``question_templates.py``; scored as multiple choice).

A simulated room knows its free space: the floor polygon and every object's box. We build the
robot's clearance from that (walls and object footprints, objects starting below
``BLOCK_HEIGHT``), put the robot next to the start object facing the facing object, and try the
nine ways to fill the two blanks with discrete actions: turn (left 90, right 90, back 180
degrees), go forward in steps of ``STEP`` until within ``REACH`` of the next object, stop. A
route *reaches* its goal when both legs arrive without the robot's disc (``ROBOT_RADIUS``)
touching a wall or an object. A question is written only when exactly one of the nine reaches,
and every one of the nine keeps its outcome when the radius and the reach change by
``MARGIN`` (so no answer hangs on a centimetre). docs/data.md describes the rules.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..scene_graph import ObjectInstance, SceneGraph
from .common import AnswerBalancer, QARow, check_compat, choice_options, new_row, shuffled

ROUTE_PLAN_TEMPLATE = (
    "You are a robot beginning at the {start_object} facing the {facing_object}. You want to navigate to the "
    "{destination_object}. You will perform the following actions (Note: for each [please fill in], choose either "
    "'turn back,' 'turn left,' or 'turn right.'): {actions}")
ACTIONS_TEMPLATE = ("1. [please fill in] 2. Go forward until the {waypoint} 3. [please fill in] "
                    "4. Go forward until the {destination}. You have reached the final destination.")
TURNS = {"Turn Left": 90.0, "Turn Right": -90.0, "Turn Back": 180.0}  # counter-clockwise degrees, z up

ROBOT_RADIUS = 0.20  # m, the robot's disc
REACH = 0.60  # m, "until the X": within this of X's footprint
STEP = 0.02  # m, one forward action
MIN_LEG = 0.30  # m, a leg shorter than this is no "go forward"
MARGIN = 0.05  # m, outcomes must hold with radius and reach moved by this
BLOCK_HEIGHT = 1.5  # m, objects whose box starts below this block the robot
START_RING = (0.30, 0.50)  # m, the start point's distance from the start object's footprint
GRID = 0.05  # m, the occupancy grid the start point is chosen on


@dataclass(frozen=True)
class Footprint:
    """An object's box seen from above: centre (2,), unit axes as rows (2, 2), half sides (2,)."""

    category: str
    centre: np.ndarray
    axes: np.ndarray
    half: np.ndarray

    @classmethod
    def of(cls, obj) -> "Footprint":
        box = obj.box
        # the two box axes closest to horizontal span the footprint (upright objects: axes 0 and 1)
        order = np.argsort(np.abs(box.axes[:, 2]))[:2]
        axes = box.axes[order, :2]
        axes = axes / np.linalg.norm(axes, axis=1, keepdims=True)
        return cls(obj.category, np.asarray(box.centroid[:2], dtype=np.float64), axes, box.axes_lengths[order] / 2)

    def distance(self, xy: np.ndarray) -> np.ndarray:
        """Distance from each point (N, 2) to the footprint rectangle (0 inside)."""
        local = (np.atleast_2d(xy) - self.centre) @ self.axes.T
        return np.linalg.norm(np.maximum(np.abs(local) - self.half, 0.0), axis=1)


class FreeSpace:
    """Where the robot's centre may be: inside the floor polygon, away from walls and objects."""

    def __init__(self, floor: np.ndarray, obstacles: Sequence[Footprint]):
        self.floor = np.asarray(floor, dtype=np.float64).reshape(-1, 2)
        if len(self.floor) < 3:
            raise ValueError(f"the floor polygon needs >= 3 (x, y) vertices, got {len(self.floor)}")
        self.obstacles = list(obstacles)
        self._grid: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def clearance(self, xy: np.ndarray) -> np.ndarray:
        """Distance from each point (N, 2) to the nearest wall or obstacle; negative outside the room."""
        pts = np.atleast_2d(np.asarray(xy, dtype=np.float64))
        walls = np.full(len(pts), np.inf)
        inside = np.zeros(len(pts), dtype=bool)
        for a, b in zip(self.floor, np.roll(self.floor, -1, axis=0)):
            ab = b - a
            t = np.clip(((pts - a) @ ab) / (ab @ ab), 0.0, 1.0)
            walls = np.minimum(walls, np.linalg.norm(pts - (a + t[:, None] * ab), axis=1))
            crosses = (a[1] > pts[:, 1]) != (b[1] > pts[:, 1])  # even-odd rule
            with np.errstate(divide="ignore", invalid="ignore"):
                x_cross = a[0] + (pts[:, 1] - a[1]) * ab[0] / ab[1]
            inside ^= crosses & (pts[:, 0] < x_cross)
        best = np.where(inside, walls, -walls)
        for fp in self.obstacles:
            best = np.minimum(best, fp.distance(pts))
        return best

    def occupancy(self, resolution: float = GRID) -> tuple[np.ndarray, np.ndarray]:
        """(cell centres (H, W, 2), occupied (H, W)): cells where the robot's disc does not fit."""
        if resolution in self._grid:
            return self._grid[resolution]
        lo, hi = self.floor.min(axis=0), self.floor.max(axis=0)
        xs = np.arange(lo[0] + resolution / 2, hi[0], resolution)
        ys = np.arange(lo[1] + resolution / 2, hi[1], resolution)
        centres = np.stack(np.meshgrid(xs, ys), axis=-1)
        occupied = self.clearance(centres.reshape(-1, 2)).reshape(centres.shape[:2]) < ROBOT_RADIUS
        self._grid[resolution] = (centres, occupied)
        return centres, occupied


def _heading(degrees: float) -> np.ndarray:
    rad = math.radians(degrees)
    return np.array([math.cos(rad), math.sin(rad)])


def walk_leg(space: FreeSpace, start: np.ndarray, heading_deg: float, target: Footprint,
             radius: float = ROBOT_RADIUS, reach: float = REACH) -> np.ndarray | None:
    """Go forward from ``start`` until within ``reach`` of ``target``: the stop point, or None when
    the disc of ``radius`` touches something first, the leg is under MIN_LEG, or it never arrives."""
    lo, hi = space.floor.min(axis=0), space.floor.max(axis=0)
    steps = np.arange(1, int(np.linalg.norm(hi - lo) / STEP) + 2) * STEP
    points = start + steps[:, None] * _heading(heading_deg)
    arrived = np.flatnonzero(target.distance(points) <= reach)
    if len(arrived) == 0 or steps[arrived[0]] < MIN_LEG:
        return None
    stop = arrived[0]
    if np.any(space.clearance(points[:stop + 1]) < radius):
        return None
    return points[stop]


def follow(space: FreeSpace, start: np.ndarray, heading_deg: float, turns: Sequence[str], targets: Sequence[Footprint],
           radius: float = ROBOT_RADIUS, reach: float = REACH) -> list[np.ndarray] | None:
    """The stop points of a route (turn, forward until target) per leg, or None when it fails."""
    points, position, heading = [], np.asarray(start, dtype=np.float64), heading_deg
    for turn, target in zip(turns, targets):
        heading += TURNS[turn]
        position = walk_leg(space, position, heading, target, radius, reach)
        if position is None:
            return None
        points.append(position)
    return points


def start_point(space: FreeSpace, start: Footprint) -> np.ndarray | None:
    """Where the robot begins "at" an object: the free grid cell with the most clearance among
    those START_RING away from the object's footprint; None when none is free."""
    centres, _ = space.occupancy()
    flat = centres.reshape(-1, 2)
    ring = start.distance(flat)
    near = flat[(ring >= START_RING[0]) & (ring <= START_RING[1])]
    if len(near) == 0:
        return None
    clear = space.clearance(near)
    best = int(np.argmax(clear))
    return near[best] if clear[best] >= ROBOT_RADIUS + MARGIN else None


def free_space_of(scene: SceneGraph) -> tuple[FreeSpace, dict[str, Footprint]]:
    """The free space (floor + blocking boxes) and the footprints of the unique objects."""
    boxes = scene.obstacles if scene.obstacles is not None else [o.box for o in scene.objects]
    blocking = [Footprint.of(ObjectInstance(-1, "obstacle", b)) for b in boxes if b.minimum[2] < BLOCK_HEIGHT]
    unique = {o.category: Footprint.of(o) for o in scene.unique_objects()}
    return FreeSpace(scene.floor, blocking), unique


def _outcomes(space, start, heading, targets) -> dict[tuple[str, str], list[np.ndarray] | None] | None:
    """Route of each of the 9 fillings; None unless exactly one reaches the goal and no filling's
    outcome changes when the radius or the reach moves by MARGIN."""
    fillings = list(itertools.product(TURNS, repeat=2))
    out = {turns: follow(space, start, heading, turns, targets) for turns in fillings}
    if sum(route is not None for route in out.values()) != 1:
        return None
    for dr, dreach in ((-MARGIN, 0), (MARGIN, 0), (0, -MARGIN), (0, MARGIN)):
        for turns in fillings:
            other = follow(space, start, heading, turns, targets, ROBOT_RADIUS + dr, REACH + dreach)
            if (other is None) != (out[turns] is None):
                return None
    return out


def route_planning(scene: SceneGraph, rng: np.random.Generator, *, max_per_scene: int | None = 3,
                   balancer: AnswerBalancer | None = None, compat: str = "official") -> list[QARow]:
    """Route-planning questions for a room whose free space is known (``scene.floor``; a scene
    without it, such as one from the official metadata, gives none): start, facing, waypoint and
    destination are four different unique objects (tried in random order until ``max_per_scene``
    questions); asked only where exactly one filling of the two blanks reaches the destination
    without a collision. ``compat`` changes nothing (there is no official generator).

    Rows carry ``route`` (start point and the two stop points, metres), ``start_heading_deg`` and
    the four categories, so that a check can walk the route again."""
    check_compat(compat)
    if scene.floor is None:
        return []
    balancer = AnswerBalancer() if balancer is None else balancer
    space, unique = free_space_of(scene)
    starts: dict[str, np.ndarray | None] = {}
    rows: list[QARow] = []
    for s, f, w, d in shuffled(list(itertools.permutations(unique, 4)), rng):
        if max_per_scene is not None and len(rows) >= max_per_scene:
            break
        if s not in starts:
            starts[s] = start_point(space, unique[s])
        begin = starts[s]
        if begin is None:
            continue
        facing = unique[f].centre - begin
        heading = math.degrees(math.atan2(facing[1], facing[0]))
        outcomes = _outcomes(space, begin, heading, (unique[w], unique[d]))
        if outcomes is None:
            continue
        answer_turns = next(turns for turns, route in outcomes.items() if route is not None)
        answer = ", ".join(answer_turns)
        wrong = [", ".join(t) for t in outcomes if t != answer_turns]
        distractors = [wrong[i] for i in rng.choice(len(wrong), size=3, replace=False)]
        options, letter = choice_options(answer, distractors, rng, balancer)
        question = ROUTE_PLAN_TEMPLATE.format(start_object=s, facing_object=f, destination_object=d,
                                              actions=ACTIONS_TEMPLATE.format(waypoint=w, destination=d))
        route = [begin, *outcomes[answer_turns]]
        rows.append(new_row(scene, "route_planning", question, answer, options=options, mc_answer=letter,
                            route=[[round(float(v), 4) for v in p] for p in route],
                            start_heading_deg=round(heading, 4),
                            **{"category, start object": s, "category, facing object": f,
                               "category, waypoint object": w, "category, destination object": d}))
    return rows
