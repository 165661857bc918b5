"""Child processes: the demo's, vlm3r-sim-eval's and the benchmarks' one way to start them.

:class:`Child` runs a command in its own process group with its output in a log file and
stops it (SIGINT, then SIGKILL to the group); :func:`console_script` finds an installed
entry point; :func:`child_environment` gives children a private ROS domain on this host and
the node's Fast DDS setting; :func:`read_node_params` reads a node's params file;
:func:`run_for_result` runs a benchmark child to its end and reads the JSON result it prints.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from vlm3r_ros.errors import UserError
from vlm3r_ros.ros import FASTDDS_BUILTIN_ENV, FASTDDS_PROFILES_ENV, apply_transport_setting


STOP_TIMEOUT_S = 10.0  # SIGINT first: how long a child may take to shut down cleanly


class ParamsFileError(UserError):
    """A params file that cannot be read (one line)."""


class Child:
    """A child process: own process group, output in a log file, always stopped (also its children)."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str]):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True, preexec_fn=die_with_parent)

    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 25, indent: str = "    ") -> str:
        return "\n".join(indent + line for line in self.output().splitlines()[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> tuple[int, bool]:
        """SIGINT, wait; then SIGKILL the whole group. Returns (exit code, stopped cleanly)."""
        clean = True
        if self.running():
            try:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                clean = False
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything it started, and itself if still there
        except (ProcessLookupError, PermissionError):
            pass
        code = self.proc.wait()
        return code, clean and code in (0, -signal.SIGINT, 130)


def die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the parent dies (Linux), even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def console_script(name: str, module: str) -> list[str]:
    """``[bin/name]`` next to this interpreter if installed, else ``[python, -m, module]``."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.is_file() else [sys.executable, "-m", module]


def read_node_params(path: Path) -> dict:
    """The ros__parameters of a params file, merged over all its node keys (``/**`` first)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ParamsFileError(f"cannot read params file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ParamsFileError(f"params file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise ParamsFileError(f"params file {path}: expected `NODE: ros__parameters: ...` mappings")
    params: dict = {}
    for key in sorted(doc, key=lambda k: k != "/**"):
        section = doc[key]
        if isinstance(section, dict) and isinstance(section.get("ros__parameters"), dict):
            params.update(section["ros__parameters"])
    if not params:
        raise ParamsFileError(f"params file {path} holds no ros__parameters")
    return params


def weights_description(params: dict) -> tuple[bool, str]:
    """(random, sentence) from the node parameters (``model_source`` and the weight paths)."""
    if params.get("model_source") == "tiny_random":
        return True, "TINY RANDOM WEIGHTS (model_source: tiny_random): every answer below is MEANINGLESS"
    paths = {k: params.get(k) for k in ("cut3r_weights", "vlm_base_dir", "vlm_adapter_dir")}
    return False, "weights: " + ", ".join(f"{k}={v or '(not set)'}" for k, v in paths.items())


def isolate_ros_environment(env) -> str:
    """A private ROS domain on this host unless the user chose one."""
    if not env.get("ROS_DOMAIN_ID"):
        env["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 101))
        chosen = "picked at random"
    else:
        chosen = "from your environment"
    if not env.get("ROS_AUTOMATIC_DISCOVERY_RANGE") and not env.get("ROS_LOCALHOST_ONLY"):
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return (f"ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} ({chosen}), "
            f"discovery {env.get('ROS_AUTOMATIC_DISCOVERY_RANGE') or 'ROS_LOCALHOST_ONLY'}")


def child_environment() -> tuple[dict[str, str], str, str]:
    """The environment for child processes, a line describing its ROS domain and one its Fast DDS transport.

    A private ROS domain on this host unless the user chose one (this process joins it too),
    unbuffered Python output, and the node's Fast DDS setting for this process and the children.
    """
    env = dict(os.environ)
    ros_line = isolate_ros_environment(env)
    for key in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE"):
        if key in env:
            os.environ[key] = env[key]  # for this process's own participant too
    env["PYTHONUNBUFFERED"] = "1"
    transport = apply_transport_setting()
    for key in (FASTDDS_PROFILES_ENV, FASTDDS_BUILTIN_ENV):
        if key in os.environ:
            env[key] = os.environ[key]
    return env, ros_line, transport


def run_for_result(cmd: list[str], prefix: str, what: str) -> dict:
    """Run ``cmd`` to its end; the JSON object on its last stdout line starting with ``prefix``,
    plus ``wall_s``. A failed child (or one that printed no result) shows its output and exits."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(prefix)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"child {what} failed with exit status {proc.returncode}")
    result = json.loads(lines[-1][len(prefix):])
    result["wall_s"] = time.perf_counter() - start
    return result
