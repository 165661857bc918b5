"""Each difference between the official VLM-3R generators and our exact variant, pinned on a small
hand-built scene whose expected answers are worked out here (issue 15's table, row by row).

``compat="official"`` (the default) reproduces the official generators; ``compat="exact"`` is ours.
Boxes are axis-aligned, so the official grid of a box is easy to follow by hand: per axis
``ceil(extent / 0.05)`` points from -extent/2 to +extent/2 (a 1 m side: 20 points, 1/19 m apart),
the inner half hollowed out, then cropped to the box with ``|(c + u) - c| <= extent / 2`` in floats.
"""
import math

import numpy as np

from vlm3r_ros.data.qa import vsibench as V
from vlm3r_ros.data.qa import vstibench as T
from vlm3r_ros.data.qa.common import make_rng, official_grid_points, sampled_box_distance
from vlm3r_ros.data.scene_graph import FrameAnnotation, ObjectInstance, OrientedBox, SceneGraph


def box(iid, category, x0, y0, x1, y1, height=1.0):
    return ObjectInstance(iid, category, OrientedBox.axis_aligned([x0, y0, 0.0], [x1, y1, height]))


def unit_box(iid, category, centre_x):
    """A 1 m cube given as the metadata gives it (centroid + axesLengths), floor at z = 0."""
    return ObjectInstance(iid, category, OrientedBox.create([centre_x, 0.5, 0.5], [1.0, 1.0, 1.0]))


def cube(iid, category, x, y, side=0.2):
    return box(iid, category, x - side / 2, y - side / 2, x + side / 2, y + side / 2, side)


def scene(objects, frames=(), **kw):
    return SceneGraph("s", list(objects), list(frames), room_size=20.0, dataset="scannet",
                      video_path="s.mp4", **kw)


def pose(position, yaw_deg=0.0):
    """Level OpenCV camera at ``position`` looking along world yaw (0: +x)."""
    yaw = math.radians(yaw_deg)
    out = np.eye(4)
    out[:3, :3] = np.stack([[math.sin(yaw), -math.cos(yaw), 0.0], [0.0, 0.0, -1.0],
                            [math.cos(yaw), math.sin(yaw), 0.0]], axis=1)
    out[:3, 3] = position
    return out


# --- object_abs_distance: grid samples, not the exact gap --------------------------------------------
# A: x [0.1, 1.1] (centre 0.6), B: x [1.8, 2.8] (centre 2.3), both y, z [0, 1]. Exact gap 0.7 m.
# A's +x face: (0.6 + 0.5) - 0.6 is 0.5000000000000001 in floats, over 0.5: the crop drops it, so A's
# samples end one step (1/19 m) inside, at x = 1.1 - 1/19. B's -x face: (2.3 - 0.5) - 2.3 = -0.5, kept.
# Official distance 1.8 - (1.1 - 1/19) = 0.7526 -> 0.8.
A_FAR = unit_box(0, "sofa", 0.6)
B_FAR = unit_box(1, "tv", 2.3)


def test_grid_sampling_by_hand():
    assert (0.6 + 0.5) - 0.6 > 0.5 and abs((2.3 - 0.5) - 2.3) <= 0.5  # the float facts used below
    points = official_grid_points(A_FAR.box)
    assert np.isclose(points[:, 0].max(), 1.1 - 1 / 19) and np.isclose(points[:, 0].min(), 0.1)
    # hollow: no point with every |coordinate - centre| <= 0.25 (the inner box)
    assert not np.any(np.all(np.abs(points - [0.6, 0.5, 0.5]) <= 0.25, axis=1))
    # a side under 5 cm gets one value, -extent/2 (np.linspace(a, b, 1) == [a])
    thin = official_grid_points(OrientedBox.axis_aligned([0, 0, 0], [1, 1, 0.02]))
    assert np.allclose(thin[:, 2], 0.0)
    assert math.isclose(sampled_box_distance(A_FAR.box, B_FAR.box), 1.8 - (1.1 - 1 / 19), abs_tol=1e-9)
    # a flat box (a side of 0, where the official recursion never ends) and a point-like one still measure
    flat = OrientedBox.create([3.0, 0.5, 0.5], [0.0, 1.0, 1.0])
    assert np.allclose(official_grid_points(flat)[:, 0], 3.0)
    assert np.allclose(official_grid_points(OrientedBox.create([3.0, 0.5, 0.5], [0.0, 0.0, 0.0])), [[3.0, 0.5, 0.5]])


def test_object_abs_distance_official_vs_exact():
    expected = {"official": 0.8, "exact": 0.7}  # by hand, above
    for compat, answer in expected.items():
        rows = V.object_abs_distance(scene([A_FAR, B_FAR]), make_rng(0), max_per_scene=None, compat=compat)
        assert [(r.question, r.ground_truth) for r in rows] == [
            ("Measuring from the closest point of each object, what is the direct distance between the tv "
             "and the sofa (in meters)?", answer)], compat


# --- object_rel_direction_easy: the official v3 sectors ---------------------------------------------------
# At the sofa (0, 0) facing the tv (0, 3) (world +y); a small cube at relative angle a (counter-clockwise,
# 0 = ahead) 2 m away: world angle 90 + a.
def at_angle(iid, category, relative_deg, radius=2.0):
    world = math.radians(90.0 + relative_deg)
    return cube(iid, category, radius * math.cos(world), radius * math.sin(world))


def test_object_rel_direction_easy_official_sectors():
    objects = [cube(0, "sofa", 0, 0), cube(1, "tv", 0, 3),
               at_angle(2, "lamp", 150), at_angle(3, "bin", 100), at_angle(4, "plant", 200)]
    # official v3: [0,135) left, [135,225) not asked, [225,360) right; exact: [0,180) left, [180,360) right
    expected = {"official": {"bin": "left"},
                "exact": {"lamp": "left", "bin": "left", "plant": "right"}}
    for compat, answers in expected.items():
        rows = V.object_rel_direction_easy(scene(objects), make_rng(0), max_per_scene=None, compat=compat)
        got = {r.extra["category, querying object"]: r.ground_truth for r in rows
               if (r.extra["category, positioning object"], r.extra["category, orienting object"]) == ("sofa", "tv")}
        assert got == answers, compat


# --- object_rel_distance: the 0.30 m gap is never used officially ------------------------------------------
def test_object_rel_distance_large_room_gap():
    # primary tv x[0,1]; choices at gaps 1.0, 1.2, 1.8, 2.5 m (consecutive differences 0.2, 0.6, 0.7 m)
    objects = [box(0, "tv", 0, 0, 1, 1), box(1, "chair", 2.0, 0, 3, 1), box(2, "desk", -2.2, 0, -1.2, 1),
               box(3, "bin", 0, 2.8, 1, 3.8), box(4, "plant", 0, -3.5, 1, -2.5)]
    big = SceneGraph("s", objects, [], room_size=50.0, dataset="scannet", video_path="s.mp4")
    # 0.2 m apart: kept with the 0.15 m gap (official), dropped with 0.30 m in a room over 40 m^2 (exact)
    official = [r for r in V.object_rel_distance(big, make_rng(0), max_per_scene=None) if r.extra["category"] == "tv"]
    exact = [r for r in V.object_rel_distance(big, make_rng(0), max_per_scene=None, compat="exact")
             if r.extra["category"] == "tv"]
    assert [r.ground_truth for r in official] == ["chair"] and exact == []


# --- object_rel_direction_medium/hard: the [0.30, 5.0] m filter on sampled distances ------------------------
def test_direction_distance_filter_uses_sampled_distances():
    # sofa x [0.1, 1.1] (centre 0.6: its +x face is dropped, as above); tv x [1.39, 2.39]: exact gap 0.29 m
    # (< 0.30: the triple is skipped), sampled 1.39 - (1.1 - 1/19) = 0.3426 m (kept).
    assert abs((1.89 - 0.5) - 1.89) <= 0.5
    # Officially asked, by hand (centres sofa (0.6, 0.5), tv (1.89, 0.5), lamp (1.2, 3.0)):
    #   at sofa facing tv (+x): lamp at atan2(2.5, 0.6) = 76.5 deg      -> left / front-left
    #   at sofa facing lamp (76.5): tv centre at -76.5 -> 283.5 deg       -> right; hard: the 1 m tv's corners
    #     at world -32.3 and -15.6 deg (251.2, 267.9 relative: back-right) are 4 strays -> skipped
    #   at tv facing sofa (180): lamp at atan2(2.5, -0.69) = 105.4 -> 285.4 -> right / front-right
    objects = [unit_box(0, "sofa", 0.6), unit_box(1, "tv", 1.89), cube(2, "lamp", 1.2, 3.0)]
    expected = {V.object_rel_direction_medium: [("sofa", "tv", "lamp", "left"), ("sofa", "lamp", "tv", "right"),
                                                ("tv", "sofa", "lamp", "right")],
                V.object_rel_direction_hard: [("sofa", "tv", "lamp", "front-left"),
                                              ("tv", "sofa", "lamp", "front-right")]}
    for generator, answers in expected.items():
        assert generator(scene(objects), make_rng(0), max_per_scene=None, compat="exact") == []
        rows = generator(scene(objects), make_rng(0), max_per_scene=None)
        assert [(r.extra["category, positioning object"], r.extra["category, orienting object"],
                 r.extra["category, querying object"], r.ground_truth) for r in rows] == answers, generator.__name__


# --- camera_movement_direction: v1, v2 and v3, each with its own rule ---------------------------------------
def test_camera_movement_direction_writes_the_three_official_versions():
    # the camera looks along +x and moves 0.8 m forward per frame: pairs (1,2) 0.8, (1,3) 1.6, (2,3) 0.8 m
    frames = [FrameAnnotation(10 * k, pose([0.8 * k, 0.0, 1.5])) for k in range(3)]
    rows = T.camera_movement_direction(scene([], frames), make_rng(0), max_per_scene=None)
    # V1 (4 options) needs more than 1.0 m: (1,3) only; V2 (3) and V3 (2) need 0.5 m: all three pairs
    assert [(len(r.options), r.frame_indices, r.ground_truth) for r in rows] == [
        (4, [0, 20], "Forward"),
        (3, [0, 10], "Forward"), (3, [0, 20], "Forward"), (3, [10, 20], "Forward"),
        (2, [0, 10], "Forward"), (2, [0, 20], "Forward"), (2, [10, 20], "Forward")]
    v1 = rows[0].to_dict()
    assert v1["question_template"] == "VSTI_CAMERA_MOVEMENT_DIRECTION_TEMPLATE_V1"
    assert (v1["start_frame_description"], v1["end_frame_description"]) == ("frame 1", "frame 3 of 3")
    a, b, c, d = (o[3:] for o in v1["options"])
    assert v1["question"] == ("During the sequence between frame 1 and frame 3 of 3, what was the primary "
                              "consistent direction of the camera's movement relative to its orientation at the "
                              f"start? The options are {a}, {b}, {c}, and {d}.")
    for row, version in zip(rows[1:], ["V2"] * 3 + ["V3"] * 3):
        out = row.to_dict()
        assert out["question_template"] == f"VSTI_CAMERA_MOVEMENT_DIRECTION_TEMPLATE_{version}"
        assert "start_frame_description" not in out  # only V1 writes the two description fields
        assert out["options"]["ABC".index(out["mc_answer"])] == f"{out['mc_answer']}. Forward"
    # exact: one 0.5 m rule, one variant per pair (3 rows)
    assert len(T.camera_movement_direction(scene([], frames), make_rng(0), max_per_scene=None, compat="exact")) == 3


# --- VSTI numeric rows: bare-number options ------------------------------------------------------------------
def test_vsti_numeric_rows_have_bare_number_options():
    frames = [FrameAnnotation(10 * k, pose([0.5 * k, 0.0, 1.5])) for k in range(7)]
    for compat in ("official", "exact"):
        rows = T.camera_displacement(scene([], frames), make_rng(0), compat=compat)
        # pairs 5..30 positions apart: (1,6) 2.5 m, (1,7) 3.0 m, (2,7) 2.5 m, as worked out by hand
        assert sorted(r.ground_truth for r in rows) == [2.5, 2.5, 3.0]
        for r in rows:
            picked = r.options["ABCD".index(r.mc_answer)]
            if compat == "official":
                assert all(isinstance(o, float) for o in r.options) and picked == r.ground_truth
            else:
                assert picked == f"{r.mc_answer}. {r.ground_truth}"


# --- obj_obj_relative_pos: which frames are counted ----------------------------------------------------------
def test_obj_obj_frame_numbering_counts_frames_with_boxes():
    # frame metadata: f0 pose, no boxes; f1 pose + both boxes; f2 no pose; f3 pose, no boxes.
    # table x [1, 1.5] and chair x [3, 3.5] ahead of a camera at the origin looking along +x: table Near.
    # official: numbered among frames with a pose AND boxes ([f1]), N = every listed frame (4): "frame 1 of 4";
    # exact: numbered among frames with a pose ([f0, f1, f3]): "frame 2 of 3".
    meta = {"dataset": "scannet", "video_path": "s.mp4", "room_size": 20.0,
            "object_bboxes": {"table": [{"instance_id": 0, **OrientedBox.axis_aligned([1, -0.5, 1], [1.5, 0.5, 2])
                                         .to_metadata()}],
                              "chair": [{"instance_id": 1, **OrientedBox.axis_aligned([3, -0.5, 1], [3.5, 0.5, 2])
                                         .to_metadata()}]}}
    cam = pose([0.0, 0.0, 1.5]).tolist()
    boxes = [{"instance_id": 0, "bbox_2d": [0, 0, 10, 10]}, {"instance_id": 1, "bbox_2d": [20, 0, 30, 10]}]
    frames = {"frames": [{"frame_id": 0, "camera_pose_camera_to_world": cam, "bboxes_2d": []},
                         {"frame_id": 10, "camera_pose_camera_to_world": cam, "bboxes_2d": boxes},
                         {"frame_id": 20, "bboxes_2d": boxes},
                         {"frame_id": 30, "camera_pose_camera_to_world": cam, "bboxes_2d": []}]}
    graph = SceneGraph.from_metadata("s", meta, frames)
    for compat, where in (("official", "frame 1 of 4"), ("exact", "frame 2 of 3")):
        rows = T.obj_obj_relative_pos_nf(graph, make_rng(0), max_per_scene=None, compat=compat)
        assert [(r.question, r.ground_truth, r.frame_indices) for r in rows] == [
            (f"In {where}, relative to the camera, is table [Near/Far] compared to chair?", "Near", [10])], compat


# --- rows: no frame_indices in VSI rows ------------------------------------------------------------------------
def test_vsi_rows_have_no_frame_indices_field():
    rows = V.object_abs_distance(scene([A_FAR, B_FAR]), make_rng(0), max_per_scene=None)
    assert "frame_indices" not in rows[0].to_dict()
    frames = [FrameAnnotation(10 * k, pose([0.5 * k, 0.0, 1.5])) for k in range(7)]
    assert T.camera_displacement(scene([], frames), make_rng(0))[0].to_dict()["frame_indices"] == [0, 50]


def test_camera_movement_numbers_frames_among_all_listed_frames():
    # f0 at x = 0, f1 listed without a pose, f2 at x = 2 (2 m forward): V1 asks (f0, f2).
    # official: the movement generators number frames among ALL listed frames: "frame 1 and frame 3 of 3";
    # exact: among the frames with a pose: "frame 1 and frame 2 of 2".
    meta = {"dataset": "scannet", "video_path": "s.mp4", "object_bboxes": {}}
    frames = {"frames": [{"frame_id": 0, "camera_pose_camera_to_world": pose([0.0, 0.0, 1.5]).tolist()},
                         {"frame_id": 10},
                         {"frame_id": 20, "camera_pose_camera_to_world": pose([2.0, 0.0, 1.5]).tolist()}]}
    graph = SceneGraph.from_metadata("s", meta, frames)
    official = T.camera_movement_direction(graph, make_rng(0), max_per_scene=None, num_choices=4)
    assert [(r.question[:54], r.ground_truth) for r in official] == [
        ("During the sequence between frame 1 and frame 3 of 3, ", "Forward")]
    exact = T.camera_movement_direction(graph, make_rng(0), max_per_scene=None, num_choices=4, compat="exact")
    assert [(r.question[:54], r.ground_truth) for r in exact] == [
        ("During the sequence between frame 1 and frame 2 of 2, ", "Forward")]


def test_camera_obj_abs_dist_uses_the_grid_samples():
    # the 1 m cube A_FAR (x [0.1, 1.1], +x face dropped by the crop, above); the camera at (3.1, 0.5, 0.5)
    # looking along -x. Exact: 3.1 - 1.1 = 2.0 m. Official: the nearest samples are at x = 1.1 - 1/19 and
    # y, z = 0.5 +- 1/38 (20 grid values, none at the centre): sqrt(2.0526^2 + 2 (1/38)^2) = 2.0530 -> 2.1.
    # The camera centre is the pose's translation column (VLM-3R's fix), in both modes.
    frames = [FrameAnnotation(0, pose([3.1, 0.5, 0.5], 180.0), visible={0: None})]
    by_hand = math.hypot(2.0 + 1 / 19, math.hypot(1 / 38, 1 / 38))
    assert round(by_hand, 1) == 2.1
    for compat, answer in (("official", 2.1), ("exact", 2.0)):
        rows = T.camera_obj_abs_dist(scene([A_FAR], frames), make_rng(0), compat=compat)
        assert [(r.question, r.ground_truth) for r in rows] == [
            ("What is the approximate distance (in meters) between the camera (or the person filming) and the "
             "nearest point of the sofa in frame 1 of 1?", answer)], compat
        picked = rows[0].options["ABCD".index(rows[0].mc_answer)]
        assert picked == (answer if compat == "official" else f"{rows[0].mc_answer}. {answer}")
