"""Render the synthetic sample video into a folder (nothing is downloaded).

    python -m vlm3r_ros.tools.sample_data OUT_DIR [--frames 12] [--size 640x480] [--seed 0]

Writes ``frame_000000.png``, ... plus ``groundtruth.tum`` and ``sequence.json``: see
:mod:`vlm3r_ros.media.sample_scene` for the room, the camera path and the file formats.
The same arguments always give the same pixels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlm3r_ros.media.sample_scene import DEFAULT_FRAMES, DEFAULT_SIZE, write_sequence

from .cli import image_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlm3r_ros.tools.sample_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="folder to write the frames into (created if needed)")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="number of frames (default 12)")
    parser.add_argument("--size", type=image_size, default=DEFAULT_SIZE, help="WIDTHxHEIGHT (default 640x480)")
    parser.add_argument("--seed", type=int, default=0, help="texture seed (default 0)")
    args = parser.parse_args(argv)
    if args.out_dir.exists() and not args.out_dir.is_dir():
        print(f"error: {args.out_dir} exists and is not a folder", file=sys.stderr)
        return 2
    try:
        paths = write_sequence(args.out_dir, args.frames, args.size, args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write to {args.out_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} frames ({args.size[0]}x{args.size[1]}) to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
