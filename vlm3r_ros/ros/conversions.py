"""Messages <-> engine values: images in; stamps, poses, paths and point clouds out.

Pure functions, no node and no graph: every one is tested in
test/unit/test_ros_conversions.py. They import message classes but never rclpy.

Frames (REP 103/105). CUT3R reconstructs in the optical frame of the first camera of a
segment (OpenCV axes: x right, y down, z forward) and returns camera-to-world matrices in
it. The node publishes in a fixed world frame (parameter ``world_frame_id``, e.g.
``vlm3r_world``) with REP 103 axes instead: x forward, y left, z up, as seen by the first
camera of the segment (``OPTICAL_TO_WORLD`` below). Poses are those of the camera's optical
frame (z forward, x right, y down) in that world frame. Distances are in the model's metric
units (metres for trained weights; meaningless for random weights).
"""

from __future__ import annotations

import io
import sys

import numpy as np
from geometry_msgs.msg import Pose, PoseStamped  # noqa: F401 (the node names them through this module)
from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField

from vlm3r_ros.engine.spatial_engine import MAX_IMAGE_PIXELS, EngineError
from vlm3r_ros.ros.image_encodings import ImageEncodingError, decode_rgb
# Stamps and poses live in poses.py (no model imports); re-exported here.
from vlm3r_ros.ros.poses import (NS_PER_S, OPTICAL_TO_WORLD, c2w_to_world, header, matrix_to_pose,  # noqa: F401
                                 ns_to_stamp, pose_from_c2w, pose_stamped, quaternion_from_matrix, stamp_to_ns,
                                 to_numpy)

COMPRESSED_FORMATS = ("JPEG", "PNG")

# PointCloud2 layout written by point_cloud2(): x, y, z float32, then rgb packed in a float32
# (0x00RRGGBB reinterpreted), 16 bytes a point: what RViz and PCL read as PointXYZRGB.
POINT_STEP = 16
POINT_FIELDS = (("x", 0), ("y", 4), ("z", 8), ("rgb", 12))


# ------------------------------------------------------------------ images
def image_to_rgb(msg: Image, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """sensor_msgs/Image -> RGB uint8 (H, W, 3), converted as cv_bridge's ``toCvCopy(msg, "rgb8")``.

    Every encoding cv_bridge converts to rgb8 (8- and 16-bit RGB/BGR/RGBA/BGRA/mono, Bayer,
    YUV 4:2:2; :mod:`vlm3r_ros.ros.image_encodings`), ``is_bigendian`` honoured. Raises
    ``EngineError("BAD_IMAGE", reason)`` for a refused encoding (``8UC3``, ``32FC1``, ``nv12``,
    ...), a zero or too large size, a step smaller than a row, or data that is not exactly
    ``step * height`` bytes.
    """
    try:
        return decode_rgb(msg.data, msg.height, msg.width, msg.step, msg.encoding, is_bigendian=bool(msg.is_bigendian),
                          max_pixels=max_pixels)
    except ImageEncodingError as exc:
        raise EngineError("BAD_IMAGE", str(exc)) from None


def compressed_image_to_rgb(msg: CompressedImage, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG or PNG) -> RGB uint8 (H, W, 3).

    The size is checked from the file header before any pixel is decoded, so a small file
    that claims a huge image is refused cheaply. Raises ``EngineError("BAD_IMAGE", ...)``.
    """
    from PIL import Image as PilImage

    data = bytes(msg.data)
    if not data:
        raise EngineError("BAD_IMAGE", "compressed image with no data")
    try:
        with PilImage.open(io.BytesIO(data)) as img:
            if img.format not in COMPRESSED_FORMATS:
                raise EngineError("BAD_IMAGE", f"compressed format {img.format!r} (declared {msg.format!r}); "
                                               f"use jpeg or png")
            width, height = img.size
            if width <= 0 or height <= 0:
                raise EngineError("BAD_IMAGE", f"empty image ({width}x{height})")
            if width * height > max_pixels:
                raise EngineError("BAD_IMAGE", f"image of {width}x{height} exceeds the {max_pixels}-pixel limit")
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except EngineError:
        raise
    except PilImage.UnidentifiedImageError:
        raise EngineError("BAD_IMAGE", f"the compressed data ({len(data)} bytes, declared {msg.format!r}) is "
                                       f"not a jpeg or png image") from None
    except (OSError, ValueError, SyntaxError, PilImage.DecompressionBombError) as exc:
        raise EngineError("BAD_IMAGE", f"cannot decode the compressed image ({msg.format!r}): {exc}") from None
    return np.ascontiguousarray(rgb)


# ------------------------------------------------------------------ point clouds
def points_to_world(points_optical) -> np.ndarray:
    """(..., 3) points in CUT3R's world (the first camera's optical frame) -> the REP 103 world."""
    return to_numpy(points_optical) @ OPTICAL_TO_WORLD.T


def decimate_points(points, colors=None, max_points: int = 5000, confidence=None,
                    min_confidence: float = 0.0) -> tuple[np.ndarray, np.ndarray | None]:
    """Flatten, drop non-finite (and low-confidence) points, keep at most ``max_points``.

    points: (..., 3) positions; colors: (..., 3) uint8 RGB or floats in [-1, 1] (CUT3R's
    rgb head) or None; confidence: (...) or None. Decimation is a regular stride over the
    kept points, so the cloud covers the whole image. Returns (N, 3) float32, (N, 3) uint8.
    """
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    xyz = to_numpy(points).reshape(-1, 3)
    keep = np.all(np.isfinite(xyz), axis=1)
    if confidence is not None:
        conf = to_numpy(confidence).reshape(-1)
        if conf.shape[0] != xyz.shape[0]:
            raise ValueError(f"{conf.shape[0]} confidences for {xyz.shape[0]} points")
        keep &= conf >= min_confidence
    rgb = None
    if colors is not None:
        rgb = colors_to_uint8(colors).reshape(-1, 3)
        if rgb.shape[0] != xyz.shape[0]:
            raise ValueError(f"{rgb.shape[0]} colours for {xyz.shape[0]} points")
    index = np.flatnonzero(keep)
    if index.size > max_points:
        index = index[np.linspace(0, index.size - 1, max_points).astype(np.int64)]
    return xyz[index].astype(np.float32), (rgb[index] if rgb is not None else None)


def colors_to_uint8(colors) -> np.ndarray:
    """uint8 colours pass through; float colours in [-1, 1] (CUT3R's rgb head) map to 0..255."""
    if str(getattr(colors, "dtype", "")) in ("uint8", "torch.uint8"):
        return to_numpy(colors).astype(np.uint8) if not isinstance(colors, np.ndarray) else colors
    return np.clip(np.round((to_numpy(colors) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def point_cloud2(points_xyz, colors_rgb, stamp_ns: int, frame_id: str) -> PointCloud2:
    """(N, 3) points + (N, 3) uint8 colours (or None: white) -> an unorganised PointCloud2.

    Fields x, y, z (float32) and rgb (float32 whose bits are 0x00RRGGBB), point_step 16,
    little- or big-endian as this machine. Non-finite points must have been removed
    (``decimate_points``), so the cloud is dense.
    """
    xyz = np.ascontiguousarray(to_numpy(points_xyz), dtype=np.float32).reshape(-1, 3)
    n = xyz.shape[0]
    if colors_rgb is None:
        rgb = np.full((n, 3), 255, dtype=np.uint8)
    else:
        rgb = np.asarray(colors_rgb, dtype=np.uint8).reshape(-1, 3)
        if rgb.shape[0] != n:
            raise ValueError(f"{rgb.shape[0]} colours for {n} points")
    packed = (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2].astype(np.uint32)
    buf = np.empty((n, 4), dtype=np.float32)
    buf[:, :3] = xyz
    buf[:, 3] = packed.view(np.float32)
    msg = PointCloud2()
    msg.header = header(stamp_ns, frame_id)
    msg.height = 1
    msg.width = n
    msg.fields = [PointField(name=name, offset=offset, datatype=PointField.FLOAT32, count=1)
                  for name, offset in POINT_FIELDS]
    msg.is_bigendian = sys.byteorder == "big"
    msg.point_step = POINT_STEP
    msg.row_step = POINT_STEP * n
    msg.data = buf.tobytes()
    msg.is_dense = bool(np.all(np.isfinite(xyz)))
    return msg


def point_cloud2_to_arrays(msg: PointCloud2) -> tuple[np.ndarray, np.ndarray]:
    """Read back a cloud written by :func:`point_cloud2`: (N, 3) float32 xyz, (N, 3) uint8 rgb."""
    names = {f.name: f for f in msg.fields}
    if msg.point_step != POINT_STEP or any(names.get(n) is None or names[n].offset != o or
                                           names[n].datatype != PointField.FLOAT32 for n, o in POINT_FIELDS):
        raise ValueError("not an x, y, z, rgb float32 cloud with point_step 16")
    n = msg.width * msg.height
    dtype = np.dtype(np.float32).newbyteorder(">" if msg.is_bigendian else "<")
    buf = np.frombuffer(bytes(msg.data), dtype=dtype, count=n * 4).reshape(n, 4).astype(np.float32)
    xyz = buf[:, :3].copy()
    packed = np.ascontiguousarray(buf[:, 3]).view(np.uint32)
    rgb = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=1).astype(np.uint8)
    return xyz, rgb
