"""What ``vlm3r-sim-bridge`` publishes, as pure functions: frames, transforms, odometry,
depth images, clock and the ground-truth scene graph payload.

No rclpy and no simulator: numpy, message classes and :mod:`vlm3r_ros.data`. Unit-tested in
test/unit/test_sim_messages.py; :mod:`vlm3r_ros.tools.sim_eval` reads the scene graph
payload with :func:`scene_graph_from_payload`.

Frames (REP 103 axes, REP 105 names; the frame ids are parameters of the bridge):

    map --(identity, /tf_static)--> odom --(the true pose, /tf)--> base_link
        --(the camera mount, /tf_static)--> camera_link
        --(the optical rotation, /tf_static)--> camera_optical_frame

The simulator's world is ``map`` (metric, z up). Its trajectory gives camera-to-world poses
of the OPTICAL frame (OpenCV axes: x right, y down, z forward). ``camera_link`` is the same
camera with REP 103 body axes (x forward, y left, z up). ``base_link`` carries the camera on
a fixed mount (default identity: a handheld camera is its own body; a robot would set the
mount's height and tilt). Odometry is perfect, so ``map -> odom`` is the identity. Composing
the chain gives back exactly the trajectory's pose of ``camera_optical_frame`` in ``map``.
"""

from __future__ import annotations

import json
import math
from typing import Mapping, Sequence

import numpy as np
from geometry_msgs.msg import TransformStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import Image

from vlm3r_ros.data.scene_graph import SceneGraph
from vlm3r_ros.ros.image_messages import fill_image
from vlm3r_ros.ros.poses import NS_PER_S, header, matrix_to_pose, ns_to_stamp, quaternion_from_matrix

# Columns: the optical frame's axes (x right, y down, z forward) in camera_link (x forward,
# y left, z up). The rotation every ROS camera driver publishes (quaternion -0.5, 0.5, -0.5, 0.5).
OPTICAL_IN_LINK = np.array([[0.0, 0.0, 1.0],
                            [-1.0, 0.0, 0.0],
                            [0.0, -1.0, 0.0]])

PAYLOAD_FORMAT = "vlm3r_ros.sim.scene_graph/1"  # the JSON on the scene_graph topic


# ------------------------------------------------------------------ rigid transforms
def rigid(rotation=None, translation=None) -> np.ndarray:
    """A (4, 4) transform from a (3, 3) rotation and a (3,) translation."""
    out = np.eye(4)
    if rotation is not None:
        out[:3, :3] = rotation
    if translation is not None:
        out[:3, 3] = translation
    return out


def invert(transform: np.ndarray) -> np.ndarray:
    """Inverse of a rigid (4, 4) transform."""
    r, t = transform[:3, :3], transform[:3, 3]
    return rigid(r.T, -r.T @ t)


def rpy_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """(3, 3) rotation of ROS roll/pitch/yaw (radians): Rz(yaw) @ Ry(pitch) @ Rx(roll)."""
    cr, sr, cp, sp, cy, sy = math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch), \
        math.cos(yaw), math.sin(yaw)
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


def mount_transform(xyz_rpy: Sequence[float]) -> np.ndarray:
    """base_link -> camera_link from [x, y, z, roll, pitch, yaw] (metres, radians)."""
    values = [float(v) for v in xyz_rpy]
    if len(values) != 6 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"camera mount must be 6 finite numbers [x, y, z, roll, pitch, yaw] (m, rad), "
                         f"got {list(xyz_rpy)!r}")
    return rigid(rpy_matrix(*values[3:]), values[:3])


def odom_to_base(camera_to_world: np.ndarray, base_to_camera_link: np.ndarray) -> np.ndarray:
    """odom -> base_link (4, 4) such that the chain reproduces the optical pose exactly.

    camera_to_world: (4, 4) pose of the OPTICAL frame in map (= odom: perfect odometry).
    base_to_camera_link: (4, 4) the mount (:func:`mount_transform`).
    """
    c2w = np.asarray(camera_to_world, dtype=np.float64)
    if c2w.shape != (4, 4) or not np.all(np.isfinite(c2w)):
        raise ValueError(f"camera_to_world must be a finite (4, 4) matrix, got shape {c2w.shape}")
    world_camera_link = c2w @ invert(rigid(OPTICAL_IN_LINK))
    return world_camera_link @ invert(base_to_camera_link)


def transform_stamped(transform: np.ndarray, parent: str, child: str, stamp_ns: int) -> TransformStamped:
    """(4, 4) parent -> child transform as geometry_msgs/TransformStamped."""
    msg = TransformStamped()
    msg.header = header(stamp_ns, parent)
    msg.child_frame_id = child
    t = msg.transform
    t.translation.x, t.translation.y, t.translation.z = (float(v) for v in transform[:3, 3])
    t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w = quaternion_from_matrix(transform[:3, :3])
    return msg


def transform_to_matrix(t) -> np.ndarray:
    """geometry_msgs/Transform -> (4, 4)."""
    x, y, z, w = t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w
    rotation = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                         [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                         [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    return rigid(rotation, [t.translation.x, t.translation.y, t.translation.z])


def static_transforms(frames: "FrameIds", base_to_camera_link: np.ndarray, stamp_ns: int) -> list[TransformStamped]:
    """The fixed part of the chain: map -> odom (identity), the mount, the optical rotation."""
    return [
        transform_stamped(np.eye(4), frames.map, frames.odom, stamp_ns),
        transform_stamped(base_to_camera_link, frames.base, frames.camera, stamp_ns),
        transform_stamped(rigid(OPTICAL_IN_LINK), frames.camera, frames.optical, stamp_ns),
    ]


class FrameIds:
    """The five REP 105 frame ids the bridge uses."""

    def __init__(self, map: str = "map", odom: str = "odom", base: str = "base_link",
                 camera: str = "camera_link", optical: str = "camera_optical_frame"):
        self.map, self.odom, self.base, self.camera, self.optical = map, odom, base, camera, optical
        names = [map, odom, base, camera, optical]
        if len(set(names)) != len(names):
            raise ValueError(f"the frame ids must be five different names, got {names}")

    def as_list(self) -> list[str]:
        return [self.map, self.odom, self.base, self.camera, self.optical]


# ------------------------------------------------------------------ odometry
def odometry(odom_base: np.ndarray, stamp_ns: int, frames: FrameIds,
             previous: tuple[np.ndarray, int] | None = None) -> Odometry:
    """nav_msgs/Odometry of base_link in odom: the true pose, and the twist (in base_link,
    as REP 105 and nav_msgs say) from the previous pose by a backward difference (zero for
    the first). Covariances stay zero: ground truth."""
    msg = Odometry()
    msg.header = header(stamp_ns, frames.odom)
    msg.child_frame_id = frames.base
    msg.pose.pose = matrix_to_pose(odom_base)
    if previous is not None:
        prev_pose, prev_ns = previous
        dt = (stamp_ns - prev_ns) / NS_PER_S
        if dt > 0:
            delta = invert(prev_pose) @ odom_base  # motion expressed in the previous base_link
            linear = delta[:3, 3] / dt
            angular = rotation_vector(delta[:3, :3]) / dt
            tw = msg.twist.twist
            tw.linear.x, tw.linear.y, tw.linear.z = (float(v) for v in linear)
            tw.angular.x, tw.angular.y, tw.angular.z = (float(v) for v in angular)
    return msg


def rotation_vector(rotation: np.ndarray) -> np.ndarray:
    """Axis * angle (radians) of a (3, 3) rotation."""
    cos = float(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))
    angle = math.acos(cos)
    axis = np.array([rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]])
    if angle < 1e-9:
        return axis / 2.0  # small angles: the skew part is the rotation vector
    if math.pi - angle < 1e-6:  # near 180 degrees the skew part vanishes: use the diagonal
        d = np.sqrt(np.clip((np.diag(rotation) + 1.0) / 2.0, 0.0, None))
        k = int(np.argmax(d))
        v = (rotation[k] + np.eye(3)[k]) / (2.0 * d[k])
        return v / np.linalg.norm(v) * angle
    return axis / (2.0 * math.sin(angle)) * angle


# ------------------------------------------------------------------ depth
def depth_image(depth: np.ndarray, stamp_ns: int, frame_id: str) -> Image:
    """REP 118 depth image: sensor_msgs/Image 32FC1 (little-endian), metres along the optical
    axis. depth: (H, W) as the renderer gives it. Its +inf (no surface within the far plane)
    stays +Inf (REP 117: out of range); any other value that is not a positive depth (NaN,
    -inf, 0, negative) becomes NaN (REP 117: invalid)."""
    d = np.asarray(depth)
    if d.ndim != 2:
        raise ValueError(f"depth must be (H, W) metres, got shape {d.shape}")
    with np.errstate(invalid="ignore"):
        d = np.where(d > 0, d, np.nan).astype("<f4")  # (H, W)
    msg = Image(header=header(stamp_ns, frame_id))
    fill_image(msg, d, "32FC1")
    return msg


# ------------------------------------------------------------------ time
def seconds_to_ns(seconds: float) -> int:
    return int(round(float(seconds) * NS_PER_S))


def clock_message(stamp_ns: int):
    """rosgraph_msgs/Clock at ``stamp_ns``."""
    from rosgraph_msgs.msg import Clock

    return Clock(clock=ns_to_stamp(stamp_ns))


def interpolated_sim_ns(start_ns: int, end_ns: int, fraction: float) -> int:
    """Sim time a fraction of the way from one frame to the next, always BEFORE ``end_ns``
    (that stamp belongs to the next frame, published with its own clock tick)."""
    if end_ns <= start_ns:
        return start_ns
    value = start_ns + int((end_ns - start_ns) * min(max(fraction, 0.0), 1.0))
    return min(value, end_ns - 1)


# ------------------------------------------------------------------ scene graph payload
def scene_graph_payload(graph: SceneGraph, frame_stamps_ns: Mapping[int, int], *, complete: bool,
                        frames_published: int, passes: int, backend: str, extra: Mapping | None = None) -> str:
    """The JSON of the ``scene_graph`` topic: the metadata layout of vlm3r_ros.data.metadata
    (``metadata`` = {scene: scene entry}, ``frame_metadata`` = {scene: frame entry}, as in the
    two files), plus each frame's image stamp and how far the run is."""
    scene_entry, frame_entry = graph.to_metadata()
    stamps = {str(f.frame_id): int(frame_stamps_ns[f.frame_id]) for f in graph.frames if f.frame_id in frame_stamps_ns}
    doc = {
        "format": PAYLOAD_FORMAT,
        "scene_name": graph.scene_name,
        "backend": backend,
        "complete": bool(complete),
        "frames_published": int(frames_published),
        "passes": int(passes),
        "frame_stamps_ns": stamps,
        "metadata": {graph.scene_name: scene_entry},
        "frame_metadata": {graph.scene_name: frame_entry},
    }
    if extra:
        doc.update(extra)
    return json.dumps(doc, allow_nan=False)


def scene_graph_from_payload(text: str) -> tuple[SceneGraph, dict]:
    """Inverse of :func:`scene_graph_payload`: (the SceneGraph, the whole document)."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"scene graph payload is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != PAYLOAD_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"scene graph payload: expected format {PAYLOAD_FORMAT!r}, got {got!r}")
    name = doc["scene_name"]
    return SceneGraph.from_metadata(name, doc["metadata"][name], doc["frame_metadata"][name]), doc
