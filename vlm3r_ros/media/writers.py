"""Writers for CUT3R's outputs: a TUM trajectory, a binary PLY point cloud, and a bounded point sampler.

TUM: one line per pose, ``timestamp tx ty tz qx qy qz qw`` (camera-to-world). PLY: binary
little-endian, float x y z + uchar red green blue (PCL's and most viewers' layout).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PLY_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])


class PointSampler:
    """Keeps an even random subset of at most ``max_points`` of all points added, in bounded memory.

    Every point gets a random key from a seeded generator; the ``max_points`` smallest keys
    survive (a bottom-k sample), so the result does not depend on how the points were batched.
    """

    def __init__(self, max_points: int, seed: int = 0):
        self.max_points = max_points
        self.rng = np.random.default_rng(seed)
        self.chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (keys, order, records)
        self.size = 0
        self.seen = 0

    def add(self, xyz: np.ndarray, rgb: np.ndarray) -> None:
        """xyz (N, 3) float, rgb (N, 3) uint8."""
        n = len(xyz)
        records = np.empty(n, dtype=PLY_DTYPE)
        records["x"], records["y"], records["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
        records["red"], records["green"], records["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
        self.chunks.append((self.rng.random(n), np.arange(self.seen, self.seen + n), records))
        self.seen += n
        self.size += n
        if self.size > 2 * self.max_points:
            self._shrink()

    def _shrink(self) -> None:
        keys, order, records = (np.concatenate(parts) for parts in zip(*self.chunks))
        if len(keys) > self.max_points:
            keep = np.argpartition(keys, self.max_points - 1)[:self.max_points] if self.max_points else []
            keep = np.sort(keep)
            keys, order, records = keys[keep], order[keep], records[keep]
        self.chunks = [(keys, order, records)]
        self.size = len(keys)

    def result(self) -> np.ndarray:
        """The kept points as PLY records, in the order they were added."""
        if not self.chunks:
            return np.empty(0, dtype=PLY_DTYPE)
        self._shrink()
        return self.chunks[0][2]


def write_ply(path: str | Path, records: np.ndarray, comments: list[str] = ()) -> None:
    """Binary little-endian PLY of ``PLY_DTYPE`` records (float x y z, uchar red green blue)."""
    header = ["ply", "format binary_little_endian 1.0"]
    header += [f"comment {_printable(c)}" for c in comments]
    header += [f"element vertex {len(records)}", "property float x", "property float y", "property float z",
               "property uchar red", "property uchar green", "property uchar blue", "end_header"]
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii", "replace"))
        f.write(records.astype(PLY_DTYPE, copy=False).tobytes())


def write_tum(path: str | Path, rows: list[tuple[float, np.ndarray]], comments: list[str] = ()) -> None:
    """TUM trajectory: rows of (timestamp, pose [tx, ty, tz, qw, qx, qy, qz] camera-to-world)."""
    lines = [f"# {_printable(c)}" for c in comments] + ["# timestamp tx ty tz qx qy qz qw"]
    for stamp, pose in rows:
        t, q = pose[:3], pose[3:7] / np.linalg.norm(pose[3:7])
        lines.append(f"{stamp:.6f} {t[0]:.9g} {t[1]:.9g} {t[2]:.9g} {q[1]:.9g} {q[2]:.9g} {q[3]:.9g} {q[0]:.9g}")
    Path(path).write_text("\n".join(lines) + "\n")


def _printable(text: str) -> str:
    """One header line: no line breaks or other control characters."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)
