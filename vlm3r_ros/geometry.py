"""Rotations as numbers: pure numpy, no ROS, no torch, no simulator.

Imported by the ROS layer (:mod:`vlm3r_ros.ros.poses`) and the simulators
(:mod:`vlm3r_ros.sim`), which may not import each other.
"""

from __future__ import annotations

import math

import numpy as np


def quaternion_from_matrix(rotation) -> tuple[float, float, float, float]:
    """3x3 rotation -> unit quaternion (x, y, z, w) with w >= 0.

    Shepperd's method (the largest of the four candidates is computed first, so it is
    accurate near 180 degrees, where a construction from the trace alone loses the signs).
    A matrix that is not quite orthonormal (float32 network output) is first projected onto
    the nearest rotation (SVD). The result is normalised to unit length.
    """
    r = np.asarray(rotation, dtype=np.float64)
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

