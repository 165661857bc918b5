"""The backend-neutral simulation core: camera, trajectories, scenes and their files.

No rendering here (test_sim_pybullet.py renders): these check the geometry the core promises
(OpenCV axes, exact intrinsics arithmetic, cameras in free space moving like a person or a
robot), the generated rooms (valid, deterministic) and the file formats (round trips, clear
errors).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vlm3r_ros.data.scene_graph import ObjectInstance, OrientedBox
from vlm3r_ros.sim.core import (Appearance, Intrinsics, Room, SimError, SimScene, Trajectory, box_yaw, handheld_walk,
                                look_at, robot_patrol, scan_turn, yaw_axes)
from vlm3r_ros.sim.factory import make_simulation
from vlm3r_ros.sim.procedural import KINDS, generate_scene
from vlm3r_ros.sim.shapes import SHAPES, natural_proportions


# ------------------------------------------------------------------------------ camera
def test_intrinsics_from_hfov_and_matrix():
    intr = Intrinsics.from_hfov(640, 480, 60.0)
    assert intr.fx == intr.fy == pytest.approx(320 / math.tan(math.radians(30)))
    assert (intr.cx, intr.cy) == (319.5, 239.5)  # OpenCV: pixel centres at integers
    assert intr.hfov_deg == pytest.approx(60.0)
    np.testing.assert_allclose(intr.matrix(), [[intr.fx, 0, 319.5], [0, intr.fy, 239.5], [0, 0, 1]])
    assert Intrinsics.from_dict(json.loads(json.dumps(intr.to_dict()))) == intr


def test_scaled_intrinsics_see_points_on_the_resized_pixels():
    """Resizing an image by s maps pixel centre u to (u + 0.5) s - 0.5; so must the intrinsics."""
    intr = Intrinsics(640, 480, 500.0, 480.0, 300.2, 250.7)
    small = intr.scaled(384, 288)
    points = np.array([[0.3, -0.2, 2.0], [-1.0, 0.5, 4.0], [0.0, 0.0, 1.0]])
    sx, sy = 384 / 640, 288 / 480
    expected = (intr.project(points) + 0.5) * [sx, sy] - 0.5
    np.testing.assert_allclose(small.project(points), expected, atol=1e-9)


@pytest.mark.parametrize("kwargs, message", [
    (dict(width=0, height=480, fx=1, fy=1, cx=0, cy=0), "positive integers"),
    (dict(width=640, height=480, fx=-5, fy=1, cx=0, cy=0), "focal lengths must be > 0"),
    (dict(width=640, height=480, fx=1, fy=1, cx=float("nan"), cy=0), "cx must be finite"),
])
def test_bad_intrinsics_are_refused(kwargs, message):
    with pytest.raises(SimError, match=message):
        Intrinsics(**kwargs)
    with pytest.raises(SimError, match=r"missing \['fy'\]"):
        Intrinsics.from_dict({"width": 1, "height": 1, "fx": 1, "cx": 0, "cy": 0})


def test_look_at_gives_opencv_axes():
    pose = look_at([1.0, 2.0, 1.5], [4.0, 2.0, 1.5])
    np.testing.assert_allclose(pose[:3, 2], [1, 0, 0], atol=1e-12)  # z forward, towards the target
    np.testing.assert_allclose(pose[:3, 0], [0, -1, 0], atol=1e-12)  # x right (looking along +x)
    np.testing.assert_allclose(pose[:3, 1], [0, 0, -1], atol=1e-12)  # y down
    np.testing.assert_allclose(pose[:3, 3], [1, 2, 1.5])
    rolled = look_at([0, 0, 1], [0, 5, 1], roll_rad=math.radians(10))
    assert math.degrees(math.asin(-rolled[2, 0])) == pytest.approx(10.0)  # x tips down by the roll
    with pytest.raises(SimError, match="parallel to 'up'"):
        look_at([0, 0, 0], [0, 0, 5])


# ------------------------------------------------------------------------------ trajectories
def _poses(n):
    return np.stack([look_at([0.5 + 0.1 * i, 1.0, 1.5], [3.0, 2.0, 1.0]) for i in range(n)])


def test_trajectory_file_round_trip(tmp_path):
    intr = Intrinsics(320, 240, 250.0, 245.0, 160.3, 118.9)
    traj = Trajectory(np.arange(5) / 15.0, _poses(5), intr)
    again = Trajectory.load(traj.save(tmp_path / "sub" / "t.json"))
    np.testing.assert_array_equal(again.times, traj.times)
    np.testing.assert_array_equal(again.camera_to_world, traj.camera_to_world)
    assert again.intrinsics == intr and again.fps == pytest.approx(15.0)
    uneven = Trajectory(np.array([0.0, 0.1, 0.5]), _poses(3), intr)
    assert uneven.fps is None


def test_bad_trajectories_are_refused(tmp_path):
    intr = Intrinsics.from_hfov(64, 48)
    with pytest.raises(SimError, match="strictly increasing"):
        Trajectory(np.array([0.0, 0.2, 0.1]), _poses(3), intr)
    squashed = _poses(2)
    squashed[1, :3, :3] *= 1.5
    with pytest.raises(SimError, match="trajectory pose 1: expected a rigid camera-to-world"):
        Trajectory(np.array([0.0, 0.1]), squashed, intr)
    with pytest.raises(SimError, match=r"shape \(3, 4, 4\)"):
        Trajectory(np.array([0.0, 0.1, 0.2]), _poses(2), intr)
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"format": "something/else", "frames": []}))
    with pytest.raises(SimError, match="vlm3r_sim_trajectory/1"):
        Trajectory.load(path)
    path.write_text("{not json")
    with pytest.raises(SimError, match="not a valid JSON"):
        Trajectory.load(path)
    with pytest.raises(SimError, match="not found"):
        Trajectory.load(tmp_path / "missing.json")


def _yaw_pitch_roll(poses: np.ndarray):
    forward, right = poses[:, :3, 2], poses[:, :3, 0]
    yaw = np.unwrap(np.arctan2(forward[:, 1], forward[:, 0]))
    pitch = np.arcsin(np.clip(forward[:, 2], -1, 1))
    roll = np.arcsin(np.clip(-right[:, 2], -1, 1))
    return yaw, pitch, roll


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_handheld_walk_moves_and_turns_in_free_space(seed):
    scene = generate_scene(seed)
    traj = handheld_walk(scene, seed=seed, n=60, fps=10.0)
    assert len(traj) == 60 and traj.fps == pytest.approx(10.0)
    xy = traj.positions[:, :2]
    assert scene.room.contains(xy, margin=0.35).all()
    for obj in scene.objects:
        if obj.box.maximum[2] > traj.positions[:, 2].min():  # the camera passes over low furniture only
            local = (xy - obj.box.centroid[:2]) @ obj.box.axes[:2, :2].T
            assert not np.any(np.all(np.abs(local) <= obj.box.axes_lengths[:2] / 2, axis=1)), obj.category
    assert np.all((traj.positions[:, 2] > 1.25) & (traj.positions[:, 2] < 1.65))
    step = np.linalg.norm(np.diff(traj.positions, axis=0), axis=1)
    assert step.max() < 0.12 and step.sum() > 2.0  # about 0.5 m/s at 10 fps, with hand shake
    yaw, pitch, roll = _yaw_pitch_roll(traj.camera_to_world)
    assert np.ptp(yaw) > math.radians(30)  # it looks around
    assert np.all(np.abs(np.diff(yaw)) < math.radians(15))  # smoothly
    assert np.all((pitch < 0) & (pitch > math.radians(-35)))  # looking slightly down
    assert 0 < np.abs(roll).max() < math.radians(8)  # a hand is not a tripod


def test_robot_patrol_turns_in_place_then_drives():
    scene = generate_scene(4)
    traj = robot_patrol(scene, seed=4, n=120, fps=10.0, speed=0.4, turn_rate_deg=45.0)
    np.testing.assert_allclose(traj.positions[:, 2], 0.8)
    yaw, pitch, roll = _yaw_pitch_roll(traj.camera_to_world)
    np.testing.assert_allclose(pitch, math.radians(-8.0), atol=1e-9)
    np.testing.assert_allclose(roll, 0.0, atol=1e-9)
    step = np.linalg.norm(np.diff(traj.positions[:, :2], axis=0), axis=1)
    turn = np.abs(np.diff(yaw))
    assert step.max() <= 0.04 + 1e-9 and turn.max() <= math.radians(4.5) + 1e-9  # speed / fps, rate / fps
    assert np.all((step < 1e-9) | (turn < 1e-9))  # never both at once: turn, then drive
    assert step.sum() > 1.5 and turn.sum() > math.radians(45)
    driving = step > 1e-9  # while driving, the camera looks where the robot goes
    heading = np.arctan2(np.diff(traj.positions[:, 1]), np.diff(traj.positions[:, 0]))
    np.testing.assert_allclose(np.cos(heading - yaw[:-1])[driving], 1.0, atol=1e-6)
    xy = traj.positions[:, :2]
    assert scene.room.contains(xy, margin=0.3).all()
    for obj in scene.objects:
        local = (xy - obj.box.centroid[:2]) @ obj.box.axes[:2, :2].T
        assert not np.any(np.all(np.abs(local) <= obj.box.axes_lengths[:2] / 2 + 0.29, axis=1)), obj.category


def test_scan_turn_stands_still_and_turns_once_evenly():
    scene = generate_scene(0)
    traj = scan_turn(scene, seed=0, n=90, fps=10.0)
    np.testing.assert_allclose(traj.positions, np.broadcast_to(traj.positions[0], traj.positions.shape))
    assert scene.room.contains(traj.positions[:1, :2], margin=0.5).all()
    yaw, pitch, roll = _yaw_pitch_roll(traj.camera_to_world)
    np.testing.assert_allclose(pitch, math.radians(-15.0), atol=1e-9)
    np.testing.assert_allclose(roll, 0.0, atol=1e-9)
    steps = (np.diff(yaw) + math.pi) % (2 * math.pi) - math.pi
    np.testing.assert_allclose(steps, 2 * math.pi / 90, atol=1e-9)  # one full turn, even rate
    # It starts facing the fewest objects: no more object centres within the half field of
    # view than in any other of the headings it passes.
    half_fov = math.atan(traj.intrinsics.width / 2 / traj.intrinsics.fx)
    eye = traj.positions[0, :2]
    bearings = np.array([math.atan2(o.box.centroid[1] - eye[1], o.box.centroid[0] - eye[0]) for o in scene.objects])

    def in_view(h):
        return int(np.sum(np.abs((bearings - h + math.pi) % (2 * math.pi) - math.pi) < half_fov))
    assert in_view(yaw[0]) <= min(in_view(h) for h in yaw)


def test_trajectories_are_deterministic_per_seed():
    room = Room.rectangle(0, 0, 5, 4)
    for make in (handheld_walk, robot_patrol, scan_turn):
        a, b, c = make(room, seed=7, n=20), make(room, seed=7, n=20), make(room, seed=8, n=20)
        np.testing.assert_array_equal(a.camera_to_world, b.camera_to_world)
        assert not np.allclose(a.camera_to_world, c.camera_to_world)


def test_trajectory_generators_explain_impossible_requests():
    tiny = Room.rectangle(0, 0, 0.6, 0.6)
    with pytest.raises(SimError, match="no free"):
        robot_patrol(tiny, n=5)
    with pytest.raises(SimError, match="positive integer"):
        handheld_walk(Room.rectangle(0, 0, 5, 4), n=0)
    with pytest.raises(SimError, match="fps must be > 0"):
        robot_patrol(Room.rectangle(0, 0, 5, 4), fps=0)
    with pytest.raises(SimError, match="unknown trajectory kind 'drone'"):
        make_simulation("pybullet", seed=0, trajectory_kind="drone")


# ------------------------------------------------------------------------------ rooms
def test_room_polygon_geometry():
    l_shape = Room(np.array([[0, 0], [4, 0], [4, 2], [2, 2], [2, 4], [0, 4]], dtype=float), 2.6)
    assert l_shape.area == pytest.approx(12.0)
    assert (l_shape.x_min, l_shape.x_max, l_shape.y_min, l_shape.y_max) == (0, 4, 0, 4)
    np.testing.assert_allclose(l_shape.center, [2, 2, 1.3])
    inside = l_shape.contains([[1, 1], [3, 1], [3, 3], [1, 3], [1.9, 0.05]])
    assert inside.tolist() == [True, True, False, True, True]
    assert l_shape.contains([[1.9, 0.05]], margin=0.1).tolist() == [False]
    with pytest.raises(SimError, match=">= 3"):
        Room(np.array([[0, 0], [1, 1]], dtype=float))
    with pytest.raises(SimError, match="height"):
        Room.rectangle(0, 0, 1, 1, height=0)


@pytest.mark.parametrize("seed", range(6))
def test_generated_rooms_are_valid(seed):
    scene = generate_scene(seed)
    assert scene.name == f"sim_{seed:04d}" and scene.seed == seed
    counts = {}
    for o in scene.objects:
        counts[o.category] = counts.get(o.category, 0) + 1
    assert len(scene.objects) >= 7 and counts.get("chair", 0) >= 2 and counts.get("table") == 1
    assert set(scene.appearance) == {o.instance_id for o in scene.objects}
    assert all(scene.appearance_of(o.instance_id).shape in SHAPES for o in scene.objects)
    floor_standing = []
    table = next(o for o in scene.objects if o.category == "table")
    top = table.box.maximum[2]
    for o in scene.objects:
        corners = o.box.corners()
        assert np.allclose(o.box.axes[2], [0, 0, 1])  # upright
        assert scene.room.contains(corners[:, :2]).all(), o.category
        bottom = corners[:, 2].min()
        if o.category in ("toy duck", "teddy bear", "cup"):
            assert bottom == pytest.approx(top)  # standing on the table top
            local = (corners[:, :2] - table.box.centroid[:2]) @ table.box.axes[:2, :2].T
            assert np.all(np.abs(local) <= table.box.axes_lengths[:2] / 2 + 1e-9)
        else:
            assert bottom == pytest.approx(0.0)
            floor_standing.append(o)
        assert corners[:, 2].max() < scene.room.height
    # footprints of floor-standing objects never overlap (checked on dense samples)
    for i, a in enumerate(floor_standing):
        grid = a.box.grid_points(0.03)[:, :2]
        for b in floor_standing[i + 1:]:
            local = (grid - b.box.centroid[:2]) @ b.box.axes[:2, :2].T
            overlap = np.all(np.abs(local) < b.box.axes_lengths[:2] / 2 - 1e-6, axis=1)
            assert not overlap.any(), (a.category, b.category)


def test_generated_rooms_are_deterministic_and_differ_by_seed():
    assert generate_scene(5).to_dict() == generate_scene(5).to_dict()
    assert generate_scene(5).to_dict() != generate_scene(6).to_dict()
    with pytest.raises(SimError, match="non-negative integer"):
        generate_scene(-1)


def test_mesh_shapes_keep_their_proportions():
    duck = natural_proportions("duck")
    assert duck.max() == 1.0 and duck[2] < 1.0  # the duck is longer than tall
    assert natural_proportions("table") is None
    scene = generate_scene(1)
    for o in scene.objects:
        p = natural_proportions(scene.appearance_of(o.instance_id).shape)
        if p is not None:
            np.testing.assert_allclose(o.box.axes_lengths / o.box.axes_lengths.max(), p, rtol=1e-9)
    for kind in KINDS.values():
        assert kind.shape in SHAPES


# ------------------------------------------------------------------------------ scene files
def test_scene_file_round_trip_json_and_yaml(tmp_path):
    scene = generate_scene(2)
    for name in ("room.json", "room.yaml"):
        again = SimScene.load(scene.save(tmp_path / name))
        assert again.to_dict() == scene.to_dict()
        for a, b in zip(again.objects, scene.objects):
            assert a.category == b.category and a.instance_id == b.instance_id
            np.testing.assert_allclose(a.box.corners(), b.box.corners(), atol=2e-6)
    graph = scene.scene_graph()
    assert graph.room_size == pytest.approx(scene.room.area) and graph.dataset == "sim"
    assert sum(graph.category_counts().values()) == len(scene.objects)
    np.testing.assert_allclose(graph.room_center, scene.room.center)


def test_a_hand_written_scene_file_loads_with_defaults(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "format: vlm3r_sim_scene/1\n"
        "name: my_office\n"
        "room:\n"
        "  floor: [[0, 0], [5, 0], [5, 4], [0, 4]]\n"
        "  height: 2.8\n"
        "objects:\n"
        "  - {category: desk, shape: table, center: [2.0, 1.0, 0.375], size: [1.4, 0.7, 0.75], yaw_deg: 90}\n"
        "  - {id: 7, category: chair, shape: chair, center: [3.0, 1.0, 0.45], size: [0.5, 0.5, 0.9],\n"
        "     color: [0.2, 0.3, 0.8]}\n"
        "  - {category: box, center: [4.0, 3.0, 0.25], size: [0.5, 0.5, 0.5]}\n")
    scene = SimScene.load(path)
    assert scene.name == "my_office" and scene.room.height == 2.8 and scene.room.area == pytest.approx(20.0)
    assert [o.instance_id for o in scene.objects] == [0, 7, 2]
    desk = scene.objects[0]
    assert box_yaw(desk.box) == pytest.approx(math.pi / 2)
    np.testing.assert_allclose(desk.box.maximum - desk.box.minimum, [0.7, 1.4, 0.75], atol=1e-9)
    assert scene.appearance_of(7) == Appearance("chair", (0.2, 0.3, 0.8))
    assert scene.appearance_of(2).shape == "box"


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("room"), "'room' must be an object"),
    (lambda d: d["objects"][0].pop("size"), r"missing \['size'\]"),
    (lambda d: d["objects"][0].update(color=[2, 0, 0]), r"colour components must be in \[0, 1\]"),
    (lambda d: d["objects"][0].update(size=[0, 1, 1]), "every side must be > 0"),
    (lambda d: d.update(format="scene/0"), "vlm3r_sim_scene/1"),
    (lambda d: d["objects"].append(dict(d["objects"][0])), "duplicate instance ids"),
])
def test_bad_scene_files_say_what_is_wrong(tmp_path, edit, message):
    data = generate_scene(0).to_dict()
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SimError, match=message):
        SimScene.load(path)


def test_scenes_refuse_tilted_boxes_and_negative_ids():
    tilted = OrientedBox.create([1, 1, 1], [1, 1, 1], [[1, 0, 0], [0, 0, 1], [0, -1, 0]])
    scene = SimScene("t", Room.rectangle(0, 0, 3, 3), [ObjectInstance(0, "x", tilted)])
    with pytest.raises(SimError, match="only upright objects"):
        scene.to_dict()
    upright = OrientedBox.create([1, 1, 0.5], [1, 1, 1], yaw_axes(0.2))
    with pytest.raises(SimError, match="must be >= 0"):
        SimScene("t", Room.rectangle(0, 0, 3, 3), [ObjectInstance(-1, "x", upright)])
    with pytest.raises(SimError, match="unknown instances"):
        SimScene("t", Room.rectangle(0, 0, 3, 3), [ObjectInstance(0, "x", upright)], {3: Appearance()})
