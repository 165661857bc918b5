"""The Habitat backend's own logic, against a stand-in for habitat-sim (not installable here).

``FakeHabitatSim`` is a small module put in ``sys.modules['habitat_sim']`` for these tests
only. It has just what vlm3r_ros/sim/habitat_backend.py calls, with the behaviour read in
habitat-sim's sources (facebookresearch/habitat-sim, tags v0.3.2 and v0.3.3):

* ``SemanticObject.aabb``: v0.3.2 a ``BBox`` with properties ``center`` and ``sizes``
  (src/esp/bindings/Bindings.cpp); v0.3.3 a Magnum ``Range3D`` with methods ``center()``
  and ``size()`` (src/esp/scene/SemanticScene.h returns ``Mn::Range3D``);
* ``Agent.set_state`` validates ``AgentState.rotation`` as a unit quaternion within 1e-4
  (src_python/habitat_sim/utils/validators.py ``is_unit_length``), coefficients [x, y, z, w]
  (utils/common.py ``quat_from_coeffs``);
* ``pathfinder.is_loaded`` is false when the scene has no navmesh.

What is tested is ours: boxes and room in our z-up frame, the navmesh check, the agent
rotation (hand-worked quaternions, 180-degree turns included).
"""
import math
import sys
import types

import numpy as np
import pytest

from vlm3r_ros.sim.core import Intrinsics, SimError, SimScene
from vlm3r_ros.sim.habitat_backend import (R_HZ, HabitatRenderer, agent_rotation_coeffs, aabb_centre_and_sizes,
                                           load_habitat_scene)

H = math.sqrt(0.5)


# ------------------------------------------------------------------ the stand-in
class FakeRange3D:
    """Magnum Range3D as habitat-sim >= 0.3.3 returns it: center() and size() are methods."""

    def __init__(self, centre, size):
        self._c, self._s = np.asarray(centre, float), np.asarray(size, float)

    def center(self):
        return tuple(self._c)

    def size(self):
        return tuple(self._s)


class FakeBBox:
    """habitat-sim <= 0.3.2's BBox: center and sizes are properties."""

    def __init__(self, centre, size):
        self.center, self.sizes = tuple(centre), tuple(size)


def fake_object(sid, category, box):
    return types.SimpleNamespace(semantic_id=sid, id=f'0_0_{sid}', aabb=box,
                                 category=types.SimpleNamespace(name=lambda: category))


class FakeAgent:
    def __init__(self):
        self.states = []

    def set_state(self, state, reset_sensors=True):
        q = np.asarray(state.rotation, dtype=float)
        if q.shape != (4,) or not np.isclose(np.linalg.norm(q), 1.0, rtol=1e-4, atol=0):
            raise ValueError(f'{q} is supposed to be a normalized quaternion')  # habitat's validator
        self.states.append((np.asarray(state.position, float).copy(), q.copy()))


class FakeSimulator:
    scene = None  # set by each test: objects, navmesh bounds or None

    def __init__(self, cfg):
        self.cfg = cfg
        self.semantic_scene = types.SimpleNamespace(objects=self.scene['objects'])
        bounds = self.scene['navmesh']
        self.pathfinder = types.SimpleNamespace(is_loaded=bounds is not None,
                                                get_bounds=lambda: bounds or ((0, 0, 0), (0, 0, 0)))
        self.agent = FakeAgent()
        self.closed = False

    def get_agent(self, index):
        return self.agent

    def get_sensor_observations(self):
        spec = self.cfg.agents[0].sensor_specifications[0]
        h, w = spec.resolution
        return {'color': np.zeros((h, w, 4), np.uint8), 'depth': np.ones((h, w), np.float32),
                'semantic': np.full((h, w), 7, np.uint32)}

    def close(self):
        self.closed = True


def _namespace():
    return types.SimpleNamespace()


@pytest.fixture
def fake_habitat_sim(monkeypatch):
    module = types.ModuleType('habitat_sim')
    module.SimulatorConfiguration = _namespace
    module.CameraSensorSpec = _namespace
    module.AgentState = _namespace
    module.SensorType = types.SimpleNamespace(COLOR='color', DEPTH='depth', SEMANTIC='semantic')
    module.SensorSubType = types.SimpleNamespace(PINHOLE='pinhole')
    module.agent = types.SimpleNamespace(AgentConfiguration=_namespace)
    module.Configuration = lambda backend, agents: types.SimpleNamespace(backend=backend, agents=agents)
    module.Simulator = FakeSimulator
    monkeypatch.setitem(sys.modules, 'habitat_sim', module)
    return module


def scene(box_type, navmesh=((-1.0, 0.0, -3.0), (4.0, 2.5, 1.0))):
    return {'navmesh': navmesh, 'objects': [
        fake_object(7, 'Chair ', box_type((1.0, 0.5, -2.0), (0.4, 1.0, 0.6))),
        fake_object(3, 'wall', box_type((0.0, 1.0, 0.0), (5.0, 2.5, 0.1))),  # structure: not an object
        None,
    ]}


# ------------------------------------------------------------------ scenes
@pytest.mark.parametrize('box_type', [FakeRange3D, FakeBBox], ids=['range3d-v0.3.3', 'bbox-v0.3.2'])
def test_objects_and_room_from_either_box_api(fake_habitat_sim, box_type):
    FakeSimulator.scene = scene(box_type)
    loaded = load_habitat_scene('/data/room.glb')
    assert loaded.name == 'room' and loaded.source == '/data/room.glb'
    (chair,) = loaded.objects
    assert (chair.instance_id, chair.category) == (7, 'chair')
    # Habitat (X, Y up, Z) -> ours (X, -Z, Y): centre (1, 0.5, -2) -> (1, 2, 0.5); sizes (0.4, 1, 0.6) -> (0.4, 0.6, 1)
    np.testing.assert_allclose(chair.box.centroid, [1.0, 2.0, 0.5])
    np.testing.assert_allclose(chair.box.axes_lengths, [0.4, 0.6, 1.0])
    # navmesh bounds (-1, 0, -3)..(4, 2.5, 1) -> x in [-1, 4], y in [-1, 3], height 2.5
    assert loaded.room.area == pytest.approx(5.0 * 4.0)
    assert loaded.room.height == pytest.approx(2.5)


def test_box_api_without_a_size_is_a_clear_error():
    with pytest.raises(SimError, match=r'neither size\(\).*nor sizes'):
        aabb_centre_and_sizes(types.SimpleNamespace(center=(0, 0, 0)))


def test_a_scene_without_navmesh_is_refused_at_load(fake_habitat_sim):
    FakeSimulator.scene = scene(FakeRange3D, navmesh=None)
    with pytest.raises(SimError, match='has no navmesh.*.navmesh'):
        load_habitat_scene('/data/room.glb')


# ------------------------------------------------------------------ rotations
@pytest.mark.parametrize('rotation, expected', [
    (np.eye(3), (0, 0, 0, 1)),
    (np.diag([1.0, -1.0, -1.0]), (1, 0, 0, 0)),  # 180 degrees about x
    (np.diag([-1.0, 1.0, -1.0]), (0, 1, 0, 0)),  # 180 degrees about y: a camera turned round
    # 180 degrees about (1, -1, 0) / sqrt 2: R = 2 a a^T - I. The trace-only construction that
    # took each sign from an off-diagonal difference (all 0 here) gave (+H, +H, 0, 0): wrong.
    (np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]), (H, -H, 0, 0)),
    (np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]), (0, -H, 0, H)),  # -90 degrees about y
])
def test_agent_rotation_by_hand(rotation, expected):
    q = agent_rotation_coeffs(rotation)
    assert abs(np.linalg.norm(q) - 1.0) < 1e-12
    assert np.allclose(q, expected, atol=1e-12) or np.allclose(q, -np.asarray(expected), atol=1e-12), q


def test_render_sets_the_agent_pose_in_habitat_frames(fake_habitat_sim):
    FakeSimulator.scene = scene(FakeRange3D)
    sim_scene = SimScene(name='room', room=load_habitat_scene('/data/room.glb').room, objects=[],
                         source='/data/room.glb')
    renderer = HabitatRenderer(sim_scene)
    intrinsics = Intrinsics.from_hfov(8, 6, 90.0)
    # An OpenCV camera at (1, 2, 1.5) looking along our +x, z up: x right = -y, y down = -z, z = +x.
    c2w = np.eye(4)
    c2w[:3, :3] = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    c2w[:3, 3] = [1.0, 2.0, 1.5]
    frame = renderer.render(c2w, intrinsics)
    position, q = renderer._sim.agent.states[-1]
    np.testing.assert_allclose(position, [1.0, 1.5, -2.0])  # ours (x, y, z) -> Habitat (x, z, -y)
    # Habitat's camera looks along -Z; our +x is Habitat's +X: a -90 degree turn about Habitat's Y.
    assert np.allclose(q, (0, -H, 0, H)) or np.allclose(q, (0, H, 0, -H)), q
    assert frame.rgb.shape == (6, 8, 3) and np.isinf(frame.depth).sum() == 0
    # Turned round (looking along our -x): +90 degrees about Y; then a camera rolled upside
    # down and turned: every agent rotation is unit (the stand-in validates as habitat-sim does).
    c2w[:3, :3] = np.diag([-1.0, 1.0, 1.0]) @ c2w[:3, :3] @ np.diag([-1.0, 1.0, -1.0])
    renderer.render(c2w, intrinsics)
    assert np.allclose(renderer._sim.agent.states[-1][1], (0, H, 0, H))
    for habitat_rotation in (np.diag([1.0, -1.0, -1.0]), np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0, 0, -1.0]])):
        c2w[:3, :3] = R_HZ.T @ habitat_rotation @ np.diag([1.0, -1.0, -1.0])
        renderer.render(c2w, intrinsics)
    assert len(renderer._sim.agent.states) == 4
    renderer.close()
