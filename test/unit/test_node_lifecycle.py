"""SpatialNode's lifecycle order and its /diagnostics in every state, in this process.

A real SpatialNode on tiny random weights (config/tiny.yaml), driven through its transitions
with rclpy's trigger_* calls (no executor, no second process). ``OrderRecordingNode`` is the
real node with two hooks that record, at the moment the subscriptions and the worker start
and stop, whether the lifecycle publishers are enabled.
"""
import inspect
from pathlib import Path

import pytest
import rclpy
import yaml
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher

import vlm3r_ros.ros.node as node_module
from vlm3r_ros.ros.node import SpatialNode

pytestmark = pytest.mark.ros
SUCCESS = TransitionCallbackReturn.SUCCESS


class OrderRecordingNode(SpatialNode):
    def __init__(self, **kwargs):
        self.order = []
        super().__init__(**kwargs)

    def _activate(self):
        self.order.append(('start', [p.is_activated for p in self._pubs.values()]))
        super()._activate()

    def _deactivate(self):
        self.order.append(('stop', [p.is_activated for p in self._pubs.values()]))
        super()._deactivate()


@pytest.fixture
def node(ros_domain_id):
    tiny = yaml.safe_load((Path(__file__).resolve().parents[2] / 'config' / 'tiny.yaml').read_text())
    overrides = [Parameter(k, value=v) for k, v in tiny['/**']['ros__parameters'].items()]
    context = rclpy.Context()
    rclpy.init(args=None, context=context)
    n = OrderRecordingNode(context=context, parameter_overrides=overrides)
    try:
        yield n
    finally:
        n.stop_worker(30.0)
        n.destroy_node()
        rclpy.shutdown(context=context)


def test_publishers_are_enabled_before_the_worker_starts_and_disabled_after_it_stops(node):
    assert node.current_state_label() == 'unconfigured'
    assert node.trigger_configure() == SUCCESS and node.current_state_label() == 'inactive'
    assert node.trigger_activate() == SUCCESS and node.current_state_label() == 'active'
    assert node.order[-1] == ('start', [True] * 4)  # state, pose, path, points already enabled
    assert node.trigger_deactivate() == SUCCESS and node.current_state_label() == 'inactive'
    assert node.order[-1] == ('stop', [True] * 4)  # still enabled while the worker finishes its frame
    assert not any(p.is_activated for p in node._pubs.values())
    assert node.trigger_cleanup() == SUCCESS and node.current_state_label() == 'unconfigured'
    assert node.trigger_shutdown() == SUCCESS and node.current_state_label() == 'finalized'


def test_diagnostics_report_in_every_state(node):
    # a plain publisher created with the node, not a lifecycle one that inactivity would mute
    assert type(node._diagnostics_pub) is Publisher and node._diagnostics_pub.topic_name == '/diagnostics'
    assert node.diagnostic_status().message.startswith('unconfigured')
    node.trigger_configure()
    assert node.diagnostic_status().message.startswith('inactive')
    node.trigger_activate()
    status = node.diagnostic_status()
    assert status.message == 'no image received yet'
    values = {kv.key: kv.value for kv in status.values}
    assert values['image_qos'] == 'best_effort' and 'no publisher yet' in values['image_qos_reason']
    node.trigger_deactivate()
    assert node.diagnostic_status().message.startswith('inactive')


def test_the_node_reads_no_private_rclpy_state():
    assert '_state_machine' not in inspect.getsource(node_module)
