"""VSTI-Bench question generators: the camera's motion and where objects lie relative to it.

Nine question types, named as in the released benchmark (the official lmms-eval task lists
them): ``camera_displacement`` and ``camera_obj_abs_dist`` (numeric answers),
``camera_movement_direction``, ``camera_obj_rel_dist_v1/v2/v3`` (4/3/2 options) and
``obj_obj_relative_pos_nf/lr/ud`` (2 options). Each is a function ``(scene, rng, *,
max_per_scene, balancer) -> list[QARow]`` (see :mod:`vlm3r_ros.data.qa.common`); the default
cap is the official generator's ``num_subsample``.

An object is named only in a frame where its category is visible once (the official
"frame-unique" rule), so the name identifies it in that frame even when the scene has several.

Geometry follows the scene graph's conventions: poses are camera-to-world with an OpenCV camera
(x right, y down, z forward), so "forward" is +z, "right" +x and "down" +y of a frame's
camera. Templates, thresholds and rounding are those of VLM-3R's ``vlm_3r_data_process``
(``src/tasks/vstibench/*.py``, ``question_templates.py``); docs/data.md gives the source of
each and the few places where we chose differently.

Frames are referred to as "frame k of N": k is the 1-based position among the scene's frames
(all of which have a pose), N their number.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Sequence

import numpy as np

from ..scene_graph import FrameAnnotation, ObjectInstance, SceneGraph
from .common import (
    AnswerBalancer,
    BoxDistances,
    QARow,
    check_compat,
    choice_options,
    frame_description,
    new_row,
    numeric_choices,
    round_to,
    shuffled,
    subsample,
)

# --- question templates (wording of the official question_templates.py) -------------------
CAMERA_DISPLACEMENT_TEMPLATE = (
    "Approximately how far (in meters) did the camera move between {start} and {end}?")
CAMERA_OBJ_ABS_DIST_TEMPLATE = (
    "What is the approximate distance (in meters) between the camera (or the person filming) "
    "and the nearest point of the {object_name} in {frame}?")
CAMERA_OBJ_REL_DIST_TEMPLATE = (
    "Measuring from the closest point of each object, which of these objects ({choices}) "
    "is the closest to the camera in {frame}?")
CAMERA_MOVEMENT_DIRECTION_TEMPLATE = (
    "During the sequence between {start} and {end}, what was the primary consistent direction "
    "of the camera's movement relative to its orientation at the start? The options are {choices}.")
RELATIVE_POSITION_TEMPLATES = {
    "nf": "In {frame}, relative to the camera, is {object_a} [Near/Far] compared to {object_b}?",
    "lr": "In {frame}, relative to {object_b}, is {object_a} to the [Left/Right]?",
    "ud": "In {frame}, relative to {object_b}, is {object_a} to the [Up/Down]?",
}

# --- filters (values of the official generators) ---------------------------------------------
DISPLACEMENT_FRAME_GAP = (5, 30)  # positions apart, inclusive (get_camera_displacement_qa.py)
DISPLACEMENT_RANGE_M = (0.2, 10.0)  # kept when within, before rounding
ABS_DIST_RANGE_M = (0.2, 10.0)  # get_cam_obj_abs_dist_qa.py
REL_DIST_MIN_M = 0.5  # objects nearer than this are not offered (get_cam_obj_rel_dist_qa_v*.py)
REL_DIST_MARGIN_M = 0.15  # options at least this far apart in distance to the camera
MOVEMENT_MIN_M = 0.5  # a direction needs more than this along the camera's x or z axis (V2, V3)
MOVEMENT_MIN_M_V1 = 1.0  # ... and V1's own threshold (get_camera_movement_direction_qa_v1.py)
# official V1/V2/V3: (options, threshold, template name, whether the row names its frames in two fields)
MOVEMENT_VERSIONS = ((4, MOVEMENT_MIN_M_V1, "VSTI_CAMERA_MOVEMENT_DIRECTION_TEMPLATE_V1", True),
                     (3, MOVEMENT_MIN_M, "VSTI_CAMERA_MOVEMENT_DIRECTION_TEMPLATE_V2", False),
                     (2, MOVEMENT_MIN_M, "VSTI_CAMERA_MOVEMENT_DIRECTION_TEMPLATE_V3", False))
RELATIVE_POSITION_GAP_M = 0.15  # boxes apart by more than this along the camera axis

# camera_movement_direction: answer words, and the camera-frame axis and sign of each
MOVEMENT_DIRECTIONS = ("Forward", "Backward", "Left", "Right")

# obj_obj_relative_pos_*: camera axis compared and the words for "A before B" / "A after B"
# along it (x right, y down, z forward).
RELATIVE_POSITION_AXES = {"nf": (2, ("Near", "Far")), "lr": (0, ("Left", "Right")), "ud": (1, ("Up", "Down"))}


# --- helpers ----------------------------------------------------------------------------------
def _frame_span(start: int, end: int, num_frames: int) -> tuple[str, str]:
    """("frame i", "frame j of N"): the official two-frame wording, N said once at the end."""
    return f"frame {start + 1}", frame_description(end, num_frames)


def _frame_count(scene: SceneGraph, compat: str) -> int:
    """N of "frame k of N": officially every frame of the frame metadata, pose-less ones too
    (``original_total_num_frames``); "exact": the frames we number (all have a pose)."""
    if compat == "official" and scene.metadata_frame_ids is not None:
        return max(len(scene.metadata_frame_ids), len(scene.frames))
    return len(scene.frames)


def _metadata_rank(scene: SceneGraph, position: int, compat: str) -> int:
    """The official camera-movement generators number a frame among ALL listed frames (pose-less
    ones too, get_camera_movement_direction_qa_v*.py); the other types among those with a pose."""
    if compat == "official" and scene.metadata_frame_ids is not None:
        return scene.metadata_frame_ids.index(scene.frames[position].frame_id)
    return position


def _describe(position: int, scene: SceneGraph, compat: str) -> str:
    total = _frame_count(scene, compat)
    return f"frame {position + 1} of {total}"


def _join_choices(words: Sequence[str]) -> str:
    """"a, b, c, and d" / "a, b, and c" / "a and b": how the movement template lists options."""
    words = [str(w) for w in words]
    if len(words) == 2:
        return f"{words[0]} and {words[1]}"
    return ", ".join(words[:-1]) + f", and {words[-1]}"


def _frame_unique_objects(scene: SceneGraph, frame: FrameAnnotation) -> list[ObjectInstance]:
    """The objects visible in ``frame`` whose category is visible once in it (so the name
    identifies the object in that frame), in the frame's visibility order."""
    by_id = {o.instance_id: o for o in scene.objects}
    visible = [by_id[iid] for iid in frame.visible]
    counts = Counter(o.category for o in visible)
    return [o for o in visible if counts[o.category] == 1]


def _camera_positions(frames: Sequence[FrameAnnotation]) -> np.ndarray:
    """(N, 3) camera centres in the world."""
    return np.array([f.camera_position for f in frames], dtype=np.float64).reshape(-1, 3)


def _balancer(balancer: AnswerBalancer | None) -> AnswerBalancer:
    return AnswerBalancer() if balancer is None else balancer


# --- camera_displacement ----------------------------------------------------------------------
def camera_displacement(scene: SceneGraph, rng: np.random.Generator, *, max_per_scene: int | None = 6,
                        balancer: AnswerBalancer | None = None, compat: str = "official") -> list[QARow]:
    """How far the camera moved (straight line, metres, 0.1 m) between two frames 5 to 30
    positions apart; kept when 0.2 m <= distance <= 10 m. Four numeric options."""
    balancer = _balancer(balancer)
    compat = check_compat(compat)
    frames = scene.frames
    positions = _camera_positions(frames)  # (N, 3)
    lo_gap, hi_gap = DISPLACEMENT_FRAME_GAP
    candidates = []
    for i in range(len(frames)):
        js = np.arange(i + lo_gap, min(i + hi_gap, len(frames) - 1) + 1)
        distances = np.linalg.norm(positions[js] - positions[i], axis=-1)
        for j, distance in zip(js.tolist(), distances.tolist()):
            if DISPLACEMENT_RANGE_M[0] <= distance <= DISPLACEMENT_RANGE_M[1]:
                candidates.append((i, j, round_to(distance, 1)))
    rows = []
    for i, j, answer in subsample(candidates, max_per_scene, rng):
        placed = numeric_choices(answer, rng, balancer, decimals=1)
        if placed is None:
            continue  # no distractors far enough apart (the official "E"): not asked
        options, letter = placed
        start, end = _frame_span(i, j, _frame_count(scene, compat))
        rows.append(new_row(scene, "camera_displacement", CAMERA_DISPLACEMENT_TEMPLATE.format(start=start, end=end),
                            answer, options=options, mc_answer=letter, bare_options=compat == "official",
                            frame_indices=[frames[i].frame_id, frames[j].frame_id]))
    return rows


# --- camera_movement_direction ----------------------------------------------------------------
def movement_directions(displacements_camera: np.ndarray, threshold: float = MOVEMENT_MIN_M) -> list[str | None]:
    """The dominant horizontal direction of each displacement (M, 3) given in the START
    camera's frame (x right, z forward; y, up/down, is ignored): None when neither |x| nor |z|
    exceeds ``threshold``; forward/backward wins ties."""
    d = np.asarray(displacements_camera, dtype=np.float64).reshape(-1, 3)
    dx, dz = d[:, 0], d[:, 2]
    x_moves, z_moves = np.abs(dx) > threshold, np.abs(dz) > threshold
    along_z = z_moves & (~x_moves | (np.abs(dz) >= np.abs(dx)))
    along_x = x_moves & ~along_z
    out: list[str | None] = [None] * len(d)
    for k in np.flatnonzero(along_z):
        out[k] = "Forward" if dz[k] > 0 else "Backward"
    for k in np.flatnonzero(along_x):
        out[k] = "Right" if dx[k] > 0 else "Left"
    return out


def _movement_candidates(scene: SceneGraph, threshold: float) -> list[tuple[int, int, str]]:
    """(i, j, direction) for every pair of frame positions i < j whose net move, in frame i's
    camera, has a dominant direction beyond ``threshold``."""
    frames = scene.frames
    positions = _camera_positions(frames)  # (N, 3)
    candidates = []
    for i in range(len(frames) - 1):
        moves_world = positions[i + 1:] - positions[i]  # (N-i-1, 3)
        # in frame i's camera: R_i^T m for each move m, written for row vectors
        moves_camera = moves_world @ frames[i].camera_to_world[:3, :3]
        for j, direction in enumerate(movement_directions(moves_camera, threshold), start=i + 1):
            if direction is not None:
                candidates.append((i, j, direction))
    return candidates


def _movement_row(scene, i: int, j: int, direction: str, k: int, rng, balancer, compat: str, **extra) -> QARow:
    wrong = [d for d in MOVEMENT_DIRECTIONS if d != direction]
    distractors = [wrong[n] for n in rng.choice(len(wrong), size=k - 1, replace=False)]
    options, letter = choice_options(direction, distractors, rng, balancer)
    start, end = _frame_span(_metadata_rank(scene, i, compat), _metadata_rank(scene, j, compat),
                             _frame_count(scene, compat))
    question = CAMERA_MOVEMENT_DIRECTION_TEMPLATE.format(start=start, end=end, choices=_join_choices(options))
    frames = scene.frames
    return new_row(scene, "camera_movement_direction", question, direction, options=options, mc_answer=letter,
                   frame_indices=[frames[i].frame_id, frames[j].frame_id],
                   **{key: (value.format(start=start, end=end) if isinstance(value, str) else value)
                      for key, value in extra.items()})


def camera_movement_direction(scene: SceneGraph, rng: np.random.Generator, *, max_per_scene: int | None = 15,
                              balancer: AnswerBalancer | None = None, compat: str = "official",
                              num_choices: int | None = None) -> list[QARow]:
    """The main direction (Forward/Backward/Left/Right) of the camera's net move between two
    frames, in the start frame's camera. Every ordered pair of frames is a candidate.

    ``compat="official"``: the three official generators, one after the other, each with its
    own candidates, cap (``ceil(max_per_scene / 3)``: 15 -> 5 per version, their default) and
    answer letters: V1 (4 options, moves over 1.0 m), V2 (3, 0.5 m), V3 (2, 0.5 m); every row
    names its template in ``question_template``, and V1 rows also carry
    ``start_frame_description`` / ``end_frame_description``, as officially.
    ``"exact"``: one 0.5 m threshold, distinct pairs, and 4, 3, 2 options in turn from a random
    start. ``num_choices`` (2, 3 or 4) keeps one version only."""
    if num_choices is not None and num_choices not in (2, 3, 4):
        raise ValueError(f"num_choices must be 2, 3, 4 or None (mixed), got {num_choices!r}")
    balancer = _balancer(balancer)
    if check_compat(compat) == "official":
        per_version = None if max_per_scene is None else -(-max_per_scene // 3)
        rows = []
        for k, threshold, template, frame_fields in MOVEMENT_VERSIONS:
            if num_choices is not None and k != num_choices:
                continue
            part = balancer.part(template)
            extra = {"question_template": template}
            if frame_fields:
                extra.update(start_frame_description="{start}", end_frame_description="{end}")
            for i, j, direction in subsample(_movement_candidates(scene, threshold), per_version, rng):
                rows.append(_movement_row(scene, i, j, direction, k, rng, part, compat, **extra))
        return rows
    rows = []
    turns = [num_choices] if num_choices is not None else [int(k) for k in rng.permutation([4, 3, 2])]
    for n, (i, j, direction) in enumerate(subsample(_movement_candidates(scene, MOVEMENT_MIN_M), max_per_scene, rng)):
        rows.append(_movement_row(scene, i, j, direction, turns[n % len(turns)], rng, balancer, compat))
    return rows


# --- camera_obj_abs_dist ----------------------------------------------------------------------
def camera_obj_abs_dist(scene: SceneGraph, rng: np.random.Generator, *, max_per_scene: int | None = 6,
                        balancer: AnswerBalancer | None = None, compat: str = "official") -> list[QARow]:
    """Distance (metres, 0.1 m) from the camera to the closest point of an object's box in one
    frame, for each object whose category is visible once in that frame; kept when
    0.2 m <= distance <= 10 m. Four numeric options."""
    balancer = _balancer(balancer)
    distances = BoxDistances(scene, compat)
    frames = scene.frames
    candidates = []
    for position, frame in enumerate(frames):
        for obj in _frame_unique_objects(scene, frame):
            distance = distances.to_point(obj, frame.camera_position)
            if ABS_DIST_RANGE_M[0] <= distance <= ABS_DIST_RANGE_M[1]:
                candidates.append((position, obj, round_to(distance, 1)))
    rows = []
    for position, obj, answer in subsample(candidates, max_per_scene, rng):
        placed = numeric_choices(answer, rng, balancer, decimals=1)
        if placed is None:
            continue
        options, letter = placed
        question = CAMERA_OBJ_ABS_DIST_TEMPLATE.format(object_name=obj.category,
                                                       frame=_describe(position, scene, compat))
        rows.append(new_row(scene, "camera_obj_abs_dist", question, answer, options=options, mc_answer=letter,
                            bare_options=compat == "official", frame_indices=[frames[position].frame_id]))
    return rows


# --- camera_obj_rel_dist_v1/v2/v3 -------------------------------------------------------------
def _pick_rel_dist_options(distances: list[tuple[str, float]], num_choices: int,
                           rng: np.random.Generator) -> list[str] | None:
    """The closest category plus distractors, none within 0.15 m (in distance to the camera)
    of an option already taken; None when fewer than ``num_choices`` can be found.

    ``distances``: (category, rounded distance) of the frame's candidate objects. Distractors
    are tried in random order, as the official generators do."""
    ordered = sorted(distances, key=lambda item: item[1])  # stable: first listed wins a tie
    answer, answer_distance = ordered[0]
    taken = [(answer, answer_distance)]
    for category, distance in shuffled(ordered[1:], rng):
        if all(abs(distance - d) >= REL_DIST_MARGIN_M for _, d in taken):
            taken.append((category, distance))
        if len(taken) == num_choices:
            return [c for c, _ in taken]
    return None


def _camera_obj_rel_dist(scene: SceneGraph, rng: np.random.Generator, question_type: str, num_choices: int,
                         decimals: int, max_per_scene: int | None,
                         balancer: AnswerBalancer | None, compat: str) -> list[QARow]:
    balancer = _balancer(balancer)
    measure = BoxDistances(scene, compat)
    frames = scene.frames
    candidates = []  # at most one question per frame
    for position, frame in enumerate(frames):
        distances = []
        for obj in _frame_unique_objects(scene, frame):
            distance = measure.to_point(obj, frame.camera_position)
            if distance >= REL_DIST_MIN_M:
                distances.append((obj.category, round_to(distance, decimals)))
        if len(distances) < num_choices:
            continue
        picked = _pick_rel_dist_options(distances, num_choices, rng)
        if picked is not None:
            candidates.append((position, picked))
    rows = []
    for position, (answer, *distractors) in subsample(candidates, max_per_scene, rng):
        options, letter = choice_options(answer, distractors, rng, balancer)
        question = CAMERA_OBJ_REL_DIST_TEMPLATE.format(choices=", ".join(options),
                                                       frame=_describe(position, scene, compat))
        rows.append(new_row(scene, question_type, question, answer, options=options, mc_answer=letter,
                            frame_indices=[frames[position].frame_id]))
    return rows


def camera_obj_rel_dist_v1(scene: SceneGraph, rng: np.random.Generator, *, max_per_scene: int | None = 6,
                           balancer: AnswerBalancer | None = None, compat: str = "official") -> list[QARow]:
    """Which of 4 objects visible in a frame is closest to the camera (closest box points;
    objects under 0.5 m left out; options 0.15 m apart; distances rounded to 0.01 m as V1)."""
    return _camera_obj_rel_dist(scene, rng, "camera_obj_rel_dist_v1", 4, 2, max_per_scene, balancer,
                                check_compat(compat))


def camera_obj_rel_dist_v2(scene: SceneGraph, rng: np.random.Generator, *, max_per_scene: int | None = 6,
                           balancer: AnswerBalancer | None = None, compat: str = "official") -> list[QARow]:
    """As V1 with 3 options; distances rounded to 0.1 m (as the official V2)."""
    return _camera_obj_rel_dist(scene, rng, "camera_obj_rel_dist_v2", 3, 1, max_per_scene, balancer,
                                check_compat(compat))


def camera_obj_rel_dist_v3(scene: SceneGraph, rng: np.random.Generator, *, max_per_scene: int | None = 6,
                           balancer: AnswerBalancer | None = None, compat: str = "official") -> list[QARow]:
    """As V1 with 2 options; distances rounded to 0.1 m (as the official V3)."""
    return _camera_obj_rel_dist(scene, rng, "camera_obj_rel_dist_v3", 2, 1, max_per_scene, balancer,
                                check_compat(compat))


# --- obj_obj_relative_pos_nf/lr/ud ------------------------------------------------------------
def relative_position(box_a_camera: np.ndarray, box_b_camera: np.ndarray, axis: int) -> int:
    """-1 when all of A is more than 0.15 m before all of B along camera ``axis`` (nearer,
    further left, higher), +1 when all of A is more than 0.15 m after B, else 0.

    ``box_*_camera``: the 8 box corners in the frame's camera, (8, 3)."""
    a_lo, a_hi = box_a_camera[:, axis].min(), box_a_camera[:, axis].max()
    b_lo, b_hi = box_b_camera[:, axis].min(), box_b_camera[:, axis].max()
    if b_lo - a_hi > RELATIVE_POSITION_GAP_M:
        return -1
    if a_lo - b_hi > RELATIVE_POSITION_GAP_M:
        return 1
    return 0


def _relative_position_qa(scene: SceneGraph, rng: np.random.Generator, dimension: str,
                          max_per_scene: int | None, balancer: AnswerBalancer | None, compat: str) -> list[QARow]:
    balancer = _balancer(balancer)
    axis, (before, after) = RELATIVE_POSITION_AXES[dimension]
    question_type = f"obj_obj_relative_pos_{dimension}"
    frames = scene.frames
    # The official nf/lr/ud generators number frames among those with a pose AND 2D boxes
    # (get_obj_obj_rel_pos_*_qa.py: valid_frames); "exact" numbers them among all frames.
    counted = [f for f in frames if f.visible] if compat == "official" else frames
    rank = {id(f): k for k, f in enumerate(counted)}
    candidates = []
    for frame in counted:
        position = rank[id(frame)]
        objects = _frame_unique_objects(scene, frame)
        corners = {o.instance_id: frame.world_to_camera(o.box.corners()) for o in objects}
        for a, b in itertools.combinations(objects, 2):  # A is the one listed first in the frame
            relation = relative_position(corners[a.instance_id], corners[b.instance_id], axis)
            if relation != 0:
                candidates.append((position, a.category, b.category, before if relation < 0 else after))
    rows = []
    for position, name_a, name_b, answer in subsample(candidates, max_per_scene, rng):
        # The official shuffles the two words; we balance A/B like every other choice type.
        options, letter = choice_options(answer, [after if answer == before else before], rng, balancer)
        question = RELATIVE_POSITION_TEMPLATES[dimension].format(
            frame=_describe(position, scene, compat), object_a=name_a, object_b=name_b)
        rows.append(new_row(scene, question_type, question, answer, options=options, mc_answer=letter,
                            frame_indices=[counted[position].frame_id]))
    return rows


def obj_obj_relative_pos_nf(scene: SceneGraph, rng: np.random.Generator, *, max_per_scene: int | None = 9,
                            balancer: AnswerBalancer | None = None, compat: str = "official") -> list[QARow]:
    """Is object A Near or Far compared to object B, along the camera's viewing axis (z), in a
    frame where both categories are visible once? Asked only when the boxes are > 0.15 m apart."""
    return _relative_position_qa(scene, rng, "nf", max_per_scene, balancer, check_compat(compat))


def obj_obj_relative_pos_lr(scene: SceneGraph, rng: np.random.Generator, *, max_per_scene: int | None = 9,
                            balancer: AnswerBalancer | None = None, compat: str = "official") -> list[QARow]:
    """Is object A to the Left or Right of object B along the camera's x axis (as nf)."""
    return _relative_position_qa(scene, rng, "lr", max_per_scene, balancer, check_compat(compat))


def obj_obj_relative_pos_ud(scene: SceneGraph, rng: np.random.Generator, *, max_per_scene: int | None = 9,
                            balancer: AnswerBalancer | None = None, compat: str = "official") -> list[QARow]:
    """Is object A Up or Down from object B along the camera's y axis (+y is down; as nf)."""
    return _relative_position_qa(scene, rng, "ud", max_per_scene, balancer, check_compat(compat))
