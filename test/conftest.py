"""Shared test set-up: DDS isolation and child processes that always die.

DDS isolation. Importing this file (pytest does so before it imports any test
module, hence before any test imports rclpy) gives this test run its own
ROS_DOMAIN_ID and keeps discovery on this host, so two test runs on one machine,
or a robot on the same network, never hear each other. Child processes started
with the ``spawn_python`` fixture inherit the same environment. To debug with a
fixed domain, set VLM3R_TEST_ROS_DOMAIN_ID.
"""
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
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


def pytest_unconfigure(config):
    shutil.rmtree(_LOG_DIR, ignore_errors=True)


@pytest.fixture(scope='session')
def ros_domain_id():
    """The ROS_DOMAIN_ID of this test run (also set in os.environ)."""
    return _DOMAIN_ID


class ChildProcess:
    """A Python script started by a test, with its output in a file."""

    def __init__(self, name, proc, log_path):
        self.name = name
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc.poll() is None

    def output(self):
        """Everything the child wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors='replace')
        except FileNotFoundError:
            return ''

    def describe(self):
        state = 'running' if self.running() else f'exited with {self.proc.returncode}'
        return f'child {self.name} (pid {self.pid}, {state}); its output:\n{self.output()}'

    def stop(self, timeout=5.0):
        """SIGINT (rclpy shuts down cleanly), then SIGKILL to its whole process group."""
        if self.running():
            try:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # also anything it started
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def spawn_python(tmp_path):
    """Start a Python script in a child process; it is killed when the test ends.

    ``spawn_python(script, *args, env=None)`` runs ``script`` (a path, or a file
    name in test/fixtures/) with this interpreter and returns a ChildProcess.
    The child runs in its own process group, which teardown kills even if the
    test failed; the child also gets PDEATHSIG via VLM3R_TEST_PARENT_PID (see
    test/fixtures/child_guard.py) in case this process dies first.
    """
    children = []

    def spawn(script, *args, env=None):
        script = Path(script)
        if not script.is_absolute():
            script = FIXTURES_DIR / script
        if not script.is_file():
            raise FileNotFoundError(f'no fixture script {script}')
        child_env = dict(os.environ)
        child_env.update(env or {})
        child_env['VLM3R_TEST_PARENT_PID'] = str(os.getpid())
        child_env['PYTHONUNBUFFERED'] = '1'
        log_path = tmp_path / f'{script.stem}-{len(children)}.log'
        with open(log_path, 'wb') as log:
            proc = subprocess.Popen(
                [sys.executable, str(script), *map(str, args)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=child_env, start_new_session=True)
        child = ChildProcess(script.stem, proc, log_path)
        children.append(child)
        return child

    yield spawn

    for child in reversed(children):
        child.stop()
