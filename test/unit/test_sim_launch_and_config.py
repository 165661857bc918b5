"""The simulation bridge's parameter table, config/sim_bridge.yaml, the ros2-run scripts and
the console scripts agree; vlm3r-sim-eval refuses bad arguments. (launch/sim.launch.py is read
as a syntax tree in test_launch_and_config.py, with launch/vlm3r.launch.py.)
"""
import importlib.metadata
import re
from pathlib import Path

import pytest
import yaml

from vlm3r_ros.ros import sim_bridge
from vlm3r_ros.ros.sim_bridge import PARAMETER_NAMES, PARAMETERS, BridgeSettings, check_parameter

ROOT = Path(__file__).resolve().parents[2]
SPECS = {p.name: p for p in PARAMETERS}


def settings(**overrides):
    values = {p.name: p.default for p in PARAMETERS}
    values.update(overrides)
    return BridgeSettings(**values)


# ------------------------------------------------------------------ parameters
def test_parameter_table_is_consistent():
    assert len(PARAMETER_NAMES) == len(set(PARAMETER_NAMES))
    assert set(PARAMETER_NAMES) == set(BridgeSettings.__dataclass_fields__)
    for spec in PARAMETERS:
        assert spec.description, spec.name
        assert check_parameter(spec.name, spec.default) is None, spec.name
        assert spec.descriptor().read_only, f'{spec.name}: every bridge parameter is read once at start'
        if spec.int_range:
            assert spec.int_range[0] <= spec.default <= spec.int_range[1], spec.name
        if spec.float_range:
            assert spec.float_range[0] <= spec.default <= spec.float_range[1], spec.name
    settings().check()


@pytest.mark.parametrize('name, value, message', [
    ('backend', 'gazebo', 'one of pybullet, habitat'),
    ('trajectory_kind', 'fly', 'one of handheld, patrol, scan'),
    ('image_topic', 'bad topic', 'not a valid topic name'),
    ('depth_topic', 'depth/ image', 'not a valid topic name'),
    ('depth_topic', '', 'not a valid topic name'),
    ('lockstep_state_topic', '1node/state', 'not a valid topic name'),
    ('map_frame_id', '/map', 'tf2 frame id'),
    ('optical_frame_id', '', 'tf2 frame id'),
    ('camera_mount', [0.0, 0.0, 1.0], '6 finite numbers'),
    ('camera_mount', [0.0, 0.0, 1.0, 0.0, float('nan'), 0.0], '6 finite numbers'),
    ('width', 4, 'at least 8 pixels'),
])
def test_bad_values_are_refused_with_a_reason(name, value, message):
    reason = check_parameter(name, value)
    assert reason is not None and message in reason and name in reason


@pytest.mark.parametrize('name', ['map_frame_id', 'optical_frame_id'])
def test_frame_ids_are_checked_as_tf2_checks_them(name):
    # tf2 refuses only an empty id and a leading '/' (geometry2 tf2/src/buffer_core.cpp, validateFrameId)
    for good in ('front-cam.optical_frame', 'robot_1/map', '2nd_map'):
        assert check_parameter(name, good) is None, good
    assert 'start with' in check_parameter(name, '/map')


@pytest.mark.parametrize('overrides, message', [
    (dict(width=0, height=480), 'both be 0'),
    (dict(width=0, height=0), 'a generated trajectory needs a size'),
    (dict(odom_frame_id='map'), 'frame ids must differ'),
    (dict(depth_topic='image'), 'depth_topic must differ from image_topic'),
])
def test_inconsistent_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        settings(**overrides).check()
    settings(width=0, height=0, trajectory_file='t.json').check()  # a file keeps its own size
    settings(depth_topic='image', publish_depth=False).check()  # unused when depth is off


def test_depth_parameters_follow_the_rgb_camera_conventions():
    assert (SPECS['publish_depth'].default, SPECS['depth_topic'].default) == (True, 'depth/image')
    assert 'REP 118' in SPECS['publish_depth'].description


def test_pass_period_keeps_stamps_increasing_when_looping():
    assert sim_bridge.pass_period_s([0.0, 0.1, 0.2, 0.3]) == pytest.approx(0.4)
    assert sim_bridge.pass_period_s([0.0]) == 1.0


# ------------------------------------------------------------------ YAML
def test_yaml_lists_every_parameter_with_its_default():
    doc = yaml.safe_load((ROOT / 'config' / 'sim_bridge.yaml').read_text())
    assert list(doc) == ['/**']
    params = doc['/**']['ros__parameters']
    assert set(params) == set(PARAMETER_NAMES)
    for name, value in params.items():
        default = SPECS[name].default
        if isinstance(default, tuple):
            assert value == list(default) and all(isinstance(v, float) for v in value), name
        else:
            assert type(value) is type(default), f'{name}: {value!r} is not a {type(default).__name__}'
            assert value == default, f'{name}: YAML {value!r} != default {default!r}'


# ------------------------------------------------------------------ launch file
# launch/sim.launch.py is checked in test_launch_and_config.py, with the node's launch file.


def test_cmake_installs_a_ros2_run_launcher_per_console_script():
    """CMakeLists.txt writes the launchers (scripts/ros2_run_launchers.py, tested in
    test_launch_and_config.py) and installs them into lib/vlm3r_ros."""
    cmake = (ROOT / 'CMakeLists.txt').read_text()
    assert re.search(r'scripts/ros2_run_launchers\.py"\s+"\$\{CMAKE_CURRENT_SOURCE_DIR\}/setup\.py"', cmake)
    assert re.search(r'install\(PROGRAMS \$\{_vlm3r_executables\} DESTINATION lib/\$\{PROJECT_NAME\}\)', cmake)


def test_console_scripts_are_registered():
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group='console_scripts')}
    assert scripts.get('vlm3r-sim-bridge') == 'vlm3r_ros.ros.sim_bridge:main'
    assert scripts.get('vlm3r-sim-eval') == 'vlm3r_ros.tools.sim_eval:main'


# ------------------------------------------------------------------ vlm3r-sim-eval arguments
@pytest.mark.parametrize('argv, message', [
    (['--frames', '1'], '--frames must be in 2..100000'),
    (['--rate', '0'], '--rate must be a positive'),
    (['--max-per-type', '-1'], '--max-per-type must be >= 0'),
    (['--params-file', '/nonexistent.yaml'], '--params-file /nonexistent.yaml: no such file'),
])
def test_sim_eval_refuses_bad_arguments(argv, message, capsys):
    from vlm3r_ros.tools import sim_eval

    assert sim_eval.main(argv) == 2
    assert message in capsys.readouterr().err


def test_sim_eval_bridge_command_uses_declared_parameters(tmp_path):
    from vlm3r_ros.ros.sim_eval_steps import bridge_argv
    from vlm3r_ros.tools import sim_eval

    args = sim_eval.build_parser().parse_args(['--frames', '8', '--size', '96x72', '--scene-file', __file__])
    argv = bridge_argv(args, tmp_path / 'b.yaml', tmp_path / 'sim', 'image')
    start = argv.index('--ros-args') + 1
    assert argv[start:start + 2] == ['--params-file', str(tmp_path / 'b.yaml')]
    params = dict(argv[i + 1].split(':=', 1) for i, a in enumerate(argv) if a == '-p')
    assert set(params) <= set(PARAMETER_NAMES)
    assert params['num_frames'] == '8' and (params['width'], params['height']) == ('96', '72')
    assert params['lockstep_state_topic'] == 'vlm3r_node/state' and params['exit_when_done'] == 'true'
    for name, text in params.items():
        value = yaml.safe_load(text)
        if SPECS[name].default != '':  # strings stay strings; numbers and bools parse as their type
            assert isinstance(value, type(SPECS[name].default)), name
