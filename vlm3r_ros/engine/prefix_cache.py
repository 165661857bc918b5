"""Visual-prefix KV cache and the stream-mode frame selection that keeps it useful (no ROS).

The LLaVA prompt is ``[system, user header, <visual tokens>, question, assistant header]``.
Everything up to the end of the visual tokens depends only on the chosen frames, so its KV
cache (:class:`~vlm3r_ros.models.vlm.modeling_vlm3r.VisualPrefix`) is computed once per
frame set and every question about the same frames prefills only its own ~50-100 tokens.

:class:`PrefixCache` keeps those prefixes keyed by exactly what they were computed from:
``(segment id, frame indices in the segment, dtype, backend)``. A miss whose frames extend a
cached set (same segment, the cached frames first) is built from that entry, paying only for
the new frames. Entries are evicted least recently used first, so the cache stays within
``max_bytes`` (0 disables it); a prefix that alone is bigger is used once and not kept.
Several threads asking for the same key at once compute it once (the others wait for it).

Frame selection (:func:`select_positions`):

* ``uniform`` (the official VLM-3R / lmms-eval sampling, the default): ``max_frames`` frames
  spread evenly over the window, ``np.linspace``. Every new frame moves most of the picks,
  so in a stream the prefix changes with every frame and the cache helps only for questions
  asked before the next frame arrives.
* ``keyframes``: the frames whose index in the segment is a multiple of a stride ``s``, with
  ``s`` the smallest power of two that leaves at most ``max_frames``. The picks stay evenly
  spaced over the segment; a new keyframe is appended at the end (the cached prefix is
  extended by one frame's tokens) and only when the count would pass ``max_frames`` does the
  stride double (every other pick is dropped: a full prefill). The price: between
  ``max_frames / 2`` and ``max_frames`` frames are used, and their spacing is not the one
  the model was evaluated with. Once the window is full (``window_capacity``) the oldest
  picks leave it and the prefix changes at its start too.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from vlm3r_ros.media.frames import uniform_frame_indices

FRAME_SELECTIONS = ("uniform", "keyframes")


def select_positions(frame_indices: list[int], max_frames: int, selection: str = "uniform") -> list[int]:
    """Positions (into ``frame_indices``, ascending segment indices) of the frames a question uses."""
    if not frame_indices or max_frames < 1:
        return []
    if selection == "uniform":
        return uniform_frame_indices(len(frame_indices), max_frames)
    if selection != "keyframes":
        raise ValueError(f"frame selection must be one of {FRAME_SELECTIONS}, got {selection!r}")
    stride = 1
    while True:
        picks = [pos for pos, index in enumerate(frame_indices) if index % stride == 0]
        if len(picks) <= max_frames:
            return picks
        stride *= 2


@dataclass(frozen=True)
class PrefixKey:
    segment_id: int
    frames: tuple[int, ...]  # segment frame indices, in time order
    dtype: str
    backend: str

    def extends(self, other: "PrefixKey") -> bool:
        """True when ``other``'s frames are the first frames of this key's (same segment, dtype, backend)."""
        n = len(other.frames)
        return (other.segment_id, other.dtype, other.backend) == (self.segment_id, self.dtype, self.backend) \
            and 0 < n < len(self.frames) and self.frames[:n] == other.frames


@dataclass(frozen=True)
class PrefixCacheStats:
    entries: int = 0
    bytes: int = 0
    max_bytes: int = 0
    hits: int = 0
    misses: int = 0  # computed from scratch
    extensions: int = 0  # computed from a cached prefix of fewer frames
    evictions: int = 0


class PrefixCache:
    """LRU of visual prefixes within ``max_bytes``; ``get(key, build)`` returns ``(prefix, how)``."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[PrefixKey, object] = OrderedDict()
        self._sizes: dict[PrefixKey, int] = {}
        self._building: set[PrefixKey] = set()
        self._cond = threading.Condition()
        self._counts = dict(hits=0, misses=0, extensions=0, evictions=0)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, key: PrefixKey, build: Callable[[object | None], object], nbytes: Callable[[object], int]):
        """The prefix for ``key``: cached ("hit"), built on a cached shorter one ("extended") or built
        anew ("miss") with ``build(base_or_None)``. ``nbytes(prefix)`` sizes an entry."""
        if not self.enabled:
            with self._cond:
                self._counts["misses"] += 1
            return build(None), "miss"
        with self._cond:
            while key in self._building:  # another thread computes the same prefix: wait for it
                self._cond.wait()
            if key in self._entries:
                self._entries.move_to_end(key)
                self._counts["hits"] += 1
                return self._entries[key], "hit"
            bases = [k for k in self._entries if key.extends(k)]
            base_key = max(bases, key=lambda k: len(k.frames)) if bases else None
            base = self._entries[base_key] if base_key is not None else None
            self._building.add(key)
        try:
            prefix = build(base)
        except BaseException:
            with self._cond:
                self._building.discard(key)
                self._cond.notify_all()
            raise
        size = nbytes(prefix)
        with self._cond:
            self._building.discard(key)
            self._counts["extensions" if base is not None else "misses"] += 1
            if size <= self.max_bytes:
                self._entries[key] = prefix
                self._sizes[key] = size
                self._evict_locked()
            self._cond.notify_all()
        return prefix, ("extended" if base is not None else "miss")

    def _evict_locked(self) -> None:
        while sum(self._sizes.values()) > self.max_bytes and self._entries:
            old, _ = self._entries.popitem(last=False)
            del self._sizes[old]
            self._counts["evictions"] += 1

    def retain(self, keep: Callable[[PrefixKey], bool]) -> None:
        """Drop the entries for which ``keep(key)`` is false (e.g. an old segment's)."""
        with self._cond:
            for key in [k for k in self._entries if not keep(k)]:
                del self._entries[key], self._sizes[key]

    def clear(self) -> None:
        self.retain(lambda key: False)

    def stats(self) -> PrefixCacheStats:
        with self._cond:
            return PrefixCacheStats(len(self._entries), sum(self._sizes.values()), self.max_bytes, **self._counts)

