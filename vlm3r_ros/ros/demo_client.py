"""The demo's ROS side: a /spatial_query client and a subscription to the node's ~/state.

Every wait spins this process's own executor and gives up with a :class:`DemoError` when a
child process (the node, the camera) exits or a timeout passes.
"""

from __future__ import annotations

import time

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy

from vlm3r_ros.errors import UserError
from vlm3r_ros.msg import SpatialState
from vlm3r_ros.ros.launching import Child
from vlm3r_ros.srv import SpatialQuery

STATE_TYPE = "vlm3r_ros/msg/SpatialState"


class DemoError(UserError):
    """Printed as one line; exit status 1 (2 for bad arguments)."""


class DemoClient:
    """This process's ROS side: the /spatial_query client and a ~/state subscription."""

    def __init__(self):
        self.context = rclpy.Context()
        rclpy.init(args=None, context=self.context)
        self.node = rclpy.create_node("vlm3r_demo", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.client = self.node.create_client(SpatialQuery, "/spatial_query")
        self.states: list = []
        self.state_topic = ""

    def spin_until(self, done, timeout_s: float, children: list[Child], what: str):
        deadline = time.monotonic() + timeout_s
        while not done():
            for child in children:
                if not child.running():
                    raise DemoError(f"{child.name} exited with status {child.proc.returncode} while {what}")
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout_s:g} s {what}")
            self.executor.spin_once(timeout_sec=0.05)

    def wait_for_node(self, node: Child, timeout_s: float) -> None:
        self.spin_until(self.client.service_is_ready, timeout_s, [node], "waiting for /spatial_query")
        self.spin_until(self._find_state_topic, 30.0, [node], "looking for the node's SpatialState topic")

    def _find_state_topic(self) -> bool:
        topics = [name for name, types in self.node.get_topic_names_and_types() if STATE_TYPE in types]
        if not topics:
            return False
        self.state_topic = sorted(topics, key=lambda t: (not t.endswith("/state"), t))[0]
        # Best effort matches both reliable and best-effort publishers.
        self.node.create_subscription(SpatialState, self.state_topic, self.states.append,
                                      QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
        return True

    def wait_for_frames(self, count: int, timeout_s: float, children: list[Child]):
        self.spin_until(lambda: self.states and self.states[-1].frames_processed >= count, timeout_s, children,
                        f"waiting for the node to process {count} frames")
        return self.states[-1]

    def ask(self, q: dict, timeout_s: float, children: list[Child]):
        request = SpatialQuery.Request(question=q["question"], options=list(q["options"]),
                                       answer_type=q["answer_type"])
        start = time.monotonic()
        future = self.client.call_async(request)
        self.spin_until(future.done, timeout_s, children, f"waiting for the answer to {q['question']!r}")
        return future.result(), time.monotonic() - start

    def latest_state(self, wait_s: float):
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.05)
        return self.states[-1] if self.states else None

    def close(self) -> None:
        if self.context is None:
            return
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.context = None
