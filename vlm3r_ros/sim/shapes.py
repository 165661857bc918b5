"""The shape catalogue: how an object of each shape fills its oriented box.

A shape is a list of parts. Each part is an axis-aligned sub-box of the object's unit box
[-0.5, 0.5]^3 (object axes: x width, y depth with the front facing +y, z up) filled by a box,
a cylinder (along z), an ellipsoid or a mesh model of pybullet_data, stretched to fit exactly.
Together the parts of every shape touch all six faces of the unit box, so the object's oriented
box in the scene (the ground truth) is its tight bounding box. Renderers scale the unit box to
the object's size, turn it by the object's rotation and move it to the object's centre.

Colours: a part is drawn in the object's colour times ``shade``, or in its own fixed ``color``;
``keep_texture`` meshes (the duck, the soccer ball) keep the texture their .mtl file names.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PART_KINDS = ("box", "cylinder", "ellipsoid", "mesh")


@dataclass(frozen=True)
class Mesh:
    """A mesh model of pybullet_data: file relative to pybullet_data.getDataPath(), the mesh
    axis that points up ('y' or 'z'), whether its own texture is kept."""

    file: str
    up_axis: str = "z"
    keep_texture: bool = False


@dataclass(frozen=True)
class Part:
    kind: str  # one of PART_KINDS
    lo: tuple[float, float, float]  # sub-box corners in the unit box
    hi: tuple[float, float, float]
    shade: float = 1.0
    color: tuple[float, float, float] | None = None  # fixed colour, else the object's colour * shade
    mesh: Mesh | None = None


def _box(lo, hi, shade=1.0, color=None) -> Part:
    return Part("box", tuple(lo), tuple(hi), shade, color)


def _legs(z_top: float, inset: float = 0.0, size: float = 0.08, shade: float = 0.7) -> list[Part]:
    """Four legs from the floor (z = -0.5) to z_top at the corners of the unit footprint."""
    out = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            x0 = sx * (0.5 - inset) - (size if sx > 0 else 0)
            y0 = sy * (0.5 - inset) - (size if sy > 0 else 0)
            out.append(_box((x0, y0, -0.5), (x0 + size, y0 + size, z_top), shade))
    return out


WHITE = (0.93, 0.93, 0.90)
DARK = (0.08, 0.08, 0.09)

# Unit-box layouts. z = -0.5 is the floor under the object, +y its front.
SHAPES: dict[str, list[Part]] = {
    "box": [_box((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))],
    "table": [_box((-0.5, -0.5, 0.44), (0.5, 0.5, 0.5))] + _legs(0.44, inset=0.03, size=0.06),
    "chair": ([_box((-0.5, -0.5, -0.04), (0.5, 0.5, 0.02))]  # seat at about half the height
              + _legs(-0.04, size=0.1)
              + [_box((-0.5, -0.5, 0.02), (0.5, -0.38, 0.5), 0.85)]),  # backrest at the back (-y)
    "sofa": [_box((-0.5, -0.5, -0.5), (0.5, 0.5, -0.05), 0.8),  # base
             _box((-0.38, -0.25, -0.05), (0.38, 0.5, 0.02)),  # seat cushion
             _box((-0.5, -0.5, -0.05), (0.5, -0.25, 0.5), 0.9),  # back
             _box((-0.5, -0.25, -0.05), (-0.38, 0.5, 0.15), 0.75),  # arms
             _box((0.38, -0.25, -0.05), (0.5, 0.5, 0.15), 0.75)],
    "bed": [_box((-0.5, -0.44, -0.5), (0.5, 0.5, -0.2), 0.7),  # frame
            _box((-0.48, -0.44, -0.2), (0.48, 0.48, 0.05), 1.0, WHITE),  # mattress
            _box((-0.4, -0.42, 0.05), (0.4, -0.22, 0.15), 1.0, (0.85, 0.87, 0.93)),  # pillow
            _box((-0.5, 0.05, -0.2 + 0.25), (0.5, 0.5, 0.1), 1.0),  # blanket over the foot
            _box((-0.5, -0.5, -0.5), (0.5, -0.44, 0.5), 0.6)],  # headboard at the back
    "cabinet": [_box((-0.5, -0.5, -0.5), (0.5, 0.44, 0.5)),
                _box((-0.47, 0.44, -0.45), (-0.01, 0.5, 0.47), 0.8),  # two doors on the front
                _box((0.01, 0.44, -0.45), (0.47, 0.5, 0.47), 0.8)],
    "tv": [_box((-0.2, -0.5, -0.5), (0.2, 0.5, -0.47), 0.5),  # foot
           _box((-0.03, -0.05, -0.47), (0.03, 0.05, -0.05), 0.5),  # pole
           _box((-0.5, -0.1, -0.05), (0.5, 0.05, 0.5), 1.0),  # housing
           _box((-0.47, 0.05, -0.01), (0.47, 0.08, 0.46), 1.0, (0.10, 0.16, 0.28))],  # screen on the front
    "lamp": [Part("cylinder", (-0.3, -0.3, -0.5), (0.3, 0.3, -0.46), 0.6),  # base
             Part("cylinder", (-0.04, -0.04, -0.46), (0.04, 0.04, 0.15), 0.6),  # pole
             Part("cylinder", (-0.5, -0.5, 0.15), (0.5, 0.5, 0.5), 1.0)],  # shade
    "trash_can": [Part("cylinder", (-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))],
    "plant": [Part("cylinder", (-0.3, -0.3, -0.5), (0.3, 0.3, -0.15), 1.0, (0.62, 0.33, 0.20)),  # pot
              Part("ellipsoid", (-0.5, -0.5, -0.25), (0.5, 0.5, 0.5))],  # foliage
    "ball": [Part("mesh", (-0.5, -0.5, -0.5), (0.5, 0.5, 0.5), mesh=Mesh("soccerball.obj", "z", True))],
    "duck": [Part("mesh", (-0.5, -0.5, -0.5), (0.5, 0.5, 0.5), mesh=Mesh("duck.obj", "y", True))],
    "teddy": [Part("mesh", (-0.5, -0.5, -0.5), (0.5, 0.5, 0.5), mesh=Mesh("teddy2_VHACD_CHs.obj", "y"))],
    "mug": [Part("mesh", (-0.5, -0.5, -0.5), (0.5, 0.5, 0.5), mesh=Mesh("objects/mug.obj", "z"))],
    "bunny": [Part("mesh", (-0.5, -0.5, -0.5), (0.5, 0.5, 0.5), mesh=Mesh("bunny.obj", "z"))],
}


def shape_parts(name: str) -> list[Part]:
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown shape {name!r}; expected one of {sorted(SHAPES)} (vlm3r_ros.sim.shapes)") from None


def pybullet_data_path() -> Path:
    try:
        import pybullet_data  # ships with pybullet; only a folder path
    except ImportError as exc:
        raise ImportError("the mesh models (duck, teddy, mug, ball) come from pybullet_data, part of pybullet: "
                          "pip install -c constraints.txt pybullet==3.2.7 (it is in requirements.txt)") from exc
    return Path(pybullet_data.getDataPath())


def up_rotation(up_axis: str) -> np.ndarray:
    """Rotation (3, 3) taking mesh coordinates to object coordinates (z up)."""
    if up_axis == "z":
        return np.eye(3)
    if up_axis == "y":  # +90 deg about x: mesh +y -> object +z, mesh +z -> object -y
        return np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    raise ValueError(f"mesh up axis must be 'y' or 'z', got {up_axis!r}")


@functools.lru_cache(maxsize=None)
def mesh_bounds(file: str) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) of the OBJ file's vertices, (3,) each, in mesh coordinates (a relative
    ``file`` is in pybullet_data)."""
    path = Path(file) if Path(file).is_absolute() else pybullet_data_path() / file
    vertices = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("v "):
                vertices.append([float(x) for x in line.split()[1:4]])
    if not vertices:
        raise ValueError(f"{path}: no vertices ('v x y z' lines) in the mesh")
    v = np.asarray(vertices)
    return v.min(axis=0), v.max(axis=0)


def natural_proportions(shape: str) -> np.ndarray | None:
    """For a single-mesh shape, its extent (3,) in object axes divided by the largest side;
    None for shapes built from primitives (any proportions work)."""
    parts = shape_parts(shape)
    if len(parts) != 1 or parts[0].kind != "mesh":
        return None
    lo, hi = mesh_bounds(parts[0].mesh.file)
    extent = np.abs(up_rotation(parts[0].mesh.up_axis) @ (hi - lo))
    return extent / extent.max()


def mesh_fit(mesh: Mesh, size: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How to stretch ``mesh`` to fill a box of ``size`` (3,) in object axes centred at 0:
    (mesh scale (3,) per mesh axis, rotation mesh->object (3, 3), offset (3,) of the mesh origin)."""
    lo, hi = mesh_bounds(mesh.file)
    rotation = up_rotation(mesh.up_axis)
    size_in_mesh_axes = np.abs(rotation.T @ np.asarray(size, dtype=np.float64))
    scale = size_in_mesh_axes / (hi - lo)
    offset = -rotation @ (scale * (lo + hi) / 2)  # moves the scaled mesh's centre to 0
    return scale, rotation, offset
