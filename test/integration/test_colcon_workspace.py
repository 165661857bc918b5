"""The package in a real ROS 2 colcon workspace, exactly as README.md "In a ROS 2 workspace" says.

The repository is copied into a temporary workspace's src/ and made read-only; the pinned colcon
of .venv builds it with .venv's ROS 2 wheels as the underlay (in place of /opt/ros/<distro>:
AMENT_PREFIX_PATH and CMAKE_PREFIX_PATH name .venv, as sourcing a ROS setup.bash would). Then,
with only install/setup.bash sourced (no PYTHONPATH, no pip install, no source tree), the
installed vlm3r_node answers a spatial_query about frames this process streams, the installed
vlm3r_sim_bridge publishes its frames, every `ros2 run` launcher starts, and vlm3r_ros.msg /
.srv / .ros import from the install space. Once as a copy install, once with --symlink-install.
The build time, the node's start time and the answer are printed (pytest -s shows them).
"""
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

from vlm3r_ros.ros.client_node import ClientNode
from vlm3r_ros.msg import SpatialState
from vlm3r_ros.srv import SpatialQuery

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
PACKAGE = 'vlm3r_ros'
WAIT_S = 120.0  # a loaded 2-core machine: torch import, tiny models, discovery
# What colcon's and the ROS setup files manage: none of it may leak in from this process (the
# last one is the wheels' guard: this process's Python was re-executed with .venv/lib on
# LD_LIBRARY_PATH; a fresh shell's is not).
CLEARED = ('PYTHONPATH', 'AMENT_PREFIX_PATH', 'CMAKE_PREFIX_PATH', 'COLCON_PREFIX_PATH', 'LD_LIBRARY_PATH',
           'VIRTUAL_ENV', 'FASTDDS_DEFAULT_PROFILES_FILE', 'PYTHONHOME', '_ROS_WHEELS_BOOTSTRAP_COMPLETE')


def source_files(root):
    """The repository's files as git sees them (tracked, and new files not ignored)."""
    out = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard', '-z'],
                         cwd=root, check=True, capture_output=True).stdout
    return sorted({p for p in out.decode().split('\0') if p and (root / p).is_file()})


def snapshot(folder):
    """{relative path: (size, mtime_ns)} of everything under folder."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in folder.rglob('*')}


def make_read_only(folder):
    for p in [folder, *folder.rglob('*')]:
        mode = p.stat().st_mode
        p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def build_env():
    """This environment with .venv's wheels as the underlay, as `source /opt/ros/<distro>/setup.bash`."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(AMENT_PREFIX_PATH=str(VENV), CMAKE_PREFIX_PATH=str(VENV), VIRTUAL_ENV=str(VENV),
               PATH=f'{VENV / "bin"}{os.pathsep}{env.get("PATH", "")}')
    return env


def sourced(workspace, command):
    """argv running `command` (a bash string) with only install/setup.bash sourced."""
    unset = [a for name in CLEARED for a in ('-u', name)]
    return ['env', *unset, 'bash', '-c', f'source {workspace}/install/setup.bash && {command}']


@pytest.fixture(scope='module', params=['copy', 'symlink'])
def workspace(request, tmp_path_factory):
    """A colcon workspace with this repository (read-only) in src/, built; yields its path."""
    ws = tmp_path_factory.mktemp(f'colcon_{request.param}')
    src = ws / 'src' / PACKAGE
    for name in source_files(ROOT):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    make_read_only(src)
    before = snapshot(src)
    argv = [str(VENV / 'bin' / 'colcon'), 'build']
    if request.param == 'symlink':
        argv.insert(2, '--symlink-install')
    start = time.monotonic()
    result = subprocess.run(argv, cwd=ws, env=build_env(), capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - start
    if result.returncode != 0:
        logs = sorted((ws / 'log').rglob('stdout_stderr.log'))
        detail = logs[-1].read_text(errors='replace')[-6000:] if logs else ''
        pytest.fail(f'colcon build failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n'
                    f'{detail}', pytrace=False)
    print(f'\n[colcon {request.param}] `{" ".join(argv[1:])}` took {seconds:.1f} s')
    after = snapshot(src)
    assert after == before, f'the build wrote into the source tree: {sorted(set(after) ^ set(before))[:20]}'
    try:
        yield ws
    finally:
        for p in [src, *src.rglob('*')]:  # let pytest clean up
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_nothing_generated_into_the_source_tree(workspace):
    src = workspace / 'src' / PACKAGE
    assert not (src / PACKAGE / 'msg').exists() and not (src / PACKAGE / 'srv').exists()
    assert not list((src / PACKAGE).glob('*.so'))
    assert not (src / 'build').exists()


IMPORT_CHECK = '''
import importlib, json, sys
from pathlib import Path
import vlm3r_ros, vlm3r_ros.msg, vlm3r_ros.srv, vlm3r_ros.ros, vlm3r_ros.ros.node
from rclpy.type_support import check_for_type_support
from vlm3r_ros.msg import SpatialState
from vlm3r_ros.srv import SpatialQuery
check_for_type_support(SpatialState)
check_for_type_support(SpatialQuery)
from ament_index_python.packages import get_package_prefix, get_package_share_directory
from vlm3r_ros.ros import fastdds_profile_path
files = {name: getattr(m, '__file__', None) for name, m in sys.modules.items() if name.split('.')[0] == 'vlm3r_ros'}
print(json.dumps({'version': getattr(vlm3r_ros, '__version__', None), 'files': files,
                  'prefix': get_package_prefix('vlm3r_ros'),
                  'share': get_package_share_directory('vlm3r_ros'), 'profile': str(fastdds_profile_path()),
                  'sys_path': sys.path}))
'''


def vlm3r_ros_version():
    import vlm3r_ros

    return vlm3r_ros.__version__


def test_interfaces_and_modules_import_from_the_install_space(workspace):
    import json

    # the interpreter the launchers start with (a ROS install: the system python3)
    result = subprocess.run(sourced(workspace, f'cd / && exec {VENV}/bin/python -c "$VLM3R_CHECK"'),
                            env={**os.environ, 'VLM3R_CHECK': IMPORT_CHECK}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    install = workspace / 'install' / PACKAGE
    assert found['version'] == vlm3r_ros_version()  # our __init__.py, not rosidl's empty one
    assert Path(found['prefix']) == install  # what `ros2 run` / FindPackageShare look up
    assert Path(found['share']) == install / 'share' / PACKAGE
    for name, path in found['files'].items():
        if path is not None:  # namespace-less: every vlm3r_ros module is a file
            assert Path(path).is_relative_to(install), f'{name} imported from {path}, not the install space'
    assert {'vlm3r_ros.msg', 'vlm3r_ros.srv', 'vlm3r_ros.ros.node'} <= set(found['files'])
    # no source tree on the path (.venv, the underlay, happens to live in the checkout)
    assert str(ROOT) not in found['sys_path'] and str(workspace / 'src') not in found['sys_path'], found['sys_path']
    # the copy install finds the Fast DDS profile in share/ (a symlink install resolves to the source copy)
    profile = Path(found['profile'])
    assert profile.name == 'fastdds_large_data.xml' and profile.is_file()


def test_every_ros2_run_launcher_starts(workspace):
    lib = workspace / 'install' / PACKAGE / 'lib' / PACKAGE
    names = sorted(p.name for p in lib.iterdir())
    assert {'vlm3r_node', 'vlm3r_sim_bridge', 'vlm3r-ask', 'vlm3r-eval', 'vlm3r-gen-qa', 'vlm3r-sim-eval',
            'vlm3r-play', 'vlm3r-cut3r'} <= set(names), names
    for name in names:
        if name in ('vlm3r_node', 'vlm3r_sim_bridge', 'vlm3r-node', 'vlm3r-sim-bridge'):
            continue  # ROS programs (no --help): started for real below
        result = subprocess.run(sourced(workspace, f'cd / && exec {lib / name} --help'),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0 and 'usage:' in result.stdout, f'{name}: {result.stdout}{result.stderr}'


class Client:
    """This process's image publisher, state subscription and spatial_query client."""

    def __init__(self, namespace, node_proc):
        self.node_proc = node_proc
        self.ros = ClientNode('colcon_test_client')
        self.node = self.ros.node
        self.states, self.sim_images = [], []
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=rclpy.qos.DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(SpatialState, f'{namespace}/vlm3r_node/state', self.states.append, latched)
        self.images = self.node.create_publisher(Image, f'{namespace}/image', qos_profile_sensor_data)
        self.query = self.node.create_client(SpatialQuery, f'{namespace}/spatial_query')

    def close(self):
        self.ros.close()

    def spin_until(self, done, what, children=()):
        self.ros.spin_until(done, WAIT_S, what, watch=children)


def frame(index, width=96, height=72):
    msg = Image(height=height, width=width, encoding='rgb8', is_bigendian=0, step=width * 3)
    msg.header.frame_id = 'camera_optical_frame'
    msg.header.stamp.sec = 1000 + index
    msg.data = bytes((index * 37 + i) % 256 for i in range(width * 3)) * height
    return msg


def test_installed_node_answers_a_spatial_query(workspace, start_child, tmp_path):
    share = workspace / 'install' / PACKAGE / 'share' / PACKAGE
    node_exe = workspace / 'install' / PACKAGE / 'lib' / PACKAGE / 'vlm3r_node'
    namespace = '/colcon_symlink' if 'symlink' in workspace.name else '/colcon_copy'
    started = time.monotonic()
    node = start_child(sourced(workspace, f'exec {node_exe} --ros-args --params-file {share}/config/tiny.yaml '
                                          f'-r __ns:={namespace}'), 'installed_node', log_dir=tmp_path)
    client = Client(namespace, node)
    try:
        client.spin_until(lambda: client.states, 'the installed node latches its first ~/state', [node])
        start_s = time.monotonic() - started
        client.spin_until(lambda: client.images.get_subscription_count() > 0, 'the node subscribes', [node])
        for i in range(6):
            client.images.publish(frame(i))
            client.ros.spin_for(0.1, step_s=0.01)
        def settled():
            s = client.states[-1]
            return s.frames_received == 6 and s.frames_processed + s.frames_dropped + s.frames_rejected == 6
        client.spin_until(settled, 'all 6 frames received and handled', [node])
        assert client.states[-1].frames_processed >= 1, client.states[-1]
        client.spin_until(lambda: client.query.service_is_ready(), 'spatial_query available', [node])
        future = client.query.call_async(SpatialQuery.Request(question='How many chairs are in the room?'))
        client.spin_until(future.done, 'the spatial_query reply', [node])
        reply = future.result()
        print(f'\n[{workspace.name}] installed node: first state after {start_s:.1f} s; '
              f'{client.states[-1].frames_processed} frames; answer {reply.answer!r} '
              f'(success={reply.success}, frames_used={reply.frames_used}, {reply.latency_s:.2f} s)')
        assert reply.success, reply.error
        assert reply.frames_used >= 1 and reply.answer
        log = node.output()
        assert f'{share}/config/fastdds_large_data.xml' in log or 'src/vlm3r_ros/config' in log, log[-3000:]
    finally:
        client.close()
        assert node.stop(timeout=WAIT_S) == 0, node.describe()  # SIGINT: a clean shutdown, however slow


def test_installed_sim_bridge_publishes_frames(workspace, start_child, tmp_path):
    share = workspace / 'install' / PACKAGE / 'share' / PACKAGE
    bridge_exe = workspace / 'install' / PACKAGE / 'lib' / PACKAGE / 'vlm3r_sim_bridge'
    namespace = '/colcon_sim'
    received = []
    client = None
    command = (f'exec {bridge_exe} --ros-args --params-file {share}/config/sim_bridge.yaml -p num_frames:=4 '
               f'-p width:=96 -p height:=72 -p wait_for_subscribers:=1 -p rate_hz:=5.0 -r __ns:={namespace}')
    bridge = start_child(sourced(workspace, command), 'installed_bridge', log_dir=tmp_path)
    try:
        client = Client(namespace, bridge)
        client.node.create_subscription(Image, f'{namespace}/image', received.append, qos_profile_sensor_data)
        client.spin_until(lambda: not bridge.running(), 'the bridge publishes its 4 frames and exits')
        assert bridge.wait(5.0) == 0, bridge.describe()
        client.ros.spin_for(0.2, step_s=0.01)
        assert received, f'no frame from the installed bridge. {bridge.describe()}'
        assert (received[0].width, received[0].height, received[0].encoding) == (96, 72, 'rgb8')
        print(f'\n[{workspace.name}] installed sim bridge: {len(received)} of 4 frames received')
    finally:
        if client is not None:
            client.close()
        bridge.stop()
