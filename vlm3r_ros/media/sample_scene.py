"""A small synthetic video for demos and tests, rendered here (nothing is downloaded).

A numpy ray caster draws a textured room (plank floor, painted walls with pictures, a
ceiling) and four coloured boxes, seen by a pinhole camera that walks across the room
while turning and tilting smoothly. The same arguments always give the same pixels.

``write_sequence`` writes ``frame_000000.png``, ``frame_000001.png``, ... plus
``groundtruth.tum`` (the camera-to-world poses, world = first camera frame, OpenCV axes,
metres; the convention of ``vlm3r-cut3r``'s trajectory) and ``sequence.json`` (the
arguments and intrinsics, written last so that its presence marks a complete folder).
``python -m vlm3r_ros.tools.sample_data`` is its command line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_FRAMES = 12
DEFAULT_SIZE = (640, 480)  # (width, height)
FRAME_NAME = "frame_{:06d}.png"
SEQUENCE_JSON = "sequence.json"
GROUNDTRUTH_TUM = "groundtruth.tum"
SEQUENCE_GENERATOR = "vlm3r_ros.tools.sample_data"  # the marker in sequence.json (kept: older folders carry it)

# Scene, in a y-up world frame (metres).
ROOM_LO = np.array([-4.0, 0.0, -4.0])
ROOM_HI = np.array([4.0, 2.8, 5.0])
BOXES = [  # (lo corner, hi corner, linear RGB)
    ((-1.6, 0.0, 0.8), (-0.6, 0.9, 1.8), (0.80, 0.12, 0.10)),
    ((0.3, 0.0, 1.8), (1.1, 1.4, 2.6), (0.10, 0.25, 0.85)),
    ((1.2, 0.0, 0.2), (2.0, 0.5, 1.0), (0.90, 0.75, 0.10)),
    ((-0.4, 0.0, 3.0), (0.4, 0.7, 3.6), (0.15, 0.65, 0.20)),
]
WALL_COLOURS = {"-x": (0.75, 0.70, 0.60), "+x": (0.55, 0.65, 0.75), "-z": (0.70, 0.75, 0.65),
                "+z": (0.80, 0.65, 0.60)}
LIGHT_DIR = np.array([0.3, 0.8, -0.5]) / np.linalg.norm([0.3, 0.8, -0.5])
HFOV_DEG = 65.0


# ------------------------------------------------------------------ camera path
def camera_pose(s: float) -> np.ndarray:
    """Camera-to-world (4, 4) in the y-up scene frame at path position s in [0, 1].

    Camera axes are OpenCV's (x right, y down, z forward).
    """
    position = np.array([-1.2 + 2.4 * s, 1.4 + 0.05 * math.sin(2 * math.pi * s),
                         -2.0 + 0.8 * math.sin(math.pi * s)])
    yaw = -0.35 + 0.7 * s + 0.1 * math.sin(2 * math.pi * s)  # about +y; 0 looks along +z
    pitch = -0.12 - 0.05 * math.sin(math.pi * s)  # negative looks down
    forward = np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, down, forward], axis=1)
    c2w[:3, 3] = position
    return c2w


def path_positions(n_frames: int) -> list[float]:
    """Path parameter of each frame: the whole path is covered whatever the frame count."""
    return [i / (n_frames - 1) if n_frames > 1 else 0.0 for i in range(n_frames)]


def intrinsics(size: tuple[int, int]) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) in pixels of the pinhole camera for an image of (width, height)."""
    w, h = size
    f = 0.5 * w / math.tan(math.radians(HFOV_DEG) / 2)
    return f, f, (w - 1) / 2, (h - 1) / 2


# --------------------------------------------------------------------- textures
class _Noise:
    """Seeded, tileable value noise: a few octaves of bilinearly sampled random tables."""

    def __init__(self, rng: np.random.Generator, octaves: int = 3, cells: int = 64):
        self.tables = [rng.random((cells, cells)) for _ in range(octaves)]

    def __call__(self, u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
        out = np.zeros_like(u)
        total = 0.0
        for octave, table in enumerate(self.tables):
            amp, freq = 0.5 ** octave, scale * 2.0 ** octave
            out += amp * _bilinear(table, u * freq, v * freq)
            total += amp
        return out / total  # in [0, 1]


def _bilinear(table: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    n = table.shape[0]
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(np.int64) % n, y0.astype(np.int64) % n
    x1, y1 = (x0 + 1) % n, (y0 + 1) % n
    top = table[y0, x0] * (1 - fx) + table[y0, x1] * fx
    bottom = table[y1, x0] * (1 - fx) + table[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _hash01(*ints: np.ndarray, seed: int = 0) -> np.ndarray:
    """Deterministic per-cell random numbers in [0, 1) (planks, tiles)."""
    h = np.full(np.broadcast(*ints).shape, (seed * 0x9E3779B1 + 0x85EBCA6B) & 0xFFFFFFFF, dtype=np.uint64)
    for i in ints:
        h = (h ^ (i.astype(np.int64).astype(np.uint64) & np.uint64(0xFFFFFFFF))) * np.uint64(0x01000193)
        h &= np.uint64(0xFFFFFFFF)
        h ^= h >> np.uint64(15)
    return (h % np.uint64(10007)).astype(np.float64) / 10007.0


# ------------------------------------------------------------------- renderer
class _Scene:
    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.noise = _Noise(rng)
        # Two pictures per wall: (centre along the wall, centre height, half width, half height, colour)
        self.pictures = {wall: [(rng.uniform(-2.5, 2.5), rng.uniform(1.2, 1.8), rng.uniform(0.3, 0.6),
                                 rng.uniform(0.25, 0.45), rng.uniform(0.05, 0.95, size=3)) for _ in range(2)]
                         for wall in WALL_COLOURS}

    def render(self, c2w: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        w, h = size
        fx, fy, cx, cy = intrinsics(size)
        u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        dirs_cam = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=-1).reshape(-1, 3)
        dirs = dirs_cam @ c2w[:3, :3].T  # (N, 3) world
        dirs /= np.sqrt(np.einsum('ij,ij->i', dirs, dirs))[:, None]
        dirs = np.where(np.abs(dirs) < 1e-12, 1e-12, dirs)
        origin = c2w[:3, 3]

        d = np.ascontiguousarray(dirs.T)  # (3, N): reductions over 3 rows are fast
        o = origin[:, None]
        n_rays = d.shape[1]

        # Room seen from inside: the nearest wall the ray leaves through.
        t_axes = (np.where(d > 0, ROOM_HI[:, None], ROOM_LO[:, None]) - o) / d  # (3, N)
        axis = np.argmin(t_axes, axis=0)
        t = t_axes.min(axis=0)
        surface = np.where(axis == 1, np.where(d[1] < 0, 0, 1), 0)  # 0 floor, 1 ceiling
        surface = np.where(axis == 0, np.where(d[0] < 0, 2, 3), surface)  # 2 wall -x, 3 wall +x
        surface = np.where(axis == 2, np.where(d[2] < 0, 4, 5), surface)  # 4 wall -z, 5 wall +z

        # Boxes (outside): slab test, the nearest hit wins.
        for k, (lo, hi, _) in enumerate(BOXES):
            t1, t2 = (np.array(lo)[:, None] - o) / d, (np.array(hi)[:, None] - o) / d
            t_near = np.minimum(t1, t2)
            enter, leave = t_near.max(axis=0), np.maximum(t1, t2).min(axis=0)
            hit = (enter > 1e-6) & (enter <= leave) & (enter < t)
            t[hit] = enter[hit]
            surface[hit] = 10 + k
            axis[hit] = np.argmax(t_near[:, hit], axis=0)

        # Inside the room and outside a box alike, the surface faces against the ray.
        rows = np.arange(n_rays)
        normal = np.zeros_like(dirs)
        normal[rows, axis] = -np.sign(dirs[rows, axis])
        points = origin + t[:, None] * dirs
        albedo = self._albedo(points, surface, normal)
        lambert = np.clip(normal @ LIGHT_DIR, 0.0, 1.0)
        lamp = np.array([0.0, 2.7, 0.5])  # a ceiling lamp: a soft pool of light
        pool = np.exp(-np.einsum('ij,ij->i', points - lamp, points - lamp) / 18.0)
        shade = 0.35 + 0.4 * lambert + 0.45 * pool
        rgb = np.clip(albedo * shade[:, None], 0.0, 1.0) ** (1 / 2.2)
        return (rgb.reshape(h, w, 3) * 255.0 + 0.5).astype(np.uint8)

    def _albedo(self, p: np.ndarray, surface: np.ndarray, normal: np.ndarray) -> np.ndarray:
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        out = np.zeros_like(p)

        # floor: planks 0.25 m wide along x, staggered, with grain
        m = surface == 0
        row = np.floor(z[m] / 0.25)
        col = np.floor((x[m] + 0.7 * row) / 1.2)
        plank = _hash01(row, col, seed=self.seed)
        grain = self.noise(x[m] * 0.3, z[m] * 4.0, 2.0)
        seam = (np.abs(z[m] / 0.25 - np.round(z[m] / 0.25)) < 0.04) | \
               (np.abs((x[m] + 0.7 * row) / 1.2 - np.round((x[m] + 0.7 * row) / 1.2)) < 0.01)
        tone = (0.7 + 0.5 * plank) * (0.75 + 0.5 * grain) * np.where(seam, 0.45, 1.0)
        out[m] = tone[:, None] * np.array([0.55, 0.36, 0.20])

        # ceiling: off-white with faint tiles
        m = surface == 1
        tiles = ((np.floor(x[m] / 0.6) + np.floor(z[m] / 0.6)) % 2) * 0.05
        out[m] = (0.85 + tiles + 0.1 * self.noise(x[m], z[m], 1.5))[:, None] * np.array([0.95, 0.95, 0.92])

        # walls: painted, a darker skirting board, two pictures each
        for sid, wall, along in ((2, "-x", z), (3, "+x", z), (4, "-z", x), (5, "+z", x)):
            m = surface == sid
            a, hgt = along[m], y[m]
            paint = (0.8 + 0.35 * self.noise(a + 10 * sid, hgt, 3.0))[:, None] * np.array(WALL_COLOURS[wall])
            paint = np.where((hgt < 0.12)[:, None], paint * 0.35, paint)
            for (ca, ch, hw, hh, colour) in self.pictures[wall]:
                inside = (np.abs(a - ca) < hw) & (np.abs(hgt - ch) < hh)
                frame_band = inside & ((np.abs(a - ca) > hw - 0.04) | (np.abs(hgt - ch) > hh - 0.04))
                stripes = 0.6 + 0.4 * np.sin(12.0 * (a - ca) + 7.0 * (hgt - ch) * colour[0])
                art = colour[None, :] * (0.5 + 0.5 * self.noise(a * 3 + sid, hgt * 3, 2.0))[:, None] \
                    * stripes[:, None]
                paint = np.where(inside[:, None], art, paint)
                paint = np.where(frame_band[:, None], 0.08, paint)
            out[m] = paint

        # boxes: a vivid colour with a faint checker on every face
        inner = p - 0.1 * normal  # half a checker cell inside: no flicker on the face planes
        for k, (_, _, colour) in enumerate(BOXES):
            m = surface == 10 + k
            checker = (np.floor(inner[m] / 0.2) @ np.ones(3)) % 2
            out[m] = (0.8 + 0.2 * checker + 0.15 * self.noise(x[m] + z[m], y[m], 4.0))[:, None] * np.array(colour)
        return out


# ------------------------------------------------------------------------ API
def _check_args(n_frames: int, size: tuple[int, int]) -> tuple[int, int]:
    if not isinstance(n_frames, int) or n_frames < 1:
        raise ValueError(f"n_frames must be a positive int, got {n_frames!r}")
    if len(size) != 2 or not all(isinstance(s, int) and 16 <= s <= 8192 for s in size):
        raise ValueError(f"size must be (width, height) with each in 16..8192, got {size!r}")
    return int(size[0]), int(size[1])


def groundtruth_poses(n_frames: int) -> list[np.ndarray]:
    """Camera-to-world (4, 4) of every frame, world = the first camera's frame (OpenCV axes)."""
    poses = [camera_pose(s) for s in path_positions(n_frames)]
    first_inv = np.linalg.inv(poses[0])
    return [first_inv @ c2w for c2w in poses]


def generate_sequence(n_frames: int = DEFAULT_FRAMES, size: tuple[int, int] = DEFAULT_SIZE,
                      seed: int = 0) -> list[np.ndarray]:
    """Render ``n_frames`` RGB uint8 frames of shape (height, width, 3); size is (width, height)."""
    size = _check_args(n_frames, size)
    scene = _Scene(seed)
    return [scene.render(camera_pose(s), size) for s in path_positions(n_frames)]


def matrix_to_tum_quaternion(rot: np.ndarray) -> tuple[float, float, float, float]:
    """(3, 3) rotation -> unit quaternion (qx, qy, qz, qw) with qw >= 0."""
    m = rot
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = (0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s)
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = ((m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s)
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = ((m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = ((m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s)
    qw, qx, qy, qz = q
    norm = math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
    sign = 1.0 if qw >= 0 else -1.0
    return (sign * qx / norm, sign * qy / norm, sign * qz / norm, sign * qw / norm)


def write_sequence(folder: str | Path, n_frames: int = DEFAULT_FRAMES, size: tuple[int, int] = DEFAULT_SIZE,
                   seed: int = 0, fps: float = 30.0) -> list[Path]:
    """Render and write the PNG frames, ``groundtruth.tum`` and ``sequence.json``; returns the PNG paths."""
    size = _check_args(n_frames, size)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SEQUENCE_JSON).unlink(missing_ok=True)  # re-marked complete at the end
    for stale in _frame_files(folder)[n_frames:]:  # left over from a longer sequence
        stale.unlink()
    paths = []
    for i, frame in enumerate(generate_sequence(n_frames, size, seed)):
        path = folder / FRAME_NAME.format(i)
        Image.fromarray(frame).save(path)
        paths.append(path)
    lines = ["# sample_data ground truth: camera-to-world, world = first camera frame (OpenCV x right, "
             "y down, z forward), metres",
             "# timestamp tx ty tz qx qy qz qw"]
    for i, c2w in enumerate(groundtruth_poses(n_frames)):
        qx, qy, qz, qw = matrix_to_tum_quaternion(c2w[:3, :3])
        tx, ty, tz = c2w[:3, 3] + 0.0  # no "-0.000000"
        lines.append(f"{i / fps:.6f} {tx:.6f} {ty:.6f} {tz:.6f} {qx:.9f} {qy:.9f} {qz:.9f} {qw:.9f}")
    (folder / GROUNDTRUTH_TUM).write_text("\n".join(lines) + "\n")
    fx, fy, cx, cy = intrinsics(size)
    doc = {"generator": SEQUENCE_GENERATOR, "n_frames": n_frames, "size": list(size), "seed": seed,
           "fps": fps, "intrinsics": {"fx": fx, "fy": fy, "cx": cx, "cy": cy},
           "frames": [p.name for p in paths]}
    (folder / SEQUENCE_JSON).write_text(json.dumps(doc, indent=2) + "\n")
    return paths


def write_video(path: str | Path, frames, size: tuple[int, int], fps: float = 10.0) -> Path:
    """Encode RGB uint8 frames of ``size`` (width, height) as a video file (H.264 by the
    ffmpeg that imageio-ffmpeg ships); no frames gives a container with no video stream."""
    import imageio_ffmpeg  # optional: only videos need it

    width, height = size
    # The largest block that divides both sides, so ffmpeg never resizes the frames.
    block = next(b for b in (16, 8, 4, 2, 1) if width % b == 0 and height % b == 0)
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, macro_block_size=block)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return Path(path)


def is_complete(folder: str | Path, n_frames: int = DEFAULT_FRAMES, size: tuple[int, int] = DEFAULT_SIZE,
                seed: int = 0) -> bool:
    """True when ``folder`` holds a finished ``write_sequence`` output for exactly these arguments."""
    folder = Path(folder)
    try:
        doc = json.loads((folder / SEQUENCE_JSON).read_text())
    except (OSError, ValueError):
        return False
    if (doc.get("n_frames"), doc.get("size"), doc.get("seed")) != (n_frames, list(size), seed):
        return False
    return [p.name for p in _frame_files(folder)] == [FRAME_NAME.format(i) for i in range(n_frames)]


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("frame_*.png") if p.stem[len("frame_"):].isdigit())
