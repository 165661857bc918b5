"""Builds a simulation from a backend name: the one module that knows every renderer.

core.py is backend-neutral and imports no backend; the backends (pybullet_backend.py,
habitat_backend.py) and the room generator (procedural.py) build on core.py; this module
chooses between them, so there is no import circle. Each backend imports its simulator
(pybullet, habitat-sim) only when a renderer is made.
"""

from __future__ import annotations

from pathlib import Path

from .core import TRAJECTORY_KINDS, Intrinsics, Renderer, SimError, SimScene, Simulation, Trajectory
from .habitat_backend import HabitatRenderer, load_habitat_scene
from .procedural import generate_scene
from .pybullet_backend import PyBulletRenderer

BACKENDS = ("pybullet", "habitat")


def make_renderer(backend: str, scene: SimScene, **options) -> Renderer:
    """The renderer of ``backend`` for ``scene`` (options go to its constructor)."""
    if backend == "pybullet":
        return PyBulletRenderer(scene, **options)
    if backend == "habitat":
        return HabitatRenderer(scene, **options)
    raise SimError(f"unknown simulator backend {backend!r}; expected one of {list(BACKENDS)}")


def make_simulation(backend: str = "pybullet", scene: SimScene | str | Path | None = None, seed: int = 0,
                    trajectory: Trajectory | str | Path | None = None, *, trajectory_kind: str = "handheld",
                    n_frames: int = 60, fps: float = 10.0, intrinsics: Intrinsics | None = None,
                    min_visible_pixels: int | None = None, **renderer_options) -> Simulation:
    """A ready simulation.

    scene: a SimScene, a scene file (JSON/YAML, docs/sim.md), or None to generate one from
    ``seed`` (pybullet). For the Habitat backend a path to a Habitat scene (.glb, .ply or
    .scene_instance.json) is read through habitat-sim. trajectory: a Trajectory, a trajectory
    file, or None to generate ``n_frames`` at ``fps`` with ``trajectory_kind`` ('handheld',
    'patrol' or 'scan') and ``seed``; ``intrinsics`` overrides the file's or the default 640x480,
    60 deg.
    """
    if backend not in BACKENDS:
        raise SimError(f"unknown simulator backend {backend!r}; expected one of {list(BACKENDS)}")
    if scene is None:
        scene = generate_scene(seed)
    elif not isinstance(scene, SimScene):
        path = Path(scene)
        is_habitat_file = (path.name.endswith(".scene_instance.json")
                           or (backend == "habitat" and path.suffix.lower() not in (".json", ".yaml", ".yml")))
        if is_habitat_file:
            scene = load_habitat_scene(path)
        else:
            scene = SimScene.load(path)
    if trajectory is None:
        if trajectory_kind not in TRAJECTORY_KINDS:
            raise SimError(f"unknown trajectory kind {trajectory_kind!r}; expected one of {list(TRAJECTORY_KINDS)}")
        trajectory = TRAJECTORY_KINDS[trajectory_kind](scene, seed=seed, n=n_frames, fps=fps, intrinsics=intrinsics)
    else:
        if not isinstance(trajectory, Trajectory):
            trajectory = Trajectory.load(trajectory)
        if intrinsics is not None:
            trajectory = trajectory.with_intrinsics(intrinsics)
    renderer = make_renderer(backend, scene, **renderer_options)
    return Simulation(scene, trajectory, renderer, min_visible_pixels=min_visible_pixels)
