"""Stamps and poses as messages: the part of the conversions that needs no model code.

Pure functions over numpy and message classes (no rclpy, no torch), so light processes
such as ``vlm3r-sim-bridge`` use them without loading the engine. Re-exported by
:mod:`vlm3r_ros.ros.conversions`; tested in test/unit/test_ros_conversions.py.
Frames: see :mod:`vlm3r_ros.ros.conversions`.
"""

from __future__ import annotations


import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseStamped
from std_msgs.msg import Header

from vlm3r_ros.geometry import quaternion_from_matrix  # noqa: F401 (re-exported: the ROS layer's name for it)

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
