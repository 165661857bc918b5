"""The Habitat backend: the same trajectories rendered by habitat-sim, for users who have it.

NOT RUN AGAINST habitat-sim IN CI: habitat-sim has no wheel for this project's Python (3.11) on
PyPI (docs/sim.md says so). Its pure parts (boxes, the room, quaternions, the navmesh check) are
tested with a stand-in module (test/unit/test_sim_habitat_fake.py) built from the API of
habitat-sim v0.3.2 and v0.3.3 as read in its sources. It uses only habitat-sim's public Python API as its
tutorials do (facebookresearch/habitat-sim, examples/tutorials/nb_python/
coordinate_frame_tutorial.py and habitat-sim-demo): ``SimulatorConfiguration``,
``CameraSensorSpec`` (COLOR, DEPTH, SEMANTIC), ``AgentConfiguration``, ``Simulator``,
``Agent.set_state`` and ``get_sensor_observations``; objects come from ``sim.semantic_scene``
(category and axis-aligned box of each annotated object). Everything else (trajectories,
ground truth, the bridge) is the tested core.

Frames. Habitat's world is y-up and its cameras look along -z with y up (the tutorial above).
Ours is z-up with OpenCV cameras, so: habitat point = R_HZ @ our point, and the Habitat camera
rotation = R_HZ @ R_cv @ diag(1, -1, -1). Habitat's pinhole camera has square pixels and its
principal point at the image centre: other intrinsics are refused.

API differences handled: ``SemanticObject.aabb`` is a ``BBox`` with properties ``center`` and
``sizes`` up to v0.3.2, and a Magnum ``Range3D`` with methods ``center()`` and ``size()`` from
v0.3.3 (src/esp/scene/SemanticScene.h, src/esp/bindings/Bindings.cpp). ``AgentState.rotation``
must be a unit quaternion within 1e-4 (habitat_sim/utils/validators.py ``is_unit_length``),
given as coefficients [x, y, z, w] (habitat_sim/utils/common.py ``quat_from_coeffs``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data.scene_graph import ObjectInstance, OrientedBox
from ..geometry import quaternion_from_matrix
from .core import Intrinsics, RenderedFrame, Room, SimError, SimScene

# our z-up world -> Habitat's y-up world: (x, y, z) -> (x, z, -y)
R_HZ = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
_CV_TO_GL = np.diag([1.0, -1.0, -1.0])
# Annotations that are the room itself, not objects (HM3D / MP3D category names).
STRUCTURE = {"wall", "floor", "ceiling", "door frame", "unknown", "misc", "objects", "void", ""}


def _habitat_sim():
    try:
        import habitat_sim
    except ImportError as exc:
        raise SimError("the habitat backend needs habitat-sim, which has no PyPI wheel for this Python: install it "
                       "with conda (conda install habitat-sim -c conda-forge -c aihabitat) or from source, or use "
                       "--backend pybullet") from exc
    return habitat_sim


def _configuration(habitat_sim, scene_path: str, dataset_config: str | None, intrinsics: Intrinsics | None):
    backend = habitat_sim.SimulatorConfiguration()
    backend.scene_id = scene_path
    if dataset_config:
        backend.scene_dataset_config_file = dataset_config
    backend.enable_physics = False
    agent = habitat_sim.agent.AgentConfiguration()
    specs = []
    if intrinsics is not None:
        for uuid, kind in (("color", habitat_sim.SensorType.COLOR), ("depth", habitat_sim.SensorType.DEPTH),
                           ("semantic", habitat_sim.SensorType.SEMANTIC)):
            spec = habitat_sim.CameraSensorSpec()
            spec.uuid, spec.sensor_type = uuid, kind
            spec.resolution = [intrinsics.height, intrinsics.width]
            spec.hfov = intrinsics.hfov_deg
            spec.position = [0.0, 0.0, 0.0]  # sensors sit at the agent: the agent pose is the camera pose
            spec.sensor_subtype = habitat_sim.SensorSubType.PINHOLE
            specs.append(spec)
    agent.sensor_specifications = specs
    return habitat_sim.Configuration(backend, [agent])


def _semantic_id(obj) -> int | None:
    sid = getattr(obj, "semantic_id", None)
    if sid is not None:
        return int(sid)
    try:  # older releases: the instance index ends the id string ("level_region_index")
        return int(str(obj.id).split("_")[-1])
    except ValueError:
        return None


def load_habitat_scene(scene_path: str | Path, dataset_config: str | None = None, name: str | None = None) -> SimScene:
    """A SimScene from a Habitat scene with semantic annotations: one object per annotated
    instance (not walls, floors, ceilings), axis-aligned boxes in our z-up frame, instance id =
    Habitat's semantic id; the room is the bounding rectangle of the navigable area."""
    habitat_sim = _habitat_sim()
    scene_path = str(scene_path)
    sim = habitat_sim.Simulator(_configuration(habitat_sim, scene_path, dataset_config, None))
    try:
        if not sim.pathfinder.is_loaded:  # the room outline comes from the navmesh
            raise SimError(f"the Habitat scene {scene_path} has no navmesh: habitat-sim found no .navmesh for it "
                           f"(beside the scene file, or named by the dataset config). Put the scene's .navmesh "
                           f"file next to it (same name, .navmesh), or compute one with habitat-sim "
                           f"(Simulator.recompute_navmesh) and save it with pathfinder.save_nav_mesh")
        objects = []
        for obj in sim.semantic_scene.objects:
            if obj is None or obj.category is None:
                continue
            category = obj.category.name().strip().lower()
            sid = _semantic_id(obj)
            if category in STRUCTURE or sid is None or sid < 0:
                continue
            centre, sizes = aabb_centre_and_sizes(obj.aabb)
            centre, sizes = R_HZ.T @ centre, np.abs(R_HZ.T @ sizes)
            if np.all(sizes == 0):
                continue
            objects.append(ObjectInstance(sid, category, OrientedBox.create(centre, sizes)))
        lo, hi = (R_HZ.T @ np.asarray(b, dtype=np.float64) for b in sim.pathfinder.get_bounds())
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
        room = Room.rectangle(lo[0], lo[1], hi[0], hi[1], height=max(2.0, float(hi[2] - lo[2])))
    finally:
        sim.close()
    return SimScene(name=name or Path(scene_path).name.split(".")[0], room=room, objects=objects, source=scene_path)


class HabitatRenderer:
    """Renders a Habitat scene (``scene.source``) along our trajectories."""

    def __init__(self, scene: SimScene, *, dataset_config: str | None = None):
        self._habitat_sim = _habitat_sim()
        if not scene.source:
            raise SimError(f"scene {scene.name}: the habitat backend renders a Habitat scene file; this scene has no "
                           f"'source' (procedural rooms are for --backend pybullet)")
        self.scene, self._dataset_config = scene, dataset_config
        self._sim, self._intrinsics = None, None

    def _ensure(self, intrinsics: Intrinsics):
        if self._intrinsics == intrinsics:
            return
        square = math.isclose(intrinsics.fx, intrinsics.fy, rel_tol=1e-6)
        centred = math.isclose(intrinsics.cx, (intrinsics.width - 1) / 2, abs_tol=1e-3) and \
            math.isclose(intrinsics.cy, (intrinsics.height - 1) / 2, abs_tol=1e-3)
        if not (square and centred):
            raise SimError(f"habitat renderer: Habitat's pinhole camera needs fx == fy and the principal point at the "
                           f"image centre; got {intrinsics}. Use Intrinsics.from_hfov(...)")
        if self._sim is not None:
            self._sim.close()
        self._sim = self._habitat_sim.Simulator(
            _configuration(self._habitat_sim, self.scene.source, self._dataset_config, intrinsics))
        self._intrinsics = intrinsics

    def render(self, camera_to_world: np.ndarray, intrinsics: Intrinsics) -> RenderedFrame:
        self._ensure(intrinsics)
        pose = np.asarray(camera_to_world, dtype=np.float64)
        rotation = R_HZ @ pose[:3, :3] @ _CV_TO_GL  # Habitat camera axes in Habitat's world
        state = self._habitat_sim.AgentState()
        state.position = (R_HZ @ pose[:3, 3]).astype(np.float32)
        state.rotation = agent_rotation_coeffs(rotation)
        self._sim.get_agent(0).set_state(state, reset_sensors=True)
        obs = self._sim.get_sensor_observations()
        rgb = np.asarray(obs["color"])[:, :, :3].astype(np.uint8)
        depth = np.asarray(obs["depth"], dtype=np.float32)  # metres along the optical axis
        depth = np.where(depth > 0, depth, np.inf).astype(np.float32)
        known = np.array(sorted(o.instance_id for o in self.scene.objects), dtype=np.int64)
        semantic = np.asarray(obs["semantic"]).astype(np.int64)
        instance_ids = np.where(np.isin(semantic, known), semantic, -1).astype(np.int32)
        return RenderedFrame(rgb=rgb, depth=depth, instance_ids=instance_ids)

    def close(self) -> None:
        if self._sim is not None:
            self._sim.close()
            self._sim = None


def agent_rotation_coeffs(rotation: np.ndarray) -> np.ndarray:
    """Habitat camera rotation (3, 3) -> AgentState.rotation coefficients [x, y, z, w], unit length
    (habitat-sim refuses more than 1e-4 off), from the robust conversion (exact at 180 degrees)."""
    q = np.array(quaternion_from_matrix(rotation), dtype=np.float64)
    return q / np.linalg.norm(q)


def aabb_centre_and_sizes(aabb) -> tuple[np.ndarray, np.ndarray]:
    """(centre, sizes) of a semantic object's axis-aligned box in Habitat's frame: a Magnum Range3D
    (habitat-sim >= 0.3.3: methods ``center()``, ``size()``) or a BBox (<= 0.3.2: properties
    ``center``, ``sizes``)."""
    centre = aabb.center() if callable(aabb.center) else aabb.center
    if hasattr(aabb, "size"):
        sizes = aabb.size() if callable(aabb.size) else aabb.size
    elif hasattr(aabb, "sizes"):
        sizes = aabb.sizes() if callable(aabb.sizes) else aabb.sizes
    else:
        raise SimError(f"habitat-sim returned an object box of type {type(aabb).__name__} with neither size() "
                       f"(Range3D, habitat-sim >= 0.3.3) nor sizes (BBox, <= 0.3.2)")
    return np.asarray(centre, dtype=np.float64).reshape(3), np.asarray(sizes, dtype=np.float64).reshape(3)
