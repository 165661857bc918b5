"""A client of a running ``vlm3r-node``: stream frames, ask ``spatial_query``, and the live backend.

The only module of :mod:`vlm3r_ros.eval` that imports rclpy.

:class:`LiveSpatialClient` is the API another module (a simulator bridge, a script) calls::

    with LiveSpatialClient(namespace="/robot1") as client:
        client.wait_for_node(30.0)
        client.reset()                      # ~/reset: a new segment, an empty window
        client.stream_frames(images)        # each frame waits until the node processed it
        reply = client.ask("How many chairs are there?", max_frames=32)

It owns its own rclpy context, node and executor; the executor spins on a background thread,
and every method waits on that thread's results with a timeout. So the methods may be called
from any thread, including from a callback of another node's executor (they never spin the
caller's executor).

Streaming is lockstep: a frame is published, then the client waits (``~/state``) until the
node has received it and nothing is left waiting or in the model, before the next one. The
node keeps only the newest waiting frame, so publishing faster would drop frames; lockstep
makes the node ingest exactly the frames sent. A frame the node never received (best-effort
transport loss) is published once more.

Errors from the node (``CODE: sentence``) come back in :attr:`LiveAnswer.error`; ``BUSY`` is
retried with exponential backoff for up to ``busy_timeout`` seconds; a reply that takes
longer than ``timeout`` is ``TIMEOUT``.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from vlm3r_ros.ros import apply_transport_setting

from .harness import Reply, Scene, SceneError, load_scene_frames


RECEIVE_TIMEOUT_S = 5.0  # a frame not seen by the node within this is published again


class LiveError(Exception):
    """The node could not be reached or refused a step; ``code`` is short and stable."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass
class LiveAnswer:
    success: bool
    error: str  # "" or "CODE: sentence" (the node's, or TIMEOUT / NO_NODE from this client)
    answer: str = ""
    choice: str = ""
    value: float = math.nan
    unit: str = ""
    frames_used: int = 0
    latency_s: float = 0.0  # the node's own time for the question
    attempts: int = 1  # calls made (more than 1 after BUSY)


@dataclass
class StreamStats:
    published: int = 0
    processed: int = 0  # by the node, during this stream
    dropped: int = 0
    rejected: int = 0
    republished: int = 0  # frames sent again after the node did not receive them
    seconds: float = 0.0


def _join(namespace: str, name: str) -> str:
    """``name`` relative to ``namespace`` (an absolute ``name`` is kept)."""
    if name.startswith("/"):
        return name
    ns = namespace.strip("/")
    return f"/{ns}/{name}" if ns else f"/{name}"


class LiveSpatialClient:
    """Frames to a node's image topic, questions to its ``spatial_query`` service (module docstring)."""

    def __init__(self, *, namespace: str = "", node_name: str = "vlm3r_node", image_topic: str = "image",
                 query_service: str = "spatial_query", client_name: str = "vlm3r_eval_client",
                 frame_id: str = "camera_optical_frame"):
        apply_transport_setting()  # before this process's first DDS participant (large images)
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_srvs.srv import Trigger

        from vlm3r_ros.msg import SpatialState
        from vlm3r_ros.ros.client_node import ClientNode
        from vlm3r_ros.srv import SpatialQuery

        self.node_fqn = _join(namespace, node_name)
        self.query_name = _join(namespace, query_service)
        self.image_topic = _join(namespace, image_topic)
        self.frame_id = frame_id
        self._state = None
        self._cond = threading.Condition()
        self._last_stamp_ns = 0
        self._ros = ClientNode(client_name)
        try:
            self.node = self._ros.node
            state_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                   durability=DurabilityPolicy.TRANSIENT_LOCAL)  # the node latches ~/state
            self.node.create_subscription(SpatialState, f"{self.node_fqn}/state", self._on_state, state_qos)
            # Reliable matches a best-effort or a reliable camera subscription alike.
            self._images = self.node.create_publisher(Image, self.image_topic,
                                                      QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
            self._query = self.node.create_client(SpatialQuery, self.query_name)
            self._reset = self.node.create_client(Trigger, f"{self.node_fqn}/reset")
            self._srv_types = (SpatialQuery, Trigger)
            self._ros.spin_in_background("vlm3r-eval-client")
        except BaseException:
            self._ros.close()
            raise

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        self._ros.close(timeout_s=2.0)

    def __enter__(self) -> "LiveSpatialClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _on_state(self, msg) -> None:
        with self._cond:
            self._state = msg
            self._cond.notify_all()

    @property
    def state(self):
        """The latest vlm3r_ros/SpatialState, or None before the first."""
        with self._cond:
            return self._state

    def wait_state(self, predicate, timeout: float, what: str):
        """The first state (the latest one included) for which ``predicate`` holds; LiveError TIMEOUT."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._state is None or not predicate(self._state):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LiveError("TIMEOUT", f"{what}: not seen on {self.node_fqn}/state within {timeout:g} s")
                self._cond.wait(min(left, 0.5))
            return self._state

    def _call(self, client, request, timeout: float):
        """The service's response, or None after ``timeout`` (the request is then forgotten)."""
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout):
            client.remove_pending_request(future)
            return None
        return future.result()

    # ------------------------------------------------------------------ API
    def wait_for_node(self, timeout: float = 30.0, *, need_reset: bool = True) -> None:
        """Wait until the node's question service (and ``~/reset`` and ``~/state`` when
        ``need_reset``) are there; LiveError NO_NODE naming what is missing."""
        deadline = time.monotonic() + timeout
        clients = [(self._query, self.query_name)]
        if need_reset:
            clients.append((self._reset, f"{self.node_fqn}/reset"))
        for client, name in clients:
            if not client.wait_for_service(timeout_sec=max(deadline - time.monotonic(), 0.0)):
                raise LiveError("NO_NODE", f"no service {name} after {timeout:g} s: is vlm3r-node running with this "
                                           f"namespace and name, on the same ROS_DOMAIN_ID?")
        if need_reset:
            try:
                self.wait_state(lambda s: True, max(deadline - time.monotonic(), 0.1), "the first state")
            except LiveError:
                raise LiveError("NO_NODE", f"no message on {self.node_fqn}/state after {timeout:g} s") from None

    def reset(self, timeout: float = 10.0) -> int:
        """Call ``~/reset`` (new segment, empty window); returns the new segment id."""
        _, trigger = self._srv_types
        response = self._call(self._reset, trigger.Request(), timeout)
        if response is None:
            raise LiveError("TIMEOUT", f"{self.node_fqn}/reset did not answer within {timeout:g} s")
        if not response.success:
            code, _, text = response.message.partition(": ")
            raise LiveError(code if text else "RESET_FAILED", text or response.message)
        segment = int(response.message.split()[1]) if response.message.startswith("segment ") else None
        self._last_stamp_ns = 0  # the node forgets the last stamp on a reset
        if segment is not None:  # the node publishes the new segment's state before it answers
            self.wait_state(lambda s: s.segment_id >= segment, timeout, f"segment {segment}")
        return segment if segment is not None else -1

    def stream_frames(self, images, *, timeout_per_frame: float = 30.0, resend: int = 1) -> StreamStats:
        """Publish each RGB uint8 (H, W, 3) image and wait until the node processed it (lockstep).

        LiveError REJECTED when the node refuses a frame, TIMEOUT when it does not take one.
        """
        from sensor_msgs.msg import Image

        # ROS message modules only after apply_transport_setting (see __init__)
        from vlm3r_ros.ros.image_messages import fill_image_from_rgb

        stats = StreamStats()
        start = time.monotonic()
        before = self.wait_state(lambda s: True, timeout_per_frame, "the node's state before streaming")
        base_dropped, base_rejected = before.frames_dropped, before.frames_rejected
        base_processed = before.frames_processed
        msg = Image()
        msg.header.frame_id = self.frame_id
        for i, image in enumerate(images):
            fill_image_from_rgb(msg, image, "rgb8")
            received_before = self.state.frames_received
            what = f"frame {i + 1} of {len(images)}"
            for attempt in range(resend + 1):
                # Stamps only grow (the node rejects an older stamp than the last one).
                self._last_stamp_ns = max(time.time_ns(), self._last_stamp_ns + 1)
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(self._last_stamp_ns, 10**9)
                self._images.publish(msg)
                stats.published += 1
                try:  # ~/state shows a received frame within a state_period even while the model runs
                    self.wait_state(lambda s: s.frames_received > received_before,
                                    min(RECEIVE_TIMEOUT_S, timeout_per_frame), f"{what} received")
                    break
                except LiveError:
                    if attempt == resend:
                        raise
                    stats.republished += 1
            state = self.wait_state(lambda s: s.frames_processed + s.frames_dropped + s.frames_rejected
                                    >= s.frames_received, timeout_per_frame, f"{what} processed")
            if state.frames_rejected > base_rejected:
                raise LiveError("REJECTED", f"the node rejected {what} (see its log or /diagnostics for the "
                                            f"reason)")
        final = self.state
        stats.processed = final.frames_processed - base_processed
        stats.dropped = final.frames_dropped - base_dropped
        stats.rejected = final.frames_rejected - base_rejected
        stats.seconds = time.monotonic() - start
        return stats

    def ask(self, question: str, options=None, *, answer_type: str = "", max_frames: int = 0,
            window_seconds: float = 0.0, max_new_tokens: int = 0, timeout: float = 120.0,
            busy_timeout: float = 60.0, busy_backoff: tuple[float, float] = (0.2, 5.0)) -> LiveAnswer:
        """Ask ``spatial_query``. BUSY is retried (backoff from ``busy_backoff[0]`` s doubling up
        to ``busy_backoff[1]`` s) for at most ``busy_timeout`` s; no reply in ``timeout`` s is
        ``TIMEOUT``. Other errors are returned as they are (``success`` False)."""
        query, _ = self._srv_types
        request = query.Request(question=question, options=list(options or []), answer_type=answer_type,
                                max_frames=int(max_frames), window_seconds=float(window_seconds),
                                max_new_tokens=int(max_new_tokens))
        if not self._query.service_is_ready():
            self._query.wait_for_service(timeout_sec=min(timeout, 10.0))
        give_up = time.monotonic() + busy_timeout
        delay, attempts = busy_backoff[0], 0
        while True:
            attempts += 1
            response = self._call(self._query, request, timeout)
            if response is None:
                return LiveAnswer(False, f"TIMEOUT: no reply from {self.query_name} within {timeout:g} s",
                                  attempts=attempts)
            if response.success or not response.error.startswith("BUSY") or time.monotonic() + delay > give_up:
                return LiveAnswer(response.success, response.error, response.answer, response.choice,
                                  response.value, response.unit, response.frames_used, response.latency_s,
                                  attempts)
            time.sleep(delay)
            delay = min(delay * 2, busy_backoff[1])

    def get_parameter(self, name: str, timeout: float = 5.0):
        """A parameter of the node (its Python value), or None when it cannot be read."""
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        client = self.node.create_client(GetParameters, f"{self.node_fqn}/get_parameters")
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                return None
            response = self._call(client, GetParameters.Request(names=[name]), timeout)
            if response is None or not response.values:
                return None
            return parameter_value_to_python(response.values[0])
        finally:
            self.node.destroy_client(client)


class LiveBackend:
    """The harness backend (:class:`vlm3r_ros.eval.harness.Backend`) over a running node.

    ``mode="stream"``: per scene, ``~/reset``, then the scene's ``num_frames`` uniformly
    sampled frames are streamed (lockstep), then its questions are asked with
    ``max_frames=num_frames``: the node answers from exactly those frames, as offline.
    ``mode="external"``: someone else streams (a simulator bridge); only the questions are
    asked, about whatever the node's window holds.
    """

    def __init__(self, client: LiveSpatialClient, *, mode: str = "stream", num_frames: int = 32,
                 max_new_tokens: int = 16, query_timeout: float = 120.0, frame_timeout: float = 30.0,
                 busy_timeout: float = 60.0, owns_client: bool = True):
        if mode not in ("stream", "external"):
            raise ValueError(f"mode must be 'stream' or 'external', got {mode!r}")
        self.client = client
        self.mode = mode
        self.num_frames = num_frames
        self.max_new_tokens = max_new_tokens
        self.query_timeout = query_timeout
        self.frame_timeout = frame_timeout
        self.busy_timeout = busy_timeout
        self.owns_client = owns_client
        self.name = f"live {client.query_name} ({mode})"
        self.meaningless = client.get_parameter("model_source") == "tiny_random"
        self.last_stream: StreamStats | None = None

    def start_scene(self, scene: Scene) -> None:
        if self.mode == "external":
            return
        frames = load_scene_frames(scene.media, self.num_frames)
        try:
            self.client.reset(timeout=self.frame_timeout)
            self.last_stream = self.client.stream_frames(frames.images, timeout_per_frame=self.frame_timeout)
        except LiveError as exc:
            raise SceneError(str(exc)) from None

    def answer(self, row, options) -> Reply:
        max_frames = self.num_frames
        state = self.client.state
        if state is not None and state.window_capacity:
            max_frames = min(max_frames, state.window_capacity)  # more is refused (BAD_MAX_FRAMES)
        reply = self.client.ask(row.question, options, max_frames=max_frames, max_new_tokens=self.max_new_tokens,
                                timeout=self.query_timeout, busy_timeout=self.busy_timeout)
        if not reply.success:
            return Reply(error=reply.error or "INTERNAL: the node gave no reason")
        return Reply(text=reply.answer, frames_used=reply.frames_used, latency_s=reply.latency_s)

    def end_scene(self) -> None:
        pass

    def close(self) -> None:
        if self.owns_client:
            self.client.close()
