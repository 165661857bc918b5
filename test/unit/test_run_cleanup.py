"""A test run that is terminated (SIGTERM: a cancelled CI job, `timeout`) still stops its children.

Runs pytest with this suite's conftest.py on a one-test file that starts a child process and
waits; SIGTERMs that pytest; the child must be gone when pytest has exited.
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

WAITING_TEST = '''
import sys, time
def test_waits(start_child, tmp_path):
    child = start_child([sys.executable, '-c', 'import time; time.sleep(600)'], 'sleeper', log_dir=tmp_path)
    tmp = tmp_path.parent.parent / 'child.pid.tmp'
    tmp.write_text(str(child.pid))
    tmp.rename(tmp.with_suffix(''))  # whole or absent: the test polls for it
    time.sleep(600)
'''


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(120)
def test_sigterm_ends_the_run_like_ctrl_c_and_stops_children(tmp_path):
    shutil.copy(Path(__file__).parents[1] / 'conftest.py', tmp_path / 'conftest.py')
    (tmp_path / 'test_waits.py').write_text(WAITING_TEST)
    (tmp_path / 'pytest.ini').write_text('[pytest]\n')
    base = tmp_path / 'base'
    run = subprocess.Popen([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '--basetemp', str(base),
                            'test_waits.py'], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    pid_file = tmp_path / 'child.pid'
    deadline = time.monotonic() + 60
    while not pid_file.exists():
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[0]
        time.sleep(0.1)
    child = int(pid_file.read_text())
    assert alive(child)
    run.send_signal(signal.SIGTERM)
    output = run.communicate(timeout=60)[0]
    assert 'KeyboardInterrupt: signal 15' in output, output
    assert not alive(child), f'the child {child} outlived the terminated run:\n{output}'
