"""The streaming spatial-reasoning engine behind the ROS node (no ROS imports).

* ``ingest(image, stamp_ns)`` — called from ONE worker thread: CUT3R step + the per-frame
  VLM half; the frame's visual tokens, stamp and pose go into a bounded ring buffer
  (``window_capacity`` frames; with ``keyframe_stride`` k, every k-th processed frame is
  kept, but every frame still updates CUT3R's state).
* ``query(...)`` — called from any thread: takes a consistent snapshot of the window, picks
  up to ``max_frames`` frames uniformly inside the requested time window, runs the LLM.
  Ingestion keeps going meanwhile. At most ``max_concurrent_queries`` run at once; the
  rest are refused at once with ``BUSY``.
* ``reset()`` — clears the CUT3R state and the window; a new segment starts.

Errors are :class:`EngineError` with a stable UPPER_CASE ``code``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from vlm3r_ros.engine.llm_backend import LlmBackendError
from vlm3r_ros.engine.vlm3r_pipeline import FrameFeatures, Vlm3rAnswer, Vlm3rPipeline, uniform_frame_indices
from vlm3r_ros.models.cut3r.processing import ImageFormatError
from vlm3r_ros.models.vlm.modeling_vlm3r import Vlm3rInputError

ANSWER_TYPES = ("auto", "choice", "number", "text")


class EngineError(Exception):
    """A refused request: ``code`` is stable (e.g. NO_FRAMES), ``message`` a sentence."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class EngineConfig:
    window_capacity: int = 256  # frames kept for questions
    keyframe_stride: int = 1  # keep every k-th processed frame in the window
    default_max_frames: int = 32  # frames per question when the request says 0 (VLM-3R trained with 32)
    default_max_new_tokens: int = 16
    max_new_tokens_limit: int = 256
    max_question_chars: int = 2000
    max_options: int = 26
    auto_reset_frames: int = 0  # 0 = never; else start a new segment after this many frames
    max_concurrent_queries: int = 1

    def validate(self) -> "EngineConfig":
        checks = [
            (self.window_capacity >= 1, "window_capacity must be >= 1"),
            (self.keyframe_stride >= 1, "keyframe_stride must be >= 1"),
            (1 <= self.default_max_frames <= self.window_capacity, "default_max_frames must be in 1..window_capacity"),
            (1 <= self.default_max_new_tokens <= self.max_new_tokens_limit,
             "default_max_new_tokens must be in 1..max_new_tokens_limit"),
            (self.max_question_chars >= 1, "max_question_chars must be >= 1"),
            (self.auto_reset_frames >= 0, "auto_reset_frames must be >= 0"),
            (self.max_concurrent_queries >= 1, "max_concurrent_queries must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        return self


@dataclass(frozen=True)
class WindowEntry:
    index: int  # processed-frame index within the segment
    stamp_ns: int  # the input image's stamp
    features: FrameFeatures


@dataclass
class IngestResult:
    index: int
    stamp_ns: int
    step_seconds: float
    kept: bool  # stored in the window (keyframe policy)
    c2w: torch.Tensor | None  # (4, 4) camera-to-world, when geometry is on
    segment_id: int
    points_world: torch.Tensor | None = None  # (H, W, 3) world points, when geometry is on
    colors: torch.Tensor | None = None  # (H, W, 3) the model's input colours in [-1, 1]
    confidence: torch.Tensor | None = None  # (H, W) point confidence >= 1


@dataclass
class QueryResult:
    answer: Vlm3rAnswer
    frames_used: int
    window_start_ns: int
    window_end_ns: int
    latency_s: float


@dataclass
class EngineStats:
    segment_id: int = 0
    frames_processed: int = 0  # in this engine's life
    segment_frames: int = 0
    window_size: int = 0
    window_capacity: int = 0
    window_bytes: int = 0
    bytes_per_frame: int = 0
    last_step_seconds: float = math.nan
    queries_answered: int = 0
    queries_refused: int = 0
    last_c2w: torch.Tensor | None = field(default=None, repr=False)


class SpatialEngine:
    def __init__(self, pipeline: Vlm3rPipeline, config: EngineConfig = EngineConfig()):
        self.pipeline = pipeline
        self.config = config.validate()
        self._lock = threading.Lock()  # guards window, stream, counters
        self._query_slots = threading.BoundedSemaphore(self.config.max_concurrent_queries)
        self._window: deque[WindowEntry] = deque(maxlen=self.config.window_capacity)
        self._stream = pipeline.new_stream()
        self._stats = EngineStats(window_capacity=self.config.window_capacity)

    # ---------------------------------------------------------------- ingest
    def ingest(self, image, stamp_ns: int, *, points: bool | None = None) -> IngestResult:
        """Process one RGB uint8 (H, W, 3) frame. Raises EngineError(BAD_IMAGE) for bad input.

        With geometry, ``points=False`` skips this frame's world points (the pose still comes)."""
        with self._lock:
            if self.config.auto_reset_frames and self._stats.segment_frames >= self.config.auto_reset_frames:
                self._reset_locked()
            stream, segment = self._stream, self._stats.segment_id
        try:
            features = self.pipeline.ingest(image, stream, points=points)  # the model runs outside the lock
        except (ImageFormatError, Vlm3rInputError, ValueError) as exc:
            raise EngineError("BAD_IMAGE", str(exc)) from None
        geometry = (features.points_world, features.colors, features.confidence)
        # the window keeps only what questions need (tokens, camera token, pose)
        features = replace(features, points_world=None, colors=None, confidence=None)
        with self._lock:
            if segment != self._stats.segment_id:  # a reset happened meanwhile: drop this frame
                return IngestResult(-1, stamp_ns, features.ingest_seconds, False, features.c2w,
                                    self._stats.segment_id, *geometry)
            index = self._stats.segment_frames
            kept = index % self.config.keyframe_stride == 0
            if kept:
                self._window.append(WindowEntry(index, int(stamp_ns), features))
            self._stats.segment_frames += 1
            self._stats.frames_processed += 1
            self._stats.last_step_seconds = features.ingest_seconds
            self._stats.last_c2w = features.c2w
            self._stats.bytes_per_frame = features.nbytes()
            return IngestResult(index, int(stamp_ns), features.ingest_seconds, kept, features.c2w, segment, *geometry)

    # ----------------------------------------------------------------- query
    def query(self, question: str, options: list[str] | None = None, *, answer_type: str = "",
              max_frames: int = 0, window_seconds: float = 0.0, max_new_tokens: int = 0) -> QueryResult:
        start = time.perf_counter()
        self._check_request(question, options, answer_type, max_frames, window_seconds, max_new_tokens)
        if not self._query_slots.acquire(blocking=False):
            with self._lock:
                self._stats.queries_refused += 1
            raise EngineError("BUSY", f"{self.config.max_concurrent_queries} question(s) already running; "
                                      f"try again shortly")
        try:
            entries = self._select(max_frames or self.config.default_max_frames, window_seconds)
            try:
                answer = self.pipeline.answer([e.features for e in entries], question, options or None,
                                              answer_type=answer_type or "auto",
                                              max_new_tokens=max_new_tokens or self.config.default_max_new_tokens)
            except Vlm3rInputError as exc:
                code = "CONTEXT_TOO_LONG" if "context" in str(exc) else "BAD_REQUEST"
                raise EngineError(code, str(exc)) from None
            except ValueError as exc:  # prompt validation
                raise EngineError("BAD_REQUEST", str(exc)) from None
            except LlmBackendError as exc:  # the LLM server (llm_backend openai); the window is untouched
                raise EngineError(exc.code, exc.message) from None
            with self._lock:
                self._stats.queries_answered += 1
            return QueryResult(answer, len(entries), entries[0].stamp_ns, entries[-1].stamp_ns,
                               time.perf_counter() - start)
        finally:
            self._query_slots.release()

    def _check_request(self, question, options, answer_type, max_frames, window_seconds, max_new_tokens) -> None:
        if not isinstance(question, str) or not question.strip():
            raise EngineError("EMPTY_QUESTION", "the question is empty")
        if len(question) > self.config.max_question_chars:
            raise EngineError("QUESTION_TOO_LONG", f"the question has {len(question)} characters; "
                                                   f"the limit is {self.config.max_question_chars}")
        if options and (len(options) > self.config.max_options or any(not str(o).strip() for o in options)):
            raise EngineError("BAD_OPTIONS", f"options must be 1..{self.config.max_options} non-empty strings")
        if answer_type not in ("",) + ANSWER_TYPES:
            raise EngineError("BAD_ANSWER_TYPE", f"answer_type must be one of {ANSWER_TYPES} or empty, "
                                                 f"got {answer_type!r}")
        if max_frames < 0 or max_frames > self.config.window_capacity:
            raise EngineError("BAD_MAX_FRAMES", f"max_frames must be 0..{self.config.window_capacity}")
        if not math.isfinite(window_seconds) or window_seconds < 0:
            raise EngineError("BAD_WINDOW", "window_seconds must be a finite number >= 0")
        if max_new_tokens < 0 or max_new_tokens > self.config.max_new_tokens_limit:
            raise EngineError("BAD_MAX_NEW_TOKENS", f"max_new_tokens must be 0..{self.config.max_new_tokens_limit}")

    def _select(self, max_frames: int, window_seconds: float) -> list[WindowEntry]:
        with self._lock:
            snapshot = list(self._window)  # a consistent view; ingestion goes on
        if not snapshot:
            raise EngineError("NO_FRAMES", "no frame received yet")
        if window_seconds > 0:
            newest = snapshot[-1].stamp_ns
            snapshot = [e for e in snapshot if newest - e.stamp_ns <= window_seconds * 1e9]
        picks = uniform_frame_indices(len(snapshot), max_frames)
        return [snapshot[i] for i in picks]

    # ----------------------------------------------------------------- state
    def reset(self) -> int:
        """Start a new segment (fresh CUT3R state, empty window). Returns the new segment id."""
        with self._lock:
            self._reset_locked()
            return self._stats.segment_id

    def _reset_locked(self) -> None:
        self._window.clear()
        self._stream = self.pipeline.new_stream()
        self._stats.segment_id += 1
        self._stats.segment_frames = 0

    def stats(self) -> EngineStats:
        with self._lock:
            s = self._stats
            size = len(self._window)
            return EngineStats(segment_id=s.segment_id, frames_processed=s.frames_processed,
                               segment_frames=s.segment_frames, window_size=size,
                               window_capacity=self.config.window_capacity,
                               window_bytes=size * s.bytes_per_frame, bytes_per_frame=s.bytes_per_frame,
                               last_step_seconds=s.last_step_seconds, queries_answered=s.queries_answered,
                               queries_refused=s.queries_refused, last_c2w=s.last_c2w)


MAX_IMAGE_PIXELS = 4096 * 4096
