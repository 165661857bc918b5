"""Route planning from a simulated room: a hand-worked room, and on 20 procedural rooms a walk of
every generated question with this file's own simulator (5 mm steps, clearance from the sim's
room polygon and the boxes themselves), which must find each route collision-free and the
correct option the only one that reaches the destination."""
import math

import numpy as np
import pytest

from vlm3r_ros.data.qa import route_planning as RP
from vlm3r_ros.data.qa.common import make_rng
from vlm3r_ros.data.qa.registry import get_spec
from vlm3r_ros.data.scene_graph import ObjectInstance, OrientedBox, SceneGraph
from vlm3r_ros.sim.core import Room
from vlm3r_ros.sim.procedural import generate_scene

TURN = {"Turn Left": 90.0, "Turn Right": -90.0, "Turn Back": 180.0}
RADIUS, REACH, STEP = 0.20, 0.60, 0.005  # the published rule's robot, with a finer step than the generator's


def floor_box(iid, category, x0, y0, x1, y1, height=0.8):
    return ObjectInstance(iid, category, OrientedBox.axis_aligned([x0, y0, 0.0], [x1, y1, height]))


def footprint_distance(box, xy):
    """2D distance from points (N, 2) to an upright box's footprint: the 3D distance at its mid-height."""
    xy = np.atleast_2d(xy)
    return box.distance_to(np.column_stack([xy, np.full(len(xy), box.centroid[2])]))


def clearance(room, boxes, xy):
    """(N,) distance to the nearest wall or blocking box; -1 outside the room."""
    xy = np.atleast_2d(xy)
    out = np.where(room.contains(xy), room.distance_to_walls(xy), -1.0)
    for b in boxes:
        if b.minimum[2] < 1.5:
            out = np.minimum(out, footprint_distance(b, xy))
    return out


def walk(room, boxes, start, heading, turns, targets, limit=20.0):
    """Our own replay: turn, then 5 mm steps until within REACH of the target; None on a collision
    before arriving, or when the target is never reached."""
    position = np.asarray(start, dtype=float)
    for turn, target in zip(turns, targets):
        heading += TURN[turn]
        direction = np.array([math.cos(math.radians(heading)), math.sin(math.radians(heading))])
        points = position + np.arange(1, int(limit / STEP))[:, None] * STEP * direction
        arrived = np.flatnonzero(footprint_distance(target, points) <= REACH)
        blocked = np.flatnonzero(clearance(room, boxes, points) < RADIUS)
        if len(arrived) == 0 or (len(blocked) and blocked[0] <= arrived[0]):
            return None
        position = points[arrived[0]]
    return position


def check_row(row, room, scene):
    """Walk the stored route and all four options; returns the route's smallest clearance and the
    letters of the options that reach the destination."""
    by_name = {o.category: o.box for o in scene.objects}
    boxes = [o.box for o in scene.objects]
    route = np.array(row["route"])
    samples = [a + t * (b - a) for a, b in zip(route[:-1], route[1:])
               for t in np.linspace(0.0, 1.0, max(2, int(np.linalg.norm(b - a) / STEP) + 1))]
    smallest = float(clearance(room, boxes, np.array(samples)).min())
    targets = (by_name[row["category, waypoint object"]], by_name[row["category, destination object"]])
    reached = []
    for option in row["options"]:
        letter, text = option.split(". ", 1)
        if walk(room, boxes, route[0], row["start_heading_deg"], text.split(", "), targets) is not None:
            reached.append(letter)
    return smallest, reached


# A room 8 x 8 m. The sofa is in the south-west corner, the tv on the east wall at the sofa's height, the
# shelf on the north wall above the sofa, the desk in the north-east. Standing by the sofa facing the tv
# (east): turn left (north) and go forward until the shelf, then turn right (east) until the desk.
# Every other filling hits a wall: right or back first (south / west wall), left then left (west wall),
# left then back (back south, past the sofa, to the south wall).
def hand_room():
    objects = [floor_box(0, "sofa", 0.8, 0.8, 1.2, 1.2), floor_box(1, "tv", 7.6, 0.7, 7.8, 1.3, 1.0),
               floor_box(2, "shelf", 0.7, 6.8, 1.7, 7.2, 1.8), floor_box(3, "desk", 5.5, 6.2, 6.5, 7.4)]
    room = Room.rectangle(0, 0, 8, 8)
    graph = SceneGraph("hand", objects, [], room_size=64.0, dataset="sim", floor=room.floor)
    return room, graph


def test_hand_built_room():
    room, graph = hand_room()
    rows = [r.to_dict() for r in RP.route_planning(graph, make_rng(0), max_per_scene=None)]
    ours = [r for r in rows if (r["category, start object"], r["category, facing object"],
                                r["category, waypoint object"], r["category, destination object"])
            == ("sofa", "tv", "shelf", "desk")]
    assert len(ours) == 1
    row = ours[0]
    assert row["ground_truth"] == "Turn Left, Turn Right"  # by hand, above
    assert row["question"] == (
        "You are a robot beginning at the sofa facing the tv. You want to navigate to the desk. You will perform the "
        "following actions (Note: for each [please fill in], choose either 'turn back,' 'turn left,' or 'turn "
        "right.'): 1. [please fill in] 2. Go forward until the shelf 3. [please fill in] 4. Go forward until the "
        "desk. You have reached the final destination.")
    assert row["options"]["ABCD".index(row["mc_answer"])] == f"{row['mc_answer']}. Turn Left, Turn Right"
    assert len({o[3:] for o in row["options"]}) == 4
    smallest, reached = check_row(row, room, graph)
    assert smallest >= RADIUS and reached == [row["mc_answer"]]
    # the first stop is north of the start, within reach of the shelf; the second within reach of the desk
    start, stop1, stop2 = np.array(row["route"])
    assert stop1[1] > start[1] + 3 and footprint_distance(graph.objects[2].box, stop1)[0] <= REACH
    assert stop2[0] > stop1[0] + 2 and footprint_distance(graph.objects[3].box, stop2)[0] <= REACH


def test_no_free_space_no_question():
    _, graph = hand_room()
    graph.floor = None  # the official metadata has no free space
    assert RP.route_planning(graph, make_rng(0), max_per_scene=None) == []
    assert get_spec("route_planning").benchmark == "vsibench"


def test_twenty_sim_rooms_every_route_checks_out(capsys):
    total, smallest_seen = 0, np.inf
    for seed in range(20):
        sim = generate_scene(seed)
        graph = sim.scene_graph()
        rows = [r.to_dict() for r in RP.route_planning(graph, make_rng(0, "route_planning", graph.scene_name))]
        for row in rows:
            smallest, reached = check_row(row, sim.room, graph)
            assert smallest >= RADIUS, (seed, row["question"])
            assert reached == [row["mc_answer"]], (seed, row["question"], row["options"], reached)
            smallest_seen = min(smallest_seen, smallest)
        total += len(rows)
    with capsys.disabled():
        print(f"\nroute planning: {total} questions on 20 sim rooms, all collision-free with one reaching option; "
              f"smallest clearance {smallest_seen:.3f} m")
    assert total >= 20


def test_occupancy_grid_marks_walls_and_objects():
    _, graph = hand_room()
    space, _ = RP.free_space_of(graph)
    centres, occupied = space.occupancy()
    cell = lambda x, y: occupied[int(y / RP.GRID), int(x / RP.GRID)]  # noqa: E731
    assert not cell(4.0, 4.0)  # the middle of the room is free
    assert cell(0.1, 4.0) and cell(1.0, 1.0) and cell(1.3, 1.0)  # wall, inside the sofa, 0.1 m from it
    assert not cell(1.45, 1.0)  # 0.25 m from the sofa: the 0.2 m disc fits
    with pytest.raises(ValueError, match="floor polygon needs >= 3"):
        RP.FreeSpace(np.zeros((2, 2)), [])


def test_free_space_survives_the_metadata_files(tmp_path):
    from vlm3r_ros.data.metadata import load_dataset, save_scene_graphs
    graph = generate_scene(3).scene_graph()
    save_scene_graphs([graph], tmp_path, "sim", "val")
    back = load_dataset(tmp_path, "sim", "val")[graph.scene_name]
    assert np.allclose(back.floor, graph.floor) and len(back.obstacles) == len(graph.obstacles)
    rows = lambda g: [r.to_dict() for r in RP.route_planning(g, make_rng(0))]  # noqa: E731
    assert rows(back) == rows(graph) and rows(graph)
