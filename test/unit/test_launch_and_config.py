"""The launch file, the parameter YAMLs and the Fast DDS profile agree with the node.

launch and launch_ros are not installable here, so the launch file is read as a syntax
tree (never executed, nothing faked): its arguments, the executable it starts and the
parameter names it passes. The node's parameter table is imported without starting ROS.
"""
import ast
import importlib.metadata
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from vlm3r_ros.ros import FASTDDS_PROFILES_ENV, apply_transport_setting, fastdds_profile_path
from vlm3r_ros.ros.node_settings import PARAMETER_NAMES, PARAMETERS, NodeSettings, check_parameter
from vlm3r_ros.ros.sim_bridge import PARAMETER_NAMES as BRIDGE_PARAMETER_NAMES

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / 'launch' / 'vlm3r.launch.py'
SIM_LAUNCH = ROOT / 'launch' / 'sim.launch.py'  # the simulation bridge + the node
LAUNCH_ARGUMENTS = {'params_file', 'image_topic', 'namespace', 'use_sim_time'}
NODE_BUILTIN_PARAMETERS = {'use_sim_time'}  # declared by every rclpy node
SPECS = {p.name: p for p in PARAMETERS}


def yaml_parameters(name):
    doc = yaml.safe_load((ROOT / 'config' / name).read_text())
    assert list(doc) == ['/**'], f'{name}: parameters must be under /** (any node name)'
    return doc['/**']['ros__parameters']


# ------------------------------------------------------------------ the parameter table
def test_parameter_table_is_consistent():
    assert len(PARAMETER_NAMES) == len(set(PARAMETER_NAMES))
    for spec in PARAMETERS:
        assert spec.description, spec.name
        assert check_parameter(spec.name, spec.default) is None, spec.name
        desc = spec.descriptor()
        assert desc.name == spec.name and desc.read_only == spec.read_only
        if spec.int_range:
            assert spec.int_range[0] <= spec.default <= spec.int_range[1], spec.name
        if spec.float_range:
            assert spec.float_range[0] <= spec.default <= spec.float_range[1], spec.name
    # Every read-only parameter is read into NodeSettings at configure, except autostart (main's).
    settings = {f for f in NodeSettings.__dataclass_fields__}
    assert settings == {p.name for p in PARAMETERS if p.read_only} - {'autostart'}
    dynamic = {p.name for p in PARAMETERS if not p.read_only}
    assert dynamic == {'world_frame_id', 'path_max_length', 'publish_points', 'points_max', 'points_period',
                       'points_every_n_frames'}


@pytest.mark.parametrize('name, value, message', [
    ('image_qos_reliability', 'sometimes', 'one of auto, reliable, best_effort'),
    ('device', 'gpu', 'auto, cpu, cuda or cuda:N'),
    ('device', 'cuda:x', 'auto, cpu, cuda or cuda:N'),
    ('world_frame_id', '/map', 'tf2 frame id'),
    ('world_frame_id', '', 'cannot be empty'),
    ('image_topic', '', 'not a valid topic name'),
    ('image_topic', 'camera//image', 'not a valid topic name'),
    ('compressed_image_topic', '1bad', 'not a valid topic name'),
    ('vlm_config_overrides', '{"fusion_num_heads": 16', 'not valid JSON'),
    ('vlm_config_overrides', '[16]', 'must be a JSON object'),
    ('vlm_config_overrides', '{"fusion_heads": 16}', "unknown config override(s) ['fusion_heads']"),
    ('vlm_config_overrides', '{"vision": {"width": 1024}}', "unknown vision config override(s) ['width']"),
])
def test_bad_values_are_refused_with_a_reason(name, value, message):
    reason = check_parameter(name, value)
    assert reason is not None and message in reason and name in reason


@pytest.mark.parametrize('name, value', [
    ('device', 'cuda:1'), ('device', 'cpu'), ('world_frame_id', 'robot1/vlm3r_world'),
    # tf2 refuses only an empty id and a leading '/' (geometry2 tf2/src/buffer_core.cpp, validateFrameId)
    ('world_frame_id', 'camera-1.optical_frame'), ('world_frame_id', '2nd_world'),
    ('image_topic', '/camera/color/image_raw'), ('image_topic', '~/image'), ('compressed_image_topic', ''),
    ('vlm_config_overrides', ''), ('vlm_config_overrides', '{"fusion_num_heads": 16, "vision": {"hidden_size": 1024}}'),
])
def test_good_values_pass(name, value):
    assert check_parameter(name, value) is None


# ------------------------------------------------------------------ YAML files
def test_vlm3r_yaml_lists_every_parameter_with_its_default():
    params = yaml_parameters('vlm3r.yaml')
    assert set(params) == set(PARAMETER_NAMES)
    for name, value in params.items():
        default = SPECS[name].default
        assert type(value) is type(default), f'{name}: {value!r} is not a {type(default).__name__}'
        assert value == default, f'{name}: YAML {value!r} != node default {default!r}'
    assert params['model_source'] == 'files'
    assert params['cut3r_weights'] == params['vlm_base_dir'] == params['vlm_adapter_dir'] == ''
    assert params['vlm_config_overrides'] == ''  # the released model needs none


def test_tiny_yaml_overrides_valid_parameters_with_tiny_random_weights():
    params = yaml_parameters('tiny.yaml')
    assert set(params) <= set(PARAMETER_NAMES), set(params) - set(PARAMETER_NAMES)
    assert params['model_source'] == 'tiny_random' and params['device'] == 'cpu'
    values = {p.name: p.default for p in PARAMETERS}
    for name, value in params.items():
        spec = SPECS[name]
        assert type(value) is type(spec.default), name
        assert check_parameter(name, value) is None, name
        if spec.int_range:
            assert spec.int_range[0] <= value <= spec.int_range[1], name
        values[name] = value
    settings = NodeSettings(**{k: values[k] for k in NodeSettings.__dataclass_fields__})
    config = settings.engine_config()  # cross-parameter checks pass
    assert config.default_max_frames <= config.window_capacity


# ------------------------------------------------------------------ launch file
def launch_tree(path=LAUNCH):
    return ast.parse(path.read_text(), filename=str(path))


def calls(tree, name):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, 'id', None) == name or getattr(n.func, 'attr', None) == name)]


def keyword(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


def imported_modules(tree):
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}


def check_imports(tree):
    """launch, launch_ros, and of our package only the launch-free checks module."""
    modules = imported_modules(tree)
    assert {m.split('.')[0] for m in modules} <= {'launch', 'launch_ros', 'vlm3r_ros'}, modules
    assert {m for m in modules if m.startswith('vlm3r_ros')} == {'vlm3r_ros.ros.launch_checks'}
    assert 'generate_launch_description' in [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]


def launch_actions(tree):
    """The list given to LaunchDescription([...]), in order."""
    (description,) = calls(tree, 'LaunchDescription')
    return description.args[0].elts


def assigned_launch_configurations(tree):
    """{variable name: launch argument} for `x = LaunchConfiguration('x')` lines."""
    return {n.targets[0].id: ast.literal_eval(n.value.args[0]) for n in ast.walk(tree)
            if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)
            and getattr(n.value.func, 'id', None) == 'LaunchConfiguration'}


def check_parameter_values_are_typed(node, tree):
    """Every launch argument passed as a parameter value is a ParameterValue with a value_type
    (a bare substitution would be parsed as YAML: '' or '1e3' would change type)."""
    configurations = assigned_launch_configurations(tree)
    for entry in keyword(node, 'parameters').elts:
        if not isinstance(entry, ast.Dict):
            continue
        for key, value in zip(entry.keys, entry.values):
            if isinstance(value, ast.Name):
                raise AssertionError(f'{ast.literal_eval(key)}: a bare launch argument; wrap it in ParameterValue')
            if isinstance(value, ast.Call):
                assert getattr(value.func, 'id', None) == 'ParameterValue', ast.dump(value)
                assert value.args[0].id in configurations
                assert isinstance(keyword(value, 'value_type'), ast.Name), ast.literal_eval(key)


def check_params_files_are_required(tree, arguments):
    """An OpaqueFunction(require_existing_files, args=[...]) comes before every node."""
    actions = launch_actions(tree)
    kinds = [getattr(a.func, 'id', None) for a in actions]
    (check,) = [a for a in actions if getattr(a.func, 'id', None) == 'OpaqueFunction']
    assert keyword(check, 'function').id == 'require_existing_files'
    assert ast.literal_eval(keyword(check, 'args')) == arguments
    first_node = min(kinds.index(k) for k in ('Node', 'LifecycleNode', 'IncludeLaunchDescription') if k in kinds)
    assert kinds.index('OpaqueFunction') < first_node


def check_defaults_come_from_the_package_share(tree):
    """Shipped files are found in share/vlm3r_ros (FindPackageShare), never by a source path."""
    shares = calls(tree, 'FindPackageShare')
    assert shares and all(ast.literal_eval(c.args[0]) == 'vlm3r_ros' for c in shares)
    assert '__file__' not in ast.unparse(tree)


def test_launch_file_is_a_launch_ros_file():
    tree = launch_tree()
    check_imports(tree)
    (node,) = calls(tree, 'LifecycleNode')
    assert ast.literal_eval(keyword(node, 'package')) == 'vlm3r_ros'
    assert ast.literal_eval(keyword(node, 'executable')) == 'vlm3r_node'
    assert ast.literal_eval(keyword(node, 'name')) == 'vlm3r_node'
    check_defaults_come_from_the_package_share(tree)


def test_launch_arguments():
    declared = {ast.literal_eval(c.args[0]) for c in calls(launch_tree(), 'DeclareLaunchArgument')}
    assert declared == LAUNCH_ARGUMENTS
    used = {ast.literal_eval(c.args[0]) for c in calls(launch_tree(), 'LaunchConfiguration')}
    assert used == LAUNCH_ARGUMENTS


def test_launch_passes_only_declared_parameters_and_the_params_file():
    tree = launch_tree()
    (node,) = calls(tree, 'LifecycleNode')
    parameters = keyword(node, 'parameters')
    assert isinstance(parameters, ast.List)
    dicts = [e for e in parameters.elts if isinstance(e, ast.Dict)]
    keys = {ast.literal_eval(k) for d in dicts for k in d.keys}
    assert keys == {'use_sim_time'}  # the params file decides everything else
    assert keys <= set(PARAMETER_NAMES) | NODE_BUILTIN_PARAMETERS
    names = [e.id for e in parameters.elts if isinstance(e, ast.Name)]
    assert names == ['params_file']
    assert isinstance(keyword(node, 'namespace'), ast.Name)  # the namespace argument
    check_parameter_values_are_typed(node, tree)


def test_image_topic_is_a_remapping_not_a_parameter():
    """image_topic:=... remaps the node's `image` topic (the parameter's default), so it never
    overrides the image_topic a params file sets."""
    tree = launch_tree()
    (node,) = calls(tree, 'LifecycleNode')
    (remapping,) = keyword(node, 'remappings').elts
    source, target = remapping.elts
    assert ast.literal_eval(source) == SPECS['image_topic'].default == 'image'
    assert assigned_launch_configurations(tree)[target.id] == 'image_topic'


def test_a_missing_params_file_stops_the_launch():
    check_params_files_are_required(launch_tree(), ['params_file'])


class LaunchContextStandIn:
    """Stand-in for launch.LaunchContext (launch is not on PyPI): only the attribute
    require_existing_files reads, the launch arguments' values as strings."""

    def __init__(self, **configurations):
        self.launch_configurations = configurations


def test_require_existing_files_names_the_argument_and_the_path(tmp_path):
    from vlm3r_ros.ros.launch_checks import require_existing_files

    good = tmp_path / 'mine.yaml'
    good.write_text('{}')
    context = LaunchContextStandIn(params_file=str(good), other=str(tmp_path / 'typo.yaml'))
    assert require_existing_files(context, 'params_file') == []
    with pytest.raises(RuntimeError, match=r"launch argument other:='.*typo.yaml': no such file"):
        require_existing_files(context, 'params_file', 'other')
    with pytest.raises(RuntimeError, match="params_file:='': no such file"):
        require_existing_files(LaunchContextStandIn(), 'params_file')
    with pytest.raises(RuntimeError, match='no such file'):  # a folder is not a params file
        require_existing_files(LaunchContextStandIn(params_file=str(tmp_path)), 'params_file')


def test_launch_defaults_name_shipped_files():
    text = LAUNCH.read_text()
    for name in ('vlm3r.yaml', 'fastdds_large_data.xml'):
        assert f"'{name}'" in text and (ROOT / 'config' / name).is_file()
    (env,) = calls(launch_tree(), 'SetEnvironmentVariable')
    assert ast.literal_eval(env.args[0]) == FASTDDS_PROFILES_ENV


# ------------------------------------------------------------------ Fast DDS profile
def test_fastdds_profile_is_valid_xml_with_a_large_shared_memory_segment():
    path = fastdds_profile_path()
    assert path == ROOT / 'config' / 'fastdds_large_data.xml'
    ns = {'d': 'http://www.eprosima.com'}
    root = ET.parse(path).getroot()
    segment = root.find('.//d:transport_descriptor[d:type="SHM"]/d:segment_size', ns)
    assert int(segment.text) >= 4 * 640 * 480 * 3  # several VGA rgb8 frames
    participant = root.find('.//d:participant', ns)
    assert participant.get('is_default_profile') == 'true'
    transports = [t.text for t in participant.findall('.//d:userTransports/d:transport_id', ns)]
    types = {t.find('d:transport_id', ns).text: t.find('d:type', ns).text
             for t in root.findall('.//d:transport_descriptor', ns)}
    assert sorted(types[t] for t in transports) == ['SHM', 'UDPv4']  # UDP: discovery, other hosts


def test_transport_setting_keeps_what_the_user_chose():
    env = {}
    assert 'fastdds_large_data.xml' in apply_transport_setting(env)
    assert env == {FASTDDS_PROFILES_ENV: str(fastdds_profile_path())}
    env = {FASTDDS_PROFILES_ENV: '/etc/mine.xml'}
    assert '(kept)' in apply_transport_setting(env) and env == {FASTDDS_PROFILES_ENV: '/etc/mine.xml'}
    env = {'FASTDDS_BUILTIN_TRANSPORTS': 'DEFAULT'}
    assert '(kept)' in apply_transport_setting(env) and FASTDDS_PROFILES_ENV not in env


# ------------------------------------------------------------------ entry points
def test_console_script_is_registered():
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group='console_scripts')}
    assert scripts.get('vlm3r-node') == 'vlm3r_ros.ros.main:main'


def ros2_run_launchers():
    """scripts/ros2_run_launchers.py, imported from its file (scripts/ is no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location('ros2_run_launchers', ROOT / 'scripts' / 'ros2_run_launchers.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ros2_run_launchers_cover_every_console_script(tmp_path):
    module = ros2_run_launchers()
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group='console_scripts')
               if e.value.startswith('vlm3r_ros.')}
    launchers = module.launchers(ROOT / 'setup.py')
    assert {n: v for n, v in launchers.items() if n in scripts} == scripts  # every entry point, same target
    assert launchers['vlm3r_node'] == 'vlm3r_ros.ros.main:main'
    assert launchers['vlm3r_sim_bridge'] == 'vlm3r_ros.ros.sim_bridge:main'
    assert set(launchers) == set(scripts) | {'vlm3r_node', 'vlm3r_sim_bridge'}
    (tmp_path / 'stale').mkdir()
    (tmp_path / 'stale' / 'vlm3r-removed').write_text('old')
    assert module.main([str(ROOT / 'setup.py'), str(tmp_path / 'stale'), '/usr/bin/python3']) == 0
    written = sorted(p.name for p in (tmp_path / 'stale').iterdir())
    assert written == sorted(launchers)  # the stale launcher is gone
    text = (tmp_path / 'stale' / 'vlm3r-ask').read_text()
    assert text.startswith('#!/usr/bin/python3\n') and 'from vlm3r_ros.tools.ask import main' in text
    assert os.access(tmp_path / 'stale' / 'vlm3r-ask', os.X_OK)


def test_ros2_run_executables_are_installed():
    """make setup installs lib/vlm3r_ros/<launcher> into the venv (the ROS install prefix),
    one per console script, as CMakeLists.txt does in a colcon workspace."""
    folder = Path(sys.prefix) / 'lib' / 'vlm3r_ros'
    launchers = ros2_run_launchers().launchers(ROOT / 'setup.py')
    missing = [name for name in launchers if not os.access(folder / name, os.X_OK)]
    assert not missing, f'{missing} missing from {folder}: run make setup'
    text = (folder / 'vlm3r_node').read_text()
    assert 'from vlm3r_ros.ros.main import main' in text, 'stale: run make setup'
    shebang = Path(text.splitlines()[0].removeprefix('#!'))
    assert shebang.resolve() == Path(sys.executable).resolve(), f'{shebang}: not the Python the set-up built for'


# ------------------------------------------------------------------ weights settings
def settings(**overrides):
    values = {p.name: p.default for p in PARAMETERS}
    values.update(overrides)
    return NodeSettings(**{k: values[k] for k in NodeSettings.__dataclass_fields__})


def test_real_weights_need_every_path_and_name_the_missing_one(tmp_path):
    from vlm3r_ros.ros.node_settings import ConfigError, build_engine

    with pytest.raises(ConfigError, match="parameter 'cut3r_weights' is empty.*model_source to tiny_random"):
        build_engine(settings(device='cpu'))
    cut3r = tmp_path / 'cut3r.safetensors'
    cut3r.write_bytes(b'not a checkpoint')
    with pytest.raises(ConfigError, match="parameter 'vlm_base_dir' is empty"):
        build_engine(settings(device='cpu', cut3r_weights=str(cut3r)))
    with pytest.raises(ConfigError, match="parameter 'vlm_adapter_dir' = '/nonexistent/lora': no such file"):
        build_engine(settings(device='cpu', cut3r_weights=str(cut3r), vlm_base_dir=str(tmp_path),
                              vlm_adapter_dir='/nonexistent/lora'))


@pytest.mark.parametrize('value, message', [
    ('{"fusion_num_heads": 16', 'not valid JSON'),
    ('"fusion_num_heads=16"', 'must be a JSON object'),
    ('{"vision": {"hidden": 1024}}', "unknown vision config override(s) ['hidden']; valid: hidden_size"),
    ('{"fusion_num_heads": 0}', 'fusion_num_heads=0: must be a positive integer'),
])
def test_bad_config_overrides_are_refused_at_configure_before_loading(value, message):
    from vlm3r_ros.ros.node_settings import ConfigError, build_engine

    # refused before the weight paths are even looked at (they are empty here)
    with pytest.raises(ConfigError) as info:
        build_engine(settings(device='cpu', vlm_config_overrides=value))
    assert str(info.value).startswith("parameter 'vlm_config_overrides': ") and message in str(info.value)


def test_unreadable_weights_are_a_configuration_error(tmp_path):
    from vlm3r_ros.models.vlm.tokenizer import save_tokenizer_json
    from vlm3r_ros.ros.node_settings import ConfigError, build_engine

    cut3r = tmp_path / 'cut3r.safetensors'
    cut3r.write_bytes(b'not a checkpoint')
    save_tokenizer_json(tmp_path)
    with pytest.raises(ConfigError, match='cannot load the weights'):
        build_engine(settings(device='cpu', cut3r_weights=str(cut3r), vlm_base_dir=str(tmp_path),
                              vlm_adapter_dir=str(tmp_path)))


def test_inconsistent_window_settings_are_refused_before_loading():
    from vlm3r_ros.ros.node_settings import ConfigError, build_engine

    with pytest.raises(ConfigError, match='default_max_frames must be in 1..window_capacity'):
        build_engine(settings(model_source='tiny_random', window_capacity=4, default_max_frames=8))


def test_cuda_without_a_gpu_is_refused():
    import torch

    from vlm3r_ros.ros.node_settings import ConfigError, build_engine

    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    with pytest.raises(ConfigError, match="device 'cuda:0': CUDA is not available to this torch"):
        build_engine(settings(model_source='tiny_random', device='cuda:0'))


def test_sim_launch_file_starts_the_bridge_and_includes_the_node_launch_on_sim_time():
    tree = launch_tree(SIM_LAUNCH)
    check_imports(tree)
    check_defaults_come_from_the_package_share(tree)
    (bridge,) = calls(tree, 'Node')
    assert not calls(tree, 'LifecycleNode'), 'the node comes from vlm3r.launch.py, not a second copy'
    assert ast.literal_eval(keyword(bridge, 'executable')) == 'vlm3r_sim_bridge'
    # the node: vlm3r.launch.py, included from the package share
    (include,) = calls(tree, 'IncludeLaunchDescription')
    (source,) = [c for c in calls(include, 'PathJoinSubstitution')]
    assert [ast.literal_eval(e) for e in source.args[0].elts[1:]] == ['launch', LAUNCH.name]
    assert getattr(source.args[0].elts[0], 'id', None) == 'share'  # FindPackageShare('vlm3r_ros')
    arguments = keyword(include, 'launch_arguments').func.value  # {...}.items()
    passed = {ast.literal_eval(k): v for k, v in zip(arguments.keys, arguments.values)}
    assert set(passed) <= LAUNCH_ARGUMENTS
    assert ast.literal_eval(passed['use_sim_time']) == 'true'
    configurations = assigned_launch_configurations(tree)
    assert configurations[passed['params_file'].id] == 'node_params_file'
    assert configurations[passed['namespace'].id] == 'namespace'
    node_name = ast.literal_eval(keyword(calls(launch_tree(), 'LifecycleNode')[0], 'name'))
    bridge_params = [e for e in keyword(bridge, 'parameters').elts if isinstance(e, ast.Dict)][0]
    keys = [ast.literal_eval(k) for k in bridge_params.keys]
    assert set(keys) <= set(BRIDGE_PARAMETER_NAMES)
    lockstep = ast.literal_eval(bridge_params.values[keys.index('lockstep_state_topic')])
    assert lockstep == f'{node_name}/state', 'the bridge waits for the node it launches'
    check_parameter_values_are_typed(bridge, tree)
    value_types = {ast.literal_eval(k): keyword(v, 'value_type').id
                   for k, v in zip(bridge_params.keys, bridge_params.values) if isinstance(v, ast.Call)}
    assert value_types == {'num_frames': 'int', 'output_dir': 'str'}
    check_params_files_are_required(tree, ['bridge_params_file'])


def test_sim_launch_arguments_are_declared_and_used():
    tree = launch_tree(SIM_LAUNCH)
    declared = {ast.literal_eval(c.args[0]) for c in calls(tree, 'DeclareLaunchArgument')}
    used = {ast.literal_eval(c.args[0]) for c in calls(tree, 'LaunchConfiguration')}
    assert declared == used == {'bridge_params_file', 'node_params_file', 'num_frames', 'output_dir', 'namespace'}
    text = SIM_LAUNCH.read_text()
    for name in ('sim_bridge.yaml', 'tiny.yaml', 'fastdds_large_data.xml'):
        assert f"'{name}'" in text and (ROOT / 'config' / name).is_file()
