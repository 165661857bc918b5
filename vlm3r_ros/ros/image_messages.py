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

ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")  # what encode_pixels writes
DEFAULT_HFOV_DEG = 60.0  # horizontal field of view of a guessed camera
CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "32FC1": 1}  # 32FC1: REP 118 depth


def encode_pixels(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> contiguous (H, W, C) in ``encoding``."""
    if encoding == "rgb8":
        return np.ascontiguousarray(rgb)
    if encoding == "bgr8":
        return np.ascontiguousarray(rgb[:, :, ::-1])
    if encoding in ("rgba8", "bgra8"):
        colour = rgb if encoding == "rgba8" else rgb[:, :, ::-1]
        alpha = np.full(rgb.shape[:2] + (1,), 255, dtype=np.uint8)
        return np.ascontiguousarray(np.concatenate([colour, alpha], axis=2))
    if encoding == "mono8":  # ITU-R BT.601 luma
        luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, :, None]
    raise ValueError(f"unsupported encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")


def fill_image(msg, pixels: np.ndarray, encoding: str) -> None:
    """Fill a sensor_msgs/Image (all but the header) from (H, W, C) uint8 pixels, or (H, W)
    little-endian float32 ('<f4') for 32FC1."""
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
