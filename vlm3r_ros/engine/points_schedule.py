"""How often the dense world-points head runs, separately from the per-frame pose.

The camera pose is one small MLP on the camera token, so it can go out with every frame.
The world points need the camera-modulated blocks and a DPT head at full image resolution
(about 10 % of a full-size CUT3R step on a CPU), and a point cloud of a slowly moving
camera changes little from frame to frame. :class:`PointsSchedule` decides, frame by frame,
whether this frame's points are computed: when at least ``every_n_frames`` frames AND at
least ``period_s`` seconds of input-stamp time have passed since the last frame with points.
``every_n_frames=1, period_s=0`` (the defaults) is every frame. Input stamps (not the wall
clock) make the choice reproducible when frames are replayed or processed late.
"""

from __future__ import annotations


class PointsSchedule:
    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Forget the last frame with points: the next frame gets points (e.g. a new segment)."""
        self._last_stamp_ns: int | None = None
        self._frames_since = 0  # frames processed since the last one with points

    def due(self, stamp_ns: int, period_s: float = 0.0, every_n_frames: int = 1) -> bool:
        """Whether the frame stamped ``stamp_ns`` should compute points."""
        if every_n_frames < 1 or period_s < 0:
            raise ValueError(f"every_n_frames must be >= 1 and period_s >= 0, got {every_n_frames} and {period_s}")
        last = self._last_stamp_ns
        if last is None or stamp_ns < last:  # first frame, or time went back (a new segment)
            return True
        return self._frames_since + 1 >= every_n_frames and stamp_ns - last >= round(period_s * 1e9)

    def record(self, stamp_ns: int, computed: bool) -> None:
        """Tell the schedule what the frame stamped ``stamp_ns`` did."""
        if computed:
            self._last_stamp_ns, self._frames_since = int(stamp_ns), 0
        else:
            self._frames_since += 1
