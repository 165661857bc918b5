"""sensor_msgs/Image encodings -> RGB uint8, the way cv_bridge converts them, and back.

``decode_rgb`` does what ``cv_bridge::toCvCopy(msg, "rgb8")`` does (ros-perception/vision_opencv,
cv_bridge/src/cv_bridge.cpp: ``getConversionCodes``, ``getConversionCode``, ``matFromImage``,
``toCvCopyImpl``), with OpenCV:

* the colour conversion first (``cv2.cvtColor`` with the code cv_bridge picks: Bayer
  ``bayer_rggb*`` -> ``COLOR_BayerBG2RGB`` etc., UYVY / YUYV -> ``COLOR_YUV2RGB_UYVY`` /
  ``_YUY2``, mono -> ``GRAY2RGB``, alpha dropped), at the source bit depth;
* then 16-bit to 8-bit by ``value * 255 / 65535``, rounded and saturated (``convertTo``);
* multi-byte samples read in the byte order ``is_bigendian`` names;
* ``data`` must be exactly ``step * height`` bytes (cv_bridge: "height * step != size");
* encoding names match exactly, as cv_bridge compares them (``encoding == enc::RGB8``):
  ``RGB8`` is refused, with a hint naming ``rgb8``.

Refused, with the reason, as cv_bridge refuses them: the generic OpenCV types (``8UC3``,
``8UC1``, ``16UC1``, ``32FC1``, ...: "not a color format", nothing says which channel is
which), and the YUV 4:2:0 / 4:4:4 encodings ``nv12``, ``nv21``, ``nv24`` (sensor_msgs names
them; cv_bridge has no conversion for them). ``uyvy`` and ``yuyv`` are sensor_msgs' current
names of ``yuv422`` and ``yuv422_yuy2`` (image_encodings.hpp marks the old ones deprecated).

``encode_rgb`` is the inverse (RGB uint8 -> the bytes a driver publishing ``encoding`` would
send), used by the tests' round trips and by publishers of test images.

No message classes, rclpy or torch here (light processes such as publishers import it):
buffers, sizes and encoding names only. Refusals are :class:`ImageEncodingError` with the
reason; :func:`vlm3r_ros.ros.conversions.image_to_rgb` turns them into ``BAD_IMAGE``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import cv2
import numpy as np


class ImageEncodingError(ValueError):
    """An image that cannot be converted: the message says what was expected and what came."""


@dataclass(frozen=True)
class Layout:
    """How an encoding stores a pixel, and cv_bridge's colour conversion of it to RGB."""

    channels: int  # samples per pixel in the buffer (2 for the packed 4:2:2 formats)
    depth_bytes: int  # 1 or 2 bytes per sample
    to_rgb: int | None  # cv2.cvtColor code to RGB (None: already RGB)
    from_rgb: int | None = None  # cv2.cvtColor code from RGB (for encode_rgb; None: see there)


def _bayer(code: int) -> Layout:
    return Layout(1, 1, code)


_BAYER_TO_RGB = {  # cv_bridge's table (OpenCV names a pattern by its second row: RGGB is "BG")
    "rggb": cv2.COLOR_BayerBG2RGB,
    "bggr": cv2.COLOR_BayerRG2RGB,
    "gbrg": cv2.COLOR_BayerGR2RGB,
    "grbg": cv2.COLOR_BayerGB2RGB,
}
_UYVY = Layout(2, 1, cv2.COLOR_YUV2RGB_UYVY, cv2.COLOR_RGB2YUV_UYVY)
_YUYV = Layout(2, 1, cv2.COLOR_YUV2RGB_YUY2, cv2.COLOR_RGB2YUV_YUY2)

LAYOUTS: dict[str, Layout] = {
    "rgb8": Layout(3, 1, None),
    "bgr8": Layout(3, 1, cv2.COLOR_BGR2RGB, cv2.COLOR_RGB2BGR),
    "rgba8": Layout(4, 1, cv2.COLOR_RGBA2RGB, cv2.COLOR_RGB2RGBA),
    "bgra8": Layout(4, 1, cv2.COLOR_BGRA2RGB, cv2.COLOR_RGB2BGRA),
    "mono8": Layout(1, 1, cv2.COLOR_GRAY2RGB, cv2.COLOR_RGB2GRAY),
    "rgb16": Layout(3, 2, None),
    "bgr16": Layout(3, 2, cv2.COLOR_BGR2RGB, cv2.COLOR_RGB2BGR),
    "rgba16": Layout(4, 2, cv2.COLOR_RGBA2RGB, cv2.COLOR_RGB2RGBA),
    "bgra16": Layout(4, 2, cv2.COLOR_BGRA2RGB, cv2.COLOR_RGB2BGRA),
    "mono16": Layout(1, 2, cv2.COLOR_GRAY2RGB, cv2.COLOR_RGB2GRAY),
    "yuv422": _UYVY,
    "uyvy": _UYVY,
    "yuv422_yuy2": _YUYV,
    "yuyv": _YUYV,
    **{f"bayer_{p}8": Layout(1, 1, code) for p, code in _BAYER_TO_RGB.items()},
    **{f"bayer_{p}16": Layout(1, 2, code) for p, code in _BAYER_TO_RGB.items()},
}
ENCODINGS = tuple(LAYOUTS)

_GENERIC_RE = re.compile(r"^(8U|8S|16U|16S|32S|32F|64F)(C\d*)?$", re.IGNORECASE)
_NOT_CONVERTED = ("nv12", "nv21", "nv24")
_SCALE_16_TO_8 = 255.0 / 65535.0  # cv_bridge's convertTo factor


def refusal_reason(encoding: str) -> str | None:
    """Why ``encoding`` is refused, or None when it is converted."""
    if encoding in LAYOUTS:
        return None
    hint = "publish rgb8, bgr8, mono8, yuyv, a bayer_* or a 16-bit colour encoding"
    if encoding.lower() in LAYOUTS:  # a driver elsewhere would fail on it too: tell, do not guess
        return (f"encoding {encoding!r} is not a sensor_msgs encoding name: names are case-sensitive "
                f"(cv_bridge compares them exactly); publish {encoding.lower()!r}")
    if _GENERIC_RE.match(encoding):
        return (f"encoding {encoding!r} is a generic OpenCV type, not a colour format: nothing says which channel "
                f"is which, and cv_bridge refuses to convert it to rgb8 too; {hint}")
    if encoding.lower() in _NOT_CONVERTED:
        return f"encoding {encoding!r} (YUV 4:2:0 / 4:4:4) is not converted (cv_bridge does not either); {hint}"
    return f"unsupported encoding {encoding!r}; {hint} (accepted: {', '.join(ENCODINGS)})"


def layout(encoding: str) -> Layout:
    """The Layout of ``encoding`` (an exact name); ImageEncodingError with the reason if refused."""
    reason = refusal_reason(encoding)
    if reason is not None:
        raise ImageEncodingError(reason)
    return LAYOUTS[encoding]


def decode_rgb(data, height: int, width: int, step: int, encoding: str, is_bigendian: bool = False,
               max_pixels: int | None = None) -> np.ndarray:
    """A raw image buffer (as in sensor_msgs/Image) -> RGB uint8 (H, W, 3), C-contiguous.

    Raises :class:`ImageEncodingError` for a refused encoding, a zero size or more than
    ``max_pixels`` (when given), a step smaller than a row (or not a whole number of samples),
    data that is not exactly ``step * height`` bytes, or a size the conversion cannot take
    (an odd width in the 4:2:2 formats, a Bayer image under 3x3).
    """
    lay = layout(encoding)
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageEncodingError(f"empty image ({width}x{height})")
    if max_pixels is not None and height * width > max_pixels:
        raise ImageEncodingError(f"image of {width}x{height} exceeds the {max_pixels}-pixel limit")
    row = width * lay.channels * lay.depth_bytes
    if step < row:
        raise ImageEncodingError(f"step {step} is smaller than width*channels*bytes = {row} "
                                 f"({encoding}, {width} pixels)")
    if step % lay.depth_bytes:
        raise ImageEncodingError(f"step {step} is not a whole number of {lay.depth_bytes}-byte samples")
    if len(data) != step * height:
        more = "more" if len(data) > step * height else "less"
        raise ImageEncodingError(f"{len(data)} bytes of data for {height} rows of {step} bytes: "
                                 f"{abs(len(data) - step * height)} bytes {more} than step * height")
    if lay.channels == 2 and width % 2:
        raise ImageEncodingError(f"{encoding} packs two pixels in four bytes: the width must be even, "
                                 f"got {width}")
    if encoding.startswith("bayer_") and min(width, height) < 3:  # OpenCV returns black, no error
        raise ImageEncodingError(f"{encoding}: demosaicing needs at least 3x3 pixels, got {width}x{height}")
    rows = np.frombuffer(data, dtype=np.uint8, count=step * height).reshape(height, step)[:, :row]
    if lay.depth_bytes == 2:
        dtype = np.dtype(">u2" if is_bigendian else "<u2")
        pixels = np.ascontiguousarray(rows).view(dtype).astype(np.uint16)  # native order for OpenCV
    else:
        pixels = rows
    pixels = pixels.reshape(height, width, lay.channels)
    if lay.channels == 1:
        pixels = pixels[:, :, 0]
    pixels = np.ascontiguousarray(pixels)
    try:
        rgb = pixels if lay.to_rgb is None else cv2.cvtColor(pixels, lay.to_rgb)
    except cv2.error as exc:
        raise ImageEncodingError(f"cannot convert a {width}x{height} {encoding} image: "
                                 f"{str(exc).strip().splitlines()[-1]}") from None
    if lay.depth_bytes == 2:
        rgb = cv2.convertScaleAbs(rgb, alpha=_SCALE_16_TO_8)  # round(v * 255 / 65535), saturated
    return np.ascontiguousarray(rgb)


def encode_rgb(rgb: np.ndarray, encoding: str, big_endian: bool = sys.byteorder == "big") -> tuple[bytes, int]:
    """RGB uint8 (H, W, 3) -> (data, step) of a sensor_msgs/Image in ``encoding``, rows unpadded.

    16-bit encodings scale 0..255 to 0..65535 (x 257, cv_bridge's 65535 / 255); alpha is
    opaque; mono is ITU-R BT.601 luma (``COLOR_RGB2GRAY``); Bayer keeps, at each pixel, the
    one colour its filter passes; 4:2:2 uses OpenCV's RGB -> YUV (BT.601, video range), the
    inverse of the decoder's. ``big_endian`` orders the bytes of 16-bit samples (the message's
    ``is_bigendian``).
    """
    lay = layout(encoding)
    rgb = np.ascontiguousarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"encode_rgb needs RGB uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    src = rgb.astype(np.uint16) * 257 if lay.depth_bytes == 2 else rgb
    if encoding.startswith("bayer_"):
        pattern = encoding[len("bayer_"):].rstrip("0123456789")  # e.g. "rggb": row 0 = R G, row 1 = G B
        index = {"r": 0, "g": 1, "b": 2}
        pixels = np.empty(src.shape[:2], dtype=src.dtype)
        for k, colour in enumerate(pattern):  # the four sites of the 2x2 filter tile
            dy, dx = divmod(k, 2)
            pixels[dy::2, dx::2] = src[dy::2, dx::2, index[colour]]
    elif lay.from_rgb is not None:
        pixels = cv2.cvtColor(src, lay.from_rgb)
    else:
        pixels = src
    if lay.depth_bytes == 2:
        pixels = pixels.astype(">u2" if big_endian else "<u2")
    data = np.ascontiguousarray(pixels).tobytes()
    return data, rgb.shape[1] * lay.channels * lay.depth_bytes
