"""Stamps and poses as messages: the part of the conversions that needs no model code.

Pure functions over numpy and message classes (no rclpy, no torch), so light processes
such as ``vlm3r-sim-bridge`` use them without loading the engine. Re-exported by
:mod:`vlm3r_ros.ros.conversions`; tested in test/unit/test_ros_conversions.py.
Frames: see :mod:`vlm3r_ros.ros.conversions`.
"""

from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseStamped
from std_msgs.msg import Header

# Rotation taking coordinates in the first camera's optical frame (x right, y down,
# z forward) to REP 103 world axes (x forward, y left, z up).
OPTICAL_TO_WORLD = np.array([[0.0, 0.0, 1.0],
                             [-1.0, 0.0, 0.0],
                             [0.0, -1.0, 0.0]])

NS_PER_S = 1_000_000_000


# ------------------------------------------------------------------ stamps
def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    """Integer nanoseconds (>= 0) -> builtin_interfaces/Time."""
    ns = int(ns)
    if ns < 0:
        raise ValueError(f"a stamp must be >= 0 ns, got {ns}")
    return Time(sec=ns // NS_PER_S, nanosec=ns % NS_PER_S)


# ------------------------------------------------------------------ poses
def to_numpy(array) -> np.ndarray:
    """A numpy array or a torch tensor (any device/dtype) -> float64 numpy, without importing torch."""
    if hasattr(array, "detach"):
        array = array.detach().to("cpu").double().numpy()
    return np.asarray(array, dtype=np.float64)


def c2w_to_world(c2w_optical) -> np.ndarray:
    """CUT3R camera-to-world (4, 4), world = first camera's optical frame -> (4, 4) pose of the
    camera's optical frame in the REP 103 world frame (``OPTICAL_TO_WORLD``)."""
    c2w = to_numpy(c2w_optical)
    if c2w.shape != (4, 4):
        raise ValueError(f"c2w must be (4, 4), got {c2w.shape}")
    out = np.eye(4)
    out[:3, :3] = OPTICAL_TO_WORLD @ c2w[:3, :3]
    out[:3, 3] = OPTICAL_TO_WORLD @ c2w[:3, 3]
    return out


def quaternion_from_matrix(rotation) -> tuple[float, float, float, float]:
    """3x3 rotation -> unit quaternion (x, y, z, w) with w >= 0.

    Shepperd's method (the largest of the four candidates is computed first, so it is
    accurate near 180 degrees). A matrix that is not quite orthonormal (float32 network
    output) is first projected onto the nearest rotation (SVD).
    """
    r = to_numpy(rotation)
    if r.shape != (3, 3) or not np.all(np.isfinite(r)):
        raise ValueError(f"a finite 3x3 rotation is needed, got shape {r.shape}")
    u, _, vt = np.linalg.svd(r)
    r = u @ vt
    if np.linalg.det(r) < 0:  # a reflection: flip the last axis to get a rotation
        u[:, -1] *= -1
        r = u @ vt
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    if trace > max(r[0, 0], r[1, 1], r[2, 2]):
        s = 2.0 * math.sqrt(1.0 + trace)
        w, x, y, z = 0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s
    elif r[0, 0] >= r[1, 1] and r[0, 0] >= r[2, 2]:
        s = 2.0 * math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        w, x, y, z = (r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s
    elif r[1, 1] >= r[2, 2]:
        s = 2.0 * math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        w, x, y, z = (r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s
    else:
        s = 2.0 * math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        w, x, y, z = (r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s
    q = np.array([x, y, z, w])
    q /= np.linalg.norm(q)
    if q[3] < 0:
        q = -q
    return tuple(float(v) for v in q)


def matrix_to_pose(matrix) -> Pose:
    """(4, 4) rigid transform -> geometry_msgs/Pose (position and unit quaternion)."""
    m = to_numpy(matrix)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ValueError(f"a finite (4, 4) transform is needed, got shape {m.shape}")
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in m[:3, 3])
    qx, qy, qz, qw = quaternion_from_matrix(m[:3, :3])
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = qx, qy, qz, qw
    return pose


def pose_from_c2w(c2w_optical) -> Pose:
    """CUT3R camera-to-world -> Pose of the camera optical frame in the REP 103 world frame."""
    return matrix_to_pose(c2w_to_world(c2w_optical))


def pose_stamped(pose: Pose, stamp_ns: int, frame_id: str) -> PoseStamped:
    msg = PoseStamped()
    msg.header = header(stamp_ns, frame_id)
    msg.pose = pose
    return msg


def header(stamp_ns: int, frame_id: str) -> Header:
    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)
