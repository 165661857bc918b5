"""Engine values -> sensor_msgs: filling Image and CameraInfo messages from numpy arrays.

The sending side of images (vlm3r-play, the simulator bridge, the live evaluation client);
``conversions.py`` holds the receiving side. Pure functions: they import message classes
but never rclpy, and no model code.
"""

from __future__ import annotations

import array
import math

import numpy as np
from builtin_interfaces.msg import Time

from vlm3r_ros.ros.image_encodings import ENCODINGS, encode_rgb  # noqa: F401 (ENCODINGS: what play offers)

DEFAULT_HFOV_DEG = 60.0  # horizontal field of view of a guessed camera
CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "32FC1": 1}  # 32FC1: REP 118 depth


def fill_image_from_rgb(msg, rgb: np.ndarray, encoding: str, big_endian: bool = False) -> None:
    """Fill a sensor_msgs/Image (all but the header) with RGB uint8 (H, W, 3) as a camera sending
    ``encoding`` would: any of ``ENCODINGS``, the ones the node reads (image_encodings.encode_rgb)."""
    data, step = encode_rgb(rgb, encoding, big_endian=big_endian)
    msg.height, msg.width = (int(v) for v in rgb.shape[:2])
    msg.encoding = encoding
    msg.is_bigendian = int(big_endian)
    msg.step = int(step)
    msg.data = array.array("B", data)  # bytes -> array is a copy; a list would be slow


def fill_image(msg, pixels: np.ndarray, encoding: str) -> None:
    """Fill a sensor_msgs/Image (all but the header) from (H, W, C) uint8 pixels already in
    ``encoding`` (rgb8, bgr8, rgba8, bgra8, mono8), or (H, W) little-endian float32 ('<f4') for 32FC1."""
    height, width = pixels.shape[:2]
    msg.height = int(height)
    msg.width = int(width)
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(width * CHANNELS[encoding] * pixels.itemsize)
    msg.data = array.array("B", pixels.tobytes())  # bytes -> array is a copy; a list would be slow


def pinhole_guess(width: int, height: int, hfov_deg: float = DEFAULT_HFOV_DEG) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of a GUESSED pinhole camera: ``hfov_deg`` horizontal field of view,
    square pixels, principal point at the centre ((w - 1) / 2, (h - 1) / 2)."""
    fx = 0.5 * width / math.tan(math.radians(hfov_deg) / 2)
    return fx, fx, (width - 1) / 2, (height - 1) / 2


def fill_camera_info(msg, width: int, height: int, intrinsics: tuple[float, float, float, float]) -> None:
    """Fill a sensor_msgs/CameraInfo (all but the header): plumb_bob with zero distortion."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    msg.width = int(width)
    msg.height = int(height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0, 0.0, 0.0, 0.0, 0.0]
    msg.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]


def camera_info_topic(image_topic: str) -> str:
    """The image_transport convention: the ``camera_info`` sibling of the image topic."""
    head, sep, _ = image_topic.rpartition("/")
    return f"{head}{sep}camera_info"


def stamp_from_seconds(seconds: float) -> Time:
    ns = int(round(seconds * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
