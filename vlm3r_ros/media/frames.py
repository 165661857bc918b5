"""Frame sources and the official uniform sampling.

:class:`FrameSource` reads a video file (mp4, mov, mkv, avi, ...; decoded by imageio-ffmpeg), a
folder of images (png/jpg/jpeg/bmp, sorted by name with numbers compared numerically) or one
image. :func:`open_input` counts a video's or a folder's frames and picks the sampled ones
(``np.linspace(0, total-1, min(total, num), dtype=int)``, as the official evaluation);
:class:`SampledFrames` reads only those. A video that ends before its counted length is
sampled again over the frames it really has (:meth:`SampledInput.resample`).
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlm3r_ros.errors import UserError, one_line

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
DEFAULT_FOLDER_FPS = 30.0
EVAL_NUM_FRAMES = 32  # lmms-eval max_frames_num for VSI-Bench / VSTI-Bench


class MediaError(UserError):
    """An input path or file that cannot be used (one line for the user)."""


def uniform_frame_indices(total: int, num: int = EVAL_NUM_FRAMES) -> list[int]:
    """The official sampling: ``np.linspace(0, total-1, min(total, num), dtype=int)``."""
    if total <= 0:
        return []
    return np.linspace(0, total - 1, min(total, num), dtype=int).tolist()


@dataclass
class Frame:
    index: int  # index in the source (before --stride)
    name: str  # file name, or "frame N" for videos
    image: np.ndarray | None  # (H, W, 3) uint8 RGB; None when unreadable
    error: str = ""


class FrameSource:
    """Frames of a video file, an image folder or a single image, in order."""

    def __init__(self, path: str | Path, fps: float | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise MediaError(f"input not found: {self.path}")
        self.is_video = False
        self.files: list[Path] = []
        self.total: int | None = None  # frames in the source, when known
        if self.path.is_dir():
            try:
                self.files = sorted((p for p in self.path.iterdir()
                                     if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                                     and not p.name.startswith(".")), key=natural_key)
            except OSError as exc:
                raise MediaError(f"cannot list folder {self.path}: {exc.strerror or exc}") from None
            if not self.files:
                raise MediaError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {self.path}")
            self.fps = fps or DEFAULT_FOLDER_FPS
            self.total = len(self.files)
        elif self.path.suffix.lower() in IMAGE_EXTENSIONS:
            self.files = [self.path]
            self.fps = fps or DEFAULT_FOLDER_FPS
            self.total = 1
        else:
            self.is_video = True
            self._video, meta = self._open_video()
            video_fps = float(meta.get("fps") or 0.0)
            self.fps = fps or (video_fps if video_fps > 0 else DEFAULT_FOLDER_FPS)
            self._video_size = tuple(meta["size"])  # (width, height)
            duration = float(meta.get("duration") or 0.0)
            self.total = int(round(duration * video_fps)) if duration > 0 and video_fps > 0 else None

    def _open_video(self):
        try:
            import imageio_ffmpeg  # optional: only videos need it
        except ImportError:
            raise MediaError("reading videos needs imageio-ffmpeg (pip install imageio-ffmpeg), "
                            "or pass a folder of images") from None
        gen = imageio_ffmpeg.read_frames(str(self.path), pix_fmt="rgb24")
        try:
            meta = next(gen)  # the first item is the metadata: a failure here means ffmpeg cannot read the file
        except (OSError, RuntimeError, StopIteration, ValueError) as exc:
            gen.close()
            lines = [line for line in str(exc).splitlines() if line.strip()]
            raise MediaError(f"cannot read video {self.path}: {lines[-1].strip() if lines else type(exc).__name__}"
                            ) from None
        return gen, meta

    def frames(self, stride: int = 1) -> Iterator[Frame]:
        """Every ``stride``-th frame; an unreadable image comes with ``image=None`` and ``error``."""
        if not self.is_video:
            for index, path in enumerate(self.files):
                if index % stride == 0:
                    image, error = read_image(path)
                    yield Frame(index, path.name, image, error)
            return
        width, height = self._video_size
        index = 0
        try:
            for raw in self._video:
                if index % stride == 0:
                    image = np.frombuffer(raw, dtype=np.uint8)
                    if image.size != width * height * 3:
                        yield Frame(index, f"frame {index}", None,
                                    f"decoded {image.size} bytes, expected {width}x{height}x3")
                    else:
                        yield Frame(index, f"frame {index}", image.reshape(height, width, 3))
                index += 1
        except (OSError, RuntimeError) as exc:
            if index == 0:
                raise MediaError(f"cannot read video {self.path}: {one_line(str(exc))[:300]}") from None
            print(f"warning: video {self.path} stopped after {index} frames: {one_line(str(exc))[:200]}",
                  file=sys.stderr)

    def close(self) -> None:
        if self.is_video:
            self._video.close()


def natural_key(path: Path):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def read_image(path: Path) -> tuple[np.ndarray | None, str]:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB")), ""
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return None, str(exc).strip() or type(exc).__name__


@dataclass
class SampledInput:
    """The input, its frame count and the frames chosen by uniform sampling."""

    source: FrameSource
    kind: str  # "video" or "images"
    total: int  # frames in the source
    indices: list[int]  # sampled source indices, increasing
    count_seconds: float = 0.0  # time spent counting the frames of a video

    def ended_early(self, frames_seen: int) -> bool:
        """A video that ended before its last sampled frame (its counted length was wrong)."""
        return self.kind == "video" and frames_seen < self.indices[-1] + 1

    def resample(self, frames_seen: int, num_frames: int) -> None:
        """Sample again, uniformly over the ``frames_seen`` frames the video really has,
        from its start."""
        self.source = FrameSource(self.source.path)
        self.total, self.indices = frames_seen, uniform_frame_indices(frames_seen, num_frames)


def count_video_frames(path: Path) -> int | None:
    """Frames of a video, counted by ffmpeg decoding it without output; None if ffmpeg cannot count.

    Raises MediaError when the file has no video stream (an audio file, or a video with no frames).
    """
    import imageio_ffmpeg  # optional: only videos need it

    try:
        frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except RuntimeError as exc:
        text = str(exc)
        if "matches no streams" in text or "does not contain any stream" in text:
            raise MediaError(f"video {path} has no frames (no video stream in the file)") from None
        return None  # let the reader say what is wrong with the file
    return frames


def open_input(video: Path | None, frames: Path | None, num_frames: int) -> SampledInput:
    """Check the input path, count its frames and choose the sampled ones (before any model loads)."""
    if video is not None:
        if not video.exists():
            raise MediaError(f"video not found: {video}")
        if video.is_dir():
            raise MediaError(f"--video {video} is a folder; pass a folder of images with --frames")
        start = time.perf_counter()
        counted = count_video_frames(video)
        source = FrameSource(video)  # raises MediaError when ffmpeg cannot read it
        if not source.is_video:
            source.close()
            raise MediaError(f"--video {video} is an image; use --frames with a folder of images")
        total = counted if counted is not None else source.total
        if total is None:
            source.close()
            raise MediaError(f"cannot count the frames of video {video} (ffmpeg reports neither a frame count "
                            f"nor a duration); convert it, e.g. to mp4, or extract its frames into a folder")
        if total == 0:
            source.close()
            raise MediaError(f"video {video} has no frames")
        return SampledInput(source, "video", total, uniform_frame_indices(total, num_frames),
                            time.perf_counter() - start)
    if not frames.exists():
        raise MediaError(f"frames folder not found: {frames}")
    if not frames.is_dir():
        raise MediaError(f"--frames {frames} is not a folder; pass a video file with --video")
    source = FrameSource(frames)  # raises MediaError for a folder without images
    return SampledInput(source, "images", source.total, uniform_frame_indices(source.total, num_frames))


class SampledFrames:
    """Iterates over the sampled frames of a :class:`SampledInput`, reading nothing else into memory.

    ``frames_seen`` is how many frames of a video went by (to notice a video that ends
    before the frame count said it would).
    """

    def __init__(self, sampled: SampledInput):
        self.sampled = sampled
        self.frames_seen = 0

    def __iter__(self) -> Iterator[Frame]:
        src, indices = self.sampled.source, self.sampled.indices
        if not src.is_video:
            for i in indices:
                image, error = read_image(src.files[i])
                yield Frame(i, src.files[i].name, image, error)
            return
        wanted, last = set(indices), indices[-1]
        try:
            for frame in src.frames():
                self.frames_seen = frame.index + 1
                if frame.index in wanted:
                    yield frame
                if frame.index >= last:
                    break
        finally:
            src.close()  # stops ffmpeg, also when the rest of the video is not needed
