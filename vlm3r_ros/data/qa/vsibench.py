"""VSI-Bench question generators over a :class:`~vlm3r_ros.data.scene_graph.SceneGraph`.

One function per question type; each is ``(scene, rng, *, max_per_scene, balancer) ->
list[QARow]`` (see :mod:`.common`). Templates, filters, thresholds and rounding follow the
official generators of VLM-3R's data pipeline (``vlm_3r_data_process/src/tasks/...``,
``question_templates.py``, ``utils/common_utils.py``); where we differ, or where the official
code could not be found, docs/data.md says so and why. Rows keep the official fields:
``ground_truth`` is the answer value, ``mc_answer`` its letter, and task fields such as
``category`` sit next to them.

All geometry is in the scene's metric, z-up world. "Unique" objects are those whose category
occurs once in the scene, so their name identifies them.
"""

from __future__ import annotations

import itertools
import logging
from typing import Sequence

import numpy as np

from ..scene_graph import ObjectInstance, SceneGraph
from .common import (AnswerBalancer, BoxDistances, QARow, check_compat, choice_options, new_row, numeric_choices,
                     round_to, shuffled, subsample)

logger = logging.getLogger(__name__)

# --- templates (the official wording, question_templates.py) -----------------------------------
OBJ_COUNT_TEMPLATE = "How many {category}(s) are in this room?"
OBJ_SIZE_ESTIMATE_TEMPLATE = ("What is the length of the longest dimension (length, width, or height) of the "
                              "{category}, measured in centimeters?")
ROOM_SIZE_TEMPLATE = ("What is the size of this room (in square meters)? \n"
                      "If multiple rooms are shown, estimate the size of the combined space.")
OBJ_ABS_DISTANCE_TEMPLATE = ("Measuring from the closest point of each object, what is the direct distance "
                             "between the {object1} and the {object2} (in meters)?")
OBJ_REL_DISTANCE_TEMPLATE = ("Measuring from the closest point of each object, which of these objects "
                             "({choice_a}, {choice_b}, {choice_c}, {choice_d}) is the closest to the {category}?\n"
                             "If there are multiple instances of an object category, measure to the closest.")
OBJ_REL_DIRECTION_HARD_TEMPLATE = (
    "If I am standing by the {positioning_object} and facing the {orienting_object}, is the {querying_object} "
    "to my front-left, front-right, back-left, or back-right?\n"
    "The directions refer to the quadrants of a Cartesian plane (if I am standing at the origin and facing "
    "along the positive y-axis).")
OBJ_REL_DIRECTION_MEDIUM_TEMPLATE = (
    "If I am standing by the {positioning_object} and facing the {orienting_object}, is the {querying_object} "
    "to my left, right, or back?\n"
    "An object is to my back if I would have to turn at least 135 degrees in order to face it.")
OBJ_REL_DIRECTION_EASY_TEMPLATE = (
    "If I am standing by the {positioning_object} and facing the {orienting_object}, is the {querying_object} "
    "to the left or the right of the {orienting_object}?")
OBJ_APPEARANCE_ORDER_TEMPLATE = ("What will be the first-time appearance order of the following categories in "
                                 "the video: {choice_a}, {choice_b}, {choice_c}, {choice_d}?")

# --- thresholds (official values) ---------------------------------------------------------------
ABS_DISTANCE_MIN = 0.2  # m, rounded distances below are not asked
REL_DISTANCE_MIN = 0.15  # m, the closest choice must be at least this far from the object
REL_DISTANCE_GAP = 0.15  # m, choices' distances must differ by more than this ...
REL_DISTANCE_GAP_LARGE_ROOM = 0.30  # m, ... or this in rooms over 40 m^2 (compat "exact" only: the official
# get_obj_rel_distance_v1_qa.py computes it but calls ambiguous(distances) with its default 0.15)
LARGE_ROOM = 40.0  # m^2
DIRECTION_PAIR_MIN, DIRECTION_PAIR_MAX = 0.30, 5.0  # m, every pair of the triple within this range
DIRECTION_MARGIN_DEG = 10.0  # the direction of the querying object is this far from a boundary
DIRECTION_MAX_STRAY_CORNERS = 2  # at most this many box corners on another side than the centre
APPEARANCE_MIN_GAP_S = 1  # s, first appearances (whole seconds) must differ by more than this
FPS_BY_DATASET = {"scannet": 24.0, "arkitscenes": 30.0, "scannetpp": 30.0}  # official FPS_LOOKUP


def _balancer(balancer: AnswerBalancer | None) -> AnswerBalancer:
    return AnswerBalancer() if balancer is None else balancer


def _unique_categories(scene: SceneGraph) -> list[str]:
    """Categories with exactly one instance, in the scene's category order."""
    return [o.category for o in scene.unique_objects()]


# --- object counting -------------------------------------------------------------------------
def object_counting(scene: SceneGraph, rng: np.random.Generator, *, max_per_scene: int | None = 6,
                    balancer: AnswerBalancer | None = None, compat: str = "official") -> list[QARow]:
    """"How many {category}(s) are in this room?" for every category with 2 or more instances.

    Options: the count and three other counts max(1, count + k), k in -3..3 without 0."""
    balancer = _balancer(balancer)
    rows = []
    for category, count in scene.category_counts().items():
        if count <= 1:
            continue
        others = sorted({max(1, count + k) for k in (-3, -2, -1, 1, 2, 3)} - {count})
        picked = [others[i] for i in rng.choice(len(others), size=3, replace=False)]
        options, letter = choice_options(count, picked, rng, balancer)
        rows.append(new_row(scene, "object_counting", OBJ_COUNT_TEMPLATE.format(category=category), count,
                            options=options, mc_answer=letter, category=category))
    return subsample(rows, max_per_scene, rng)


# --- object size -----------------------------------------------------------------------------
def object_size_estimation(scene: SceneGraph, rng: np.random.Generator, *, max_per_scene: int | None = 6,
                           balancer: AnswerBalancer | None = None, compat: str = "official") -> list[QARow]:
    """The longest side of each unique object's box, in whole centimetres.

    Options: numeric, distractors in [0.4, 1.8] x the answer, whole centimetres."""
    balancer = _balancer(balancer)
    rows = []
    for category in _unique_categories(scene):
        obj = scene.instances_of(category)[0]
        length_cm = round_to(float(np.max(obj.box.axes_lengths)) * 100, 0)
        mc = numeric_choices(length_cm, rng, balancer, lower_bound=0.4, upper_bound=1.8, decimals=0)
        if mc is None:
            continue  # no well-separated distractors (the official "E")
        options, letter = mc
        rows.append(new_row(scene, "object_size_estimation", OBJ_SIZE_ESTIMATE_TEMPLATE.format(category=category),
                            length_cm, options=options, mc_answer=letter, category=category))
    return subsample(rows, max_per_scene, rng)


# --- room size -------------------------------------------------------------------------------
def room_size_estimation(scene: SceneGraph, rng: np.random.Generator, *, max_per_scene: int | None = 1,
                         balancer: AnswerBalancer | None = None, compat: str = "official") -> list[QARow]:
    """The floor area in m^2 (``scene.room_size``), rounded to 0.1; none without a room size."""
    balancer = _balancer(balancer)
    if scene.room_size is None:
        return []
    area = round_to(scene.room_size, 1)
    mc = numeric_choices(area, rng, balancer)
    if mc is None:
        return []
    options, letter = mc
    rows = [new_row(scene, "room_size_estimation", ROOM_SIZE_TEMPLATE, area, options=options, mc_answer=letter)]
    return subsample(rows, max_per_scene, rng)


# --- object-object absolute distance ---------------------------------------------------------
def object_abs_distance(scene: SceneGraph, rng: np.random.Generator, *, max_per_scene: int | None = 6,
                        balancer: AnswerBalancer | None = None, compat: str = "official") -> list[QARow]:
    """The closest-point distance (m, 0.1) between every two unique objects, when >= 0.2 m.

    ``compat="official"``: the distance between the objects' official grid samples
    (:func:`.common.sampled_box_distance`); ``"exact"``: the exact box-to-box distance.
    Pairs in the official order: each unique category (object1) with every unique category
    before it (object2)."""
    balancer = _balancer(balancer)
    distance = BoxDistances(scene, compat)
    rows = []
    unique = _unique_categories(scene)
    for i, first in enumerate(unique):
        for second in unique[:i]:
            gt = round_to(distance(first, second), 1)
            if gt < ABS_DISTANCE_MIN:
                continue
            mc = numeric_choices(gt, rng, balancer)
            if mc is None:
                continue
            options, letter = mc
            question = OBJ_ABS_DISTANCE_TEMPLATE.format(object1=first, object2=second)
            rows.append(new_row(scene, "object_abs_distance", question, gt, options=options, mc_answer=letter,
                                **{"category, first object": first, "category, second object": second}))
    return subsample(rows, max_per_scene, rng)


# --- relative distance -----------------------------------------------------------------------
def object_rel_distance(scene: SceneGraph, rng: np.random.Generator, *, max_per_scene: int | None = 6,
                        balancer: AnswerBalancer | None = None, compat: str = "official") -> list[QARow]:
    """Which of four categories is closest to a unique object (closest instance, closest points).

    Candidates (a unique object + 4 other categories) are subsampled first, as the official
    code does; a candidate is skipped when the closest choice is under 0.15 m away or two
    choices' distances differ by 0.15 m or less. ``compat="exact"`` widens that gap to 0.30 m
    in rooms over 40 m^2 and uses exact distances; "official" keeps 0.15 m everywhere (the
    official code computes the 0.30 m but never passes it on) and sampled distances."""
    balancer = _balancer(balancer)
    distance = BoxDistances(scene, compat)
    categories = list(scene.category_counts())
    candidates = [(primary, combo) for primary in _unique_categories(scene)
                  for combo in itertools.combinations([c for c in categories if c != primary], 4)]
    candidates = subsample(candidates, max_per_scene, rng)
    large = compat == "exact" and (scene.room_size or 0.0) > LARGE_ROOM
    gap = REL_DISTANCE_GAP_LARGE_ROOM if large else REL_DISTANCE_GAP
    rows = []
    for primary, choices in candidates:
        dists = [distance(c, primary) for c in choices]
        if min(dists) < REL_DISTANCE_MIN:
            continue
        if any(abs(a - b) <= gap for a, b in itertools.combinations(dists, 2)):
            continue
        answer = choices[int(np.argmin(dists))]
        options, letter = choice_options(answer, [c for c in choices if c != answer], rng, balancer)
        question = OBJ_REL_DISTANCE_TEMPLATE.format(choice_a=options[0], choice_b=options[1], choice_c=options[2],
                                                    choice_d=options[3], category=primary)
        rows.append(new_row(scene, "object_rel_distance", question, answer, options=options, mc_answer=letter,
                            category=primary))
    return rows


# --- relative direction ----------------------------------------------------------------------
def direction_angles(positioning: ObjectInstance, orienting: ObjectInstance,
                     querying: ObjectInstance) -> np.ndarray | None:
    """Counter-clockwise angles (degrees, [0, 360)) seen from above, from the direction
    positioning -> orienting to the directions positioning -> querying's centre and its 8
    corners; (9,), the centre first. 0 is straight ahead, 90 left, 180 behind, 270 right.
    None when a direction is undefined (two centres on one vertical line)."""
    origin = positioning.box.centroid[:2]
    facing = orienting.box.centroid[:2] - origin  # (2,)
    targets = np.vstack([querying.box.centroid, querying.box.corners()])[:, :2] - origin  # (9, 2)
    if np.linalg.norm(facing) < 1e-9 or np.linalg.norm(targets[0]) < 1e-9:
        return None
    cross = facing[0] * targets[:, 1] - facing[1] * targets[:, 0]
    dot = targets @ facing
    return np.mod(np.degrees(np.arctan2(cross, dot)), 360.0)


def _direction_triples(scene: SceneGraph, rng: np.random.Generator, max_per_scene: int | None, compat: str):
    """(positioning, orienting, querying) objects, official order: subsampled triples of unique
    objects whose pairwise distances (sampled or exact, by ``compat``) are all in [0.3, 5] m,
    each in 3 of its orders."""
    distance = BoxDistances(scene, compat)
    triples = subsample(list(itertools.combinations(_unique_categories(scene), 3)), max_per_scene, rng)
    for triple in triples:
        if any(not DIRECTION_PAIR_MIN <= distance(a, b) <= DIRECTION_PAIR_MAX
               for a, b in itertools.combinations(triple, 2)):
            continue
        a, b, c = triple
        for names in ((a, b, c), (a, c, b), (b, a, c)):
            yield tuple(scene.instances_of(n)[0] for n in names)


def _direction_rows(scene, rng, max_per_scene, balancer, question_type: str, template: str,
                    labels: Sequence[str], classify, compat: str) -> list[QARow]:
    """Rows of one relative-direction type; ``classify(angles) -> label index or None``."""
    balancer = _balancer(balancer)
    rows = []
    for positioning, orienting, querying in _direction_triples(scene, rng, max_per_scene, compat):
        angles = direction_angles(positioning, orienting, querying)
        if angles is None:
            continue
        label = classify(angles)
        if label is None:
            continue
        answer = labels[label]
        options, letter = choice_options(answer, [x for x in labels if x != answer], rng, balancer)
        question = template.format(positioning_object=positioning.category, orienting_object=orienting.category,
                                   querying_object=querying.category)
        rows.append(new_row(scene, question_type, question, answer, options=options, mc_answer=letter,
                            **{"category, positioning object": positioning.category,
                               "category, orienting object": orienting.category,
                               "category, querying object": querying.category}))
    return subsample(rows, max_per_scene, rng)


def _sector_classifier(bounds: Sequence[float], near_bounds: Sequence[float]):
    """Label = index of the sector [bounds[i], bounds[i+1]) holding the centre's angle; None
    when more than 2 of the 8 corners fall in another sector, or the centre's angle is within
    10 degrees of one of ``near_bounds``."""
    edges = np.asarray(bounds[1:-1], dtype=np.float64)

    def classify(angles: np.ndarray) -> int | None:
        sectors = np.searchsorted(edges, angles, side="right")  # (9,)
        if int(np.sum(sectors[1:] != sectors[0])) > DIRECTION_MAX_STRAY_CORNERS:
            return None
        if np.min(np.abs(angles[0] - np.asarray(near_bounds))) < DIRECTION_MARGIN_DEG:
            return None
        return int(sectors[0])
    return classify


def _hard_classify(angles: np.ndarray) -> int | None:
    """Quadrants [0, 90) front-left, [90, 180) back-left, [180, 270) back-right, [270, 360)
    front-right. As the official code, only the upper edge of the centre's quadrant is kept
    10 degrees away (docs/data.md)."""
    quadrants = (angles // 90).astype(int)
    if int(np.sum(quadrants[1:] != quadrants[0])) > DIRECTION_MAX_STRAY_CORNERS:
        return None
    if 90.0 - angles[0] % 90.0 < DIRECTION_MARGIN_DEG:
        return None
    return int(quadrants[0])


_HARD_LABELS = ("front-left", "back-left", "back-right", "front-right")  # by quadrant
_MEDIUM_LABELS = ("left", "back", "right")  # [0, 135), [135, 225), [225, 360)
_EASY_LABELS = ("left", "right")
_medium_classify = _sector_classifier((0, 135, 225, 360), (0, 135, 225, 360))
_easy_exact_classify = _sector_classifier((0, 180, 360), (0, 180, 360))  # compat "exact": [0,180) / [180,360)


def _easy_official_classify(angles: np.ndarray) -> int | None:
    """The official v3 (get_obj_rel_direction_v3_qa.py): medium's sectors and margins, where
    [0, 135) is left, [225, 360) right and [135, 225) (behind) is not asked."""
    sector = _medium_classify(angles)
    return None if sector is None or sector == 1 else (0 if sector == 0 else 1)


def object_rel_direction_hard(scene: SceneGraph, rng: np.random.Generator, *, max_per_scene: int | None = 6,
                              balancer: AnswerBalancer | None = None, compat: str = "official") -> list[QARow]:
    """front-left / front-right / back-left / back-right of the querying object, standing at
    the positioning object's centre facing the orienting object's centre (official V1)."""
    return _direction_rows(scene, rng, max_per_scene, balancer, "object_rel_direction_hard",
                           OBJ_REL_DIRECTION_HARD_TEMPLATE, _HARD_LABELS, _hard_classify, check_compat(compat))


def object_rel_direction_medium(scene: SceneGraph, rng: np.random.Generator, *, max_per_scene: int | None = 6,
                                balancer: AnswerBalancer | None = None, compat: str = "official") -> list[QARow]:
    """left / right / back (back: 135 degrees or more from the facing direction), official V2."""
    return _direction_rows(scene, rng, max_per_scene, balancer, "object_rel_direction_medium",
                           OBJ_REL_DIRECTION_MEDIUM_TEMPLATE, _MEDIUM_LABELS, _medium_classify, check_compat(compat))


def object_rel_direction_easy(scene: SceneGraph, rng: np.random.Generator, *, max_per_scene: int | None = 6,
                              balancer: AnswerBalancer | None = None, compat: str = "official") -> list[QARow]:
    """left / right (official V3): ``compat="official"`` asks [0, 135) as left and [225, 360) as
    right, skips [135, 225) and keeps 10 degrees from 0/135/225/360; ``"exact"`` splits at
    the line of sight, [0, 180) left / [180, 360) right, 10 degrees from 0/180/360."""
    classify = _easy_official_classify if check_compat(compat) == "official" else _easy_exact_classify
    return _direction_rows(scene, rng, max_per_scene, balancer, "object_rel_direction_easy",
                           OBJ_REL_DIRECTION_EASY_TEMPLATE, _EASY_LABELS, classify, compat)


# --- appearance order ------------------------------------------------------------------------
def first_appearance_seconds(scene: SceneGraph, fps: float) -> dict[str, int]:
    """category -> whole second (round(frame_id / fps)) of the first frame showing any of its
    instances, in order of appearance."""
    category_of = {o.instance_id: o.category for o in scene.objects}
    seconds: dict[str, int] = {}
    for iid, frame_id in scene.first_seen().items():  # in order of appearance
        seconds.setdefault(category_of[iid], int(round(frame_id / fps)))
    return seconds


def scene_fps(scene: SceneGraph) -> float | None:
    """The fps that frame ids count at: the scene's own, else the official per-dataset value."""
    return scene.fps if scene.fps is not None else FPS_BY_DATASET.get(scene.dataset)


def obj_appearance_order(scene: SceneGraph, rng: np.random.Generator, *, max_per_scene: int | None = 6,
                         balancer: AnswerBalancer | None = None, compat: str = "official") -> list[QARow]:
    """The order in which four categories first appear in the video.

    Sets of 4 categories, in random order, whose first appearances are more than 1 s apart;
    the answer lists them by time; the distractors are three other orders of the same four."""
    balancer = _balancer(balancer)
    if not scene.frames:
        return []
    fps = scene_fps(scene)
    if fps is None:
        logger.warning("scene %s: obj_appearance_order needs the video's fps (SceneGraph.fps, or a dataset "
                       "among %s); skipped", scene.scene_name, sorted(FPS_BY_DATASET))
        return []
    seconds = first_appearance_seconds(scene, fps)
    combos = shuffled(list(itertools.combinations(seconds, 4)), rng)
    rows = []
    for combo in combos:
        if max_per_scene is not None and len(rows) >= max_per_scene:
            break
        if any(abs(seconds[a] - seconds[b]) <= APPEARANCE_MIN_GAP_S for a, b in itertools.combinations(combo, 2)):
            continue
        answer = ", ".join(sorted(combo, key=seconds.__getitem__))
        distractors: list[str] = []
        for _ in range(100):  # 24 orders exist, so three others are found at once in practice
            order = ", ".join(shuffled(combo, rng))
            if order != answer and order not in distractors:
                distractors.append(order)
            if len(distractors) == 3:
                break
        if len(distractors) < 3:
            continue
        options, letter = choice_options(answer, distractors, rng, balancer)
        mention = shuffled(combo, rng)  # the question lists them in random order, leaking nothing
        question = OBJ_APPEARANCE_ORDER_TEMPLATE.format(choice_a=mention[0], choice_b=mention[1],
                                                        choice_c=mention[2], choice_d=mention[3])
        rows.append(new_row(scene, "obj_appearance_order", question, answer, options=options, mc_answer=letter,
                            categories_involved=list(combo)))
    return rows



# --- the published benchmark's row shape -------------------------------------------------------
NUMERIC_TYPES = ("object_counting", "object_abs_distance", "object_size_estimation", "room_size_estimation")


def to_benchmark_dict(row: dict) -> dict:
    """A generated VSI-Bench row (``QARow.to_dict()``) in the shape of the published benchmark
    (lmms_eval/tasks/vsibench): numeric types have no options and the number as ground truth;
    multiple-choice types keep the options and have the LETTER as ground truth. ``mc_answer``
    is dropped, and the answer value of a multiple-choice row is kept as ``answer``."""
    out = dict(row)
    letter = out.pop("mc_answer", None)
    if out["question_type"] in NUMERIC_TYPES:
        out["options"] = None
    else:
        if letter is None:
            raise ValueError(f"row {row.get('id')}: a multiple-choice row needs mc_answer, got none")
        out["answer"] = out["ground_truth"]
        out["ground_truth"] = letter
    return out
