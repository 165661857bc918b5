"""Shared test set-up: DDS isolation and child processes that always die.

DDS isolation. Importing this file (pytest does so before it imports any test
module, hence before any test imports rclpy) gives this test run its own
ROS_DOMAIN_ID and keeps discovery on this host, so two test runs on one machine,
or a robot on the same network, never hear each other. Child processes started
with the ``start_child`` or ``spawn_python`` fixtures inherit the same environment. To debug with a
fixed domain, set VLM3R_TEST_ROS_DOMAIN_ID.
"""
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

# Domain IDs 1..101: 0 is everyone's default, and on Linux Fast DDS's port
# arithmetic stays clear of the ephemeral port range up to 101.
_DOMAIN_ID = int(os.environ.get('VLM3R_TEST_ROS_DOMAIN_ID')
                 or random.SystemRandom().randint(1, 101))
os.environ['ROS_DOMAIN_ID'] = str(_DOMAIN_ID)
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.pop('ROS_STATIC_PEERS', None)
os.environ.pop('ROS_LOCALHOST_ONLY', None)  # deprecated; rmw warns when both are set
# ROS logs of this run (ours and the children's) stay out of ~/.ros.
_LOG_DIR = tempfile.mkdtemp(prefix='vlm3r-test-ros-log-')
os.environ['ROS_LOG_DIR'] = _LOG_DIR

FIXTURES_DIR = Path(__file__).parent / 'fixtures'


def pytest_report_header(config):
    return [f'ROS_DOMAIN_ID={_DOMAIN_ID} ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST '
            f'ROS_LOG_DIR={_LOG_DIR}']


def _stop_like_ctrl_c(signum, frame):
    raise KeyboardInterrupt(f'signal {signum}')


def pytest_configure(config):
    # SIGTERM (a cancelled CI job, `timeout`, `kill`) ends the run as Ctrl-C does: pytest then
    # runs the fixtures' teardowns, which stop every child process (the vLLM server holds ~5 GB
    # in a process session of its own). Python's default for SIGTERM exits at once, tearing
    # nothing down.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_like_ctrl_c)


def pytest_unconfigure(config):
    shutil.rmtree(_LOG_DIR, ignore_errors=True)


@pytest.fixture(scope='session')
def ros_domain_id():
    """The ROS_DOMAIN_ID of this test run (also set in os.environ)."""
    return _DOMAIN_ID


class ChildProcess:
    """A process started by a test, with its output in a file."""

    def __init__(self, name, proc, log_path, stop_timeout=5.0):
        self.name = name
        self.proc = proc
        self.log_path = log_path
        self.stop_timeout = stop_timeout

    @property
    def pid(self):
        return self.proc.pid

    @property
    def returncode(self):
        return self.proc.returncode

    def running(self):
        return self.proc.poll() is None

    def wait(self, timeout):
        """The exit status, or None if the child still runs after ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def output(self):
        """Everything the child wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors='replace')
        except FileNotFoundError:
            return ''

    def tail(self, chars=6000):
        """The end of output(): enough for a failure message without flooding it."""
        return self.output()[-chars:]

    def describe(self):
        state = 'running' if self.running() else f'exited with {self.proc.returncode}'
        return f'child {self.name} (pid {self.pid}, {state}); its output:\n{self.tail()}'

    def stop(self, timeout=None):
        """SIGINT (rclpy shuts down cleanly), then SIGKILL to its whole process group.

        Waits ``timeout`` (default: stop_timeout) seconds after SIGINT; returns the exit status.
        """
        if self.running():
            try:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(timeout=self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # also anything it started
        except (ProcessLookupError, PermissionError):
            pass
        return self.proc.wait()


@pytest.fixture(scope='session')
def start_child(tmp_path_factory):
    """Start a command in a child process; returns a ChildProcess.

    ``start_child(argv, name, env=None, log_dir=None, stop_timeout=5.0)`` runs
    ``argv`` with this environment plus ``env``, stdin closed and output in
    ``<log_dir>/<name>-<n>.log``. The child runs in its own process group and
    gets VLM3R_TEST_PARENT_PID, so a fixture script that calls child_guard dies
    with this process even if it is SIGKILLed. Session-scoped so module-scoped
    fixtures can use it: callers stop their children when done (ChildProcess.stop);
    any still running at the end of the session are stopped here, so none outlives
    the test run even when a test or a fixture failed.
    """
    started = []
    default_dir = tmp_path_factory.mktemp('children')

    def start(argv, name, env=None, log_dir=None, stop_timeout=5.0):
        child_env = dict(os.environ)
        child_env.update(env or {})
        child_env['VLM3R_TEST_PARENT_PID'] = str(os.getpid())
        child_env['PYTHONUNBUFFERED'] = '1'
        log_path = Path(log_dir or default_dir) / f'{name}-{len(started)}.log'  # n: unique in the session
        with open(log_path, 'wb') as log:
            proc = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=child_env, start_new_session=True)
        child = ChildProcess(name, proc, log_path, stop_timeout)
        started.append(child)
        return child

    yield start

    for child in reversed(started):
        child.stop()


@pytest.fixture
def spawn_python(tmp_path, start_child):
    """Start a Python script in a child process; it is killed when the test ends.

    ``spawn_python(script, *args, env=None)`` runs ``script`` (a path, or a file
    name in test/fixtures/) with this interpreter via ``start_child`` and returns
    its ChildProcess; teardown stops it even if the test failed.
    """
    children = []

    def spawn(script, *args, env=None):
        script = Path(script)
        if not script.is_absolute():
            script = FIXTURES_DIR / script
        if not script.is_file():
            raise FileNotFoundError(f'no fixture script {script}')
        child = start_child([sys.executable, script, *args], script.stem, env=env, log_dir=tmp_path)
        children.append(child)
        return child

    yield spawn

    for child in reversed(children):
        child.stop()


@pytest.fixture
def client_node():
    """This process's ROS side (vlm3r_ros.ros.client_node.ClientNode: a node in an rclpy context
    of its own, its executor and bounded waits), shut down at teardown."""
    from vlm3r_ros.ros.client_node import ClientNode

    with ClientNode('vlm3r_test_client') as ros:
        yield ros
