"""The scene graph and its metadata files: a written scene reads back the same; bad input is refused."""

import json
import math

import numpy as np
import pytest

from vlm3r_ros.data.metadata import load_dataset, load_scene_graphs, metadata_paths, save_scene_graphs
from vlm3r_ros.data.scene_graph import FrameAnnotation, ObjectInstance, OrientedBox, SceneGraph, SceneGraphError, \
    floor_area

C, S = math.cos(math.pi / 6), math.sin(math.pi / 6)
TURNED_30 = [[C, S, 0], [-S, C, 0], [0, 0, 1]]  # rows: the box's axes, turned 30 degrees about z


def sample_scene(name="scene0001_00"):
    objects = [
        ObjectInstance(3, "chair", OrientedBox.axis_aligned([0, 0, 0], [0.5, 0.5, 0.9])),
        ObjectInstance(7, "chair", OrientedBox.axis_aligned([1, 0, 0], [1.5, 0.5, 0.9])),
        ObjectInstance(9, "table", OrientedBox.create([2, 2, 0.4], [1.2, 0.8, 0.8], TURNED_30)),
    ]
    pose = np.eye(4)
    pose[:3, 3] = [0.5, -2.0, 1.4]
    k = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    frames = [
        FrameAnnotation(0, pose, k, {3: (10.0, 20.0, 110.0, 220.0)}, image_path="color/0.jpg"),
        FrameAnnotation(24, pose, k, {7: None, 9: (0.0, 0.0, 5.0, 5.0)}, image_path="color/24.jpg"),
    ]
    return SceneGraph(name, objects, frames, room_size=floor_area([(0, 0), (5, 0), (5, 4), (0, 4)]),
                      room_center=np.array([2.5, 2.0, 1.3]), dataset="scannet", video_path="scannet/s1.mp4", fps=24.0)


def assert_same(a: SceneGraph, b: SceneGraph):
    assert (a.scene_name, a.dataset, a.video_path, a.fps, a.room_size) == \
        (b.scene_name, b.dataset, b.video_path, b.fps, b.room_size)
    np.testing.assert_allclose(a.room_center, b.room_center)
    assert [(o.instance_id, o.category) for o in a.objects] == [(o.instance_id, o.category) for o in b.objects]
    for oa, ob in zip(a.objects, b.objects):
        np.testing.assert_allclose(oa.box.centroid, ob.box.centroid)
        np.testing.assert_allclose(oa.box.axes_lengths, ob.box.axes_lengths)
        np.testing.assert_allclose(oa.box.axes, ob.box.axes, atol=1e-12)
    assert len(a.frames) == len(b.frames)
    for fa, fb in zip(a.frames, b.frames):
        assert (fa.frame_id, dict(fa.visible), fa.image_path) == (fb.frame_id, dict(fb.visible), fb.image_path)
        np.testing.assert_allclose(fa.camera_to_world, fb.camera_to_world)
        np.testing.assert_allclose(fa.intrinsics, fb.intrinsics)


def test_metadata_round_trip(tmp_path):
    scene = sample_scene()
    scene_file, frame_file = save_scene_graphs([scene, sample_scene("scene0002_00")], tmp_path, "scannet", "val")
    assert (scene_file, frame_file) == metadata_paths(tmp_path, "scannet", "val")
    assert scene_file.name == "scannet_metadata_val.json" and frame_file.name == "scannet_frame_metadata_val.json"
    loaded = load_dataset(tmp_path, "scannet", "val")
    assert sorted(loaded) == ["scene0001_00", "scene0002_00"]
    assert_same(scene, loaded["scene0001_00"])
    # the official fields, as written
    entry = json.loads(scene_file.read_text())["scene0001_00"]
    assert entry["room_size"] == 20.0 and entry["object_counts"] == {"chair": 2, "table": 1}
    table = entry["object_bboxes"]["table"][0]
    assert table["instance_id"] == 9 and table["axesLengths"] == [1.2, 0.8, 0.8]
    assert table["normalizedAxes"] == pytest.approx([C, S, 0, -S, C, 0, 0, 0, 1])  # rows, flattened
    frame = json.loads(frame_file.read_text())["scene0001_00"]["frames"][1]
    assert frame["frame_id"] == 24 and frame["bboxes_2d"][0] == {"instance_id": 7, "bbox_2d": None}


def test_scene_level_metadata_alone_loads(tmp_path):
    scene_file, _ = save_scene_graphs([sample_scene()], tmp_path, "scannet", "val")
    only = load_scene_graphs(scene_file)["scene0001_00"]
    assert only.frames == [] and only.category_counts() == {"chair": 2, "table": 1}
    assert [o.category for o in only.unique_objects()] == ["table"]


def test_queries():
    scene = sample_scene()
    assert scene.first_seen() == {3: 0, 7: 24, 9: 24}
    assert [o.instance_id for o in scene.instances_of("chair")] == [3, 7]
    box = scene.instance(9).box
    assert box.volume == pytest.approx(1.2 * 0.8 * 0.8)
    assert box.contains(np.array([[2, 2, 0.4], [2 + 0.59 * C, 2 + 0.59 * S, 0.4], [2.7, 2, 0.4]])).tolist() == \
        [True, True, False]


def test_older_metadata_without_ids_and_frames_without_pose():
    entry = {"object_bboxes": {"sofa": [{"min": [0, 0, 0], "max": [2, 1, 1]}],
                               "lamp": [{"centroid": [3, 3, 1], "axesLengths": [0.3, 0.3, 2]}]}}
    frames = {"frames": [{"frame_id": 0, "camera_pose_camera_to_world": None, "bboxes_2d": []},
                         {"frame_id": 5, "camera_pose_camera_to_world": np.eye(4).tolist(),
                          "bboxes_2d": [{"instance_id": 1, "bbox_2d": [0, 0, 1, 1]}]}]}
    scene = SceneGraph.from_metadata("old", entry, frames)
    assert [(o.instance_id, o.category) for o in scene.objects] == [(0, "sofa"), (1, "lamp")]
    np.testing.assert_allclose(scene.objects[0].box.centroid, [1, 0.5, 0.5])
    assert [f.frame_id for f in scene.frames] == [5]  # the frame without a pose is dropped, as officially


@pytest.mark.parametrize("entry, frames, message", [
    ({"object_bboxes": {"a": [{"instance_id": 1, "min": [0, 0, 0], "max": [1, 1, 1]}],
                        "b": [{"instance_id": 1, "min": [0, 0, 0], "max": [1, 1, 1]}]}}, None, "duplicate instance"),
    ({"object_bboxes": {"a": [{"instance_id": 1, "min": [0, 0, 0], "max": [1, 1, 1]}]}},
     {"frames": [{"frame_id": 0, "camera_pose_camera_to_world": np.eye(4).tolist(),
                  "bboxes_2d": [{"instance_id": 4, "bbox_2d": None}]}]}, "not objects of the scene"),
    ({"object_bboxes": {"a": [{"centroid": [0, 0]}]}}, None, "needs centroid"),
    ({"object_bboxes": {"a": [{"min": [0, 0, 0], "max": [1, -1, 1]}]}}, None, "below min"),
    ({"room_size": -3, "object_bboxes": {}}, None, "positive area"),
], ids=["duplicate-id", "unknown-visible", "incomplete-box", "inverted-box", "negative-room"])
def test_bad_metadata_is_refused_with_the_place(entry, frames, message):
    with pytest.raises(SceneGraphError, match=message):
        SceneGraph.from_metadata("bad", entry, frames)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(SceneGraphError, match="scene metadata file not found"):
        load_scene_graphs(tmp_path / "nope.json")


def test_numpy_ids_and_boxes_are_written(tmp_path):
    # Simulators and segmentation masks hand out numpy scalars; json alone refuses them.
    box = OrientedBox.axis_aligned([0, 0, 0], [1, 1, 1])
    frame = FrameAnnotation(np.int64(4), np.eye(4), None, {np.int32(5): tuple(np.float32([1, 2, 3, 4]))})
    graph = SceneGraph("np", [ObjectInstance(np.int64(5), "box", box)], [frame])
    save_scene_graphs([graph], tmp_path, "sim", "val")
    back = load_dataset(tmp_path, "sim", "val")["np"]
    assert back.objects[0].instance_id == 5 and back.frames[0].frame_id == 4
    assert back.frames[0].visible == {5: (1.0, 2.0, 3.0, 4.0)}
