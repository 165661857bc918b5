"""vlm3r-sim-bridge over real DDS: the bridge in a child process, a probe in this one.

The bridge (test/fixtures/sim_bridge.py = vlm3r-sim-bridge's main, pybullet backend) publishes
8 frames of 160x120 (RGB and depth); this process subscribes to everything it publishes, with a node running
on simulation time (use_sim_time) and a timer on that clock. Then it checks the messages
against what the bridge wrote (trajectory.json) and against the simulator itself (the same
frames rendered again in this process). Every wait is bounded; nothing is timed.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from nav_msgs.msg import Odometry
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String
from tf2_msgs.msg import TFMessage

from vlm3r_ros.ros.client_node import ClientNode
from vlm3r_ros.ros.poses import stamp_to_ns
from vlm3r_ros.ros.sim_messages import scene_graph_from_payload, transform_to_matrix

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]

FIXTURES = Path(__file__).resolve().parents[1] / 'fixtures'

FRAMES, WIDTH, HEIGHT, FPS, SEED = 8, 160, 120, 10.0, 3
START_TIME_S = 5.0
MOUNT = [0.1, 0.0, 1.2, 0.0, 0.2, 0.0]  # a camera 1.2 m up on a robot, tilted 0.2 rad down
WAIT_S = 60.0
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
TF_TYPE_HASH = 'RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087'  # a real ROS 2 /tf


class Probe:
    """Everything the bridge publishes, received by a node on simulation time."""

    def __init__(self):
        self.ros = ClientNode('sim_bridge_probe', parameter_overrides=[Parameter('use_sim_time', value=True)])
        self.node = self.ros.node
        self.images, self.infos, self.odoms, self.tf, self.tf_static, self.clock, self.graphs = \
            [], [], [], [], [], [], []
        self.depths, self.depth_infos = [], []
        self.clock_at_image = []  # this node's (sim) clock when each image arrived
        self.timer_fired_ns = []  # a 0.05 s timer on the sim clock
        n = self.node
        n.create_subscription(Image, '/sim/image', self._on_image, 20)
        n.create_subscription(CameraInfo, '/sim/camera_info', self.infos.append, 20)
        n.create_subscription(Image, '/sim/depth/image', self.depths.append, 20)
        n.create_subscription(CameraInfo, '/sim/depth/camera_info', self.depth_infos.append, 20)
        n.create_subscription(Odometry, '/sim/odom', self.odoms.append, 20)
        n.create_subscription(TFMessage, '/tf', self.tf.append, 100)
        n.create_subscription(TFMessage, '/tf_static', self.tf_static.append, LATCHED)
        n.create_subscription(Clock, '/clock', self.clock.append, 1000)
        n.create_subscription(String, '/sim/scene_graph', self.graphs.append, LATCHED)
        n.create_timer(0.05, lambda: self.timer_fired_ns.append(n.get_clock().now().nanoseconds))

    def _on_image(self, msg):
        self.images.append(msg)
        self.clock_at_image.append(self.node.get_clock().now().nanoseconds)

    def spin_until(self, done, what, child, timeout=WAIT_S):
        self.ros.spin_until(done, timeout, what, details=lambda: f'Bridge {child.describe()}')

    def close(self):
        self.ros.close()


@pytest.fixture(scope='module')
def run(start_child, tmp_path_factory):
    """The bridge's whole run as the probe saw it: (probe, output dir, bridge child)."""
    out = tmp_path_factory.mktemp('sim_bridge')
    probe = Probe()  # subscribed before the bridge starts
    params = dict(num_frames=FRAMES, width=WIDTH, height=HEIGHT, fps=FPS, seed=SEED, rate_hz=8.0,
                  start_time=START_TIME_S, output_dir=str(out), wait_for_subscribers=1, exit_when_done=False,
                  scene_graph_every=3)
    argv = [sys.executable, str(FIXTURES / 'sim_bridge.py'), '--ros-args', '-r', '__ns:=/sim']
    for key, value in params.items():
        argv += ['-p', f'{key}:={str(value).lower() if isinstance(value, bool) else value}']
    argv += ['-p', f'camera_mount:=[{", ".join(str(float(v)) for v in MOUNT)}]']
    child = start_child(argv, 'bridge', log_dir=out)
    try:
        probe.spin_until(lambda: len(probe.images) >= FRAMES and len(probe.depths) >= FRAMES and probe.graphs and
                         json.loads(probe.graphs[-1].data)['complete'], 'all frames and the final scene graph', child)
        probe.spin_until(lambda: 'trajectory finished' in child.output() and (out / 'run.json').is_file(),
                         'the end-of-run report and files', child)
        yield probe, out, child
    finally:
        child.stop()
        probe.close()


def _trajectory(out):
    from vlm3r_ros.sim.core import Trajectory

    return Trajectory.load(out / 'trajectory.json')


def test_every_frame_arrives_with_the_trajectory_stamps_and_camera(run):
    probe, out, child = run
    traj = _trajectory(out)
    assert len(traj) == FRAMES and traj.intrinsics.width == WIDTH and traj.intrinsics.height == HEIGHT
    expected_ns = [round((START_TIME_S + t) * 1e9) for t in traj.times]
    assert [stamp_to_ns(m.header.stamp) for m in probe.images] == expected_ns
    assert [stamp_to_ns(m.header.stamp) for m in probe.infos] == expected_ns
    assert [stamp_to_ns(m.header.stamp) for m in probe.depths] == expected_ns
    assert [stamp_to_ns(m.header.stamp) for m in probe.depth_infos] == expected_ns
    k = traj.intrinsics.matrix()
    for image, info, depth, depth_info in zip(probe.images, probe.infos, probe.depths, probe.depth_infos):
        assert (image.width, image.height, image.encoding, image.step) == (WIDTH, HEIGHT, 'rgb8', WIDTH * 3)
        assert (depth.width, depth.height, depth.encoding, depth.step, depth.is_bigendian) == \
            (WIDTH, HEIGHT, '32FC1', WIDTH * 4, 0)
        assert image.header.frame_id == info.header.frame_id == depth.header.frame_id == 'camera_optical_frame'
        assert depth_info == info, 'the depth image has the RGB camera'
        assert np.allclose(np.reshape(info.k, (3, 3)), k)
        assert list(info.p) == [k[0, 0], 0.0, k[0, 2], 0.0, 0.0, k[1, 1], k[1, 2], 0.0, 0.0, 0.0, 1.0, 0.0]
    summary = json.loads((out / 'run.json').read_text())
    assert summary['frames_published'] == FRAMES and summary['complete'] and summary['late'] >= 0


def test_images_and_depth_are_the_simulators_frames_and_not_blank(run):
    from vlm3r_ros.sim.factory import make_simulation

    probe, out, _ = run
    sim = make_simulation('pybullet', scene=out / 'scene.json', trajectory=out / 'trajectory.json')
    try:
        for i, (msg, depth_msg) in enumerate(zip(probe.images, probe.depths)):
            rendered = sim.render(i).rendered
            pixels = np.frombuffer(bytes(msg.data), np.uint8).reshape(HEIGHT, WIDTH, 3)
            assert pixels.std() > 5.0, f'frame {i} is nearly constant'
            assert np.array_equal(pixels, rendered.rgb), f'frame {i} differs from a fresh render'
            depth = np.frombuffer(bytes(depth_msg.data), '<f4').reshape(HEIGHT, WIDTH)
            # scene.json rounds the objects to 6 digits: their depth moves by ~1e-5 m (RGB not at all)
            assert np.allclose(depth, rendered.depth, rtol=0.0, atol=1e-3), f'depth {i} differs from a fresh render'
            assert np.isfinite(depth).all() and 0.0 < depth.min() < depth.max() < 20.0  # inside a closed room
    finally:
        sim.close()


def test_tf_chain_gives_back_the_true_camera_pose(run):
    probe, out, _ = run
    traj = _trajectory(out)
    statics = {t.child_frame_id: t for m in probe.tf_static for t in m.transforms}
    assert {(t.header.frame_id, c) for c, t in statics.items()} == {
        ('map', 'odom'), ('base_link', 'camera_link'), ('camera_link', 'camera_optical_frame')}
    map_odom = transform_to_matrix(statics['odom'].transform)
    assert np.allclose(map_odom, np.eye(4))
    mount = transform_to_matrix(statics['camera_link'].transform)
    assert np.allclose(mount[:3, 3], MOUNT[:3])
    optical = transform_to_matrix(statics['camera_optical_frame'].transform)
    dynamic = [t for m in probe.tf for t in m.transforms]
    assert len(dynamic) == FRAMES
    for i, t in enumerate(dynamic):
        assert (t.header.frame_id, t.child_frame_id) == ('odom', 'base_link')
        assert stamp_to_ns(t.header.stamp) == stamp_to_ns(probe.images[i].header.stamp)
        pose = map_odom @ transform_to_matrix(t.transform) @ mount @ optical
        assert np.allclose(pose, traj.camera_to_world[i], atol=1e-6), f'frame {i}'


def test_odometry_is_the_same_pose_with_a_consistent_twist(run):
    probe, out, _ = run
    assert len(probe.odoms) == FRAMES
    dynamic = [t for m in probe.tf for t in m.transforms]
    for i, (odom, t) in enumerate(zip(probe.odoms, dynamic)):
        assert (odom.header.frame_id, odom.child_frame_id) == ('odom', 'base_link')
        p = odom.pose.pose.position
        assert np.allclose([p.x, p.y, p.z], [t.transform.translation.x, t.transform.translation.y,
                                             t.transform.translation.z])
    # The twist integrates back to the next position (backward difference, in the body frame).
    for i in range(1, FRAMES):
        prev = transform_to_matrix(dynamic[i - 1].transform)
        dt = 1.0 / FPS
        v = probe.odoms[i].twist.twist.linear
        predicted = prev[:3, 3] + prev[:3, :3] @ np.array([v.x, v.y, v.z]) * dt
        assert np.allclose(predicted, transform_to_matrix(dynamic[i].transform)[:3, 3], atol=1e-6)


def test_clock_drives_a_sim_time_node(run):
    probe, _, _ = run
    clock_ns = [stamp_to_ns(m.clock) for m in probe.clock]
    assert clock_ns == sorted(clock_ns), 'sim time never goes back'
    image_ns = [stamp_to_ns(m.header.stamp) for m in probe.images]
    assert set(image_ns) <= set(clock_ns), 'every frame has its own /clock tick'
    assert len(clock_ns) > FRAMES, 'the clock ticks between frames too'
    assert clock_ns[-1] == image_ns[-1]
    # The probe runs on sim time: when an image arrives its clock reads about that frame's time
    # (the frame's own tick, or the last tick before it when the executor takes the image first),
    # nowhere near wall-clock time. A probe stalled while the bridge went on may already have
    # taken later ticks (the bridge does not wait for it), so the bound is the last frame's time.
    previous = image_ns[0] - round(1e9 / FPS)
    for now, stamp in zip(probe.clock_at_image, image_ns):
        assert previous <= now <= image_ns[-1]
        previous = stamp
    on_time = sum(stamp - round(1e9 / FPS) < now < stamp + round(1e9 / FPS)
                  for now, stamp in zip(probe.clock_at_image, image_ns))
    print(f'\nprobe clock within one frame of the image stamp at {on_time} of {len(image_ns)} images')
    assert probe.timer_fired_ns, 'a timer on the sim clock fired'
    assert all(START_TIME_S * 1e9 <= t <= image_ns[-1] for t in probe.timer_fired_ns)


def test_scene_graph_is_latched_and_matches_the_files(run):
    from vlm3r_ros.data.metadata import load_dataset

    probe, out, child = run
    graph, doc = scene_graph_from_payload(probe.graphs[-1].data)
    assert doc['complete'] and doc['frames_published'] == FRAMES and doc['backend'] == 'pybullet'
    assert [f.frame_id for f in graph.frames] == list(range(FRAMES))
    image_ns = [stamp_to_ns(m.header.stamp) for m in probe.images]
    assert [doc['frame_stamps_ns'][str(i)] for i in range(FRAMES)] == image_ns
    traj = _trajectory(out)
    for f in graph.frames:
        assert np.allclose(f.camera_to_world, traj.camera_to_world[f.frame_id])
    assert any(f.visible for f in graph.frames), 'some object is seen'
    # Updates on the way: the first (no frames) and every 3 frames, each a prefix of the run.
    counts = [len(json.loads(m.data)['frame_metadata'][graph.scene_name]['frames']) for m in probe.graphs]
    assert counts == sorted(counts) and counts[-1] == FRAMES
    # A late subscriber gets the last one (transient local).
    late = []
    sub = probe.node.create_subscription(String, '/sim/scene_graph', late.append, LATCHED)
    probe.spin_until(lambda: late, 'the latched scene graph for a late subscriber', child)
    probe.node.destroy_subscription(sub)
    assert len(late) == 1 and late[0].data == probe.graphs[-1].data
    files = load_dataset(out, 'sim', 'run')
    assert list(files) == [graph.scene_name]
    assert [f.frame_id for f in files[graph.scene_name].frames] == list(range(FRAMES))
    assert json.loads((out / 'scene_graph.json').read_text()) == json.loads(probe.graphs[-1].data)


def test_tf_is_the_real_ros2_type(run):
    probe, _, _ = run
    infos = probe.node.get_publishers_info_by_topic('/tf')
    assert infos and infos[0].topic_type == 'tf2_msgs/msg/TFMessage'
    assert str(infos[0].topic_type_hash) == TF_TYPE_HASH


def test_sigint_after_the_run_exits_cleanly(run):
    probe, out, child = run
    assert child.running(), 'exit_when_done false keeps the bridge up'
    assert child.stop(timeout=10.0) == 0
    assert not math.isnan(json.loads((out / 'run.json').read_text())['wall_s'])


def test_loop_keeps_simulation_time_increasing(start_child, tmp_path):
    """With loop the trajectory starts again; stamps keep growing by one frame step across the
    seam; the ground truth stays one pass (3 trajectory frames)."""
    probe = Probe()
    argv = [sys.executable, str(FIXTURES / 'sim_bridge.py'), '--ros-args', '-r', '__ns:=/sim',
            '-p', 'num_frames:=3', '-p', 'width:=64', '-p', 'height:=48', '-p', 'rate_hz:=20.0', '-p', 'loop:=true',
            '-p', 'wait_for_subscribers:=1', '-p', 'scene_graph_every:=1', '-p', f'output_dir:={tmp_path}']
    child = start_child(argv, 'bridge', log_dir=tmp_path)
    try:
        probe.spin_until(lambda: len(probe.images) >= 8, 'eight frames over three passes', child)
        stamps = [stamp_to_ns(m.header.stamp) for m in probe.images[:8]]
        steps = np.diff(stamps)
        assert np.all(steps == round(1e9 / FPS)), stamps  # 10 fps trajectory, seam included
        assert child.stop(timeout=10.0) == 0
        doc = json.loads((tmp_path / 'scene_graph.json').read_text())
        graph, _ = scene_graph_from_payload(json.dumps(doc))
        assert doc['complete'] and doc['passes'] >= 2 and doc['frames_published'] >= 8
        assert [f.frame_id for f in graph.frames] == [0, 1, 2]
        assert json.loads((tmp_path / 'run.json').read_text())['stopped']
    finally:
        child.stop()
        probe.close()


def test_lockstep_publishes_a_lost_frame_again(start_child, tmp_path):
    """A lockstep consumer that never gets a frame (here: it ignores the first copy of frame 1)
    gets it again, with the same stamp, and the run still confirms every frame."""
    from vlm3r_ros.msg import SpatialState

    probe = Probe()
    state_pub = probe.node.create_publisher(SpatialState, '/sim/consumer/state', LATCHED)
    arrived, seen = [], []  # stamps of every image that came; of those the consumer counted

    def consume(msg):
        stamp = stamp_to_ns(msg.header.stamp)
        arrived.append(stamp)
        if len(arrived) == 2:  # the first copy of frame 1: "lost in transit"
            return
        seen.append(stamp)
        state_pub.publish(SpatialState(frames_received=len(seen), frames_processed=len(seen)))

    probe.node.create_subscription(Image, '/sim/image', consume, 20)
    state_pub.publish(SpatialState())  # the consumer is up, nothing received yet
    argv = [sys.executable, str(FIXTURES / 'sim_bridge.py'), '--ros-args', '-r', '__ns:=/sim',
            '-p', 'num_frames:=3', '-p', 'width:=64', '-p', 'height:=48', '-p', 'rate_hz:=20.0',
            '-p', 'lockstep_state_topic:=consumer/state', '-p', 'lockstep_timeout:=30.0',
            '-p', 'wait_for_subscribers:=1', '-p', f'output_dir:={tmp_path}']
    child = start_child(argv, 'bridge', log_dir=tmp_path)
    try:
        probe.spin_until(lambda: (tmp_path / 'run.json').is_file() and not child.running(), 'the lockstep run', child)
        assert child.returncode == 0, child.describe()
        report = json.loads((tmp_path / 'run.json').read_text())
        # one resend for the dropped copy (more only if something stalled over the 5 s resend period)
        assert report['resent'] >= 1 and report['unconfirmed'] == 0, report
        assert len(arrived) == 3 + report['resent'] and arrived[1] == arrived[2], arrived  # frame 1 again, same stamp
        assert seen == sorted(set(arrived)) and len(seen) == 3  # the consumer counted each frame once
    finally:
        child.stop()
        probe.close()


@pytest.mark.parametrize('params, code, message', [
    (['-p', 'backend:=gazebo'], 2, 'backend must be one of pybullet, habitat'),
    (['-p', 'width:=0'], 2, 'width and height must both be 0'),
    (['-p', 'scene_file:=/nonexistent/room.yaml'], 1, '/nonexistent/room.yaml'),
])
def test_bad_settings_exit_with_a_reason(start_child, tmp_path, params, code, message):
    child = start_child([sys.executable, FIXTURES / 'sim_bridge.py', '--ros-args', *params], 'bridge', log_dir=tmp_path)
    try:
        if child.wait(WAIT_S) is None:
            pytest.fail(f'the bridge did not exit: {child.describe()}')
    finally:
        child.stop()
    assert child.returncode == code, child.describe()
    assert message in child.output(), child.describe()
