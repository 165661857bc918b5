"""Every camera encoding the node converts: round-trip error and decode time per frame.

    python benchmarks/bench_image_encodings.py [--width 640] [--height 480] [--repeats 20]

For each encoding of vlm3r_ros.ros.image_encodings: a smooth RGB test image (gradients, as
a camera sees) is encoded as a driver would publish it, decoded back by the node's decoder,
and compared with the original (max and mean absolute error in 0..255; the mono encodings
against the image's BT.601 luma, what they carry). The decode time is the median over
``--repeats`` runs. Then the refused encodings with the reason the node gives. Prints a
Markdown table; nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vlm3r_ros.ros import image_encodings as ie


def smooth_rgb(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 / (w - 1), y * 255 / (h - 1), (x + y) * 255 / (w + h - 2)], axis=2)
    return rgb.round().astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    h, w = args.height, args.width
    rgb = smooth_rgb(h, w)
    grey = np.repeat(np.rint(rgb.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)[:, :, None], 3, 2)
    print(f"{w}x{h}, median of {args.repeats} decodes\n")
    print("| encoding | accepted | max error | mean error | decode ms |")
    print("|---|---|---|---|---|")
    for encoding in ie.ENCODINGS:
        big = ie.LAYOUTS[encoding].depth_bytes == 2  # the byte-swapping path for 16-bit samples
        data, step = ie.encode_rgb(rgb, encoding, big_endian=big)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = ie.decode_rgb(data, h, w, step, encoding, is_bigendian=big)
            times.append(time.perf_counter() - start)
        reference = grey if encoding.startswith("mono") else rgb
        err = np.abs(out.astype(np.int16) - reference)
        order = " (big-endian)" if big else ""
        print(f"| `{encoding}`{order} | yes | {err.max()} | {err.mean():.3f} | {1e3 * np.median(times):.2f} |")
    for encoding in ("8UC1", "8UC3", "16UC1", "32FC1", "nv12", "nv21", "nv24"):
        print(f"| `{encoding}` | no: {ie.refusal_reason(encoding).split(';')[0]} | | | |")


if __name__ == "__main__":
    main()
