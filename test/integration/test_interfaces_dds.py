"""vlm3r_ros interfaces over real DDS, between two processes.

The child (test/fixtures/spatial_query_echo_server.py) serves SpatialQuery and
echoes SpatialState; this process is the client. Waits are bounded, and no
assertion is about timing.
"""
import math

import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from vlm3r_ros.msg import SpatialState
from vlm3r_ros.srv import SpatialQuery

pytestmark = pytest.mark.ros

# Bounds for discovery and replies; generous for a loaded CI machine.
DISCOVERY_TIMEOUT_S = 30.0
REPLY_TIMEOUT_S = 30.0

ECHO_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


@pytest.fixture
def echo_server(spawn_python):
    return spawn_python('spatial_query_echo_server.py')


def test_spatial_query_service_across_processes(client_node, echo_server):
    node = client_node.node
    client = node.create_client(SpatialQuery, 'spatial_query')

    client_node.spin_until(client.service_is_ready, DISCOVERY_TIMEOUT_S, 'service spatial_query available',
                           watch=[echo_server])

    request = SpatialQuery.Request()
    request.question = 'How far is the chair from the table?'
    request.options = ['A. 1 m', 'B. 2 m', 'C. 3 m']
    request.answer_type = 'number'
    request.max_frames = 16
    request.window_seconds = 1.5
    request.max_new_tokens = 64

    future = client.call_async(request)
    client_node.spin_until(future.done, REPLY_TIMEOUT_S, 'SpatialQuery call', watch=[echo_server])
    response = future.result()

    assert response.success is True
    assert response.error == ''
    assert response.answer == '?elbat eht morf riahc eht si raf woH'
    assert response.choice == 'C. 3 m'
    assert response.value == pytest.approx(3.0)
    assert response.unit == 'm'
    assert response.frames_used == 3
    assert (response.window_start.sec, response.window_start.nanosec) == (16, 0)
    assert (response.window_end.sec, response.window_end.nanosec) == (17, 64)
    assert response.latency_s == pytest.approx(0.25)

    # An open question: no options, not a number.
    request = SpatialQuery.Request(question='What is left of the door?', answer_type='text')
    future = client.call_async(request)
    client_node.spin_until(future.done, REPLY_TIMEOUT_S, 'second SpatialQuery call', watch=[echo_server])
    response = future.result()
    assert response.answer == '?rood eht fo tfel si tahW'
    assert response.choice == ''
    assert response.frames_used == 0
    assert math.isnan(response.value)
    assert response.unit == ''


def test_spatial_state_round_trip_across_processes(client_node, echo_server):
    node = client_node.node
    received = []
    node.create_subscription(SpatialState, 'state_out', received.append, ECHO_QOS)
    publisher = node.create_publisher(SpatialState, 'state_in', ECHO_QOS)

    sent = SpatialState()
    sent.header.stamp.sec = 1234
    sent.header.stamp.nanosec = 567
    sent.header.frame_id = 'vlm3r_world'
    sent.frames_received = 2**40 + 5  # uint64 range
    sent.frames_processed = 100
    sent.frames_dropped = 7
    sent.frames_rejected = 1
    sent.frames_lost = 2**33
    sent.window_size = 32
    sent.window_capacity = 64
    sent.last_step_latency_s = 0.125
    sent.camera_pose.position.x = 1.5
    sent.camera_pose.position.y = -2.0
    sent.camera_pose.position.z = 0.25
    sent.camera_pose.orientation.z = math.sqrt(0.5)
    sent.camera_pose.orientation.w = math.sqrt(0.5)
    sent.segment_id = 3
    # Transient-local, depth 1: delivered once the two processes match, however
    # late that is, so one publish is enough.
    publisher.publish(sent)

    client_node.spin_until(lambda: received, REPLY_TIMEOUT_S, 'SpatialState echo', watch=[echo_server])
    echoed = received[0]

    assert echoed.segment_id == 4
    echoed.segment_id = 3
    assert echoed == sent
    assert echoed.frames_received == 2**40 + 5
    assert echoed.header.frame_id == 'vlm3r_world'
    assert echoed.camera_pose.orientation.w == pytest.approx(math.sqrt(0.5))
