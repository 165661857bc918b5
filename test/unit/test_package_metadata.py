"""package.xml, setup.py and vlm3r_ros.__version__ describe the same package."""
import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import vlm3r_ros

ROOT = Path(__file__).resolve().parents[2]


def setup_py_keywords():
    """The literal keyword arguments of the setup(...) call in setup.py."""
    tree = ast.parse((ROOT / 'setup.py').read_text())
    constants = {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'setup':
            keywords = {}
            for kw in node.keywords:
                if isinstance(kw.value, ast.Constant):
                    keywords[kw.arg] = kw.value.value
                elif isinstance(kw.value, ast.Name) and kw.value.id in constants:
                    keywords[kw.arg] = constants[kw.value.id]
            return keywords
    raise AssertionError('setup.py has no setup(...) call')


def test_package_xml_names_the_package():
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.tag == 'package'
    assert root.get('format') == '3'
    assert root.findtext('name') == 'vlm3r_ros'
    assert root.findtext('export/build_type') == 'ament_cmake'


def test_versions_agree():
    xml_version = ET.parse(ROOT / 'package.xml').getroot().findtext('version')
    setup = setup_py_keywords()
    assert setup['name'] == 'vlm3r_ros'
    assert xml_version == setup['version'] == vlm3r_ros.__version__, (
        f'package.xml says {xml_version}, setup.py says {setup["version"]}, '
        f'vlm3r_ros.__version__ says {vlm3r_ros.__version__}: make all three equal')


# ------------------------------------------------------------------ rosdep keys
ROSDEP_KEYS = ROOT / 'test' / 'fixtures' / 'rosdep_keys.txt'
DEPEND_TAGS = ('buildtool_depend', 'build_depend', 'exec_depend', 'depend', 'test_depend')


def recorded_keys():
    """{section: set of names} of test/fixtures/rosdep_keys.txt (the rosdistro lists)."""
    sections, current = {}, None
    for line in ROSDEP_KEYS.read_text().splitlines():
        if not line or line.startswith('#'):
            continue
        if line.startswith('['):
            current = sections.setdefault(line.strip('[]'), set())
        else:
            current.add(line)
    return sections


def package_xml_dependencies():
    root = ET.parse(ROOT / 'package.xml').getroot()
    return [(tag, element.text.strip()) for tag in DEPEND_TAGS for element in root.iter(tag)]


def test_recorded_rosdep_lists_hold_what_rosdistro_holds():
    keys = recorded_keys()
    python_keys, packages = keys['rosdep/python.yaml'], keys['kilted/distribution.yaml']
    assert len(python_keys) > 1000 and len(packages) > 1000
    # facts checked by hand in rosdistro's rosdep/python.yaml
    assert {'python3-torch', 'python3-pytorch-pip', 'python3-transformers-pip'} <= python_keys
    assert not {'python3-torch-pip', 'python3-safetensors-pip', 'python3-omegaconf'} & python_keys
    assert {'rclpy', 'ros2launch', 'launch_ros', 'rosidl_default_generators'} <= packages


def test_every_package_xml_key_exists_in_rosdistro():
    keys = recorded_keys()
    python_keys, packages = keys['rosdep/python.yaml'], keys['kilted/distribution.yaml']
    unknown = []
    for tag, name in package_xml_dependencies():
        if name.startswith('python3-'):
            known = name in python_keys  # Python libraries: rosdep/python.yaml only
        else:
            known = name in packages
        if not known:
            unknown.append(f'<{tag}>{name}')
    assert not unknown, (f'package.xml names keys that rosdep cannot resolve: {unknown}. Use a key of '
                         f'{ROSDEP_KEYS} (rosdistro), or install the library with the README pip step')


def test_package_xml_declares_what_the_code_imports():
    """Every ROS package imported by vlm3r_ros/ or launch/ is a run dependency."""
    import re

    declared = {name for tag, name in package_xml_dependencies() if tag in ('depend', 'exec_depend')}
    packages = recorded_keys()['kilted/distribution.yaml']
    imported = set()
    for path in list((ROOT / 'vlm3r_ros').rglob('*.py')) + list((ROOT / 'launch').glob('*.py')):
        for match in re.finditer(r'^\s*(?:from|import)\s+([a-z_0-9]+)', path.read_text(), re.MULTILINE):
            if match.group(1) in packages:
                imported.add(match.group(1))
    assert {'rclpy', 'rcl_interfaces', 'ament_index_python', 'launch', 'launch_ros'} <= imported
    assert imported <= declared, f'imported but not in package.xml: {sorted(imported - declared)}'
    assert 'ros2launch' in declared  # `ros2 launch` itself


def test_test_only_libraries_are_test_depends():
    tags = dict((name, tag) for tag, name in package_xml_dependencies())
    assert tags['python3-pytest'] == tags['python3-pytest-timeout'] == 'test_depend'


# PyPI distribution -> the rosdep key in package.xml that installs it (rosdep/python.yaml maps
# each of these keys to the apt package or the pip package of that name).
ROSDEP_KEY_OF = {
    'numpy': 'python3-numpy', 'pyyaml': 'python3-yaml', 'pillow': 'python3-pil', 'tqdm': 'python3-tqdm',
    'imageio': 'python3-imageio', 'transformers': 'python3-transformers-pip', 'torch': 'python3-torch',
    'pybullet': 'python3-pybullet-pip', 'opencv-python-headless': 'python3-opencv', 'pytest': 'python3-pytest', 'pytest-timeout': 'python3-pytest-timeout',
}


def readme_workspace_section():
    text = (ROOT / 'README.md').read_text()
    start = text.index('## In a ROS 2 workspace')
    return text[start:text.index('\n## ', start + 1)]


def test_every_runtime_library_has_a_rosdep_key_or_the_readme_pip_step():
    import re

    section = readme_workspace_section()
    (pip_line,) = [line for line in section.splitlines() if line.startswith('python3 -m pip install ')]
    pip_step = dict(req.split('==') for req in pip_line.split()[4:])
    pins = dict(line.split('==') for line in (ROOT / 'requirements.txt').read_text().splitlines()
                if re.match(r'^[A-Za-z0-9_.-]+==', line))
    assert all(pins[name] == version for name, version in pip_step.items()), 'README pins differ from requirements.txt'
    declared = {name for _, name in package_xml_dependencies()}
    for requirement in setup_py_install_requires():
        key = ROSDEP_KEY_OF.get(requirement)
        assert (key in declared) if key else (requirement in pip_step), (
            f'{requirement}: neither its rosdep key in package.xml nor in the README pip step')
    assert not set(pip_step) & set(ROSDEP_KEY_OF), 'a library with a rosdep key belongs in package.xml'
    assert 'python3-torch' in declared and '--skip-keys python3-torch' in section


def setup_py_install_requires():
    tree = ast.parse((ROOT / 'setup.py').read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == 'install_requires':
            return ast.literal_eval(node.value)
    raise AssertionError('setup.py has no install_requires')


def test_readme_workspace_steps_are_the_integration_test_steps():
    section = readme_workspace_section()
    for step in ('source /opt/ros/kilted/setup.bash', 'colcon build', '--symlink-install', 'source install/setup.bash',
                 'install/vlm3r_ros/lib/vlm3r_ros/vlm3r_node --ros-args',
                 '--params-file install/vlm3r_ros/share/vlm3r_ros/config/tiny.yaml'):
        assert step in section, step
    test = (ROOT / 'test' / 'integration' / 'test_colcon_workspace.py').read_text()
    for used in ("'colcon'), 'build'", "'--symlink-install'", "/install/setup.bash",
                 "--params-file {share}/config/tiny.yaml"):
        assert used in test, used


def test_generated_interfaces_live_outside_the_source_tree():
    """The set-up builds vlm3r_ros.msg / .srv into build/ (reached through vlm3r_ros.pkg and
    pkgutil.extend_path); the source package holds only hand-written modules."""
    import vlm3r_ros.msg
    import vlm3r_ros.srv

    source = ROOT / 'vlm3r_ros'
    assert not (source / 'msg').exists() and not (source / 'srv').exists() and not list(source.glob('*.so'))
    for module in (vlm3r_ros.msg, vlm3r_ros.srv):
        assert not Path(module.__file__).resolve().is_relative_to(source), module.__file__
    assert Path(vlm3r_ros.__path__[0]).resolve() == source.resolve()  # hand-written modules come first
