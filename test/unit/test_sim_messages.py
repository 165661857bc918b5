"""vlm3r_ros.ros.sim_messages: the bridge's frames, transforms, odometry, clock and payload,
without a ROS graph (messages are built and read in this process only)."""
import json
import math

import numpy as np
import pytest

from vlm3r_ros.data.scene_graph import FrameAnnotation, ObjectInstance, OrientedBox, SceneGraph
from vlm3r_ros.ros import sim_messages as sm
from vlm3r_ros.ros.poses import stamp_to_ns


def random_pose(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    x, y, z, w = q
    rotation = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                         [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                         [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    return sm.rigid(rotation, rng.uniform(-5, 5, size=3))


def test_optical_rotation_is_the_standard_camera_one():
    t = sm.transform_stamped(sm.rigid(sm.OPTICAL_IN_LINK), 'camera_link', 'camera_optical_frame', 0)
    q = t.transform.rotation
    assert np.allclose(np.abs([q.x, q.y, q.z, q.w]), 0.5)
    assert np.allclose([q.x, q.y, q.z, q.w], [-0.5, 0.5, -0.5, 0.5]) or \
        np.allclose([q.x, q.y, q.z, q.w], [0.5, -0.5, 0.5, -0.5])
    # optical z (forward) is link x; optical x (right) is link -y; optical y (down) is link -z
    assert np.allclose(sm.OPTICAL_IN_LINK @ [0, 0, 1], [1, 0, 0])
    assert np.allclose(sm.OPTICAL_IN_LINK @ [1, 0, 0], [0, -1, 0])
    assert np.allclose(sm.OPTICAL_IN_LINK @ [0, 1, 0], [0, 0, -1])


def test_rpy_follows_ros_conventions():
    assert np.allclose(sm.rpy_matrix(0, 0, math.pi / 2) @ [1, 0, 0], [0, 1, 0])  # yaw left
    assert np.allclose(sm.rpy_matrix(0, math.pi / 2, 0) @ [1, 0, 0], [0, 0, -1])  # pitch: nose down
    assert np.allclose(sm.rpy_matrix(math.pi / 2, 0, 0) @ [0, 1, 0], [0, 0, 1])  # roll
    r = sm.rpy_matrix(0.3, -0.2, 1.1)
    assert np.allclose(r @ r.T, np.eye(3)) and math.isclose(np.linalg.det(r), 1.0)


@pytest.mark.parametrize('mount', [[0] * 6, [0.1, -0.05, 1.2, 0.0, 0.25, 0.0], [0.3, 0.2, 0.9, 0.1, -0.3, 2.0]])
def test_the_chain_gives_back_the_optical_pose(mount):
    rng = np.random.default_rng(0)
    base_to_link = sm.mount_transform(mount)
    for _ in range(20):
        c2w = random_pose(rng)
        odom_base = sm.odom_to_base(c2w, base_to_link)
        chain = np.eye(4) @ odom_base @ base_to_link @ sm.rigid(sm.OPTICAL_IN_LINK)
        assert np.allclose(chain, c2w, atol=1e-12)


def test_transform_messages_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(20):
        m = random_pose(rng)
        msg = sm.transform_stamped(m, 'odom', 'base_link', 1_500_000_000)
        assert (msg.header.frame_id, msg.child_frame_id) == ('odom', 'base_link')
        assert stamp_to_ns(msg.header.stamp) == 1_500_000_000
        assert np.allclose(sm.transform_to_matrix(msg.transform), m, atol=1e-12)


def test_static_transforms_cover_the_fixed_links():
    frames = sm.FrameIds()
    mount = sm.mount_transform([0, 0, 1, 0, 0, 0])
    links = [(t.header.frame_id, t.child_frame_id) for t in sm.static_transforms(frames, mount, 7)]
    assert links == [('map', 'odom'), ('base_link', 'camera_link'), ('camera_link', 'camera_optical_frame')]


def test_frame_ids_must_differ_and_mounts_be_six_numbers():
    with pytest.raises(ValueError, match='five different names'):
        sm.FrameIds(odom='map')
    with pytest.raises(ValueError, match='6 finite numbers'):
        sm.mount_transform([0, 0, 1])
    with pytest.raises(ValueError, match='6 finite numbers'):
        sm.mount_transform([0, 0, 1, 0, math.nan, 0])
    with pytest.raises(ValueError, match='finite'):
        sm.odom_to_base(np.full((4, 4), np.nan), np.eye(4))


def test_odometry_twist_is_the_body_motion():
    frames = sm.FrameIds()
    # A robot driving forward at 1 m/s while turning left at 0.5 rad/s, sampled every 0.1 s.
    pose0 = sm.rigid(sm.rpy_matrix(0, 0, 0.7), [1.0, 2.0, 0.0])
    step = sm.rigid(sm.rpy_matrix(0, 0, 0.05), [0.1, 0.0, 0.0])
    pose1 = pose0 @ step
    msg = sm.odometry(pose1, 1_100_000_000, frames, previous=(pose0, 1_000_000_000))
    assert (msg.header.frame_id, msg.child_frame_id) == ('odom', 'base_link')
    assert np.allclose([msg.pose.pose.position.x, msg.pose.pose.position.y], pose1[:2, 3])
    tw = msg.twist.twist
    assert np.allclose([tw.linear.x, tw.linear.y, tw.linear.z], [1.0, 0.0, 0.0])
    assert np.allclose([tw.angular.x, tw.angular.y, tw.angular.z], [0.0, 0.0, 0.5])
    first = sm.odometry(pose0, 1_000_000_000, frames)
    assert first.twist.twist.linear.x == 0.0 and first.twist.twist.angular.z == 0.0


@pytest.mark.parametrize('axis, angle', [([0, 0, 1], 1e-12), ([1, 0, 0], 0.3), ([1, 2, 3], 2.0),
                                         ([0, 1, 0], math.pi), ([1, 1, 0], math.pi - 1e-8)])
def test_rotation_vector(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k  # Rodrigues
    v = sm.rotation_vector(rotation)
    assert math.isclose(np.linalg.norm(v), angle, rel_tol=1e-6, abs_tol=1e-9)
    if angle > 1e-6:
        assert np.allclose(np.abs(v / np.linalg.norm(v)), np.abs(axis), atol=1e-5)


@pytest.mark.parametrize('dtype', ['<f4', '>f4', '<f8'])  # any input order and precision: 32FC1 little-endian out
def test_depth_image_is_rep118_32fc1_metres(dtype):
    depth = np.array([[0.5, 1.25, 3.0],
                      [np.inf, 0.0, -1.0],
                      [np.nan, -np.inf, 7.0625]], dtype=dtype)  # (H=3, W=3)
    msg = sm.depth_image(depth, 2_500_000_001, 'camera_optical_frame')
    assert (msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step) == (3, 3, '32FC1', 0, 3 * 4)
    assert stamp_to_ns(msg.header.stamp) == 2_500_000_001 and msg.header.frame_id == 'camera_optical_frame'
    assert len(msg.data) == 3 * 3 * 4
    out = np.frombuffer(bytes(msg.data), '<f4').reshape(3, 3)
    assert out[0].tolist() == [0.5, 1.25, 3.0] and out[2, 2] == 7.0625  # metres, unchanged
    assert out[1, 0] == np.inf  # nothing within the far plane: +Inf, REP 117's "out of range"
    assert np.isnan(out[1, 1:]).all() and np.isnan(out[2, :2]).all()  # 0, negative, NaN, -inf: invalid
    assert bytes(msg.data)[:4] == bytes.fromhex('0000003f')  # 0.5 as a little-endian float32, on any host


def test_depth_image_refuses_what_is_not_one_channel():
    with pytest.raises(ValueError, match=r'\(H, W\) metres, got shape \(2, 2, 3\)'):
        sm.depth_image(np.ones((2, 2, 3), np.float32), 0, 'camera_optical_frame')


def test_clock_ticks_stay_before_the_next_frame():
    ticks = [sm.interpolated_sim_ns(1_000, 2_000, f) for f in (-1, 0, 0.25, 0.5, 0.999, 1.0, 5.0)]
    assert ticks == sorted(ticks) and ticks[0] == 1_000 and max(ticks) == 1_999
    assert sm.interpolated_sim_ns(5, 5, 0.5) == 5
    assert stamp_to_ns(sm.clock_message(3_000_000_123).clock) == 3_000_000_123
    assert sm.seconds_to_ns(1.1) == 1_100_000_000


def small_graph():
    box = OrientedBox.axis_aligned([0, 0, 0], [1, 0.5, 0.8])
    frames = [FrameAnnotation(i, np.eye(4), np.eye(3), {0: (1.0, 2.0, 30.0, 40.0)} if i else {}) for i in range(3)]
    return SceneGraph('sim_0007', [ObjectInstance(0, 'table', box)], frames, room_size=12.0,
                      room_center=np.array([1.0, 2.0, 0.0]), dataset='sim', fps=10.0)


def test_payload_round_trip():
    graph = small_graph()
    text = sm.scene_graph_payload(graph, {0: 1_000, 1: 2_000, 2: 3_000}, complete=True, frames_published=3,
                                  passes=1, backend='pybullet', extra={'start_time_s': 1.0})
    doc = json.loads(text)
    assert doc['format'] == sm.PAYLOAD_FORMAT and doc['frame_stamps_ns'] == {'0': 1000, '1': 2000, '2': 3000}
    assert doc['metadata']['sim_0007']['object_counts'] == {'table': 1}
    back, doc2 = sm.scene_graph_from_payload(text)
    assert doc2 == doc and back.scene_name == 'sim_0007' and back.room_size == 12.0
    assert [f.frame_id for f in back.frames] == [0, 1, 2]
    assert back.frames[1].visible == {0: (1.0, 2.0, 30.0, 40.0)}
    assert np.allclose(back.objects[0].box.axes_lengths, [1, 0.5, 0.8])


def test_payload_errors_say_what_was_expected():
    with pytest.raises(ValueError, match='not JSON'):
        sm.scene_graph_from_payload('{')
    with pytest.raises(ValueError, match="expected format 'vlm3r_ros.sim.scene_graph/1', got 'other'"):
        sm.scene_graph_from_payload('{"format": "other"}')
