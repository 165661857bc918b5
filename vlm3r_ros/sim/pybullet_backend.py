"""The pybullet backend: a SimScene drawn by pybullet's CPU renderer (TinyRenderer), headless.

Each renderer owns its own pybullet client (``p.connect(p.DIRECT)``), so several can live in
one process. The room is textured quads (checker floor, wallpapered walls with a skirting
board and pictures, ceiling) written as OBJ/PNG files into a private temporary folder; every
object part of :mod:`vlm3r_ros.sim.shapes` is one static body (no collision shape, no physics
step: only rendering is used). ``render`` returns RGB, metric depth along the optical axis
and instance ids (pybullet's segmentation mask holds body ids; we map them to instances).

The camera is exact: the OpenGL projection matrix is built from fx, fy, cx, cy (not from a
field of view), and test/unit/test_sim_pybullet.py checks it against projected 3D points.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np

from ..geometry import quaternion_from_matrix
from .core import Intrinsics, RenderedFrame, SimError, SimScene
from .shapes import Mesh, mesh_fit, pybullet_data_path, shape_parts

# OpenCV camera (x right, y down, z forward) -> OpenGL eye (x right, y up, z backward)
_CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


def opengl_projection(intrinsics: Intrinsics, near: float, far: float) -> np.ndarray:
    """OpenGL projection (4, 4) that puts the OpenCV pixel (u, v) = (fx x/z + cx, fy y/z + cy)
    of an eye-space point on row v, column u of pybullet's TinyRenderer image.

    TinyRenderer samples pixel (column i, image row r) at window coordinates (i, H - 1 - r),
    i.e. at the pixel's corner rather than its centre (measured with rendered spheres; the
    test checks it), so x_ndc = 2 u / W - 1 and y_ndc = 1 - 2 (v + 1) / H.
    """
    w, h = intrinsics.width, intrinsics.height
    proj = np.zeros((4, 4))
    proj[0, 0] = 2 * intrinsics.fx / w
    proj[0, 2] = 1 - 2 * intrinsics.cx / w
    proj[1, 1] = 2 * intrinsics.fy / h
    proj[1, 2] = 2 * (intrinsics.cy + 1) / h - 1
    proj[2, 2] = -(far + near) / (far - near)
    proj[2, 3] = -2 * far * near / (far - near)
    proj[3, 2] = -1.0
    return proj


def view_matrix(camera_to_world: np.ndarray) -> np.ndarray:
    """World -> OpenGL eye (4, 4) for an OpenCV camera-to-world pose."""
    return _CV_TO_GL @ np.linalg.inv(camera_to_world)


def depth_from_buffer(buffer: np.ndarray, near: float, far: float) -> np.ndarray:
    """Metric depth along the optical axis from the OpenGL depth buffer in [0, 1] (1 = nothing
    drawn -> inf)."""
    z = np.asarray(buffer, dtype=np.float64)
    depth = far * near / (far - (far - near) * z)
    depth[z >= 1.0] = np.inf
    return depth.astype(np.float32)


def _quaternion(rotation: np.ndarray) -> list[float]:
    """[x, y, z, w] of a rotation matrix (3, 3) (pybullet's order)."""
    return list(quaternion_from_matrix(rotation))


class PyBulletRenderer:
    """Renders one SimScene. ``light_direction`` points towards the light (world, z up)."""

    def __init__(self, scene: SimScene, *, near: float = 0.05, far: float = 50.0,
                 light_direction=(0.35, -0.25, 1.0), ambient: float = 0.55, diffuse: float = 0.45,
                 specular: float = 0.05, segmentation: bool = True):
        try:
            import pybullet
        except ImportError as exc:
            raise SimError("the pybullet backend needs pybullet: pip install -c constraints.txt pybullet==3.2.7 "
                           "(it is in requirements.txt)") from exc
        if not 0 < near < far:
            raise SimError(f"pybullet renderer: need 0 < near < far, got near={near}, far={far}")
        self._p = pybullet
        self.scene, self.near, self.far = scene, float(near), float(far)
        self.segmentation = segmentation
        self._light = dict(lightDirection=list(map(float, light_direction)), lightAmbientCoeff=ambient,
                           lightDiffuseCoeff=diffuse, lightSpecularCoeff=specular, shadow=0)
        self._client = pybullet.connect(pybullet.DIRECT)
        self._assets = Path(tempfile.mkdtemp(prefix="vlm3r_sim_"))
        # Disconnect and delete the assets even if close() is never called.
        self._finalizer = weakref.finalize(self, _release, pybullet, self._client, str(self._assets))
        self._instance_of_body: dict[int, int] = {}
        self._bodies_per_instance: dict[int, list[int]] = {}
        self._build_room()
        for obj in scene.objects:
            self._add_object(obj)
        top = max([-1] + list(self._instance_of_body))
        self._lut = np.full(top + 2, -1, dtype=np.int32)  # body id -> instance id; index -1 -> -1
        for body, iid in self._instance_of_body.items():
            self._lut[body] = iid

    # --- building -----------------------------------------------------------------------------
    def _body(self, visual: int, position, rotation: np.ndarray) -> int:
        if visual < 0:
            raise SimError("pybullet could not create a visual shape (see its log above)")
        return self._p.createMultiBody(baseMass=0, baseCollisionShapeIndex=-1, baseVisualShapeIndex=visual,
                                       basePosition=[float(x) for x in position],
                                       baseOrientation=_quaternion(rotation), physicsClientId=self._client)

    def _quad(self, name: str, corners: np.ndarray, texture: np.ndarray) -> int:
        """A textured quad body from 4 world corners (counter-clockwise seen from the front)."""
        from PIL import Image
        Image.fromarray(texture).save(self._assets / f"{name}.png")
        (self._assets / f"{name}.mtl").write_text(f"newmtl {name}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nmap_Kd {name}.png\n")
        normal = np.cross(corners[1] - corners[0], corners[2] - corners[0])
        normal /= np.linalg.norm(normal)
        lines = [f"mtllib {name}.mtl", f"usemtl {name}"]
        lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in corners]
        lines += ["vt 0 0", "vt 1 0", "vt 1 1", "vt 0 1", f"vn {normal[0]:.6f} {normal[1]:.6f} {normal[2]:.6f}",
                  "f 1/1/1 2/2/1 3/3/1", "f 1/1/1 3/3/1 4/4/1"]
        obj = self._assets / f"{name}.obj"
        obj.write_text("\n".join(lines) + "\n")
        visual = self._p.createVisualShape(self._p.GEOM_MESH, fileName=str(obj), physicsClientId=self._client)
        return self._body(visual, (0, 0, 0), np.eye(3))

    def _build_room(self):
        room, look = self.scene.room, self.scene.room_appearance
        rng = np.random.default_rng(_stable_seed(self.scene.name))
        x0, x1, y0, y1, h = room.x_min, room.x_max, room.y_min, room.y_max, room.height
        floor = np.array([[x0, y0, 0], [x1, y0, 0], [x1, y1, 0], [x0, y1, 0]], dtype=np.float64)
        self._quad("floor", floor, _checker_texture(look.floor_color, x1 - x0, y1 - y0, look.floor_checker))
        ceiling = floor[::-1] + [0, 0, h]
        self._quad("ceiling", ceiling, _plain_texture(look.ceiling_color))
        # Walls face the inside: walk the polygon counter-clockwise, the inside is on the left.
        poly = room.floor if _signed_area(room.floor) > 0 else room.floor[::-1]
        for k in range(len(poly)):
            a, b = poly[k], poly[(k + 1) % len(poly)]
            length = float(np.linalg.norm(b - a))
            corners = np.array([[b[0], b[1], 0], [a[0], a[1], 0], [a[0], a[1], h], [b[0], b[1], h]])
            color = look.wall_colors[k % len(look.wall_colors)]
            self._quad(f"wall{k}", corners, _wall_texture(color, length, h, rng))

    def _add_object(self, obj):
        appearance = self.scene.appearance_of(obj.instance_id)
        try:
            parts = shape_parts(appearance.shape)
        except ValueError as exc:
            raise SimError(f"scene {self.scene.name}, object {obj.instance_id} ({obj.category}): {exc}") from None
        size, rotation = obj.box.axes_lengths, obj.box.axes.T  # object -> world
        bodies = []
        for part in parts:
            lo, hi = np.asarray(part.lo) * size, np.asarray(part.hi) * size
            part_size, part_centre = hi - lo, (hi + lo) / 2
            color = part.color if part.color is not None else tuple(min(1.0, c * part.shade) for c in appearance.color)
            rgba = [*map(float, color), 1.0]
            if part.kind == "box":
                visual = self._p.createVisualShape(self._p.GEOM_BOX, halfExtents=(part_size / 2).tolist(),
                                                   rgbaColor=rgba, physicsClientId=self._client)
                bodies.append(self._body(visual, obj.box.centroid + rotation @ part_centre, rotation))
                continue
            if part.kind == "cylinder":
                mesh = Mesh(str(self._unit_cylinder()))
            elif part.kind == "ellipsoid":
                mesh = Mesh("sphere_smooth.obj")
            else:
                mesh = part.mesh
            scale, mesh_rotation, offset = mesh_fit(mesh, part_size)
            kwargs = {} if mesh.keep_texture else {"rgbaColor": rgba}
            file = mesh.file if Path(mesh.file).is_absolute() else str(_data_path() / mesh.file)
            visual = self._p.createVisualShape(self._p.GEOM_MESH, fileName=file, meshScale=scale.tolist(),
                                               physicsClientId=self._client, **kwargs)
            bodies.append(self._body(visual, obj.box.centroid + rotation @ (part_centre + offset),
                                     rotation @ mesh_rotation))
        for body in bodies:
            self._instance_of_body[body] = obj.instance_id
        self._bodies_per_instance[obj.instance_id] = bodies

    def _unit_cylinder(self, segments: int = 32) -> Path:
        """An OBJ cylinder of radius 0.5 along z from -0.5 to 0.5, closed, written once."""
        path = self._assets / "unit_cylinder.obj"
        if path.exists():
            return path
        angles = 2 * np.pi * np.arange(segments) / segments
        ring = np.column_stack([0.5 * np.cos(angles), 0.5 * np.sin(angles)])
        lines = [f"v {x:.6f} {y:.6f} {z}" for z in (-0.5, 0.5) for x, y in ring]
        lines += ["v 0 0 -0.5", "v 0 0 0.5"]
        lines += [f"vn {math.cos(a):.6f} {math.sin(a):.6f} 0" for a in angles] + ["vn 0 0 -1", "vn 0 0 1"]
        bottom, top = 2 * segments + 1, 2 * segments + 2  # centre vertices (1-based)
        for i in range(segments):
            j = (i + 1) % segments
            b0, b1, t0, t1 = i + 1, j + 1, i + 1 + segments, j + 1 + segments
            n0, n1 = i + 1, j + 1
            lines += [f"f {b0}//{n0} {b1}//{n1} {t1}//{n1}", f"f {b0}//{n0} {t1}//{n1} {t0}//{n0}",
                      f"f {bottom}//{segments + 1} {b1}//{segments + 1} {b0}//{segments + 1}",
                      f"f {top}//{segments + 2} {t0}//{segments + 2} {t1}//{segments + 2}"]
        path.write_text("\n".join(lines) + "\n")
        return path

    # --- rendering ----------------------------------------------------------------------------
    def bodies_of(self, instance_id: int) -> list[int]:
        """pybullet body ids drawing one instance (for tests and debugging)."""
        return list(self._bodies_per_instance[instance_id])

    def render(self, camera_to_world: np.ndarray, intrinsics: Intrinsics) -> RenderedFrame:
        if self._finalizer is None or not self._finalizer.alive:
            raise SimError("pybullet renderer: render() after close()")
        pose = np.asarray(camera_to_world, dtype=np.float64)
        if pose.shape != (4, 4):
            raise SimError(f"pybullet renderer: camera_to_world must be (4, 4), got {pose.shape}")
        w, h = intrinsics.width, intrinsics.height
        flags = 0 if self.segmentation else self._p.ER_NO_SEGMENTATION_MASK
        # pybullet takes both matrices column-major, as 16 floats.
        _, _, rgba, depth_buffer, seg = self._p.getCameraImage(
            w, h, viewMatrix=view_matrix(pose).T.reshape(-1).tolist(),
            projectionMatrix=opengl_projection(intrinsics, self.near, self.far).T.reshape(-1).tolist(),
            renderer=self._p.ER_TINY_RENDERER, flags=flags, physicsClientId=self._client, **self._light)
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(h, w, 4)[:, :, :3].copy()  # (H, W, 3)
        depth = depth_from_buffer(np.asarray(depth_buffer, dtype=np.float64).reshape(h, w), self.near, self.far)
        instance_ids = None
        if self.segmentation:
            bodies = np.asarray(seg, dtype=np.int64).reshape(h, w)
            bodies = np.where((bodies >= 0) & (bodies < len(self._lut) - 1), bodies, -1)
            instance_ids = self._lut[bodies]  # index -1 is the table's last entry: -1
        return RenderedFrame(rgb=rgb, depth=depth, instance_ids=instance_ids)

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> "PyBulletRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _release(pybullet, client: int, assets: str):
    try:
        pybullet.disconnect(physicsClientId=client)
    except Exception:  # already disconnected (interpreter shutting down)
        pass
    shutil.rmtree(assets, ignore_errors=True)


def _data_path() -> Path:
    return pybullet_data_path()


def _stable_seed(text: str) -> int:
    """A seed from a name that does not change between runs (hash() does)."""
    return int.from_bytes(text.encode("utf-8")[:16].ljust(16, b"\0"), "little") % (2 ** 32)


def _signed_area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2


def _to_u8(color) -> np.ndarray:
    return np.clip(np.asarray(color, dtype=np.float64) * 255, 0, 255).astype(np.uint8)


def _plain_texture(color) -> np.ndarray:
    return np.broadcast_to(_to_u8(color), (8, 8, 3)).copy()


def _checker_texture(color, width_m: float, depth_m: float, tile_m: float) -> np.ndarray:
    """Floor texture over the room's bounding rectangle: tiles of tile_m in two shades.

    OBJ texture rows run bottom-up (v = 0 is the first vertex's side), hence the flip."""
    px_per_m = 64
    w, h = max(2, int(round(width_m * px_per_m))), max(2, int(round(depth_m * px_per_m)))
    base = np.asarray(color, dtype=np.float64)
    if tile_m <= 0:
        return np.broadcast_to(_to_u8(base), (h, w, 3)).copy()
    cols, rows = np.meshgrid(np.arange(w), np.arange(h))
    tile = ((cols / px_per_m // tile_m) + (rows / px_per_m // tile_m)).astype(int) % 2
    light, dark = _to_u8(base * 1.25 + 0.05), _to_u8(base * 0.75)
    texture = np.where(tile[..., None] == 1, light, dark)
    texture[(cols % int(tile_m * px_per_m) == 0) | (rows % int(tile_m * px_per_m) == 0)] = _to_u8(base * 0.5)  # grout
    return np.ascontiguousarray(texture[::-1])


def _wall_texture(color, length_m: float, height_m: float, rng: np.random.Generator) -> np.ndarray:
    """Wallpaper with faint vertical stripes, a skirting board and one or two framed pictures."""
    px_per_m = 48
    w, h = max(8, int(round(length_m * px_per_m))), max(8, int(round(height_m * px_per_m)))
    base = np.asarray(color, dtype=np.float64)
    cols = np.arange(w)
    stripes = np.where((cols // 12) % 2 == 0, 1.0, 0.93)
    texture = np.clip(base[None, None, :] * stripes[None, :, None] * np.ones((h, 1, 1)), 0, 1)
    skirting = int(0.1 * px_per_m)
    texture[h - skirting:] = base * 0.45  # image row 0 is the top of the wall
    for _ in range(int(rng.integers(1, 3))):
        pw, ph = int(rng.uniform(0.4, 0.9) * px_per_m), int(rng.uniform(0.3, 0.6) * px_per_m)
        if pw + 8 >= w or ph + 8 >= h:
            continue
        x = int(rng.integers(4, w - pw - 4))
        y = int((h - ph) * rng.uniform(0.25, 0.4))
        texture[y:y + ph, x:x + pw] = (0.15, 0.1, 0.06)  # frame
        inner = rng.uniform(0.1, 0.95, size=3)
        texture[y + 3:y + ph - 3, x + 3:x + pw - 3] = inner
        texture[y + ph // 2:y + ph - 3, x + 3:x + pw - 3] = inner[::-1] * 0.8  # two-tone picture
    return _to_u8(texture)
