"""One real vLLM server for the whole test run (llm_backend 'openai' tests).

``llm_server`` (session-scoped, started on first use only): the tiny random VLM-3R's LLM
exported with vlm3r-export-llm (float32), served by vLLM's CPU build from .venv-vllm
(scripts/setup_vllm.sh, part of `make setup`) on 127.0.0.1 with prompt embeddings on. Its
start-up (55-125 s, torch.compile warm-up) is paid once per run; it takes ~5 GB, so it is
stopped as soon as the session ends. Tests may stop, pause and restart it (fault tests).
"""
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from vlm3r_ros.tools.vllm_server import CPU_SERVER_ENV, VLLM_PYTHON, server_argv, wait_healthy

SERVED_NAME = 'vlm3r-tiny'
EXEC_WITH_PARENT = Path(__file__).resolve().parents[1] / 'fixtures' / 'exec_with_parent.py'
START_TIMEOUT_S = 900.0  # a cold torch.compile on a loaded 2-core machine


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class LlmServer:
    """The vLLM server as a child process: stopped at the end of the session (start_child) and
    SIGKILLed by the kernel if the test process dies first (exec_with_parent.py). Start it from
    the main thread: the kernel's "parent" is the thread that started it."""

    def __init__(self, start_child, model_dir, log_dir):
        self.start_child, self.model_dir, self.log_dir = start_child, model_dir, log_dir
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}/v1'
        self.model = SERVED_NAME
        self.child = None
        self.starts = []  # seconds each start took

    def start(self, while_waiting=None):
        """Start the server and return once /health answers; ``while_waiting()`` (if given) is called
        about once a second meanwhile (a test keeps its robots streaming)."""
        begin = time.monotonic()
        argv = [sys.executable, EXEC_WITH_PARENT, *server_argv(self.model_dir, served_name=SERVED_NAME,
                                                                port=self.port)]
        self.child = self.start_child(argv, 'vllm_server', env=CPU_SERVER_ENV, log_dir=self.log_dir,
                                      stop_timeout=20.0)

        def running():
            if while_waiting is not None:
                while_waiting()
            return self.child.running()

        why = wait_healthy(self.port, running, START_TIMEOUT_S)
        if why is not None:
            pytest.fail(f'the vLLM server did not start ({why}). {self.child.describe()}')
        self.starts.append(time.monotonic() - begin)

    def stop(self):
        if self.child is not None:
            self.child.stop()
            self.child = None

    def pause(self):
        """SIGSTOP the server and its engine process: it accepts connections but never answers."""
        os.killpg(self.child.pid, signal.SIGSTOP)

    def resume(self):
        os.killpg(self.child.pid, signal.SIGCONT)


@pytest.fixture(scope='session')
def exported_tiny_llm(tmp_path_factory):
    """The tiny random VLM-3R (seed 0, as config/tiny.yaml) exported as a float32 HF Qwen2 checkpoint."""
    from vlm3r_ros.tools.export_llm import main

    out = tmp_path_factory.mktemp('tiny_llm') / 'vlm3r-tiny'
    assert main(['--tiny-random', '--seed', '0', '--dtype', 'float32', '--output', str(out)]) == 0
    return out


@pytest.fixture(scope='session')
def llm_server(start_child, exported_tiny_llm, tmp_path_factory):
    if not VLLM_PYTHON.is_file():
        pytest.fail(f'no vLLM server environment at {VLLM_PYTHON.parent.parent}: run `make setup` (it runs '
                    f'scripts/setup_vllm.sh), or bash scripts/setup_vllm.sh', pytrace=False)
    server = LlmServer(start_child, exported_tiny_llm, tmp_path_factory.mktemp('vllm_server'))
    server.start()
    try:
        yield server
    finally:
        server.stop()
