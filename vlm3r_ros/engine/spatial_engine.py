"""The streaming spatial-reasoning engine behind the ROS node (no ROS imports).

* ``ingest(image, stamp_ns)`` — called from ONE worker thread: CUT3R step + the per-frame
  VLM half; the frame's visual tokens, stamp and pose go into a bounded ring buffer
  (``window_capacity`` frames; with ``keyframe_stride`` k, every k-th processed frame is
  kept, but every frame still updates CUT3R's state).
* ``submit(...)`` — called from any thread, never waits: checks the request and admits it
  into a bounded FIFO (:mod:`vlm3r_ros.engine.query_queue`: ``query_queue_depth`` waiting,
  ``max_concurrent_queries`` running, ``BUSY`` at once when full, ``QUEUE_TIMEOUT`` after
  ``query_queue_timeout`` s of waiting); returns a :class:`~vlm3r_ros.engine.query_queue.Ticket`
  whose outcome always comes. When a worker takes it, it snapshots the window, picks up to
  ``max_frames`` frames inside the requested time window (``frame_selection``), takes the
  visual prefix from the :class:`~vlm3r_ros.engine.prefix_cache.PrefixCache` (or computes it)
  and runs the LLM on the question only. Ingestion keeps going meanwhile.
  ``query(...)`` is ``submit(...).result()``; ``close()`` answers everything ``SHUTTING_DOWN``.
* ``prefix_prefetch`` (with ``keyframes``): after each new keyframe a background thread extends
  the cached prefix of the default question (``default_max_frames``, the whole window) while no
  question waits or runs, so the next question pays only for its own tokens.
* ``reset()`` — clears the CUT3R state and the window; a new segment starts.

Errors are :class:`EngineError` with a stable UPPER_CASE ``code``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

import torch

from vlm3r_ros.engine.errors import EngineError
from vlm3r_ros.engine.llm_backend import LlmBackendError
from vlm3r_ros.engine.prefix_cache import (FRAME_SELECTIONS, PrefixCache, PrefixCacheStats, PrefixKey,
                                           select_positions)
from vlm3r_ros.engine.query_queue import QueryQueue, QueueStats, Ticket
from vlm3r_ros.engine.vlm3r_pipeline import FrameFeatures, Vlm3rAnswer, Vlm3rPipeline
from vlm3r_ros.models.cut3r.processing import ImageFormatError
from vlm3r_ros.models.vlm.modeling_vlm3r import Vlm3rInputError

ANSWER_TYPES = ("auto", "choice", "number", "text")
log = logging.getLogger(__name__)
__all__ = ["EngineError", "EngineConfig", "SpatialEngine", "QueryResult", "Ticket"]


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
    max_concurrent_queries: int = 1  # questions run at once (worker threads)
    query_queue_depth: int = 8  # questions that may wait for a worker; more are refused BUSY
    query_queue_timeout: float = 60.0  # seconds a question may wait before QUEUE_TIMEOUT; 0 = no limit
    prefix_cache_mb: float = 1024.0  # visual-prefix KV cache bound; 0 = off
    frame_selection: str = "uniform"  # "uniform" (official) or "keyframes" (stream: append-only prefix)
    prefix_prefetch: bool = False  # keyframes: extend the cached prefix in the background while no question runs

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
            (self.query_queue_depth >= 0, "query_queue_depth must be >= 0"),
            (math.isfinite(self.query_queue_timeout) and self.query_queue_timeout >= 0,
             "query_queue_timeout must be a finite number >= 0"),
            (math.isfinite(self.prefix_cache_mb) and self.prefix_cache_mb >= 0, "prefix_cache_mb must be >= 0"),
            (self.frame_selection in FRAME_SELECTIONS, f"frame_selection must be one of {FRAME_SELECTIONS}"),
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
    queries_answered: int = 0  # succeeded
    queries_refused: int = 0  # BUSY
    queries_invalid: int = 0  # refused by the request checks before admission
    queue: QueueStats | None = None
    prefix_cache: PrefixCacheStats | None = None
    prefix_prefetches: int = 0  # prefixes computed in the background (prefix_prefetch)
    prefix_prefetch_failures: int = 0
    prefix_prefetch_error: str = ""  # why the last background prefetch failed ("" if none has)
    last_c2w: torch.Tensor | None = field(default=None, repr=False)


class SpatialEngine:
    def __init__(self, pipeline: Vlm3rPipeline, config: EngineConfig = EngineConfig()):
        self.pipeline = pipeline
        self.config = config.validate()
        self._lock = threading.Lock()  # guards window, stream, counters
        self._queue = QueryQueue(depth=self.config.query_queue_depth, workers=self.config.max_concurrent_queries,
                                 timeout_s=self.config.query_queue_timeout)
        self._prefixes = PrefixCache(int(self.config.prefix_cache_mb * 2**20))
        self._invalid = 0
        self._window: deque[WindowEntry] = deque(maxlen=self.config.window_capacity)
        self._stream = pipeline.new_stream()
        self._stats = EngineStats(window_capacity=self.config.window_capacity)
        # Background prefix extension: only where the prefix is append-only and lives in this process.
        self._prefetch_cond = threading.Condition()
        self._prefetch_pending = self._prefetch_running = False
        self._prefetch_thread = None
        if (self.config.prefix_prefetch and self.config.frame_selection == "keyframes" and self._prefixes.enabled
                and pipeline.llm.name == "local"):
            self._prefetch_thread = threading.Thread(target=self._prefetch_loop, name="prefix_prefetch", daemon=True)
            self._prefetch_thread.start()

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
        if kept and self._prefetch_thread is not None:
            with self._prefetch_cond:
                self._prefetch_pending = True
                self._prefetch_cond.notify_all()
        return IngestResult(index, int(stamp_ns), features.ingest_seconds, kept, features.c2w, segment, *geometry)

    # ----------------------------------------------------------------- query
    def submit(self, question: str, options: list[str] | None = None, *, answer_type: str = "",
               max_frames: int = 0, window_seconds: float = 0.0, max_new_tokens: int = 0,
               on_token=None) -> Ticket:
        """Check the request and admit it (never waits). Raises EngineError for a bad request (its
        code), BUSY when the queue is full, SHUTTING_DOWN after close(). ``on_token(ids, text)`` is
        called from the worker after every generated token."""
        try:
            self._check_request(question, options, answer_type, max_frames, window_seconds, max_new_tokens)
        except EngineError:
            with self._lock:
                self._invalid += 1
            raise
        admitted = time.perf_counter()

        def job(ticket: Ticket) -> QueryResult:
            return self._answer(ticket, admitted, question, options, answer_type, max_frames, window_seconds,
                                max_new_tokens, on_token)

        return self._queue.submit(job)

    def query(self, question: str, options: list[str] | None = None, *, answer_type: str = "",
              max_frames: int = 0, window_seconds: float = 0.0, max_new_tokens: int = 0) -> QueryResult:
        """Ask and wait for the answer (EngineError for every refusal, see :meth:`submit`)."""
        return self.submit(question, options, answer_type=answer_type, max_frames=max_frames,
                           window_seconds=window_seconds, max_new_tokens=max_new_tokens).result()

    def close(self, timeout: float | None = 30.0) -> bool:
        """Refuse new questions and answer the waiting and running ones SHUTTING_DOWN (running ones stop
        after their decoding step in progress). True when the query threads ended in time."""
        end = None if timeout is None else time.monotonic() + timeout
        done = self._queue.close(timeout)
        if self._prefetch_thread is not None:
            with self._prefetch_cond:
                self._prefetch_cond.notify_all()
            self._prefetch_thread.join(None if end is None else max(end - time.monotonic(), 0.0))
            done = done and not self._prefetch_thread.is_alive()
        return done

    def wait_prefetched(self, timeout: float | None = None) -> bool:
        """Wait until the background prefetch has nothing left to do (True) or ``timeout`` passes (False).
        True at once when ``prefix_prefetch`` is off."""
        with self._prefetch_cond:
            return self._prefetch_cond.wait_for(
                lambda: self._prefetch_thread is None or self._queue.closed
                or not (self._prefetch_pending or self._prefetch_running), timeout)

    def _prefetch_loop(self) -> None:
        """Extend the default question's prefix after new keyframes, while no question waits or runs."""
        while True:
            with self._prefetch_cond:
                while not self._prefetch_pending and not self._queue.closed:
                    self._prefetch_cond.wait()
                if self._queue.closed:
                    self._prefetch_cond.notify_all()
                    return
                queue = self._queue.stats()
                if queue.waiting or queue.running:  # questions first: they extend the prefix themselves
                    self._prefetch_cond.wait(PREFETCH_RECHECK_S)
                    continue
                self._prefetch_pending, self._prefetch_running = False, True
            error = ""
            try:
                segment, oldest, entries = self._select(self.config.default_max_frames, 0.0)
                self._prefix(segment, oldest, entries)
            except Exception as exc:  # noqa: BLE001 - the next question computes its prefix itself
                error = f"{type(exc).__name__}: {exc}"
                log.warning("background prefix prefetch failed (the next question computes its prefix): %s",
                            error, exc_info=True)
            with self._prefetch_cond:
                self._prefetch_running = False
                with self._lock:
                    if error:
                        self._stats.prefix_prefetch_failures += 1
                        self._stats.prefix_prefetch_error = error
                    else:
                        self._stats.prefix_prefetches += 1
                self._prefetch_cond.notify_all()

    def _prefix(self, segment: int, oldest: int, entries: list[WindowEntry]):
        """The cached visual prefix of these frames (computed, or extended from a cached one), or None
        where the cache does not apply. Frees the prefixes that can never be asked for again."""
        # A prefix with a frame that has left the window can never be asked for again: free it now
        # (with uniform selection in a stream that is nearly every older prefix).
        self._prefixes.retain(lambda key: key.segment_id == segment and key.frames[0] >= oldest)
        # A KV prefix lives in this process's LLM: a remote one (llm_backend openai) prefills itself.
        if not self._prefixes.enabled or self.pipeline.llm.name != "local":
            return None
        vlm = self.pipeline.vlm
        features = [e.features for e in entries]
        key = PrefixKey(segment, tuple(e.index for e in entries), str(vlm.dtype).removeprefix("torch."),
                        f"{self.pipeline.llm.name}:{vlm.device.type}")
        prefix, _how = self._prefixes.get(key, lambda base: self.pipeline.build_prefix(features, base),
                                          lambda p: p.nbytes())
        return prefix

    def _answer(self, ticket: Ticket, admitted: float, question, options, answer_type, max_frames,
                window_seconds, max_new_tokens, on_token) -> QueryResult:
        segment, oldest, entries = self._select(max_frames or self.config.default_max_frames, window_seconds)
        features = [e.features for e in entries]
        try:
            prefix = self._prefix(segment, oldest, entries)
            ticket.raise_if_cancelled()
            answer = self.pipeline.answer(features, question, options or None, answer_type=answer_type or "auto",
                                          max_new_tokens=max_new_tokens or self.config.default_max_new_tokens,
                                          prefix=prefix, on_token=on_token, stop_event=ticket.cancel_event)
        except Vlm3rInputError as exc:
            code = "CONTEXT_TOO_LONG" if "context" in str(exc) else "BAD_REQUEST"
            raise EngineError(code, str(exc)) from None
        except ValueError as exc:  # prompt validation
            raise EngineError("BAD_REQUEST", str(exc)) from None
        except LlmBackendError as exc:  # the LLM server (llm_backend openai); the window is untouched
            raise EngineError(exc.code, exc.message) from None
        ticket.raise_if_cancelled()  # stopped mid-answer: the text is cut short, not an answer
        return QueryResult(answer, len(entries), entries[0].stamp_ns, entries[-1].stamp_ns,
                           time.perf_counter() - admitted)

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

    def _select(self, max_frames: int, window_seconds: float) -> tuple[int, int, list[WindowEntry]]:
        """(segment id, index of the oldest frame in the window, the chosen entries in time order)."""
        with self._lock:
            snapshot = list(self._window)  # a consistent view; ingestion goes on
            segment = self._stats.segment_id
        if not snapshot:
            raise EngineError("NO_FRAMES", "no frame received yet")
        oldest = snapshot[0].index
        if window_seconds > 0:
            newest = snapshot[-1].stamp_ns
            snapshot = [e for e in snapshot if newest - e.stamp_ns <= window_seconds * 1e9]
        # keyframes count kept frames (index // keyframe_stride), so the stride doubles over those
        ranks = [e.index // self.config.keyframe_stride for e in snapshot]
        picks = select_positions(ranks, max_frames, self.config.frame_selection)
        return segment, oldest, [snapshot[i] for i in picks]

    # ----------------------------------------------------------------- state
    def reset(self) -> int:
        """Start a new segment (fresh CUT3R state, empty window). Returns the new segment id."""
        with self._lock:
            self._reset_locked()
            return self._stats.segment_id

    def _reset_locked(self) -> None:
        segment = self._stats.segment_id + 1
        self._prefixes.retain(lambda key: key.segment_id >= segment)  # the old segment's frames are gone
        self._window.clear()
        self._stream = self.pipeline.new_stream()
        self._stats.segment_id = segment
        self._stats.segment_frames = 0

    def stats(self) -> EngineStats:
        queue = self._queue.stats()
        with self._lock:
            s = self._stats
            size = len(self._window)
            return EngineStats(segment_id=s.segment_id, frames_processed=s.frames_processed,
                               segment_frames=s.segment_frames, window_size=size,
                               window_capacity=self.config.window_capacity,
                               window_bytes=size * s.bytes_per_frame, bytes_per_frame=s.bytes_per_frame,
                               last_step_seconds=s.last_step_seconds, queries_answered=queue.succeeded,
                               queries_refused=queue.refused_busy, queries_invalid=self._invalid, queue=queue,
                               prefix_cache=self._prefixes.stats(), prefix_prefetches=s.prefix_prefetches,
                               prefix_prefetch_failures=s.prefix_prefetch_failures,
                               prefix_prefetch_error=s.prefix_prefetch_error, last_c2w=s.last_c2w)


MAX_IMAGE_PIXELS = 4096 * 4096
PREFETCH_RECHECK_S = 0.05  # while questions wait or run, the background prefetch looks again this often
