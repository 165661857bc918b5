"""The demo's ROS side: a /spatial_query client and a subscription to the node's ~/state.

Every wait spins this process's own executor and gives up with a :class:`DemoError` when a
child process (the node, the camera) exits or a timeout passes.
"""

from __future__ import annotations

import time

from rclpy.qos import QoSProfile, ReliabilityPolicy

from vlm3r_ros.errors import UserError
from vlm3r_ros.msg import SpatialState
from vlm3r_ros.ros.client_node import ClientNode, ProcessExited, WaitError
from vlm3r_ros.ros.launching import Child
from vlm3r_ros.srv import SpatialQuery

STATE_TYPE = "vlm3r_ros/msg/SpatialState"


class DemoError(UserError):
    """Printed as one line; exit status 1 (2 for bad arguments)."""


class DemoClient:
    """This process's ROS side: the /spatial_query client and a ~/state subscription."""

    def __init__(self):
        self.ros = ClientNode("vlm3r_demo")
        self.node = self.ros.node
        self.client = self.node.create_client(SpatialQuery, "/spatial_query")
        self.states: list = []
        self.state_topic = ""

    def spin_until(self, done, timeout_s: float, children: list[Child], what: str):
        try:
            self.ros.spin_until(done, timeout_s, what, watch=children)
        except ProcessExited as exc:
            child = exc.process
            raise DemoError(f"{child.name} exited with status {child.proc.returncode} while {what}") from None
        except WaitError:
            raise DemoError(f"timed out after {timeout_s:g} s {what}") from None

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
        self.ros.spin_for(wait_s)
        return self.states[-1] if self.states else None

    def close(self) -> None:
        self.ros.close()
