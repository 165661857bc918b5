"""image_qos_reliability auto over real DDS, with a camera publisher as a stock driver starts.

The node (config/tiny.yaml, its default image_qos_reliability auto, its own Fast DDS
setting as vlm3r-node picks it) runs in one process; test/fixtures/node_image_publisher.py
--stock publishes 640x480 rgb8 (900 KiB, more than Fast DDS's default 512 KiB shared-memory segment)
from another with Fast DDS's defaults (no profile file, no FASTDDS_* variables). The node
starts before the camera, so it must re-check the topic's publishers when one appears:

* a reliable publisher (usb_cam's and most drivers' default): the node re-subscribes
  reliably, and every frame arrives;
* a best-effort publisher: the node follows it (a reliable subscription would match
  nothing), the large frames are lost in transport (measured: 0 to 12 of 40 arrive),
  and the node says so, with the fix, in its log and on /diagnostics (rclpy's
  message_lost event counts them). Should a future Fast DDS deliver them, the loss
  assertion fails and README's "QoS and transport" needs rewriting.

Every wait is bounded; no assertion is about timing.
"""
import sys
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_srvs.srv import Trigger

from vlm3r_ros.msg import SpatialState
from vlm3r_ros.ros.demo_client import DemoClient

pytestmark = [pytest.mark.ros, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
TINY_YAML = ROOT / 'config' / 'tiny.yaml'
NS = '/vlm3r_qos_test'
NODE = f'{NS}/vlm3r_node'
WAIT_S = 90.0  # node start-up, discovery, frames settling: generous for a loaded 2-core machine
COUNT, RATE_HZ, WIDTH, HEIGHT = 40, 10.0, 640, 480
STATE_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@pytest.fixture(scope='module')
def node_proc(start_child, tmp_path_factory):
    node = start_child([sys.executable, ROOT / 'test' / 'fixtures' / 'node_vlm3r.py', '--ros-args',
                        '--params-file', TINY_YAML, '-r', f'__ns:={NS}'],
                       'node_vlm3r_qos', log_dir=tmp_path_factory.mktemp('image_qos_dds'))
    try:
        yield node
    finally:
        node.stop()


class Watcher(DemoClient):
    """The demo's ROS client (its executor and bounded waits) plus the node's ~/state,
    /diagnostics and ~/reset."""

    def __init__(self, node_proc):
        super().__init__()
        self.node_proc = node_proc
        self.diagnostics = []
        self.node.create_subscription(SpatialState, f'{NODE}/state', self.states.append, STATE_QOS)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 50)
        self.reset_client = self.node.create_client(Trigger, f'{NODE}/reset')

    def _on_diagnostics(self, array):
        for status in array.status:
            if status.name.startswith(NODE):
                self.diagnostics.append((status.level, status.message, {kv.key: kv.value for kv in status.values}))

    def wait(self, done, what, timeout=WAIT_S):
        self.spin_until(done, timeout, [self.node_proc], what)

    @property
    def state(self):
        return self.states[-1] if self.states else None

    def settled(self):
        s = self.state
        return s is not None and s.frames_processed + s.frames_dropped + s.frames_rejected == s.frames_received

    def run_camera(self, spawn_python, reliability):
        """Start the stock camera, wait until it has published and the node settled; returns
        (frames received by the node, the camera's output)."""
        self.wait(lambda: self.state is not None, 'the node is up (~/state)')
        before = self.state.frames_received
        camera = spawn_python('node_image_publisher.py', f'{NS}/image', COUNT, RATE_HZ, WIDTH, HEIGHT, reliability,
                              '--stock', '--wait-for', reliability)
        self.wait(lambda: not camera.running(), f'the {reliability} camera finishes', timeout=WAIT_S + 30)
        assert camera.returncode == 0, camera.describe()  # 3: the node never subscribed with that reliability
        self.ros.spin_for(3.0)  # the last frames in flight reach ~/state
        self.wait(self.settled, 'frames settled')
        return self.state.frames_received - before, camera.output()


@pytest.fixture(scope='module')
def watcher(node_proc):
    w = Watcher(node_proc)
    try:
        yield w
    finally:
        w.close()


def test_reliable_stock_camera_every_frame_arrives(watcher, spawn_python):
    received, camera_output = watcher.run_camera(spawn_python, 'reliable')
    print(f'\nreliable stock publisher, 640x480 rgb8: {received} of {COUNT} frames received')
    assert 'reliable subscription matched' in camera_output
    assert received == COUNT, f'{received} of {COUNT} frames arrived'
    log = watcher.node_proc.output()
    assert 'now subscribed reliable (auto: the publisher offers reliable)' in log, log[-3000:]
    watcher.wait(lambda: watcher.diagnostics and watcher.diagnostics[-1][2].get('image_qos') == 'reliable',
                       '/diagnostics shows the reliable choice')
    values = watcher.diagnostics[-1][2]
    assert values['image_qos_reason'] == 'auto: the publisher offers reliable'
    assert values['frames_lost_in_transport'] == '0' and watcher.state.frames_lost == 0


def test_best_effort_stock_camera_loss_is_reported_with_the_fix(watcher, spawn_python):
    watcher.wait(watcher.reset_client.service_is_ready, '~/reset available')
    reset = watcher.reset_client.call_async(Trigger.Request())  # a new segment: the stamps start again
    watcher.wait(reset.done, 'reset')
    received, camera_output = watcher.run_camera(spawn_python, 'best_effort')
    lost = int(watcher.diagnostics[-1][2]['frames_lost_in_transport']) if watcher.diagnostics else 0
    print(f'\nbest-effort stock publisher, 640x480 rgb8: {received} of {COUNT} frames received, '
          f'{lost} reported lost')
    assert 'best_effort subscription matched' in camera_output  # the node followed the publisher
    watcher.wait(lambda: any('lost in transport' in message for _, message, _ in watcher.diagnostics),
                       'a /diagnostics warning about frames lost in transport')
    level, message, values = next(d for d in reversed(watcher.diagnostics) if 'lost in transport' in d[1])
    assert level == DiagnosticStatus.WARN
    assert 'publish reliably' in message and 'fastdds_large_data.xml' in message, message
    assert int(values['frames_lost_in_transport']) > 0 and values['image_qos'] == 'best_effort'
    assert received < COUNT
    # ~/state carries the same count (it never decreases; /diagnostics may be a period behind)
    watcher.wait(lambda: watcher.state.frames_lost >= int(values['frames_lost_in_transport']),
                 '~/state frames_lost catches up with /diagnostics')
    watcher.wait(lambda: int(watcher.diagnostics[-1][2]['frames_lost_in_transport']) == watcher.state.frames_lost,
                 '/diagnostics and ~/state agree on the frames lost')
    log = watcher.node_proc.output()
    assert 'lost in transport' in log and 'publish reliably' in log, log[-3000:]
