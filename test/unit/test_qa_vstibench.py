"""VSTI-Bench generators on small synthetic scenes whose answers are worked out by hand.

Every scene is z-up and metric. ``_pose`` builds a level OpenCV camera at a position with a
heading (yaw, degrees from world +x): at yaw 0 the camera looks along +x, its right (+x_cam) is
world -y and its down (+y_cam) is world -z. Frame ids are multiples of 10, so frame_indices
(video ids) and "frame k of N" (positions) can be told apart.
"""

import math

import numpy as np
import pytest

from vlm3r_ros.data.qa import vstibench
from vlm3r_ros.data.qa.common import AnswerBalancer
from vlm3r_ros.data.qa.registry import get_generator, get_spec, question_types
from vlm3r_ros.data.scene_graph import FrameAnnotation, ObjectInstance, OrientedBox, SceneGraph

DIRECTIONS = {"Forward", "Backward", "Left", "Right"}


def _pose(position, yaw_deg=0.0) -> np.ndarray:
    yaw = math.radians(yaw_deg)
    forward = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)  # columns: camera axes in the world
    pose[:3, 3] = position
    return pose


def _scene(objects, frames, name="scene0000_00") -> SceneGraph:
    """objects: (id, category, min, max); frames: (position, yaw, visible ids)."""
    return SceneGraph(
        scene_name=name,
        objects=[ObjectInstance(i, c, OrientedBox.axis_aligned(lo, hi)) for i, c, lo, hi in objects],
        frames=[FrameAnnotation(10 * k, _pose(p, yaw), visible={i: None for i in vis})
                for k, (p, yaw, vis) in enumerate(frames)],
        dataset="synthetic",
        video_path=f"videos/{name}.mp4",
    )


def _rng(seed=0):
    return np.random.default_rng(seed)


def _option_values(row) -> list[str]:
    return [opt.split(". ", 1)[1] for opt in row.options]


def _check_letter(row):
    """The option at mc_answer holds ground_truth; letters run A, B, ..."""
    assert [opt[:3] for opt in row.options] == [f"{c}. " for c in "ABCD"[:len(row.options)]]
    assert _option_values(row)["ABCD".index(row.mc_answer)] == str(row.ground_truth)


# --- scene graph helpers the generators use ---------------------------------------------------
def test_box_distance_is_to_the_closest_point_of_the_solid_box():
    box = OrientedBox.axis_aligned([3, 1, 0], [4, 2, 0.5])
    # closest point (3, 1, 0.5): sqrt(9 + 1 + 1)
    assert box.distance_to([0, 0, 1.5]) == pytest.approx(math.sqrt(11))
    assert box.distance_to([3.5, 1.5, 0.25]) == 0.0  # inside
    assert box.distance_to(np.array([[3.5, 0.0, 0.25], [5.0, 1.5, 0.25]])).tolist() == pytest.approx([1.0, 1.0])
    # a 2 m cube turned 45 degrees about z: its corner is at x = sqrt(2), so 3 - sqrt(2) from (3, 0, 0)
    c = math.sqrt(0.5)
    turned = OrientedBox.create([0, 0, 0], [2, 2, 2], [[c, c, 0], [-c, c, 0], [0, 0, 1]])
    assert turned.distance_to([3, 0, 0]) == pytest.approx(3 - math.sqrt(2))


def test_world_to_camera_uses_the_opencv_axes_of_the_pose():
    frame = FrameAnnotation(0, _pose([1, 2, 3], yaw_deg=90))  # looking along world +y, right is +x
    cam = frame.world_to_camera(np.array([[1, 5, 3], [2, 2, 3], [1, 2, 4]], dtype=float))
    np.testing.assert_allclose(cam, [[0, 0, 3], [1, 0, 0], [0, -1, 0]], atol=1e-12)


# --- camera_displacement ------------------------------------------------------------------------
def test_camera_displacement_asks_pairs_5_to_30_frames_apart():
    # 7 frames, the camera 0.5 m further along +x each frame: pairs (0,5) 2.5 m, (0,6) 3.0 m, (1,6) 2.5 m
    scene = _scene([], [([0.5 * k, 0, 1.5], 0, []) for k in range(7)])
    rows = vstibench.camera_displacement(scene, _rng(), compat="exact")
    assert [(r.question, r.ground_truth, r.frame_indices) for r in rows] == [
        ("Approximately how far (in meters) did the camera move between frame 1 and frame 6 of 7?", 2.5, [0, 50]),
        ("Approximately how far (in meters) did the camera move between frame 1 and frame 7 of 7?", 3.0, [0, 60]),
        ("Approximately how far (in meters) did the camera move between frame 2 and frame 7 of 7?", 2.5, [10, 60]),
    ]
    for row in rows:
        assert row.question_type == "camera_displacement"
        assert row.scene_name == "scene0000_00" and row.video_path == "videos/scene0000_00.mp4"
        _check_letter(row)
        values = [float(v) for v in _option_values(row)]
        eps = math.ceil(row.ground_truth * 0.2 * 10) / 10  # 0.5 for 2.5 m, 0.6 for 3.0 m
        assert all(0.25 * row.ground_truth - 0.05 <= v <= 1.75 * row.ground_truth + 0.05 for v in values)
        assert all(abs(a - b) >= eps - 1e-9 for k, a in enumerate(values) for b in values[k + 1:])


def test_camera_displacement_filters_gap_and_distance():
    # 0.3 m per frame over 40 frames: every gap 5..30 is asked (9 m at most), gap 31 (9.3 m) is not
    rows = vstibench.camera_displacement(_scene([], [([0.3 * k, 0, 1.5], 0, []) for k in range(40)]), _rng(),
                                         max_per_scene=None)
    gaps = [(r.frame_indices[1] - r.frame_indices[0]) // 10 for r in rows]
    assert min(gaps) == 5 and max(gaps) == 30
    assert len(rows) == sum(40 - g for g in range(5, 31))  # 585
    # 0.5 m per frame: gaps above 20 move more than 10 m and are dropped
    rows = vstibench.camera_displacement(_scene([], [([0.5 * k, 0, 1.5], 0, []) for k in range(40)]), _rng(),
                                         max_per_scene=None)
    assert max(r.ground_truth for r in rows) == 10.0
    assert len(rows) == sum(40 - g for g in range(5, 21))  # 440
    # 1 cm per frame (0.3 m at most): under 0.2 m is dropped, and 0.2 or 0.3 m answers never get
    # three distractors eps = 0.1 m apart (in floating point 0.3 - 0.2 < 0.1), as in the official
    # generate_multiple_choice, so nothing is asked
    rows = vstibench.camera_displacement(_scene([], [([0.01 * k, 0, 1.5], 0, []) for k in range(40)]), _rng(),
                                         max_per_scene=None)
    assert rows == []


def test_camera_displacement_cap_is_a_seeded_subset():
    scene = _scene([], [([0.5 * k, 0, 1.5], 0, []) for k in range(12)])
    everything = [r.to_dict() for r in vstibench.camera_displacement(scene, _rng(1), max_per_scene=None)]
    capped = [r.to_dict() for r in vstibench.camera_displacement(scene, _rng(1), max_per_scene=4)]
    again = [r.to_dict() for r in vstibench.camera_displacement(scene, _rng(1), max_per_scene=4)]
    assert len(capped) == 4 and capped == again
    asked = {(r["question"], r["ground_truth"]) for r in everything}
    assert {(r["question"], r["ground_truth"]) for r in capped} <= asked


# --- camera_movement_direction --------------------------------------------------------------
# Frames (position, heading): 0 (0,0) +x; 1 (1,0) +x; 2 (1,-2) +x; 3 (1,-2) -x; 4 (2,-2) -x;
# 5 (2,-2) 1 m higher, -x; 6 (2,-4) -x. Facing +x, right is world -y; facing -x, right is +y.
MOVES = [([0, 0, 1.5], 0), ([1, 0, 1.5], 0), ([1, -2, 1.5], 0), ([1, -2, 1.5], 180),
         ([2, -2, 1.5], 180), ([2, -2, 2.5], 180), ([2, -4, 1.5], 180)]
EXPECTED_DIRECTIONS = {
    (0, 1): "Forward",   # 1 m ahead
    (0, 2): "Right", (0, 3): "Right",  # 2 m right, 1 m ahead
    (0, 4): "Forward",   # 2 m right and 2 m ahead: a tie goes to forward
    (0, 5): "Forward",   # as (0, 4); the 1 m up is ignored
    (0, 6): "Right",     # 4 m right, 2 m ahead
    (1, 2): "Right", (1, 3): "Right", (1, 4): "Right", (1, 5): "Right", (1, 6): "Right",
    # (2, 3): turned on the spot, no move: not asked
    (2, 4): "Forward", (2, 5): "Forward", (2, 6): "Right",
    (3, 4): "Backward", (3, 5): "Backward",  # facing -x, moved 1 m along +x
    (3, 6): "Left",      # 2 m to world -y (its left), 1 m back
    # (4, 5): straight up only: not asked
    (4, 6): "Left", (5, 6): "Left",
}


def test_camera_movement_direction_answers_every_pair_by_hand():
    scene = _scene([], [(p, yaw, []) for p, yaw in MOVES])
    rows = vstibench.camera_movement_direction(scene, _rng(), num_choices=4, max_per_scene=None, compat="exact")
    got = {(r.frame_indices[0] // 10, r.frame_indices[1] // 10): r for r in rows}
    assert {k: r.ground_truth for k, r in got.items()} == EXPECTED_DIRECTIONS
    for (i, j), row in got.items():
        assert row.question_type == "camera_movement_direction"
        assert set(_option_values(row)) == DIRECTIONS
        _check_letter(row)
        a, b, c, d = _option_values(row)
        assert row.question == (
            f"During the sequence between frame {i + 1} and frame {j + 1} of 7, what was the primary consistent "
            f"direction of the camera's movement relative to its orientation at the start? "
            f"The options are {a}, {b}, {c}, and {d}.")
    # the answer letters are balanced: 19 answers over 4 letters
    letters = [r.mc_answer for r in rows]
    assert sorted(letters.count(x) for x in "ABCD") == [4, 5, 5, 5]


def test_camera_movement_direction_option_counts():
    scene = _scene([], [(p, yaw, []) for p, yaw in MOVES])
    two = vstibench.camera_movement_direction(scene, _rng(), num_choices=2, max_per_scene=None, compat="exact")
    for row in two:
        a, b = _option_values(row)
        assert row.ground_truth in (a, b) and {a, b} <= DIRECTIONS and a != b
        assert row.question.endswith(f"The options are {a} and {b}.")
        _check_letter(row)
    three = vstibench.camera_movement_direction(scene, _rng(), num_choices=3, max_per_scene=None, compat="exact")
    assert all(len(r.options) == 3 and r.question.endswith(f", and {_option_values(r)[2]}.") for r in three)
    # mixed (the default): 4, 3 and 2 options in turn, as the official V1, V2 and V3 runs
    mixed = vstibench.camera_movement_direction(scene, _rng(3), max_per_scene=None, compat="exact")
    sizes = [len(r.options) for r in mixed]
    assert sorted(sizes.count(k) for k in (2, 3, 4)) == [6, 6, 7]  # 19 questions
    assert len(set(sizes[:3])) == 3 and sizes[3:] == sizes[:16]
    again = vstibench.camera_movement_direction(scene, _rng(3), max_per_scene=None, compat="exact")
    assert [r.to_dict() for r in mixed] == [r.to_dict() for r in again]
    default = vstibench.camera_movement_direction(scene, _rng(), compat="exact")  # 5 per version, as num_subsample
    assert sorted(len(r.options) for r in default) == [2] * 5 + [3] * 5 + [4] * 5
    three_rows = vstibench.camera_movement_direction(scene, _rng(), max_per_scene=3)
    assert sorted(len(r.options) for r in three_rows) == [2, 3, 4]  # the official val run: 1 per version
    with pytest.raises(ValueError, match="num_choices must be 2, 3, 4"):
        vstibench.camera_movement_direction(scene, _rng(), num_choices=5)


# --- camera_obj_abs_dist ------------------------------------------------------------------------
def _abs_dist_scene():
    objects = [
        (1, "chair", [2, -0.2, 0], [2.5, 0.2, 1.6]),    # closest point (2, 0, 1.5): 2.0 m
        (2, "shelf", [3, 1, 0], [4, 2, 0.5]),           # closest (3, 1, 0.5): sqrt(11) = 3.32 m
        (3, "cup", [1, -0.1, 0.7], [1.1, 0.1, 0.8]),    # closest (1, 0, 0.8): sqrt(1.49) = 1.22 m
        (4, "cup", [2, 1, 0.7], [2.1, 1.1, 0.8]),       # a second cup: "the cup" is ambiguous in frame 1
        (5, "lamp", [12, 0, 0], [12.5, 0.5, 2]),        # 12 m: beyond 10 m
        (6, "sofa", [0.1, -0.5, 0], [1, 0.5, 1.4]),     # 0.14 m: under 0.2 m
    ]
    frames = [([0, 0, 1.5], 0, [1, 2, 3, 4, 5, 6]), ([0, 0, 1.5], 30, [3, 1])]
    return _scene(objects, frames)


def test_camera_obj_abs_dist_by_hand():
    rows = vstibench.camera_obj_abs_dist(_abs_dist_scene(), _rng(), compat="exact")
    template = ("What is the approximate distance (in meters) between the camera (or the person filming) "
                "and the nearest point of the {} in frame {} of 2?")
    assert [(r.question, r.ground_truth, r.frame_indices) for r in rows] == [
        (template.format("chair", 1), 2.0, [0]),
        (template.format("shelf", 1), 3.3, [0]),
        (template.format("cup", 2), 1.2, [10]),   # only one cup is visible in frame 2
        (template.format("chair", 2), 2.0, [10]),  # the camera turned, the distance did not change
    ]
    for row in rows:
        assert row.question_type == "camera_obj_abs_dist" and len(row.options) == 4
        _check_letter(row)


def test_numeric_letters_share_a_balancer_across_scenes():
    balancer = AnswerBalancer()
    scene = _abs_dist_scene()
    rows = [r for seed in range(3) for r in vstibench.camera_obj_abs_dist(scene, _rng(seed), balancer=balancer)]
    assert sorted(balancer.counts.values()) == [3, 3, 3, 3]
    assert sorted(r.mc_answer for r in rows) == sorted("ABCD" * 3)


# --- camera_obj_rel_dist_v1/v2/v3 -----------------------------------------------------------
def _in_front(d):
    """A 0.4 m deep box straight ahead of a camera at (0, 0, 1.5) looking along +x: d m away."""
    return [d, -0.2, 1.0], [d + 0.4, 0.2, 2.0]


def _rel_dist_scene():
    objects = [
        (1, "toy", *_in_front(0.3)),    # under 0.5 m: never offered
        (2, "chair", *_in_front(1.0)),
        (3, "desk", *_in_front(1.1)),   # 0.1 m from the chair: never next to it in the options
        (4, "bed", *_in_front(2.0)),
        (5, "sofa", *_in_front(3.0)),
        (6, "tv", *_in_front(4.0)),
        (7, "chair", *_in_front(5.0)),  # a second chair
    ]
    frames = [
        ([0, 0, 1.5], 0, [1, 2, 3, 4, 5, 6]),  # chair closest; bed, sofa, tv the only distractors
        ([0, 0, 1.5], 0, [3, 2, 4]),           # chair, desk, bed: 2 usable options
        ([0, 0, 1.5], 0, [2, 7, 4, 5]),        # two chairs: only bed and sofa
    ]
    return _scene(objects, frames)


def _rel_dist_check(row, frame_k):
    values = _option_values(row)
    _check_letter(row)
    assert row.question == ("Measuring from the closest point of each object, which of these objects "
                            f"({', '.join(values)}) is the closest to the camera in frame {frame_k} of 3?")
    return values


def test_camera_obj_rel_dist_v1_four_options():
    rows = vstibench.camera_obj_rel_dist_v1(_rel_dist_scene(), _rng())
    assert len(rows) == 1
    (row,) = rows
    assert row.question_type == "camera_obj_rel_dist_v1" and row.frame_indices == [0]
    assert row.ground_truth == "chair"
    assert set(_rel_dist_check(row, 1)) == {"chair", "bed", "sofa", "tv"}


def test_camera_obj_rel_dist_v2_three_options():
    rows = vstibench.camera_obj_rel_dist_v2(_rel_dist_scene(), _rng())
    assert [(r.question_type, r.frame_indices, r.ground_truth) for r in rows] == [
        ("camera_obj_rel_dist_v2", [0], "chair")]
    values = _rel_dist_check(rows[0], 1)
    assert len(values) == 3 and "chair" in values and set(values) <= {"chair", "bed", "sofa", "tv"}


def test_camera_obj_rel_dist_v3_two_options():
    rows = vstibench.camera_obj_rel_dist_v3(_rel_dist_scene(), _rng())
    assert [(r.frame_indices, r.ground_truth) for r in rows] == [([0], "chair"), ([10], "chair"), ([20], "bed")]
    assert set(_rel_dist_check(rows[0], 1)) - {"chair"} <= {"bed", "sofa", "tv"}
    assert set(_rel_dist_check(rows[1], 2)) == {"chair", "bed"}
    assert set(_rel_dist_check(rows[2], 3)) == {"bed", "sofa"}
    assert all(len(r.options) == 2 for r in rows)


def test_camera_obj_rel_dist_distractors_vary_with_the_seed():
    picked = {frozenset(_option_values(vstibench.camera_obj_rel_dist_v3(_rel_dist_scene(), _rng(s))[0]))
              for s in range(30)}
    assert picked == {frozenset({"chair", d}) for d in ("bed", "sofa", "tv")}


# --- obj_obj_relative_pos_nf/lr/ud ----------------------------------------------------------
def _relative_position_scene():
    # camera at (0, 0, 1.5) looking along +x. In its frame (x right, y down, z forward):
    #   table x [0, 1],       y [0.7, 1.5],   z [3, 4]
    #   chair x [-1, -0.5],   y [0.5, 1.5],   z [1.5, 2]
    #   lamp  x [0.4, 0.6],   y [-0.9, -0.5], z [3.2, 3.4]
    objects = [
        (1, "table", [3, -1, 0], [4, 0, 0.8]),
        (2, "chair", [1.5, 0.5, 0], [2, 1, 1]),
        (3, "lamp", [3.2, -0.6, 2.0], [3.4, -0.4, 2.4]),
        (4, "cup", [2.5, -3, 0], [2.6, -2.9, 0.1]),
        (5, "cup", [5, 2, 0], [5.1, 2.1, 0.1]),   # two cups: neither is asked about
    ]
    frames = [([0, 0, 1.5], 0, [1, 2, 3, 4, 5]), ([0, 0, 1.5], 0, [3, 1])]
    return _scene(objects, frames)


@pytest.mark.parametrize("generator, expected", [
    # (table, chair), (table, lamp), (chair, lamp) in frame 1; (lamp, table) in frame 2
    (vstibench.obj_obj_relative_pos_nf, [
        ("In frame 1 of 2, relative to the camera, is table [Near/Far] compared to chair?", "Far", [0]),
        ("In frame 1 of 2, relative to the camera, is chair [Near/Far] compared to lamp?", "Near", [0]),
    ]),  # table and lamp overlap in depth
    (vstibench.obj_obj_relative_pos_lr, [
        ("In frame 1 of 2, relative to chair, is table to the [Left/Right]?", "Right", [0]),
        ("In frame 1 of 2, relative to lamp, is chair to the [Left/Right]?", "Left", [0]),
    ]),  # the lamp stands over the table
    (vstibench.obj_obj_relative_pos_ud, [
        ("In frame 1 of 2, relative to lamp, is table to the [Up/Down]?", "Down", [0]),
        ("In frame 1 of 2, relative to lamp, is chair to the [Up/Down]?", "Down", [0]),
        ("In frame 2 of 2, relative to table, is lamp to the [Up/Down]?", "Up", [10]),
    ]),  # table and chair overlap in height
])
def test_obj_obj_relative_position_by_hand(generator, expected):
    rows = generator(_relative_position_scene(), _rng())
    assert [(r.question, r.ground_truth, r.frame_indices) for r in rows] == expected
    words = {"Near", "Far"} if "nf" in generator.__name__ else (
        {"Left", "Right"} if "lr" in generator.__name__ else {"Up", "Down"})
    for row in rows:
        assert row.question_type == generator.__name__
        assert set(_option_values(row)) == words
        _check_letter(row)


def test_relative_position_needs_more_than_the_gap():
    # boxes 0.15 m apart along the camera's z: not asked; 0.2 m apart: asked
    for gap, count in ((0.15, 0), (0.2, 1)):
        scene = _scene([(1, "box", [1, -0.2, 1], [1.5, 0.2, 2]), (2, "bin", [1.5 + gap, -0.2, 1], [2, 0.2, 2])],
                       [([0, 0, 1.5], 0, [1, 2])])
        assert len(vstibench.obj_obj_relative_pos_nf(scene, _rng())) == count


# --- the registry and the rows --------------------------------------------------------------------
VSTI_TYPES = ["camera_displacement", "camera_movement_direction", "camera_obj_abs_dist",
              "camera_obj_rel_dist_v1", "camera_obj_rel_dist_v2", "camera_obj_rel_dist_v3",
              "obj_obj_relative_pos_nf", "obj_obj_relative_pos_lr", "obj_obj_relative_pos_ud"]


def test_registry_lists_every_vsti_type():
    assert question_types("vstibench") == VSTI_TYPES
    for question_type in VSTI_TYPES:
        assert get_generator(question_type) is getattr(vstibench, question_type)


def test_every_type_takes_the_cli_options_and_writes_its_type():
    scenes = [_abs_dist_scene(), _rel_dist_scene(), _relative_position_scene(),
              _scene([], [(p, yaw, []) for p, yaw in MOVES])]
    for question_type in VSTI_TYPES:
        spec = get_spec(question_type)
        balancer = AnswerBalancer()  # as vlm3r-gen-qa calls them: one balancer per type
        rows = [r for s in scenes
                for r in spec.load()(s, _rng(), max_per_scene=spec.max_per_scene, balancer=balancer)]
        assert rows, question_type
        assert {r.question_type for r in rows} == {question_type}
        assert balancer.placed() == len(rows)


def test_rows_are_the_benchmark_json():
    row = vstibench.camera_obj_abs_dist(_abs_dist_scene(), _rng())[0].to_dict()
    assert list(row)[:10] == ["id", "dataset", "scene_name", "video_path", "frame_indices", "question_type",
                              "question", "options", "ground_truth", "mc_answer"]
    assert row["dataset"] == "synthetic" and row["frame_indices"] == [0] and row["ground_truth"] == 2.0
