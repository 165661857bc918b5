"""``SpatialNode``: camera in, rolling window of fused tokens, ``spatial_query`` out.

A thin lifecycle node over the ROS-free :class:`~vlm3r_ros.engine.spatial_engine.SpatialEngine`:
it declares and validates parameters (the table and the engine they build are in
:mod:`vlm3r_ros.ros.node_settings`), converts messages, runs one worker thread and publishes. All
model logic is in the engine.

Lifecycle (``rclpy.lifecycle``; ``autostart`` runs configure + activate at start):

* configure: read the parameters, load the models (tiny random or local files) into a
  ``SpatialEngine``; create the publishers and the services.
* activate: subscribe to the camera; start the worker thread and the timers.
* deactivate: unsubscribe; stop the worker (joined); stop the timers.
* cleanup / shutdown: drop the services, publishers and the engine (frees the weights).

Threads and callback groups (on a ``MultiThreadedExecutor``, see :func:`~vlm3r_ros.ros.node_settings.executor_threads`):

* image callbacks (``_image_group``, mutually exclusive): decode and validate the image,
  put it in the :class:`LatestFrameSlot`; never run the model. A frame that replaces one
  still waiting is counted as dropped.
* the worker thread (not an executor thread): takes the latest frame, runs
  ``engine.ingest``, publishes pose, path, points and state.
* ``spatial_query`` (``_query_group``, re-entrant): the callback admits the question into the
  engine's bounded queue at once (``BUSY`` when full) and then waits, without CPU, for its one
  outcome. The executor has a thread for every question that may be running or waiting plus
  the other groups (:func:`~vlm3r_ros.ros.node_settings.executor_threads`), so admission never waits behind a question.
* the ``spatial_query`` action (same group): a goal goes through the same queue; feedback
  (the reply so far) is published from the engine's worker after every token; cancel stops
  generation after the decoding step in progress and frees the queue slot.
* ``~/reset`` (``_reset_group``) and the state/diagnostics timers (``_timer_group``) have
  their own groups, so neither waits for a query or for the camera.
* parameter and lifecycle services stay in the node's default group.

Topics (names relative, so namespaces and remapping work): subscribes ``image``
(sensor_msgs/Image; the name is the ``image_topic`` parameter) and optionally a
sensor_msgs/CompressedImage topic; publishes ``~/state``, ``~/pose``, ``~/path``,
``~/points`` and ``/diagnostics``; serves ``spatial_query`` and ``~/reset``.
Every output is stamped with the stamp of the input image it comes from; frames are
described in :mod:`vlm3r_ros.ros.conversions`.
"""

from __future__ import annotations

import collections
import math
import os
import resource
import threading
import time
import traceback
from dataclasses import dataclass, fields

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Pose
from nav_msgs.msg import Path
from rcl_interfaces.msg import SetParametersResult
from rclpy.action import ActionServer, CancelResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import Trigger

from vlm3r_ros.action import SpatialQuery as SpatialQueryAction
from vlm3r_ros.engine.points_schedule import PointsSchedule
from vlm3r_ros.engine.spatial_engine import EngineError
from vlm3r_ros.msg import SpatialState
from vlm3r_ros.ros import conversions, image_qos
from vlm3r_ros.ros.node_settings import (NODE_NAME, PARAMETER_SPECS, PARAMETERS, ConfigError, NodeSettings,
                                         build_engine, check_parameter)
from vlm3r_ros.srv import SpatialQuery

POINTS_MIN_CONFIDENCE = 1.5  # CUT3R demo's point-cloud threshold (confidence >= 1 by construction)
QOS_RECHECK_PERIOD_S = 0.5  # image_qos_reliability auto: how often the topic's publishers are looked at


# ---------------------------------------------------------------------------------- frames
@dataclass
class Frame:
    """A decoded input frame waiting for the worker."""

    rgb: np.ndarray  # (H, W, 3) uint8
    stamp_ns: int  # the input image's header stamp
    camera_frame_id: str
    received: float  # time.monotonic() when the callback got it


class LatestFrameSlot:
    """A one-frame mailbox: ``put`` replaces what is waiting; ``take`` waits for a frame."""

    def __init__(self):
        self._cond = threading.Condition()
        self._frame: Frame | None = None

    def put(self, frame: Frame) -> bool:
        """Store ``frame``; True when it replaced a frame nobody took (a drop)."""
        with self._cond:
            replaced = self._frame is not None
            self._frame = frame
            self._cond.notify()
            return replaced

    def take(self, timeout: float) -> Frame | None:
        with self._cond:
            if self._frame is None:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return frame

    def clear(self) -> int:
        """Forget a waiting frame; returns 1 if there was one, else 0."""
        with self._cond:
            had = self._frame is not None
            self._frame = None
            return int(had)


@dataclass
class Counters:
    """Input counters since the node was created (they never decrease)."""

    received: int = 0
    processed: int = 0
    dropped: int = 0
    rejected: int = 0
    lost: int = 0  # reported lost in transport by the middleware (message_lost events)
    last_rejection: str = ""
    last_step_s: float = math.nan
    last_latency_s: float = math.nan  # image callback -> outputs published
    last_enqueued_stamp_ns: int = 0
    camera_frame_id: str = ""


def _rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------- the node
# Requests are never dropped by DDS: the reader keeps all (so its depth is never below the queue's),
# the node answers BUSY itself. Responses likewise, so a burst of answers to one client all arrive.
QUERY_SERVICE_QOS = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE,
                               durability=DurabilityPolicy.VOLATILE)
STATE_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
LATCHED_QOS = STATE_QOS
OUTPUT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


class SpatialNode(LifecycleNode):
    """The vlm3r_ros node. Construct, then configure + activate (``main`` does so when
    ``autostart`` is true). See the module docstring for threads, topics and services."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        # Which callbacks may overlap: a query with anything; images, reset and timers
        # with each other and with queries, never with themselves.
        self._image_group = MutuallyExclusiveCallbackGroup()
        self._query_group = ReentrantCallbackGroup()
        self._reset_group = MutuallyExclusiveCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()

        self.settings: NodeSettings | None = None
        self._engine = None
        self._active = False
        self._lock = threading.Lock()  # counters, path, last pose
        self._counters = Counters()
        self._slot = LatestFrameSlot()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._path = collections.deque(maxlen=PARAMETER_SPECS["path_max_length"].default)
        self._path_key = None  # (segment id, world frame) of the poses in _path
        self._last_pose = Pose()
        self._points_schedule = PointsSchedule()  # which frames run the dense points head
        self._last_processed_stamp_ns = 0
        self._diag_prev = (time.monotonic(), 0, 0, 0)
        self._lifecycle_label = "unconfigured"  # kept here: rclpy has no public getter
        self._lost_advice = ""  # the last frames-lost warning (shown in /diagnostics)
        self._image_subs: list[image_qos.CameraSubscription] = []
        self._timer_list = []
        self._service_list = []
        self._pubs = {}
        self._queries_received = 0  # spatial_query requests taken from DDS (under _lock)
        self._queries_not_active = 0  # answered NOT_ACTIVE
        self._action_server = None
        self._goal_tickets = {}  # goal id (bytes) -> the engine's Ticket, for cancel (under _lock)
        self._early_cancels = set()  # goal ids cancelled before their ticket existed (under _lock)

        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.declare_parameters("", [(p.name, p.default, p.descriptor()) for p in PARAMETERS])
        # /diagnostics in every lifecycle state (a plain publisher and timer, as diagnostic_updater
        # does), so an aggregator sees "inactive" rather than a stale entry.
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", OUTPUT_QOS)
        self._diagnostics_timer = self.create_timer(self._param("diagnostics_period"), self._publish_diagnostics,
                                                    callback_group=self._timer_group)

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            reason = check_parameter(param.name, param.value)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
        for param in params:  # all valid: apply what can change at run time
            if param.name == "path_max_length":
                with self._lock:
                    self._path = collections.deque(self._path, maxlen=param.value)
            if param.name == "world_frame_id":
                with self._lock:
                    self._path.clear()
        return SetParametersResult(successful=True)

    def current_state_label(self) -> str:
        """The lifecycle state: unconfigured, inactive, active or finalized (as the transitions left it)."""
        return self._lifecycle_label

    def _transition_done(self, result: TransitionCallbackReturn, label: str) -> TransitionCallbackReturn:
        if result == TransitionCallbackReturn.SUCCESS:
            self._lifecycle_label = label
        return result

    def _param(self, name: str):
        return self.get_parameter(name).value

    def read_settings(self) -> NodeSettings:
        return NodeSettings(**{f.name: self._param(f.name) for f in fields(NodeSettings)})

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            settings = self.read_settings()
            settings.engine_config()  # cross-parameter checks before the slow load
            self.get_logger().info(f"loading {settings.model_source} weights on {settings.device} "
                                   f"({settings.dtype}) ...")
            start = time.monotonic()
            engine = build_engine(settings)
        except ConfigError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE  # stays unconfigured
        except Exception:  # noqa: BLE001 - rclpy would swallow it without a word
            self.get_logger().error(f"configure failed:\n{traceback.format_exc()}")
            return TransitionCallbackReturn.FAILURE
        self.settings, self._engine = settings, engine
        if settings.model_source == "tiny_random":
            self.get_logger().warning("TINY RANDOM WEIGHTS: answers, poses and points are meaningless")
        if settings.llm_backend == "openai":
            self._log_llm_server(engine.pipeline.llm)
        pubs = self._pubs
        pubs["state"] = self.create_lifecycle_publisher(SpatialState, "~/state", STATE_QOS)
        pubs["pose"] = self.create_lifecycle_publisher(conversions.PoseStamped, "~/pose", OUTPUT_QOS)
        pubs["path"] = self.create_lifecycle_publisher(Path, "~/path", LATCHED_QOS)
        pubs["points"] = self.create_lifecycle_publisher(conversions.PointCloud2, "~/points", LATCHED_QOS)
        self._service_list = [
            self.create_service(SpatialQuery, "spatial_query", self._on_query, qos_profile=QUERY_SERVICE_QOS,
                                callback_group=self._query_group),
            self.create_service(Trigger, "~/reset", self._on_reset, callback_group=self._reset_group),
        ]
        self._action_server = ActionServer(
            self, SpatialQueryAction, "spatial_query", self._execute_goal, cancel_callback=self._on_cancel,
            callback_group=self._query_group, goal_service_qos_profile=QUERY_SERVICE_QOS,
            result_service_qos_profile=QUERY_SERVICE_QOS, cancel_service_qos_profile=QUERY_SERVICE_QOS)
        self.get_logger().info(f"configured in {time.monotonic() - start:.1f} s: window of "
                               f"{settings.window_capacity} frames, {settings.max_concurrent_queries} "
                               f"concurrent question(s), {settings.query_queue_depth} more may wait")
        return self._transition_done(TransitionCallbackReturn.SUCCESS, "inactive")

    def _log_llm_server(self, llm) -> None:
        """Say at start whether the LLM server answers; a dead one is no reason not to start."""
        from vlm3r_ros.engine.llm_backend import LlmBackendError

        try:
            models = llm.server_models()
        except LlmBackendError as exc:
            self.get_logger().warning(f"{exc}; questions fail with LLM_UNAVAILABLE until it answers")
            return
        if llm.settings.model not in models:
            self.get_logger().warning(f"the LLM server at {llm.settings.url} serves {models}, not llm_model "
                                      f"{llm.settings.model!r}: questions will fail with LLM_REJECTED")
        else:
            self.get_logger().info(f"LLM server {llm.settings.url} serves {llm.settings.model!r}")

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # The lifecycle publishers first: a frame the worker finishes must not meet a disabled one.
        result = super().on_activate(state)
        try:
            self._activate()
        except Exception:  # noqa: BLE001 - rclpy would swallow it without a word
            self.get_logger().error(f"activate failed:\n{traceback.format_exc()}")
            self._deactivate()
            super().on_deactivate(state)
            return TransitionCallbackReturn.FAILURE
        service = self.resolve_service_name(self._service_list[0].srv_name)
        for sub in self._image_subs:
            self.get_logger().info(f"listening on {sub.describe()}")
        self.get_logger().info(f"active: serving {service}")
        self._publish_state()
        return self._transition_done(result, "active")

    def _activate(self) -> None:
        s = self.settings
        self._image_subs = [image_qos.CameraSubscription(
            self, Image, s.image_topic, self._on_image, s.image_qos_reliability, s.image_qos_depth,
            self._image_group, self._on_frames_lost)]
        if s.compressed_image_topic:
            self._image_subs.append(image_qos.CameraSubscription(
                self, CompressedImage, s.compressed_image_topic, self._on_compressed_image, s.image_qos_reliability,
                s.image_qos_depth, self._image_group, self._on_frames_lost))
        self._stop.clear()
        self._worker = threading.Thread(target=self._run_worker, name="vlm3r_worker")
        self._worker.start()
        self._timer_list = [self.create_timer(s.state_period, self._publish_state, callback_group=self._timer_group)]
        if s.image_qos_reliability == "auto":
            self._timer_list.append(self.create_timer(QOS_RECHECK_PERIOD_S, self._recheck_image_qos,
                                                      callback_group=self._timer_group))
        self._active = True

    def _recheck_image_qos(self) -> None:
        for sub in self._image_subs:
            change = sub.recheck()
            if change is not None:
                self.get_logger().info(change)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()  # subscriptions and worker stop before the publishers are disabled
        return self._transition_done(super().on_deactivate(state), "inactive")

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        return self._transition_done(TransitionCallbackReturn.SUCCESS, "unconfigured")

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._active:
            self._deactivate()
            super().on_deactivate(state)
        self._cleanup()
        return self._transition_done(TransitionCallbackReturn.SUCCESS, "finalized")

    def _deactivate(self) -> None:
        self._active = False
        for sub in self._image_subs:
            sub.destroy()
        for timer in self._timer_list:
            self.destroy_timer(timer)
        self._image_subs, self._timer_list = [], []
        self.stop_worker()

    def stop_worker(self, timeout: float = 30.0) -> bool:
        """Stop and join the worker (it finishes the frame in progress). True when it ended."""
        self._stop.set()
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.join(timeout)
            if worker.is_alive():
                self.get_logger().error(f"the worker thread did not stop within {timeout} s")
                return False
        return True

    def stop_queries(self, timeout: float = 30.0) -> bool:
        """Answer every waiting and running question (SHUTTING_DOWN) and refuse new ones; call before
        the executor stops, so the answers go out while the service exists. True when all ended."""
        engine = self._engine
        return engine.close(timeout) if engine is not None else True

    def _cleanup(self) -> None:
        self.stop_queries()
        if self._action_server is not None:
            self._action_server.destroy()
            self._action_server = None
        for service in self._service_list:
            self.destroy_service(service)
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._service_list, self._pubs = [], {}
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.pipeline.llm.close()  # the LLM server's connection pool, if any
            device_type = engine.pipeline.cut3r.device.type
            del engine
            if device_type == "cuda":
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ input
    def _on_image(self, msg: Image) -> None:
        self._count_received()
        try:
            rgb = conversions.image_to_rgb(msg, self.settings.max_image_pixels)
        except EngineError as exc:
            self._reject(exc.message, msg.header.frame_id)
            return
        self._enqueue(rgb, msg.header)

    def _on_compressed_image(self, msg: CompressedImage) -> None:
        self._count_received()
        try:
            rgb = conversions.compressed_image_to_rgb(msg, self.settings.max_image_pixels)
        except EngineError as exc:
            self._reject(exc.message, msg.header.frame_id)
            return
        self._enqueue(rgb, msg.header)

    def _on_frames_lost(self, count: int, sub: image_qos.CameraSubscription) -> None:
        if count <= 0:
            return
        with self._lock:
            self._counters.lost += count
            self._lost_advice = image_qos.lost_frames_advice(self._counters.lost, sub.choice)
            advice = self._lost_advice
        self.get_logger().warning(f"{sub.topic_name}: {advice}", throttle_duration_sec=10.0)

    def _count_received(self) -> None:
        with self._lock:
            self._counters.received += 1

    def _enqueue(self, rgb: np.ndarray, header) -> None:
        stamp_ns = conversions.stamp_to_ns(header.stamp)
        with self._lock:
            last = self._counters.last_enqueued_stamp_ns
            if stamp_ns < last:
                reason = (f"stamp {stamp_ns * 1e-9:.3f} s is older than the previous frame's "
                          f"({last * 1e-9:.3f} s); call ~/reset to start a new segment after a time jump")
            else:
                reason = None
                self._counters.last_enqueued_stamp_ns = stamp_ns
        if reason is not None:
            self._reject(reason, header.frame_id)
            return
        if self._slot.put(Frame(rgb, stamp_ns, header.frame_id, time.monotonic())):
            with self._lock:
                self._counters.dropped += 1

    def _reject(self, reason: str, frame_id: str) -> None:
        with self._lock:
            self._counters.rejected += 1
            self._counters.last_rejection = reason
        self.get_logger().warning(f"rejected an image (frame '{frame_id}'): {reason}", throttle_duration_sec=5.0)

    # ------------------------------------------------------------------ worker
    def _run_worker(self) -> None:
        while not self._stop.is_set():
            frame = self._slot.take(timeout=0.1)
            if frame is None:
                continue
            try:
                self._process(frame)
            except Exception:  # noqa: BLE001 - the worker must survive any single frame
                self.get_logger().error(f"frame {frame.stamp_ns} failed:\n{traceback.format_exc()}",
                                        throttle_duration_sec=5.0)
                with self._lock:
                    self._counters.rejected += 1
                    self._counters.last_rejection = "INTERNAL: the model failed on this frame (see the log)"

    def _process(self, frame: Frame) -> None:
        engine = self._engine
        if engine is None:
            return
        points = self._param("publish_points") and self._points_schedule.due(
            frame.stamp_ns, self._param("points_period"), self._param("points_every_n_frames"))
        try:
            result = engine.ingest(frame.rgb, frame.stamp_ns, points=points)
        except EngineError as exc:
            self._reject(exc.message, frame.camera_frame_id)
            return
        if result.index < 0:  # a reset came while the model ran: the frame belongs to no segment
            with self._lock:
                self._counters.dropped += 1
            return
        world = self._param("world_frame_id")
        pose = None
        if result.c2w is not None:
            try:
                pose = conversions.pose_from_c2w(result.c2w)
            except ValueError as exc:  # e.g. a non-finite pose from a diverged model
                self.get_logger().warning(f"no pose for frame {frame.stamp_ns}: {exc}", throttle_duration_sec=5.0)
        if pose is not None:
            stamped = conversions.pose_stamped(pose, frame.stamp_ns, world)
            self._pubs["pose"].publish(stamped)
            with self._lock:
                if self._path_key != (result.segment_id, world):
                    self._path.clear()
                    self._path_key = (result.segment_id, world)
                self._path.append(stamped)
                path = Path(header=conversions.header(frame.stamp_ns, world), poses=list(self._path))
                self._last_pose = pose
            self._pubs["path"].publish(path)
        points = result.points_world  # None unless geometry is on and this frame's points were asked for
        self._points_schedule.record(frame.stamp_ns, points is not None)
        if points is not None and self._param("publish_points"):
            xyz, rgb = conversions.decimate_points(points, result.colors, max_points=self._param("points_max"),
                                                   confidence=result.confidence, min_confidence=POINTS_MIN_CONFIDENCE)
            cloud = conversions.point_cloud2(conversions.points_to_world(xyz), rgb, frame.stamp_ns, world)
            self._pubs["points"].publish(cloud)
        with self._lock:
            c = self._counters
            c.processed += 1
            c.last_step_s = result.step_seconds
            c.last_latency_s = time.monotonic() - frame.received
            c.camera_frame_id = frame.camera_frame_id
            self._last_processed_stamp_ns = frame.stamp_ns
        self._publish_state()

    # ------------------------------------------------------------------ outputs
    def state_message(self) -> SpatialState:
        engine = self._engine
        stats = engine.stats() if engine is not None else None
        msg = SpatialState()
        with self._lock:
            c = self._counters
            msg.header = conversions.header(self._last_processed_stamp_ns, self._param("world_frame_id"))
            msg.frames_received, msg.frames_processed = c.received, c.processed
            msg.frames_dropped, msg.frames_rejected, msg.frames_lost = c.dropped, c.rejected, c.lost
            msg.last_step_latency_s = c.last_step_s
            msg.camera_pose = self._last_pose
        if stats is not None:
            msg.window_size, msg.window_capacity, msg.segment_id = (stats.window_size, stats.window_capacity,
                                                                     stats.segment_id)
        return msg

    def _publish_state(self) -> None:
        pub = self._pubs.get("state")
        if pub is not None:
            pub.publish(self.state_message())

    def diagnostic_status(self) -> DiagnosticStatus:
        engine = self._engine
        stats = engine.stats() if engine is not None else None
        now = time.monotonic()
        with self._lock:
            c = Counters(**vars(self._counters))
            lost_advice = self._lost_advice
        then, received_then, processed_then, lost_then = self._diag_prev
        self._diag_prev = (now, c.received, c.processed, c.lost)
        elapsed = max(now - then, 1e-9)
        input_hz, processed_hz = (c.received - received_then) / elapsed, (c.processed - processed_then) / elapsed
        level, message = DiagnosticStatus.OK, "running"
        if not self._active:
            level, message = DiagnosticStatus.WARN, f"{self.current_state_label()}: not processing images"
        elif c.lost > lost_then:
            level, message = DiagnosticStatus.WARN, lost_advice
        elif c.received == 0:
            level, message = DiagnosticStatus.WARN, "no image received yet"
        elif input_hz == 0.0:
            level, message = DiagnosticStatus.WARN, "no image in the last period"
        elif c.dropped > 0 and input_hz > 0 and processed_hz < 0.5 * input_hz:
            message = "the model is slower than the camera: frames are dropped"
        values = {
            "input_rate_hz": f"{input_hz:.2f}",
            "processed_rate_hz": f"{processed_hz:.2f}",
            "step_latency_s": f"{c.last_step_s:.4f}",
            "input_to_output_latency_s": f"{c.last_latency_s:.4f}",
            "frames_received": c.received,
            "frames_processed": c.processed,
            "frames_dropped": c.dropped,
            "frames_rejected": c.rejected,
            "frames_lost_in_transport": c.lost,
            "last_rejection": c.last_rejection,
            "camera_frame_id": c.camera_frame_id,
            "memory_rss_mb": f"{_rss_bytes() / 2**20:.1f}",
        }
        if stats is not None:
            values.update({
                "window_size": stats.window_size,
                "window_capacity": stats.window_capacity,
                "window_fill": f"{stats.window_size / max(stats.window_capacity, 1):.3f}",
                "window_mb": f"{stats.window_bytes / 2**20:.2f}",
                "bytes_per_frame": stats.bytes_per_frame,
                "segment_id": stats.segment_id,
                "queries_answered": stats.queries_answered,
                "queries_refused_busy": stats.queries_refused,
            })
            values.update(query_diagnostics(stats, self._queries_received, self._queries_not_active))
        for i, sub in enumerate(list(self._image_subs)):
            suffix = "" if i == 0 else "_compressed"
            values[f"image_qos{suffix}"] = sub.choice.label
            values[f"image_qos{suffix}_reason"] = sub.choice.reason
        if self.settings is not None:
            values.update({"model_source": self.settings.model_source, "device": self.settings.device,
                           "dtype": self.settings.dtype})
        return DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: spatial memory",
                                message=message, hardware_id=self.settings.device if self.settings else "",
                                values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray(status=[self.diagnostic_status()])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(msg)

    # ------------------------------------------------------------------ services
    def _on_query(self, request: SpatialQuery.Request, response: SpatialQuery.Response) -> SpatialQuery.Response:
        start = time.perf_counter()
        with self._lock:
            self._queries_received += 1
        try:
            result = self._ask(request).result()  # this thread waits (no CPU) until the one outcome
        except EngineError as exc:
            fill_error(response, f"{exc.code}: {exc.message}")
        except Exception as exc:  # noqa: BLE001 - answer, never leave the caller hanging
            self.get_logger().error(f"question failed:\n{traceback.format_exc()}")
            fill_error(response, f"INTERNAL: {type(exc).__name__}: {exc}")
        else:
            fill_answer(response, result)
        response.latency_s = time.perf_counter() - start
        return response

    def _execute_goal(self, goal_handle) -> SpatialQueryAction.Result:
        """The action: the same question as the service, with feedback and cancel."""
        start = time.perf_counter()
        result, goal_id = SpatialQueryAction.Result(), bytes(goal_handle.goal_id.uuid)
        with self._lock:
            self._queries_received += 1

        def feedback(ids, text):  # from the engine's worker thread, after every token
            goal_handle.publish_feedback(SpatialQueryAction.Feedback(text=text, tokens_generated=len(ids)))

        try:
            ticket = self._ask(goal_handle.request, feedback)
            with self._lock:
                self._goal_tickets[goal_id] = ticket
                early_cancel = goal_id in self._early_cancels  # the cancel came before the ticket existed
            if early_cancel:
                ticket.cancel()
            answer = ticket.result()
        except EngineError as exc:
            fill_error(result, f"{exc.code}: {exc.message}")
        except Exception as exc:  # noqa: BLE001 - a result, never a hanging goal
            self.get_logger().error(f"question (action) failed:\n{traceback.format_exc()}")
            fill_error(result, f"INTERNAL: {type(exc).__name__}: {exc}")
        else:
            fill_answer(result, answer)
        finally:
            with self._lock:
                self._goal_tickets.pop(goal_id, None)
        with self._lock:  # terminal state and forgetting at once: a later cancel finds the goal inactive (_on_cancel)
            if result.success:
                goal_handle.succeed()
            elif goal_handle.is_cancel_requested and result.error.startswith("CANCELLED"):
                goal_handle.canceled()
            else:
                goal_handle.abort()
            self._early_cancels.discard(goal_id)
        result.latency_s = time.perf_counter() - start
        return result

    def _on_cancel(self, goal_handle) -> CancelResponse:
        goal_id = bytes(goal_handle.goal_id.uuid)
        with self._lock:
            ticket = self._goal_tickets.get(goal_id)
            if ticket is None and goal_handle.is_active:  # not admitted yet (an ended goal is never remembered)
                self._early_cancels.add(goal_id)
        if ticket is not None:
            ticket.cancel()  # waiting: leaves the queue; running: stops after the step in progress
        return CancelResponse.ACCEPT

    def _ask(self, request, on_token=None):
        """Admit a SpatialQuery request or goal into the engine's queue: its Ticket (EngineError if refused)."""
        engine = self._engine
        if not self._active or engine is None:
            with self._lock:
                self._queries_not_active += 1
            raise EngineError("NOT_ACTIVE", f"the node is {self.current_state_label()}, not active; "
                                            f"activate it first")
        return engine.submit(request.question, list(request.options), answer_type=request.answer_type,
                             max_frames=int(request.max_frames), window_seconds=float(request.window_seconds),
                             max_new_tokens=int(request.max_new_tokens), on_token=on_token)

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        engine = self._engine
        if not self._active or engine is None:
            response.success = False
            response.message = "NOT_ACTIVE: the node is not active; activate it first"
            return response
        segment = engine.reset()
        pending = self._slot.clear()
        with self._lock:
            self._counters.dropped += pending
            self._counters.last_enqueued_stamp_ns = 0
            self._path.clear()
            self._last_pose = Pose()
        self._points_schedule.reset()  # the new segment's first frame gets points
        self._publish_state()
        response.success = True
        response.message = f"segment {segment} started: the memory window is empty"
        self.get_logger().info(response.message)
        return response


def fill_error(response, error: str) -> None:
    """A failed SpatialQuery response (or action result): success false, the error, no answer."""
    response.success, response.error = False, error
    response.answer, response.choice, response.unit = "", "", ""
    response.value, response.frames_used = math.nan, 0


def fill_answer(response, result) -> None:
    """A SpatialQuery response (or action result) from the engine's QueryResult."""
    parsed = result.answer.parsed
    response.success, response.error = True, ""
    response.answer = result.answer.text
    response.choice = parsed.choice
    response.value = float(parsed.value)
    response.unit = parsed.unit if not math.isnan(parsed.value) else ""
    response.frames_used = result.frames_used
    response.window_start = conversions.ns_to_stamp(result.window_start_ns)
    response.window_end = conversions.ns_to_stamp(result.window_end_ns)


def query_diagnostics(stats, received: int, not_active: int) -> dict:
    """The question counters of /diagnostics. They add up: queries_received = queries_answered +
    queries_failed + queries_invalid + queries_not_active + queries_refused_busy + queries_timed_out +
    queries_cancelled + queries_shutting_down + queries_waiting + queries_running (+ the few a
    callback is admitting at the moment of the snapshot)."""
    q, c = stats.queue, stats.prefix_cache
    return {
        "queries_received": received,
        "queries_invalid": stats.queries_invalid,
        "queries_not_active": not_active,
        "queries_failed": q.failed,
        "queries_timed_out": q.timed_out,
        "queries_cancelled": q.cancelled,
        "queries_shutting_down": q.shut_down + q.refused_shutting_down,
        "queries_waiting": q.waiting,
        "queries_running": q.running,
        "query_queue_depth": q.depth,
        "prefix_cache_entries": c.entries,
        "prefix_cache_mb": f"{c.bytes / 2**20:.2f}",
        "prefix_cache_limit_mb": f"{c.max_bytes / 2**20:.0f}",
        "prefix_cache_hits": c.hits,
        "prefix_cache_misses": c.misses,
        "prefix_cache_extensions": c.extensions,
        "prefix_cache_evictions": c.evictions,
        "prefix_cache_prefetches": stats.prefix_prefetches,
        "prefix_cache_prefetch_failures": stats.prefix_prefetch_failures,
        "prefix_cache_prefetch_error": stats.prefix_prefetch_error or "none",
    }
