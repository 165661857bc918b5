"""``vlm3r-sim-bridge``: a simulated camera walking through a room, published to ROS 2.

    vlm3r-sim-bridge --ros-args --params-file config/sim_bridge.yaml
    vlm3r-sim-bridge --ros-args -p num_frames:=16 -p width:=160 -p height:=120 -p output_dir:=out/sim

A thin shell over :mod:`vlm3r_ros.sim`: ``make_simulation`` builds the scene (from ``seed`` or
``scene_file``), the camera trajectory (generated or ``trajectory_file``) and the renderer
(``backend``: pybullet here, habitat where habitat-sim is installed). The node renders the
frames in order and publishes, per frame, in this order:

* ``/clock`` (rosgraph_msgs/Clock): the frame's simulation time, ``start_time`` + the
  trajectory time. Between frames it ticks at ``clock_rate_hz``, interpolating towards the
  next frame's time without reaching it. Nodes started with ``use_sim_time:=true`` follow it.
* ``/tf`` (tf2_msgs/TFMessage): ``odom -> base_link``, the true pose;
  ``/tf_static`` (once, latched): ``map -> odom`` (identity: perfect odometry),
  ``base_link -> camera_link`` (``camera_mount``) and ``camera_link -> camera_optical_frame``.
  Frame ids per REP 105 are parameters; :mod:`vlm3r_ros.ros.sim_messages` explains the chain.
* ``odom`` (nav_msgs/Odometry): base_link in odom, twist by backward difference.
* ``camera_info`` (sensor_msgs/CameraInfo, the exact intrinsics), ``depth/camera_info`` (the
  same), ``depth/image`` (sensor_msgs/Image, 32FC1 metres, REP 118; when the backend renders
  depth and ``publish_depth``) and, last, ``image`` (sensor_msgs/Image, rgb8), all with the
  frame's stamp and ``frame_id`` = the optical frame.
* ``scene_graph`` (std_msgs/String, reliable + transient local: late subscribers get the last
  one): the ground truth as JSON in the metadata layout of :mod:`vlm3r_ros.data.metadata`
  (:func:`vlm3r_ros.ros.sim_messages.scene_graph_payload`) for the frames published so far:
  at the start (no frames), every ``scene_graph_every`` frames and at the end of each pass.
  With ``output_dir`` it is also written there (see :func:`write_outputs`; the scene and
  trajectory files once, :func:`write_simulation`).

Wall-clock pacing: ``rate_hz`` frames per second (0: the trajectory's own rate, so simulation
time runs at real speed). A frame whose rendering makes it late restarts the schedule and is
counted. When the trajectory ends the node logs a report and exits with status 0
(``exit_when_done``), or keeps its latched topics up until SIGINT; with ``loop`` it starts
again and simulation time keeps increasing (the ground truth stays one pass: frame ids are
trajectory indices).

Exit status: 0 done or stopped by SIGINT/SIGTERM (the files then hold the frames published so
far); 1 the simulation could not start or failed (the reason is logged); 2 a parameter value
refused at start; 3 ``wait_for_subscribers`` timed out.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path

from vlm3r_ros.data.metadata import save_scene_graphs
from vlm3r_ros.ros.params import ParamSpec, frame_id_problem
from vlm3r_ros.sim.core import Intrinsics, Trajectory
from vlm3r_ros.sim.factory import make_simulation

NODE_NAME = "vlm3r_sim_bridge"
EXIT_OK, EXIT_FAILED, EXIT_BAD_PARAMETER, EXIT_NO_SUBSCRIBERS = 0, 1, 2, 3
OUTPUT_DATASET, OUTPUT_SPLIT = "sim", "run"  # output_dir/sim_metadata_run.json, sim_frame_metadata_run.json
SCENE_GRAPH_FILE = "scene_graph.json"  # the scene_graph topic's JSON, as a file
SUMMARY_FILE = "run.json"
# Lockstep: a frame the consumer has not received within this is published again (same stamp).
# Images are best effort at the consumer, so one can be lost in transit; the consumer's ~/state
# counts a received frame within its state_period (0.5 s) even while its model runs.
LOCKSTEP_RESEND_S = 5.0

PARAMETERS: tuple[ParamSpec, ...] = (
    # -- simulation
    ParamSpec("backend", "pybullet", "Renderer: 'pybullet' (runs anywhere) or 'habitat' (needs habitat-sim).",
              choices=("pybullet", "habitat")),
    ParamSpec("seed", 0, "Seed of the generated scene and trajectory.", int_range=(0, 2**31 - 1)),
    ParamSpec("scene_file", "", "Scene file (JSON/YAML, docs/sim.md; a Habitat scene for backend habitat). "
              "Empty: a room generated from seed."),
    ParamSpec("trajectory_file", "", "Trajectory file (JSON, docs/sim.md). Empty: generate trajectory_kind."),
    ParamSpec("trajectory_kind", "handheld", "Generated camera path: 'handheld' (a person walking with a "
              "camera), 'patrol' (a wheeled robot) or 'scan' (turning on the spot: objects come into view "
              "one by one).", choices=("handheld", "patrol", "scan")),
    ParamSpec("num_frames", 60, "Frames of a generated trajectory.", int_range=(1, 1_000_000)),
    ParamSpec("fps", 10.0, "Frame rate of a generated trajectory (simulation time between frames = 1/fps).",
              float_range=(0.1, 1000.0)),
    ParamSpec("width", 640, "Image width in pixels (a trajectory file's camera is rescaled to it; 0 keeps "
              "the file's).", int_range=(0, 8192)),
    ParamSpec("height", 480, "Image height in pixels (0 keeps a trajectory file's).", int_range=(0, 8192)),
    ParamSpec("hfov_deg", 60.0, "Horizontal field of view of a generated trajectory's camera, degrees.",
              float_range=(1.0, 179.0)),
    # -- timing
    ParamSpec("rate_hz", 0.0, "Frames published per wall-clock second; 0: the trajectory's own rate "
              "(simulation time runs at real speed).", float_range=(0.0, 1000.0)),
    ParamSpec("start_time", 1.0, "Simulation time of the trajectory's time 0, seconds (stamps = start_time + "
              "trajectory time; not 0, which tf2 reads as 'latest').", float_range=(0.0, 1e9)),
    ParamSpec("publish_clock", True, "Publish /clock for nodes running with use_sim_time."),
    ParamSpec("clock_rate_hz", 100.0, "/clock ticks per wall-clock second between frames; 0: only at "
              "frames.", float_range=(0.0, 10_000.0)),
    ParamSpec("loop", False, "Start the trajectory again when it ends (simulation time keeps increasing)."),
    ParamSpec("exit_when_done", True, "Exit when the trajectory ends (without loop); false keeps the "
              "latched topics up until SIGINT."),
    ParamSpec("wait_for_subscribers", 0, "Wait until this many subscribers match the image topic before "
              "the first frame.", int_range=(0, 1000)),
    ParamSpec("wait_timeout", 60.0, "Give up waiting for subscribers after this many seconds (exit 3).",
              float_range=(0.1, 86400.0)),
    ParamSpec("lockstep_state_topic", "", "vlm3r_ros/SpatialState topic of a consumer node (e.g. "
              "'vlm3r_node/state'): publish the next frame only once that node has handled the last one, so it "
              "takes every frame however slow it is. Empty: off (frames follow rate_hz only).",
              constraints="empty or a valid ROS topic name"),
    ParamSpec("lockstep_timeout", 60.0, "Seconds to wait for the consumer in lockstep before going on (the "
              "frame is counted as not confirmed).", float_range=(0.1, 86400.0)),
    # -- topics and frames
    ParamSpec("image_topic", "image", "sensor_msgs/Image topic (vlm3r-node's default input).",
              constraints="a valid ROS topic name"),
    ParamSpec("camera_info_topic", "", "sensor_msgs/CameraInfo topic. Empty: the image topic's sibling "
              "'camera_info'."),
    ParamSpec("publish_depth", True, "Publish the rendered depth (REP 118: 32FC1, metres along the optical "
              "axis, NaN invalid, +Inf nothing within range) on depth_topic, and the camera info on its "
              "sibling 'camera_info'. A backend without depth publishes none (logged once)."),
    ParamSpec("depth_topic", "depth/image", "sensor_msgs/Image depth topic (the openni/REP 118 name; its "
              "camera info goes to the sibling 'camera_info', e.g. depth/camera_info).",
              constraints="a valid ROS topic name, not image_topic"),
    ParamSpec("odom_topic", "odom", "nav_msgs/Odometry topic.", constraints="a valid ROS topic name"),
    ParamSpec("scene_graph_topic", "scene_graph", "std_msgs/String topic of the ground-truth scene graph "
              "(JSON; transient local).", constraints="a valid ROS topic name"),
    ParamSpec("image_qos_reliability", "reliable", "Reliability of the images (RGB and depth) and camera info: "
              "'reliable' (matches every subscriber) or 'best_effort'.", choices=("reliable", "best_effort")),
    ParamSpec("image_qos_depth", 5, "History depth of the images and camera info.", int_range=(1, 1000)),
    ParamSpec("scene_graph_every", 10, "Publish the scene graph of the frames so far every N frames; 0: only "
              "at the start and the end of each pass.", int_range=(0, 1_000_000)),
    ParamSpec("map_frame_id", "map", "REP 105 world frame (the simulator's z-up world).",
              constraints="a tf2 frame id"),
    ParamSpec("odom_frame_id", "odom", "REP 105 odometry frame (identical to map: perfect odometry).",
              constraints="a tf2 frame id"),
    ParamSpec("base_frame_id", "base_link", "Body frame carrying the camera.", constraints="a tf2 frame id"),
    ParamSpec("camera_frame_id", "camera_link", "Camera body frame (x forward, y left, z up).",
              constraints="a tf2 frame id"),
    ParamSpec("optical_frame_id", "camera_optical_frame", "Camera optical frame (z forward, x right, y down): "
              "the images' frame_id.", constraints="a tf2 frame id"),
    ParamSpec("camera_mount", (0.0, 0.0, 0.0, 0.0, 0.0, 0.0), "base_link -> camera_link as [x, y, z, roll, "
              "pitch, yaw] (m, rad); zeros: the camera is the body (handheld).",
              constraints="6 finite numbers"),
    # -- outputs
    ParamSpec("output_dir", "", "Folder for the ground truth files (scene_graph.json, sim_metadata_run.json, "
              "sim_frame_metadata_run.json, scene.json, trajectory.json, run.json). Empty: no files."),
)
PARAMETER_NAMES = tuple(p.name for p in PARAMETERS)
_SPECS = {p.name: p for p in PARAMETERS}
_TOPIC_PARAMETERS = ("image_topic", "depth_topic", "odom_topic", "scene_graph_topic")
_FRAME_PARAMETERS = ("map_frame_id", "odom_frame_id", "base_frame_id", "camera_frame_id", "optical_frame_id")


def check_parameter(name: str, value) -> str | None:
    """Validation beyond type and range. None when valid, else the reason (names the parameter,
    the value and what is allowed)."""
    spec = _SPECS.get(name)
    if spec is None:
        return None
    if spec.choices and value not in spec.choices:
        return f"{name} must be one of {', '.join(spec.choices)}; got {value!r}"
    if name in _FRAME_PARAMETERS and frame_id_problem(value):
        return f"{name} must be a tf2 frame id: {frame_id_problem(value)}; got {value!r}"
    if name in _TOPIC_PARAMETERS or (name in ("camera_info_topic", "lockstep_state_topic") and value):
        problem = _topic_name_problem(value)
        if problem is not None:
            return f"{name} is not a valid topic name: {value!r} ({problem})"
    if name == "camera_mount":
        values = list(value)
        if len(values) != 6 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return f"camera_mount must be 6 finite numbers [x, y, z, roll, pitch, yaw] (m, rad); got {values!r}"
    if name in ("width", "height") and value and value < 8:
        return f"{name} must be 0 (keep) or at least 8 pixels; got {value}"
    return None


def _topic_name_problem(value: str) -> str | None:
    from rclpy.exceptions import InvalidTopicNameException
    from rclpy.expand_topic_name import expand_topic_name
    from rclpy.validate_full_topic_name import validate_full_topic_name

    try:
        validate_full_topic_name(expand_topic_name(value, NODE_NAME, "/"))
    except (InvalidTopicNameException, ValueError) as exc:
        return str(exc).split(", at /")[0].splitlines()[0].rstrip(":")  # no rcl source location
    return None


@dataclass(frozen=True)
class BridgeSettings:
    """Every parameter's value, read once at start."""

    backend: str
    seed: int
    scene_file: str
    trajectory_file: str
    trajectory_kind: str
    num_frames: int
    fps: float
    width: int
    height: int
    hfov_deg: float
    rate_hz: float
    start_time: float
    publish_clock: bool
    clock_rate_hz: float
    loop: bool
    exit_when_done: bool
    wait_for_subscribers: int
    wait_timeout: float
    lockstep_state_topic: str
    lockstep_timeout: float
    image_topic: str
    camera_info_topic: str
    publish_depth: bool
    depth_topic: str
    odom_topic: str
    scene_graph_topic: str
    image_qos_reliability: str
    image_qos_depth: int
    scene_graph_every: int
    map_frame_id: str
    odom_frame_id: str
    base_frame_id: str
    camera_frame_id: str
    optical_frame_id: str
    camera_mount: tuple
    output_dir: str

    def check(self) -> None:
        """Cross-parameter checks (single values are checked by :func:`check_parameter`)."""
        if (self.width == 0) != (self.height == 0):
            raise ValueError(f"width and height must both be 0 (keep the trajectory file's size) or both set; "
                             f"got {self.width}x{self.height}")
        if not self.trajectory_file and self.width == 0:
            raise ValueError("width and height 0 keep a trajectory FILE's size; a generated trajectory needs a "
                             "size: set width and height (e.g. 640 and 480)")
        frame_ids = [getattr(self, n) for n in _FRAME_PARAMETERS]
        if len(set(frame_ids)) != len(frame_ids):
            raise ValueError(f"the five frame ids must differ; got {frame_ids}")
        if self.publish_depth and self.depth_topic == self.image_topic:
            raise ValueError(f"depth_topic must differ from image_topic (got {self.depth_topic!r} for both); "
                             f"e.g. depth/image")


# ---------------------------------------------------------------------------------- simulation
def build_simulation(settings: BridgeSettings):
    """The :class:`vlm3r_ros.sim.core.Simulation` the settings describe (no ROS here)."""

    trajectory = None
    intrinsics = None
    if settings.trajectory_file:
        trajectory = Trajectory.load(settings.trajectory_file)
        if settings.width:
            trajectory = trajectory.with_intrinsics(trajectory.intrinsics.scaled(settings.width, settings.height))
    else:
        intrinsics = Intrinsics.from_hfov(settings.width, settings.height, settings.hfov_deg)
    return make_simulation(settings.backend, scene=settings.scene_file or None, seed=settings.seed,
                           trajectory=trajectory, trajectory_kind=settings.trajectory_kind,
                           n_frames=settings.num_frames, fps=settings.fps, intrinsics=intrinsics)


def pass_period_s(times) -> float:
    """Simulation time one pass takes before the next starts: its span plus one frame step."""
    if len(times) < 2:
        return 1.0
    return float(times[-1] - times[0]) + float(times[-1] - times[-2])


def write_simulation(output_dir: Path, sim) -> list[Path]:
    """The scene and trajectory files (to run the same simulation again): once per run, as
    neither changes while it runs."""
    output_dir.mkdir(parents=True, exist_ok=True)
    return [sim.scene.save(output_dir / "scene.json"), sim.trajectory.save(output_dir / "trajectory.json")]


def write_outputs(output_dir: Path, graph, payload: str, summary: dict) -> list[Path]:
    """The ground truth so far as files: scene_graph.json (the topic's JSON), the two metadata
    files of :func:`vlm3r_ros.data.metadata.save_scene_graphs` (dataset 'sim', split 'run')
    and run.json (the report)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    written = [output_dir / SCENE_GRAPH_FILE]
    _atomic_write(written[0], payload)
    written += list(save_scene_graphs([graph], output_dir, OUTPUT_DATASET, OUTPUT_SPLIT))
    summary_path = output_dir / SUMMARY_FILE
    _atomic_write(summary_path, json.dumps(summary, indent=1))
    written.append(summary_path)
    return written


def _atomic_write(path: Path, text: str) -> None:
    """Readers never see half a file (sim_eval may read while the bridge writes)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------- the node
def _make_node_class():
    """The rclpy node class (built on first use, so this module imports without rclpy)."""
    from nav_msgs.msg import Odometry
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rcl_interfaces.msg import SetParametersResult
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import String
    from tf2_msgs.msg import TFMessage

    from vlm3r_ros.ros import image_messages
    from vlm3r_ros.ros import sim_messages as sm

    class SimBridgeNode(Node):
        """Publishes a :class:`~vlm3r_ros.sim.core.Simulation` (see the module docstring)."""

        def __init__(self, *, context=None, cli_args=None):
            super().__init__(NODE_NAME, context=context, cli_args=cli_args)
            for spec in PARAMETERS:
                self.declare_parameter(spec.name, spec.declared_default, spec.descriptor())
            self.add_on_set_parameters_callback(self._on_set_parameters)
            values = {}
            for f in fields(BridgeSettings):
                value = self.get_parameter(f.name).value
                reason = check_parameter(f.name, value)
                if reason is not None:  # a value from the command line or a params file
                    raise ValueError(reason)
                values[f.name] = tuple(value) if f.name == "camera_mount" else value
            self.settings = BridgeSettings(**values)
            self.settings.check()
            s = self.settings
            self.frames = sm.FrameIds(s.map_frame_id, s.odom_frame_id, s.base_frame_id, s.camera_frame_id,
                                      s.optical_frame_id)
            self.mount = sm.mount_transform(s.camera_mount)

            reliability = (ReliabilityPolicy.RELIABLE if s.image_qos_reliability == "reliable"
                           else ReliabilityPolicy.BEST_EFFORT)
            image_qos = QoSProfile(depth=s.image_qos_depth, reliability=reliability)
            latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self.image_pub = self.create_publisher(Image, s.image_topic, image_qos)
            self.info_pub = self.create_publisher(
                CameraInfo, s.camera_info_topic or image_messages.camera_info_topic(s.image_topic), image_qos)
            self.depth_pub = self.depth_info_pub = None
            if s.publish_depth:
                self.depth_pub = self.create_publisher(Image, s.depth_topic, image_qos)
                depth_info_topic = image_messages.camera_info_topic(s.depth_topic)
                if self.resolve_topic_name(depth_info_topic) != self.info_pub.topic_name:
                    self.depth_info_pub = self.create_publisher(CameraInfo, depth_info_topic, image_qos)
            self.odom_pub = self.create_publisher(Odometry, s.odom_topic, 10)
            # /tf and /tf_static as tf2_ros's broadcasters set them up (depth 100; static: latched).
            self.tf_pub = self.create_publisher(TFMessage, "/tf", 100)
            self.tf_static_pub = self.create_publisher(TFMessage, "/tf_static", latched)
            self.clock_pub = self.create_publisher(Clock, "/clock", 10) if s.publish_clock else None
            self.scene_graph_pub = self.create_publisher(String, s.scene_graph_topic, latched)
            self._consumer_state = None  # latest SpatialState of the lockstep consumer
            self.resent = 0  # lockstep frames published again because the consumer never received them
            self._consumer_cond = threading.Condition()
            if s.lockstep_state_topic:
                from vlm3r_ros.msg import SpatialState

                # vlm3r-node latches ~/state (reliable, transient local): the last one arrives at once.
                self.create_subscription(SpatialState, s.lockstep_state_topic, self._on_consumer_state, latched)

            self.sim = None
            self.done = threading.Event()  # the run thread finished (or failed)
            self.stop_requested = threading.Event()
            self.exit_code = EXIT_OK
            self.report: dict = {}
            self._thread: threading.Thread | None = None
            self._published_indices: set[int] = set()  # trajectory indices published (any pass)
            self._frame_stamps_ns: dict[int, int] = {}  # trajectory index -> stamp of its last publication
            self._last_stamp_ns = 0
            self._warned_no_depth = False
            self.frames_published = 0

        # --- parameters: every one is read-only (read once at start) --------------------------
        def _on_set_parameters(self, params) -> SetParametersResult:
            for p in params:
                reason = check_parameter(p.name, p.value)
                if reason is not None:
                    return SetParametersResult(successful=False, reason=reason)
            return SetParametersResult(successful=True)

        # --- start ------------------------------------------------------------------------------
        def start(self) -> None:
            """Build the simulation (may raise), publish the static frames and the empty ground
            truth, then run the frames on a thread."""
            s = self.settings
            t0 = time.monotonic()
            self.sim = build_simulation(s)
            traj = self.sim.trajectory
            intr = traj.intrinsics
            self.get_logger().info(
                f"simulation ready in {time.monotonic() - t0:.1f} s: backend {s.backend}, scene "
                f"{self.sim.scene.name!r} ({len(self.sim.scene.objects)} objects, "
                f"{self.sim.scene.room.area:.1f} m^2), {len(traj)} frames of {intr.width}x{intr.height} over "
                f"{traj.times[-1] - traj.times[0]:.2f} s of simulation time")
            start_ns = sm.seconds_to_ns(s.start_time)
            if self.clock_pub is not None:
                self.clock_pub.publish(sm.clock_message(start_ns))
            self.tf_static_pub.publish(TFMessage(transforms=sm.static_transforms(self.frames, self.mount, start_ns)))
            if s.output_dir:
                write_simulation(Path(s.output_dir), self.sim)
            self._publish_scene_graph(passes=0)
            self._thread = threading.Thread(target=self._run_guarded, name="sim_bridge_run", daemon=True)
            self._thread.start()

        def _run_guarded(self) -> None:
            try:
                self._run()
            except Exception as exc:  # noqa: BLE001 (reported, then the process exits 1)
                import traceback

                self.get_logger().error(f"simulation failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
                self.exit_code = EXIT_FAILED
            finally:
                self.done.set()

        # --- lockstep -----------------------------------------------------------------------------
        def _on_consumer_state(self, msg) -> None:
            with self._consumer_cond:
                self._consumer_state = msg
                self._consumer_cond.notify_all()

        def _wait_consumer(self, predicate, timeout: float):
            """The consumer's first state satisfying ``predicate`` within ``timeout`` s, else None."""
            deadline = time.monotonic() + timeout
            with self._consumer_cond:
                while self._consumer_state is None or not predicate(self._consumer_state):
                    left = deadline - time.monotonic()
                    if left <= 0 or self.stop_requested.is_set():
                        return None
                    self._consumer_cond.wait(min(left, 0.1))
                return self._consumer_state

        @staticmethod
        def _handled(state) -> int:
            return state.frames_processed + state.frames_dropped + state.frames_rejected

        def _consumer_took(self, image, received_before: int) -> bool:
            """Lockstep: wait until the consumer has received the frame just published and handled
            everything it received; a frame not received within LOCKSTEP_RESEND_S is published
            again. False when lockstep_timeout passes first (or on stop)."""
            deadline = time.monotonic() + self.settings.lockstep_timeout
            while self._wait_consumer(lambda st: st.frames_received > received_before,
                                      min(LOCKSTEP_RESEND_S, max(0.0, deadline - time.monotonic()))) is None:
                if self.stop_requested.is_set() or time.monotonic() >= deadline:
                    return False
                self.image_pub.publish(image)
                self.resent += 1
            return self._wait_consumer(lambda st: self._handled(st) >= st.frames_received,
                                       max(0.0, deadline - time.monotonic())) is not None

        # --- the frames ---------------------------------------------------------------------------
        def _wait_for_subscribers(self) -> bool:
            s = self.settings
            if not s.wait_for_subscribers:
                return True
            log = self.get_logger()
            log.info(f"waiting for {s.wait_for_subscribers} subscriber(s) on {self.image_pub.topic_name}")
            deadline = time.monotonic() + s.wait_timeout
            while self.image_pub.get_subscription_count() < s.wait_for_subscribers:
                if self.stop_requested.is_set():
                    return False
                if time.monotonic() > deadline:
                    log.error(f"only {self.image_pub.get_subscription_count()} of {s.wait_for_subscribers} "
                              f"subscriber(s) on {self.image_pub.topic_name} after {s.wait_timeout:g} s")
                    self.exit_code = EXIT_NO_SUBSCRIBERS
                    return False
                time.sleep(0.05)
            return True

        def _run(self) -> None:
            s = self.settings
            log = self.get_logger()
            if not self._wait_for_subscribers():
                return
            unconfirmed = 0
            if s.lockstep_state_topic:
                log.info(f"lockstep: waiting for the consumer's state on {s.lockstep_state_topic}")
                if self._wait_consumer(lambda st: True, s.wait_timeout) is None:
                    if not self.stop_requested.is_set():
                        log.error(f"lockstep: no state on {s.lockstep_state_topic} after {s.wait_timeout:g} s: "
                                  f"is the consumer running (and this the right topic)?")
                        self.exit_code = EXIT_NO_SUBSCRIBERS
                    return
            traj = self.sim.trajectory
            times_ns = [sm.seconds_to_ns(t - traj.times[0]) for t in traj.times]
            pass_ns = sm.seconds_to_ns(pass_period_s(traj.times))
            start_ns = sm.seconds_to_ns(s.start_time)
            image, info = Image(), CameraInfo()
            intr = traj.intrinsics
            image_messages.fill_camera_info(info, intr.width, intr.height, (intr.fx, intr.fy, intr.cx, intr.cy))
            image.header.frame_id = info.header.frame_id = self.frames.optical
            late = passes = 0
            previous = None  # (odom -> base (4, 4), stamp ns) of the last frame, for the twist
            due = None  # wall time the current frame is due
            wall_start = last_log = time.monotonic()
            pace = f"{s.rate_hz:g} Hz" if s.rate_hz else "real time (the trajectory's own rate)"
            log.info(f"publishing {len(traj)} frames at {pace} on {self.image_pub.topic_name} "
                     f"({s.image_qos_reliability}){', looping' if s.loop else ''}; sim time from {s.start_time:g} s")
            while not self.stop_requested.is_set():
                offset_ns = start_ns + passes * pass_ns
                for frame in self.sim:  # renders frame by frame
                    stamp_ns = offset_ns + times_ns[frame.index]
                    if due is None:
                        due = time.monotonic()
                    else:
                        # rate_hz: a fixed wall period; 0: the simulation time step itself (real time)
                        step = 1.0 / s.rate_hz if s.rate_hz else (stamp_ns - self._last_stamp_ns) / 1e9
                        due += step
                        if time.monotonic() - due > step:
                            # rendering (or the lockstep consumer, which sets the pace) fell behind:
                            # restart the schedule instead of bursting
                            late += 0 if s.lockstep_state_topic else 1
                            due = time.monotonic()
                        self._wait_ticking(due, self._last_stamp_ns, stamp_ns)
                    if self.stop_requested.is_set():
                        break
                    odom_base = sm.odom_to_base(frame.camera_to_world, self.mount)
                    if self.clock_pub is not None:
                        self.clock_pub.publish(sm.clock_message(stamp_ns))
                    self.tf_pub.publish(TFMessage(transforms=[
                        sm.transform_stamped(odom_base, self.frames.odom, self.frames.base, stamp_ns)]))
                    self.odom_pub.publish(sm.odometry(odom_base, stamp_ns, self.frames, previous))
                    previous = (odom_base, stamp_ns)
                    image.header.stamp = info.header.stamp = sm.ns_to_stamp(stamp_ns)
                    image_messages.fill_image(image, frame.rendered.rgb, "rgb8")
                    self.info_pub.publish(info)
                    self._publish_depth(frame.rendered.depth, info, stamp_ns)  # before the image lockstep waits on
                    before = self._consumer_state.frames_received if s.lockstep_state_topic else 0
                    self.image_pub.publish(image)
                    if s.lockstep_state_topic and not self._consumer_took(image, before) \
                            and not self.stop_requested.is_set():
                        unconfirmed += 1
                        log.warning(f"lockstep: the consumer did not confirm the frame of {stamp_ns / 1e9:.3f} s "
                                    f"within {s.lockstep_timeout:g} s; going on", throttle_duration_sec=5.0)
                    self._last_stamp_ns = stamp_ns
                    self._published_indices.add(frame.index)
                    self._frame_stamps_ns[frame.index] = stamp_ns
                    self.frames_published += 1
                    if s.scene_graph_every and self.frames_published % s.scene_graph_every == 0:
                        self._publish_scene_graph(passes=passes)
                    if time.monotonic() - last_log >= 2.0:
                        last_log = time.monotonic()
                        log.info(f"{self.frames_published} frames published, sim time {stamp_ns / 1e9:.2f} s, "
                                 f"{self.image_pub.get_subscription_count()} image subscriber(s)")
                else:
                    passes += 1
                if not s.loop:
                    break
            wall = time.monotonic() - wall_start
            n = self.frames_published
            self.report = dict(frames_published=n, passes=passes, late=late, unconfirmed=unconfirmed,
                               resent=self.resent,
                               lockstep=bool(s.lockstep_state_topic), wall_s=round(wall, 3),
                               rate_hz=round((n - 1) / wall, 3) if n > 1 and wall > 0 else None,
                               stopped=self.stop_requested.is_set(),
                               first_stamp_ns=self._frame_stamps_ns.get(0), last_stamp_ns=self._last_stamp_ns)
            files = self._publish_scene_graph(passes=passes)
            complete = len(self._published_indices) == len(traj)
            where = f"; files in {s.output_dir}" if files else ""
            log.info(f"trajectory {'finished' if complete else 'stopped'}: {n} frames in {wall:.1f} s "
                     f"({self.report['rate_hz'] or 0:.1f} Hz), {passes} full pass(es), {late} late"
                     f"{f', {unconfirmed} not confirmed by the lockstep consumer' if unconfirmed else ''}; "
                     f"ground truth of {len(self._published_indices)} of {len(traj)} trajectory frames on "
                     f"{self.scene_graph_pub.topic_name}{where}")

        def _publish_depth(self, depth, info, stamp_ns: int) -> None:
            if self.depth_pub is None:
                return
            if depth is None:
                if not self._warned_no_depth:
                    self._warned_no_depth = True
                    self.get_logger().warning(f"backend {self.settings.backend} renders no depth: nothing is "
                                              f"published on {self.depth_pub.topic_name}")
                return
            if self.depth_info_pub is not None:
                self.depth_info_pub.publish(info)
            self.depth_pub.publish(sm.depth_image(depth, stamp_ns, self.frames.optical))

        def _wait_ticking(self, until: float, from_ns: int, to_ns: int) -> None:
            """Sleep until the wall time ``until``, ticking /clock from ``from_ns`` towards ``to_ns``."""
            s = self.settings
            start = time.monotonic()
            span = max(until - start, 1e-9)
            tick = 1.0 / s.clock_rate_hz if (self.clock_pub is not None and s.clock_rate_hz > 0) else 0.05
            while not self.stop_requested.is_set():
                now = time.monotonic()
                if now >= until:
                    return
                time.sleep(min(until - now, tick))
                now = time.monotonic()
                if now < until and self.clock_pub is not None and s.clock_rate_hz > 0:
                    ns = sm.interpolated_sim_ns(from_ns, to_ns, (now - start) / span)
                    self.clock_pub.publish(sm.clock_message(ns))

        # --- ground truth -------------------------------------------------------------------------
        def _publish_scene_graph(self, *, passes: int) -> list[Path]:
            """The ground truth of every trajectory frame published so far: on the latched topic and,
            with output_dir, as files. Returns the files written."""
            s = self.settings
            graph = self.sim.ground_truth(sorted(self._published_indices))
            complete = len(self._published_indices) == len(self.sim.trajectory)
            payload = sm.scene_graph_payload(graph, self._frame_stamps_ns, complete=complete,
                                             frames_published=self.frames_published, passes=passes,
                                             backend=s.backend, extra={"start_time_s": s.start_time})
            self.scene_graph_pub.publish(String(data=payload))
            if not s.output_dir:
                return []
            summary = dict(self.report, backend=s.backend, seed=s.seed, scene_name=graph.scene_name,
                           frame_ids=self.frames.as_list(), image_topic=self.image_pub.topic_name,
                           frames_in_ground_truth=len(graph.frames), complete=complete)
            return write_outputs(Path(s.output_dir), graph, payload, summary)

        def close(self) -> None:
            self.stop_requested.set()
            if self._thread is not None:
                self._thread.join(timeout=10.0)
            if self.sim is not None:
                self.sim.close()

    return SimBridgeNode


_NODE_CLASS = None


def node_class():
    global _NODE_CLASS
    if _NODE_CLASS is None:
        _NODE_CLASS = _make_node_class()
    return _NODE_CLASS


# ---------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    from vlm3r_ros.ros import apply_transport_setting, ros_process

    transport = apply_transport_setting()  # large images over shared memory; before the participant exists

    from rclpy.exceptions import InvalidParameterValueException, ParameterException
    from rclpy.executors import SingleThreadedExecutor

    with ros_process(sys.argv if argv is None else argv) as (context, stop):
        node = executor = None
        try:
            try:
                node = node_class()(context=context)
            except (ValueError, TypeError, ParameterException, InvalidParameterValueException) as exc:
                # a value refused by a descriptor (type, range) or by check_parameter / BridgeSettings.check
                print(f"vlm3r-sim-bridge: error: {exc}", file=sys.stderr, flush=True)
                return EXIT_BAD_PARAMETER
            log = node.get_logger()
            log.info(transport)
            try:
                node.start()
            except Exception as exc:  # noqa: BLE001 (SimError, missing files, a missing backend: one line)
                log.error(f"could not start the simulation: {exc}")
                return EXIT_FAILED
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(node)
            while not stop.is_set() and context.ok():
                executor.spin_once(timeout_sec=0.05)
                if node.done.is_set() and (node.settings.exit_when_done or node.exit_code != EXIT_OK):
                    break
            if stop.is_set():
                log.info("interrupted: stopping")
                node.stop_requested.set()
                node.done.wait(timeout=30.0)
            _drain(node)
            return node.exit_code
        finally:
            if node is not None:
                node.close()
                if executor is not None:
                    executor.shutdown(timeout_sec=5.0)
                node.destroy_node()


def _drain(node) -> None:
    """Let reliable subscribers acknowledge the last messages before the participant goes."""
    from rclpy.duration import Duration

    pubs = (node.image_pub, node.info_pub, node.depth_pub, node.depth_info_pub, node.scene_graph_pub, node.tf_pub,
            node.odom_pub)
    for pub in (p for p in pubs if p is not None):  # the depth ones exist only with publish_depth
        try:
            pub.wait_for_all_acked(Duration(seconds=1.0))
        except Exception:  # noqa: BLE001 (best effort publishers cannot be waited for)
            pass


if __name__ == "__main__":
    sys.exit(main())
