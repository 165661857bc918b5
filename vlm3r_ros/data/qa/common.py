"""What every QA generator shares: the row, the seeded randomness, the multiple-choice builders.

A generator is a function ``(scene: SceneGraph, rng: numpy.random.Generator, **options) ->
list[QARow]``. It is pure: the rows depend only on the scene, the state of ``rng`` and the
options (including an :class:`AnswerBalancer` when one is shared across scenes). It skips what
it cannot ask unambiguously, by the official pipeline's rules (docs/data.md lists them).

Facts from the official pipeline (VLM-3R's ``vlm_3r_data_process``; see docs/data.md):
- a row holds ``dataset, scene_name, video_path, question_type, question, options,
  ground_truth, mc_answer`` plus task fields (``category`` ...); ids are assigned after all
  scenes are generated (``BaseQAGenerator.run``);
- ``ground_truth`` is the answer VALUE (a number or a string); ``mc_answer`` is the letter of
  that value among ``options`` (``"A. 2.3"`` strings);
- numeric options: ``generate_multiple_choice`` draws three distractors uniformly in
  [0.25, 1.75] x ground truth (bounds per task), rounded like the ground truth, redrawing those
  closer than ``ceil(gt * 0.2 * 10^d) / 10^d`` to another option; it gives up after 31 rounds;
- the letter of the right answer goes to a letter used least so far
  (``from_options_to_mc_answer``), which keeps the answer letters balanced across a run;
- frames are named "frame k of N" with k 1-based.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

OPTION_LETTERS = ("A", "B", "C", "D")


# --- rows -----------------------------------------------------------------------------------
@dataclass
class QARow:
    """One question. ``extra`` holds the task's own fields (for example ``category``), which
    the official files keep at the top level of the row, so :meth:`to_dict` flattens them."""

    dataset: str
    scene_name: str
    video_path: str | None
    question_type: str
    question: str
    ground_truth: Any  # the answer value: int/float for numbers, str for words
    options: list[str] | None = None  # ["A. 2.3", "B. 1.1", ...] or None (open answer)
    mc_answer: str | None = None  # the letter of ground_truth among options
    frame_indices: list[int] | None = None  # video frame ids the question is about; None: whole video
    extra: dict[str, Any] = field(default_factory=dict)
    id: int | None = None  # assigned once all scenes are generated

    def to_dict(self) -> dict[str, Any]:
        """The row as the benchmark's JSON object (fixed fields first, then ``extra``).

        ``frame_indices`` is written only when the question names frames: the official VSI
        rows have no such field (and VSTI rows always name frames)."""
        out: dict[str, Any] = {
            "id": self.id,
            "dataset": self.dataset,
            "scene_name": self.scene_name,
            "video_path": self.video_path,
        }
        if self.frame_indices is not None:
            out["frame_indices"] = [int(i) for i in self.frame_indices]
        out.update({
            "question_type": self.question_type,
            "question": self.question,
            "options": None if self.options is None else list(self.options),
            "ground_truth": _plain(self.ground_truth),
            "mc_answer": self.mc_answer,
        })
        for key, value in self.extra.items():
            if key in out:
                raise ValueError(f"QARow.extra key {key!r} would overwrite a fixed field; rename it")
            out[key] = _plain(value)
        return out


def _plain(value: Any) -> Any:
    """numpy scalars and arrays -> Python numbers and lists (JSON-serialisable)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def new_row(scene, question_type: str, question: str, ground_truth: Any, *,
            options: Sequence | None = None, mc_answer: str | None = None,
            frame_indices: Sequence[int] | None = None, bare_options: bool = False, **extra: Any) -> QARow:
    """A row for ``scene`` (a SceneGraph). ``options`` are the raw values in letter order;
    they are written as ``"A. value"`` strings, or as the bare values with ``bare_options``
    (the official VSTI numeric rows: ``[2.8, 5.6, 7.5, 11.3]``)."""
    return QARow(
        dataset=scene.dataset,
        scene_name=scene.scene_name,
        video_path=scene.video_path,
        question_type=question_type,
        question=question,
        ground_truth=_plain(ground_truth),
        options=None if options is None else ([_plain(v) for v in options] if bare_options else lettered(options)),
        mc_answer=mc_answer,
        frame_indices=None if frame_indices is None else [int(i) for i in frame_indices],
        extra=dict(extra),
    )


def lettered(values: Sequence) -> list[str]:
    """["A. v0", "B. v1", ...]; values are written with str() (2.3 -> "2.3", 120 -> "120")."""
    if len(values) > len(OPTION_LETTERS):
        raise ValueError(f"at most {len(OPTION_LETTERS)} options, got {len(values)}")
    return [f"{OPTION_LETTERS[i]}. {_plain(v)}" for i, v in enumerate(values)]


def assign_ids(rows: Sequence[QARow], start: int = 0) -> None:
    """Number rows consecutively, as the official run does after collecting all scenes."""
    for i, row in enumerate(rows):
        row.id = start + i


# --- compatibility ----------------------------------------------------------------------------
COMPAT_MODES = ("official", "exact")


def check_compat(compat: str) -> str:
    """``"official"`` (reproduce the official generators' quirks) or ``"exact"`` (our exact
    geometry and the rules as documented); docs/data.md lists what each changes."""
    if compat not in COMPAT_MODES:
        raise ValueError(f"compat must be one of {COMPAT_MODES}, got {compat!r}")
    return compat


# --- randomness -----------------------------------------------------------------------------
def make_rng(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator seeded by ``seed`` and the keys (e.g. question type, scene name).

    The keys are hashed with CRC32, which (unlike ``hash()``) is the same in every process, so
    one (seed, type, scene) always gives the same stream whatever else is generated."""
    words = [int(seed) & 0xFFFFFFFF]
    for key in keys:
        words.append(zlib.crc32(str(key).encode("utf-8")))
    return np.random.default_rng(np.random.SeedSequence(words))


def subsample(rows: list, k: int | None, rng: np.random.Generator) -> list:
    """At most ``k`` rows, chosen without replacement and kept in their original order
    (the official ``num_subsample``: ``random.sample`` of a scene's rows). None: keep all."""
    if k is not None and k < 0:
        raise ValueError(f"subsample size must be >= 0, got {k}")
    if k is None or len(rows) <= k:
        return list(rows)
    keep = np.sort(rng.choice(len(rows), size=k, replace=False))
    return [rows[i] for i in keep]


def shuffled(items: Sequence, rng: np.random.Generator) -> list:
    """A shuffled copy of ``items``."""
    return [items[i] for i in rng.permutation(len(items))]


# --- answer letters ---------------------------------------------------------------------------
class AnswerBalancer:
    """Puts each right answer on a letter used least so far (the official
    ``from_options_to_mc_answer``), so a run's answer letters stay balanced.

    Share one balancer per question type across scenes to balance a whole run (the CLI does);
    the letter counts are then part of the state that makes a run deterministic."""

    def __init__(self, letters: Sequence[str] = OPTION_LETTERS):
        self.counts: dict[str, int] = {letter: 0 for letter in letters}
        self._parts: dict[str, "AnswerBalancer"] = {}

    def part(self, key: str, letters: Sequence[str] = OPTION_LETTERS) -> "AnswerBalancer":
        """A balancer of its own for ``key``, kept with this one: the official versions of a
        type (camera movement v1/v2/v3) each count their letters in their own generator."""
        if key not in self._parts:
            self._parts[key] = AnswerBalancer(letters)
        return self._parts[key]

    def placed(self) -> int:
        """How many answers were placed, by this balancer and its parts."""
        return sum(self.counts.values()) + sum(p.placed() for p in self._parts.values())

    def place(self, values: Sequence, answer: Any, rng: np.random.Generator) -> tuple[list, str]:
        """(values reordered, letter of ``answer``): the answer goes to a least-used letter
        among the first len(values); the other values are shuffled around it."""
        values = list(values)
        if answer not in values:
            raise ValueError(f"answer {answer!r} is not among the options {values!r}")
        if len(values) > len(self.counts):
            raise ValueError(f"{len(values)} options but only letters {list(self.counts)}")
        usable = list(self.counts)[:len(values)]
        fewest = min(self.counts[letter] for letter in usable)
        candidates = [letter for letter in usable if self.counts[letter] == fewest]
        letter = candidates[int(rng.integers(len(candidates)))]
        position = usable.index(letter)
        others = list(values)
        others.remove(answer)
        others = shuffled(others, rng)
        ordered = others[:position] + [answer] + others[position:]
        self.counts[letter] += 1
        return ordered, letter


def round_to(value: float, decimals: int) -> float | int:
    """Python's round (as the official code): an int for 0 decimals, else a float."""
    return int(round(float(value))) if decimals == 0 else round(float(value), decimals)


def numeric_choices(ground_truth: float, rng: np.random.Generator, balancer: AnswerBalancer, *,
                    margin: float = 0.20, lower_bound: float = 0.25, upper_bound: float = 1.75,
                    decimals: int = 1, max_rounds: int = 31) -> tuple[list, str] | None:
    """Four numeric options (three distractors + ``ground_truth``) and the answer's letter,
    or None when no set of distractors far enough apart was found (the official "E").

    Distractors are uniform in [lower_bound, upper_bound] x ground_truth, rounded to
    ``decimals``; any option within eps = ceil(gt * margin * 10^d) / 10^d of another option or
    of the ground truth is redrawn, for at most ``max_rounds`` rounds."""
    gt = float(ground_truth)
    if not math.isfinite(gt):
        raise ValueError(f"ground truth must be a finite number, got {ground_truth!r}")
    if gt <= 0:
        return None  # no distractor can be a margin away from zero in [0.25, 1.75] x 0
    scale = 10 ** decimals
    eps = math.ceil(gt * margin * scale) / scale
    lo, hi = gt * lower_bound, gt * upper_bound

    def draw() -> float | int:
        return round_to(rng.uniform(lo, hi), decimals)

    def clashes(i: int, values: list) -> bool:
        others = values[:i] + values[i + 1:] + [gt]
        return any(abs(values[i] - o) < eps for o in others)

    distractors = [draw() for _ in range(3)]
    rounds = 0
    while any(clashes(i, distractors) for i in range(3)) and rounds < max_rounds:
        for i in range(3):
            if clashes(i, distractors):
                distractors[i] = draw()
        rounds += 1
    if any(clashes(i, distractors) for i in range(3)):
        return None
    answer = round_to(gt, decimals)
    return balancer.place(distractors + [answer], answer, rng)


def choice_options(answer: Any, distractors: Sequence, rng: np.random.Generator,
                   balancer: AnswerBalancer) -> tuple[list, str]:
    """Options for a word answer: ``answer`` plus ``distractors`` placed by ``balancer``."""
    return balancer.place(list(distractors) + [answer], answer, rng)


# --- frames -----------------------------------------------------------------------------------
def frame_description(position: int, num_frames: int) -> str:
    """ "frame k of N" for the frame at 0-based ``position`` among ``num_frames`` frames."""
    if not 0 <= position < num_frames:
        raise ValueError(f"frame position {position} is outside 0..{num_frames - 1}")
    return f"frame {position + 1} of {num_frames}"


# --- geometry ---------------------------------------------------------------------------------
def _box_edges(box) -> tuple[np.ndarray, np.ndarray]:
    """The 12 edges of an OrientedBox as (start (12, 3), end (12, 3))."""
    corners = box.corners()  # (8, 3), corner index = 4*ix + 2*iy + iz with i* in {0, 1}
    pairs = [(i, i ^ bit) for i in range(8) for bit in (1, 2, 4) if not i & bit]
    start = np.array([corners[i] for i, _ in pairs])
    end = np.array([corners[j] for _, j in pairs])
    return start, end


def _edges_to_box(box_a, box_b, iterations: int = 50) -> float:
    """Smallest distance from an edge of ``box_a`` to the solid ``box_b``: golden-section search
    along each edge at once (the distance to a convex set is convex along a segment)."""
    start, end = _box_edges(box_a)  # (12, 3) each
    step = end - start

    def dist(t: np.ndarray) -> np.ndarray:  # (12,) -> (12,)
        return box_b.distance_to(start + t[:, None] * step)

    ratio = (math.sqrt(5) - 1) / 2
    lo, hi = np.zeros(len(start)), np.ones(len(start))
    t1, t2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    f1, f2 = dist(t1), dist(t2)
    for _ in range(iterations):  # the bracket shrinks by 0.618 per step: 50 steps -> 4e-11 of the edge
        left = f1 <= f2  # the minimum is in [lo, t2]: t1 becomes the new t2
        hi, lo = np.where(left, t2, hi), np.where(left, lo, t1)
        t2_new, t1_new = np.where(left, t1, lo + ratio * (hi - lo)), np.where(left, hi - ratio * (hi - lo), t2)
        new_t = np.where(left, t1_new, t2_new)
        f_new = dist(new_t)
        f1, f2 = np.where(left, f_new, f2), np.where(left, f1, f_new)
        t1, t2 = t1_new, t2_new
    return float(min(np.min(f1), np.min(f2), np.min(dist(np.zeros(len(start)))), np.min(dist(np.ones(len(start))))))


def _aligned_distance(box_a, box_b) -> float | None:
    """Closed form when the boxes' axes coincide up to order and sign (e.g. both axis-aligned):
    the per-axis gaps in box_a's frame. None otherwise."""
    cosines = np.abs(box_a.axes @ box_b.axes.T)  # (3, 3)
    if not np.allclose(cosines, np.round(cosines), atol=1e-9):
        return None
    half_b = np.round(cosines) @ (box_b.axes_lengths / 2)  # box_b's half sizes along box_a's axes
    offset = np.abs(box_a.axes @ (box_b.centroid - box_a.centroid))
    return float(np.linalg.norm(np.maximum(offset - box_a.axes_lengths / 2 - half_b, 0.0)))


def box_distance(box_a, box_b) -> float:
    """Exact smallest distance (m) between two solid oriented boxes; 0 when they touch or overlap.

    Two disjoint boxes are closest at a vertex of one against the other, or edge against edge,
    and two overlapping boxes have an edge of one meeting the other; so the minimum over the
    edges of each box against the other solid box is the distance in every case. (The official
    pipeline samples both boxes on a ~5 cm grid and takes the closest pair of samples, which can
    read a few centimetres long; docs/data.md.)"""
    aligned = _aligned_distance(box_a, box_b)
    if aligned is not None:
        return aligned
    return min(_edges_to_box(box_a, box_b), _edges_to_box(box_b, box_a))


# --- the official distance: closest pair of grid samples ------------------------------------------
GRID_SPACING = 0.05  # m, sample_points_in_oriented_bbox_uniform's default


def official_grid_points(box, spacing: float = GRID_SPACING) -> np.ndarray:
    """The points the official ``sample_points_in_oriented_bbox_uniform`` keeps for a box, (N, 3).

    Per axis ``ceil(extent / spacing)`` values from ``np.linspace(-extent/2, extent/2, n)`` (one
    value, -extent/2, for a side under ``spacing``); the inner part is hollowed out (a point is
    kept when any |coordinate| > extent / 4); the rest is rotated and moved to the centre, then
    cropped to the box as Open3D's ``OrientedBoundingBox`` crop does it: ``|d . axis_i| <=
    extent_i / 2`` with ``d = point - centre``, in float64, so a boundary point survives or not
    by the rounding of those operations, as officially. No point left: again at half spacing.
    Where the official code fails (a side of length 0 gives no values and the recursion never
    ends) we take one value per flat side, and the centre for a box of no extent at all."""
    extent = np.asarray(box.axes_lengths, dtype=np.float64)
    rotation = np.asarray(box.axes, dtype=np.float64).T  # Open3D's R: columns are the box axes
    centre = np.asarray(box.centroid, dtype=np.float64)
    counts = [max(1, int(np.ceil(e / spacing))) for e in extent]  # a flat side: one value (officially: none)
    grids = np.meshgrid(*[np.linspace(-e / 2, e / 2, n) for e, n in zip(extent, counts)])
    points = np.vstack([g.ravel() for g in grids]).T
    points = points[np.any(np.abs(points) > extent / 4, axis=1)]
    world = np.dot(points, rotation.T) + centre
    d = world - centre
    local = d[:, :1] * rotation[0] + d[:, 1:2] * rotation[1] + d[:, 2:3] * rotation[2]  # d . axis_i, x+y+z order
    kept = world[np.all(np.abs(local) <= extent / 2, axis=1)]
    if len(kept) == 0:
        if spacing < 1e-4:  # a box without extent (the official recursion would never end): its centre
            return centre[None].copy()
        return official_grid_points(box, spacing * 0.5)
    return kept


def _closest_pair(points_a: np.ndarray, points_b: np.ndarray, pairs_per_chunk: int = 2_000_000) -> float:
    """min |a - b| over the two point sets, in chunks of about ``pairs_per_chunk`` pairs."""
    best = np.inf
    chunk = max(1, pairs_per_chunk // max(1, len(points_b)))
    for start in range(0, len(points_a), chunk):
        block = points_a[start:start + chunk]
        d2 = np.sum((block[:, None, :] - points_b[None, :, :]) ** 2, axis=-1)
        best = min(best, float(np.sqrt(d2.min())))
    return best


def sampled_box_distance(box_a, box_b, points_a: np.ndarray | None = None,
                         points_b: np.ndarray | None = None) -> float:
    """The official ``cal_3d_bbox_distance_between_categories`` for one pair of boxes: the
    closest pair among the two boxes' :func:`official_grid_points`.

    Only the points that can be part of the closest pair are compared: a pair at distance d
    has each point within d of the other box, and d is at most the distance of one pair found
    first (the point of A nearest to box B and its nearest point of B)."""
    pa = official_grid_points(box_a) if points_a is None else points_a
    pb = official_grid_points(box_b) if points_b is None else points_b
    to_b, to_a = box_b.distance_to(pa), box_a.distance_to(pb)
    seed = pa[int(np.argmin(to_b))]
    bound = float(np.sqrt(np.min(np.sum((pb - seed) ** 2, axis=1))))
    if bound == 0.0:
        return 0.0
    near_a, near_b = pa[to_b <= bound + 1e-9], pb[to_a <= bound + 1e-9]
    return min(bound, _closest_pair(near_a, near_b))


class BoxDistances:
    """Category-to-category distance (closest instances), cached per scene: exact
    (``box_distance``) or, with ``compat="official"``, the official sampled distance."""

    def __init__(self, scene, compat: str = "official"):
        self.scene = scene
        self.compat = check_compat(compat)
        self._cache: dict[tuple[str, str], float] = {}
        self._points: dict[int, np.ndarray] = {}

    def points(self, obj) -> np.ndarray:
        if obj.instance_id not in self._points:
            self._points[obj.instance_id] = official_grid_points(obj.box)
        return self._points[obj.instance_id]

    def pair(self, a, b) -> float:
        if self.compat == "exact":
            return box_distance(a.box, b.box)
        return sampled_box_distance(a.box, b.box, self.points(a), self.points(b))

    def __call__(self, cat_a: str, cat_b: str) -> float:
        key = (cat_a, cat_b) if cat_a <= cat_b else (cat_b, cat_a)
        if key not in self._cache:
            self._cache[key] = min(self.pair(a, b) for a in self.scene.instances_of(cat_a)
                                   for b in self.scene.instances_of(cat_b))
        return self._cache[key]

    def to_point(self, obj, point) -> float:
        """Distance from a point (the camera) to the object: exact, or to its grid samples."""
        if self.compat == "exact":
            return float(obj.box.distance_to(np.asarray(point, dtype=np.float64)))
        return float(np.min(np.linalg.norm(self.points(obj) - np.asarray(point, dtype=np.float64), axis=1)))
