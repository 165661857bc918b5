"""VSI-Bench generators on synthetic scenes whose every answer is worked out by hand here.

All boxes stand on the floor (z from 0), so the closest-point distance between two of them is
the gap between their floor rectangles. Angles for the relative-direction questions are
counter-clockwise seen from above, 0 = the facing direction (90 = left, 270 = right).
"""

import math
import re

import numpy as np
import pytest

from vlm3r_ros.data.qa import vsibench as V
from vlm3r_ros.data.qa.common import (AnswerBalancer, QARow, box_distance, frame_description, lettered, make_rng,
                                      numeric_choices, subsample)
from vlm3r_ros.data.qa.registry import GENERATORS, get_generator, question_types
from vlm3r_ros.data.scene_graph import FrameAnnotation, ObjectInstance, OrientedBox, SceneGraph

VSI_TYPES = ["object_counting", "object_abs_distance", "object_size_estimation", "room_size_estimation",
             "object_rel_distance", "object_rel_direction_easy", "object_rel_direction_medium",
             "object_rel_direction_hard", "route_planning", "obj_appearance_order"]


def floor_box(iid, category, x0, y0, x1, y1, height=1.0):
    return ObjectInstance(iid, category, OrientedBox.axis_aligned([x0, y0, 0.0], [x1, y1, height]))


def cube(iid, category, x, y, side=0.2):
    """A small cube centred at (x, y) on the floor."""
    h = side / 2
    return floor_box(iid, category, x - h, y - h, x + h, y + h, side)


def scene_of(name, objects, frames=(), room_size=30.0, **kw):
    return SceneGraph(name, list(objects), list(frames), room_size=room_size, **kw)


def values(row: QARow) -> list[str]:
    """The option texts without their letters."""
    return [re.sub(r"^[A-D]\. ", "", o) for o in row.options]


def check_letters(row: QARow):
    """Options are lettered A, B, ... in order and mc_answer names the ground truth."""
    assert [o[:3] for o in row.options] == [f"{c}. " for c in "ABCD"[:len(row.options)]]
    assert row.options["ABCD".index(row.mc_answer)] == f"{row.mc_answer}. {row.ground_truth}"


# A room (30 m^2) of unit-footprint boxes; gaps on the floor, by hand:
#   tv    x[0,1]   y[0,1]    1.0 high     chair x[2,3] y[0,1] and x[5,6] y[0,1]
#   desk  x[0,1]   y[3,4]    1.5 high     bin   x[-4,-3] y[0,1]  0.5 high
#   plant x[0,1]   y[-5,-4]  2.05 high
# tv-chair 1 (nearer chair), tv-desk 2, tv-bin 3, tv-plant 4, desk-chair sqrt(1+4)=2.236,
# desk-bin sqrt(9+4)=3.606, desk-plant 7, bin-chair 5, bin-plant sqrt(9+16)=5, plant-chair sqrt(1+16)=4.123
def room_scene(room_size=30.0):
    return scene_of("room", [
        floor_box(0, "tv", 0, 0, 1, 1),
        floor_box(1, "chair", 2, 0, 3, 1), floor_box(2, "chair", 5, 0, 6, 1),
        floor_box(3, "desk", 0, 3, 1, 4, 1.5),
        floor_box(4, "bin", -4, 0, -3, 1, 0.5),
        floor_box(5, "plant", 0, -5, 1, -4, 2.05),
    ], room_size=room_size, dataset="scannet", video_path="scannet/room.mp4")


# --- shared helpers ------------------------------------------------------------------------
def test_box_distance_by_hand():
    unit = OrientedBox.axis_aligned([0, 0, 0], [1, 1, 1])
    assert box_distance(unit, OrientedBox.axis_aligned([2, 0, 0], [3, 1, 1])) == pytest.approx(1.0, abs=1e-9)
    # corner to corner: (1,1,1) to (2,2,2)
    assert box_distance(unit, OrientedBox.axis_aligned([2, 2, 2], [3, 3, 3])) == pytest.approx(math.sqrt(3))
    # a thin bar crossing the cube with no corner inside it: they overlap
    assert box_distance(unit, OrientedBox.axis_aligned([-1, 0.4, 0.4], [2, 0.6, 0.6])) == pytest.approx(0, abs=1e-9)
    # a unit cube turned 45 degrees about z, centred at x=3: its nearest edge is at x = 3 - sqrt(2)/2
    c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)
    turned = OrientedBox.create([3, 0.5, 0.5], [1, 1, 1], [[c, s, 0], [-s, c, 0], [0, 0, 1]])
    assert box_distance(unit, turned) == pytest.approx(2 - math.sqrt(2) / 2, abs=1e-9)
    assert box_distance(turned, unit) == pytest.approx(2 - math.sqrt(2) / 2, abs=1e-9)


def test_numeric_choices_follow_the_official_rules():
    balancer = AnswerBalancer()
    rng = make_rng(0, "numeric")
    for gt in (2.0, 0.7, 13.4, 120.0):
        options, letter = numeric_choices(gt, rng, balancer)
        assert options["ABCD".index(letter)] == gt
        eps = math.ceil(gt * 0.2 * 10) / 10  # the official margin, at 0.1 precision
        for i, a in enumerate(options):
            assert 0.25 * gt - 0.05 <= a <= 1.75 * gt + 0.05  # drawn in [0.25, 1.75] x gt, then rounded
            assert a == round(a, 1)
            assert all(abs(a - b) >= eps - 1e-9 for b in options[i + 1:])
    # each letter carried the answer once in 4 questions (least-used letter first)
    assert balancer.counts == {"A": 1, "B": 1, "C": 1, "D": 1}
    # whole numbers when decimals=0; no options can be a margin away from 0
    options, _ = numeric_choices(150, rng, balancer, lower_bound=0.4, upper_bound=1.8, decimals=0)
    assert all(isinstance(v, int) and 60 <= v <= 270 for v in options)
    assert numeric_choices(0.0, rng, balancer) is None


def test_balancer_places_answers_on_least_used_letters():
    balancer = AnswerBalancer()
    rng = make_rng(1)
    letters = [balancer.place(["x", "y", "z", "w"], "z", rng)[1] for _ in range(8)]
    assert sorted(letters) == list("AABBCCDD")
    ordered, letter = AnswerBalancer().place(["left", "right"], "right", rng)
    assert ordered["AB".index(letter)] == "right" and sorted(ordered) == ["left", "right"]
    with pytest.raises(ValueError, match="not among the options"):
        balancer.place(["a", "b"], "c", rng)


def test_small_helpers():
    assert frame_description(0, 32) == "frame 1 of 32"
    assert frame_description(31, 32) == "frame 32 of 32"
    with pytest.raises(ValueError, match="outside"):
        frame_description(32, 32)
    assert lettered([2.5, 120, "sofa"]) == ["A. 2.5", "B. 120", "C. sofa"]
    a, b = make_rng(7, "t", "s").random(3), make_rng(7, "t", "s").random(3)
    assert np.array_equal(a, b) and not np.array_equal(a, make_rng(7, "t", "other").random(3))
    kept = subsample(list(range(10)), 4, make_rng(0))
    assert len(kept) == 4 and kept == sorted(kept)
    assert subsample([1, 2], None, make_rng(0)) == [1, 2]


def test_registry_lists_every_vsi_type():
    assert question_types("vsibench") == VSI_TYPES
    for qtype in VSI_TYPES:
        if qtype != "route_planning":  # in its own module (data/qa/route_planning.py)
            assert get_generator(qtype) is getattr(V, qtype)
    assert GENERATORS["room_size_estimation"].max_per_scene == 1
    with pytest.raises(KeyError, match="unknown question type"):
        get_generator("route_plan")


# --- object counting -------------------------------------------------------------------------
def test_object_counting():
    scene = room_scene()
    rows = V.object_counting(scene, make_rng(0), max_per_scene=None)
    # only chair has more than one instance
    assert len(rows) == 1
    row = rows[0]
    assert row.question == "How many chair(s) are in this room?"
    assert row.ground_truth == 2 and row.extra == {"category": "chair"}
    assert (row.dataset, row.scene_name, row.video_path) == ("scannet", "room", "scannet/room.mp4")
    assert row.frame_indices is None
    check_letters(row)
    # distractors: max(1, 2 + k) for k in -3..3, k != 0 -> {1, 3, 4, 5}
    assert set(values(row)) - {"2"} <= {"1", "3", "4", "5"} and len(set(values(row))) == 4

    many = scene_of("many", [cube(i, name, i, 0) for i, name in enumerate(["cup"] * 5 + ["pen"] * 3 + ["box"] * 2)])
    rows = V.object_counting(many, make_rng(0), max_per_scene=None)
    assert [(r.extra["category"], r.ground_truth) for r in rows] == [("cup", 5), ("pen", 3), ("box", 2)]
    for r in rows:
        check_letters(r)
        others = {int(v) for v in values(r)} - {r.ground_truth}
        assert len(others) == 3 and all(1 <= v and 0 < abs(v - r.ground_truth) <= 3 for v in others)
    assert len(V.object_counting(many, make_rng(0), max_per_scene=2)) == 2


# --- object size -----------------------------------------------------------------------------
def test_object_size_estimation():
    rows = V.object_size_estimation(room_scene(), make_rng(0), max_per_scene=None)
    # unique objects in order; longest side in whole cm: tv 1 m, desk 1.5 m high, bin 1 m, plant 2.05 m high
    assert [(r.extra["category"], r.ground_truth) for r in rows] == [
        ("tv", 100), ("desk", 150), ("bin", 100), ("plant", 205)]
    assert rows[0].question == ("What is the length of the longest dimension (length, width, or height) of the tv, "
                                "measured in centimeters?")
    for r in rows:
        check_letters(r)
        assert all(0.4 * r.ground_truth - 1 <= int(v) <= 1.8 * r.ground_truth + 1 for v in values(r))


# --- room size -------------------------------------------------------------------------------
def test_room_size_estimation():
    rows = V.room_size_estimation(room_scene(room_size=30.04), make_rng(0))
    assert len(rows) == 1
    row = rows[0]
    assert row.ground_truth == 30.0
    assert row.question == ("What is the size of this room (in square meters)? \n"
                            "If multiple rooms are shown, estimate the size of the combined space.")
    check_letters(row)
    # eps = ceil(30 * 0.2 * 10) / 10 = 6.0: all options at least 6 m^2 apart, in [7.5, 52.5]
    opts = sorted(float(v) for v in values(row))
    assert all(b - a >= 6.0 - 1e-9 for a, b in zip(opts, opts[1:]))
    assert 7.5 <= opts[0] and opts[-1] <= 52.5
    assert V.room_size_estimation(room_scene(room_size=None), make_rng(0)) == []


# --- object-object absolute distance ---------------------------------------------------------
def test_object_abs_distance():
    rows = V.object_abs_distance(room_scene(), make_rng(0), max_per_scene=None)
    got = [(r.extra["category, first object"], r.extra["category, second object"], r.ground_truth) for r in rows]
    # each unique object with every unique object before it; distances as in room_scene's comment, 0.1 m
    assert got == [("desk", "tv", 2.0), ("bin", "tv", 3.0), ("bin", "desk", 3.6),
                   ("plant", "tv", 4.0), ("plant", "desk", 7.0), ("plant", "bin", 5.0)]
    assert rows[0].question == ("Measuring from the closest point of each object, what is the direct distance "
                                "between the desk and the tv (in meters)?")
    for r in rows:
        check_letters(r)

    # gaps of 0.1 m (skipped: under 0.2 m), 0.5 m and 1.6 m
    close = scene_of("close", [floor_box(0, "a", 0, 0, 1, 1), floor_box(1, "b", 1.1, 0, 2, 1),
                               floor_box(2, "c", -1.5, 0, -0.5, 1)])
    got = [(r.extra["category, first object"], r.extra["category, second object"], r.ground_truth)
           for r in V.object_abs_distance(close, make_rng(0), max_per_scene=None)]
    assert got == [("c", "a", 0.5), ("c", "b", 1.6)]


# --- relative distance -----------------------------------------------------------------------
def test_object_rel_distance():
    rows = V.object_rel_distance(room_scene(), make_rng(0), max_per_scene=None)
    # primaries tv, desk, bin, plant; each with the other 4 categories:
    #   tv:    chair 1, desk 2, bin 3, plant 4              -> chair
    #   desk:  tv 2, chair 2.236, bin 3.606, plant 7        -> tv (closest gap 0.236 > 0.15)
    #   bin:   tv 3, chair 5, desk 3.606, plant 5           -> skipped: chair and plant tie
    #   plant: tv 4, chair 4.123, desk 7, bin 5             -> skipped: tv and chair 0.123 apart
    assert [(r.extra["category"], r.ground_truth) for r in rows] == [("tv", "chair"), ("desk", "tv")]
    tv = rows[0]
    assert sorted(values(tv)) == ["bin", "chair", "desk", "plant"]
    check_letters(tv)
    a, b, c, d = values(tv)
    assert tv.question == ("Measuring from the closest point of each object, which of these objects "
                           f"({a}, {b}, {c}, {d}) is the closest to the tv?\n"
                           "If there are multiple instances of an object category, measure to the closest.")
    # compat "exact": a room over 40 m^2 needs 0.3 m between choices: desk's 0.236 is not enough
    rows = V.object_rel_distance(room_scene(room_size=50.0), make_rng(0), max_per_scene=None, compat="exact")
    assert [(r.extra["category"], r.ground_truth) for r in rows] == [("tv", "chair")]
    # official: the 0.30 m is computed but never used (get_obj_rel_distance_v1_qa.py): 0.15 m everywhere
    rows = V.object_rel_distance(room_scene(room_size=50.0), make_rng(0), max_per_scene=None)
    assert [(r.extra["category"], r.ground_truth) for r in rows] == [("tv", "chair"), ("desk", "tv")]
    # the official subsampling picks candidates before the filters
    assert len(V.object_rel_distance(room_scene(), make_rng(0), max_per_scene=1)) <= 1


# --- relative direction ----------------------------------------------------------------------
def directions(rows):
    return [(r.extra["category, positioning object"], r.extra["category, orienting object"],
             r.extra["category, querying object"], r.ground_truth) for r in rows]


# sofa (0,0), tv (0,4), lamp (-2,2), 0.2 m cubes; pair gaps 3.8, 2.55, 2.55 m (all in [0.3, 5]).
#   at sofa facing tv (north): lamp at 135 - 90 = 45 deg         -> front-left / left / left
#   at sofa facing lamp (135 deg): tv at 90 - 135 = 315 deg      -> front-right / right / right
#   at tv facing sofa (south, 270): lamp (-2,-2) at 225 -> 315   -> front-right / right / right
SCENE_1 = [cube(0, "sofa", 0, 0), cube(1, "tv", 0, 4), cube(2, "lamp", -2, 2)]
# sofa (0,0), tv (0,3), bin (0.3,-2):
#   at sofa facing tv: bin at atan2(-2, .3) = 278.53 -> 188.53   -> back-right / back / (8.5 from 180: skipped)
#   at sofa facing bin (278.53): tv at 90 -> 171.47              -> (hard: 8.5 from 180: skipped) / back / skipped
#   at tv facing sofa (270): bin (.3,-5) at 273.43 -> 3.43       -> front-left / (3.4 from 0: skipped) / skipped
SCENE_2 = [cube(0, "sofa", 0, 0), cube(1, "tv", 0, 3), cube(2, "bin", 0.3, -2)]
# sofa (0,0), tv (0,3), a long counter x[-2.1,-1.9] y[-1.5,3.5] (centre (-2, 1)):
#   at sofa facing tv: counter centre at 153.43 - 90 = 63.43, but its corners at y=-1.5 are at
#     atan2(-1.5,-2.1) = 215.5 -> 125.5 (another quadrant): 4 of 8 corners stray -> hard skipped;
#     medium/easy: 125.5 and 31 (y=3.5 corners) are still left                   -> left / left
#   at sofa facing counter (153.43): tv at 90 -> 296.57                            -> front-right / right / right
#   at tv facing sofa: centre (-2,-2) at 225 -> 315; corners y=3.5 at ~255 (4 stray quadrants) -> hard skipped,
#     medium/easy right
SCENE_3 = [cube(0, "sofa", 0, 0), cube(1, "tv", 0, 3), floor_box(2, "counter", -2.1, -1.5, -1.9, 3.5, 0.2)]


@pytest.mark.parametrize("objects, hard, medium, easy", [
    (SCENE_1,
     ["front-left", "front-right", "front-right"], ["left", "right", "right"], ["left", "right", "right"]),
    (SCENE_2, [("sofa", "tv", "bin", "back-right"), ("tv", "sofa", "bin", "front-left")],
     [("sofa", "tv", "bin", "back"), ("sofa", "bin", "tv", "back")], []),
    (SCENE_3, [("sofa", "counter", "tv", "front-right")],
     ["left", "right", "right"], ["left", "right", "right"]),
], ids=["clear", "near-boundaries", "large-querying-object"])
def test_object_rel_direction(objects, hard, medium, easy):
    scene = scene_of("dir", objects)
    a, b, c = (o.category for o in objects)
    orders = [(a, b, c), (a, c, b), (b, a, c)]  # the official three orders of a triple

    def expand(expected):  # a bare list of answers means "all three orders kept"
        if expected and isinstance(expected[0], str):
            return [(*order, answer) for order, answer in zip(orders, expected)]
        return expected

    for generator, expected, labels in [
            (V.object_rel_direction_hard, hard, {"front-left", "front-right", "back-left", "back-right"}),
            (V.object_rel_direction_medium, medium, {"left", "right", "back"}),
            (V.object_rel_direction_easy, easy, {"left", "right"})]:
        rows = generator(scene, make_rng(0), max_per_scene=None)
        assert directions(rows) == expand(expected), generator.__name__
        for r in rows:
            check_letters(r)
            assert set(values(r)) == labels


def test_object_rel_direction_question_text_and_distance_filter():
    rows = V.object_rel_direction_hard(scene_of("dir", SCENE_1), make_rng(0), max_per_scene=None)
    assert rows[0].question == (
        "If I am standing by the sofa and facing the tv, is the lamp to my front-left, front-right, back-left, "
        "or back-right?\nThe directions refer to the quadrants of a Cartesian plane (if I am standing at the "
        "origin and facing along the positive y-axis).")
    medium = V.object_rel_direction_medium(scene_of("dir", SCENE_1), make_rng(0), max_per_scene=None)
    assert medium[0].question == (
        "If I am standing by the sofa and facing the tv, is the lamp to my left, right, or back?\n"
        "An object is to my back if I would have to turn at least 135 degrees in order to face it.")
    easy = V.object_rel_direction_easy(scene_of("dir", SCENE_1), make_rng(0), max_per_scene=None)
    assert easy[0].question == ("If I am standing by the sofa and facing the tv, is the lamp to the left or the "
                                "right of the tv?")
    # tv moved to y=6: sofa-tv gap 5.8 m > 5 m, so the whole triple is skipped
    far = [cube(0, "sofa", 0, 0), cube(1, "tv", 0, 6), cube(2, "lamp", -2, 2)]
    assert V.object_rel_direction_hard(scene_of("far", far), make_rng(0), max_per_scene=None) == []
    # a second lamp makes "lamp" ambiguous: only two unique objects remain, no triple
    dup = SCENE_1 + [cube(3, "lamp", 3, 3)]
    assert V.object_rel_direction_hard(scene_of("dup", dup), make_rng(0), max_per_scene=None) == []
    # capped: at most max_per_scene rows
    assert len(V.object_rel_direction_easy(scene_of("dir", SCENE_1), make_rng(0), max_per_scene=2)) == 2


# --- appearance order ------------------------------------------------------------------------
def appearance_scene(fps=1.0, dataset="custom"):
    """First seen at frame (= second at 1 fps): bed 0, table 10, sofa 20, chair 30, lamp 31."""
    objects = [cube(0, "bed", 0, 0), cube(1, "table", 1, 0), cube(2, "sofa", 2, 0), cube(3, "chair", 3, 0),
               cube(4, "chair", 4, 0), cube(5, "lamp", 5, 0)]
    seen = {0: [0], 10: [1, 0], 20: [2], 30: [4], 31: [5, 3], 40: [1]}
    frames = [FrameAnnotation(fid, np.eye(4), visible={i: None for i in ids}) for fid, ids in seen.items()]
    return scene_of("order", objects, frames, fps=fps, dataset=dataset)


def test_obj_appearance_order():
    rows = V.obj_appearance_order(appearance_scene(), make_rng(0), max_per_scene=None)
    # 5 categories -> 5 sets of four; chair (30 s) and lamp (31 s) are only 1 s apart, so the
    # sets holding both are skipped
    assert sorted(r.ground_truth for r in rows) == ["bed, table, sofa, chair", "bed, table, sofa, lamp"]
    for r in rows:
        check_letters(r)
        names = r.ground_truth.split(", ")
        assert sorted(r.extra["categories_involved"]) == sorted(names)
        assert len(set(values(r))) == 4 and all(sorted(v.split(", ")) == sorted(names) for v in values(r))
        mentioned = re.fullmatch(r"What will be the first-time appearance order of the following categories in "
                                 r"the video: (\w+), (\w+), (\w+), (\w+)\?", r.question)
        assert mentioned and sorted(mentioned.groups()) == sorted(names)
    assert len(V.obj_appearance_order(appearance_scene(), make_rng(0), max_per_scene=1)) == 1
    # at the official ScanNet rate (24 fps) the seconds are 0, 0, 1, 1, 1: no set is 1 s apart
    assert V.first_appearance_seconds(appearance_scene(), 24.0) == {"bed": 0, "table": 0, "sofa": 1, "chair": 1,
                                                                     "lamp": 1}
    assert V.obj_appearance_order(appearance_scene(fps=None, dataset="scannet"), make_rng(0)) == []
    # no fps and an unknown dataset: nothing can be timed
    assert V.obj_appearance_order(appearance_scene(fps=None), make_rng(0)) == []
    assert V.obj_appearance_order(room_scene(), make_rng(0)) == []  # no frames


# --- every type: determinism, balance, row shape ---------------------------------------------
def test_generators_are_deterministic_for_a_seed():
    scenes = [room_scene(), scene_of("dir", SCENE_1), appearance_scene()]
    for qtype in VSI_TYPES:
        generator = get_generator(qtype)
        first = [r.to_dict() for s in scenes for r in generator(s, make_rng(5, qtype, s.scene_name))]
        again = [r.to_dict() for s in scenes for r in generator(s, make_rng(5, qtype, s.scene_name))]
        assert first == again, qtype
        assert all(r["question_type"] == qtype for r in first)


def test_answer_letters_balance_across_calls():
    balancer = AnswerBalancer()
    rows = []
    for seed in range(4):
        rows += V.object_size_estimation(room_scene(), make_rng(seed), max_per_scene=None, balancer=balancer)
    assert len(rows) == 16 and balancer.counts == {"A": 4, "B": 4, "C": 4, "D": 4}


def test_benchmark_row_shape():
    count = V.object_counting(room_scene(), make_rng(0))[0].to_dict()
    published = V.to_benchmark_dict(count)
    assert published["options"] is None and published["ground_truth"] == 2 and "mc_answer" not in published
    rel = V.object_rel_distance(room_scene(), make_rng(0), max_per_scene=None)[0].to_dict()
    published = V.to_benchmark_dict(rel)
    assert published["ground_truth"] == rel["mc_answer"] and published["answer"] == "chair"
    assert published["options"] == rel["options"]
