"""A re-iterable feed of frames: a video file, an image folder, one image, or generated frames.

What ``vlm3r-play`` publishes. Each iteration is one pass over the source (``--loop`` iterates
again); an image folder whose decoded frames fit in ``cache_bytes`` is decoded only once.
A folder written by :mod:`vlm3r_ros.media.sample_scene` brings its frame rate and exact
intrinsics (its ``sequence.json``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from vlm3r_ros.media import sample_scene
from vlm3r_ros.media.frames import FrameSource, MediaError


@dataclass
class SourceFrame:
    index: int  # index in the source
    name: str  # file name, "frame N" or "generated N"
    image: np.ndarray  # (H, W, 3) uint8 RGB


class FrameFeed:
    """The frames of one source, iterable any number of times (one pass per iteration)."""

    def __init__(self, *, input_path: Path | None = None, generated: int = 0,
                 size: tuple[int, int] = sample_scene.DEFAULT_SIZE, seed: int = 0, fps: float | None = None,
                 cache_bytes: int = 0):
        """``cache_bytes`` > 0: keep the decoded frames of an image folder in memory after the
        first pass when they fit in that many bytes (later passes then decode nothing)."""
        self.input_path = input_path
        self.cache_bytes = cache_bytes
        self._cache: list[SourceFrame] | None = None
        self.skipped: list[str] = []
        self.exact_intrinsics: tuple[float, float, float, float] | None = None  # (fx, fy, cx, cy)
        if input_path is None:
            if generated < 1:
                raise MediaError(f"--generated must be >= 1, got {generated}")
            try:
                self._frames = sample_scene.generate_sequence(generated, size, seed)
            except ValueError as exc:
                raise MediaError(str(exc)) from None
            self.fps = fps or 30.0
            self.total: int | None = generated
            self.exact_intrinsics = sample_scene.intrinsics(size)
            self.description = f"{generated} generated frames ({size[0]}x{size[1]}, sample_data seed {seed})"
            return
        self._frames = None
        source = FrameSource(input_path, fps)
        source.close()  # opened again for each pass
        self.fps = source.fps
        self.total = source.total
        self.is_video = source.is_video
        if not source.is_video and input_path.is_dir():
            doc = _read_sequence_json(input_path)
            if doc is not None:
                if fps is None and doc.get("fps"):
                    self.fps = float(doc["fps"])
                k = doc.get("intrinsics") or {}
                if all(isinstance(k.get(n), (int, float)) for n in ("fx", "fy", "cx", "cy")):
                    self.exact_intrinsics = (k["fx"], k["fy"], k["cx"], k["cy"])
                    self._intrinsics_size = tuple(doc.get("size") or ())
        kind = "video" if source.is_video else ("folder" if input_path.is_dir() else "image")
        count = f"{self.total} frames" if self.total is not None else "frames"
        self.description = f"{kind} {input_path} ({count}, {self.fps:g} fps)"

    def intrinsics_for(self, width: int, height: int) -> tuple[float, float, float, float] | None:
        """The exact intrinsics when known for an image of this size, else None."""
        if self.exact_intrinsics is None:
            return None
        size = getattr(self, "_intrinsics_size", None)
        if size and tuple(size) != (width, height):
            return None
        return self.exact_intrinsics

    def __iter__(self) -> Iterator[SourceFrame]:
        if self._frames is not None:
            for i, image in enumerate(self._frames):
                yield SourceFrame(i, f"generated {i}", image)
            return
        if self._cache is not None:
            yield from self._cache
            return
        source = FrameSource(self.input_path, self.fps)
        caching = self.cache_bytes > 0 and not source.is_video
        kept: list[SourceFrame] = []
        kept_bytes = 0
        try:
            for frame in source.frames():
                if frame.image is None:
                    if frame.name not in self.skipped:
                        self.skipped.append(frame.name)
                        print(f"warning: skipped {frame.name}: {frame.error}", file=sys.stderr)
                    continue
                item = SourceFrame(frame.index, frame.name, frame.image)
                if caching:
                    kept.append(item)
                    kept_bytes += item.image.nbytes
                    caching = kept_bytes <= self.cache_bytes
                yield item
        finally:
            source.close()
        if caching and kept:  # a complete pass that fits
            self._cache = kept


def _read_sequence_json(folder: Path) -> dict | None:
    try:
        doc = json.loads((folder / sample_scene.SEQUENCE_JSON).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("generator") == sample_scene.SEQUENCE_GENERATOR else None
