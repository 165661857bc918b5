"""The ROS 2 layer of vlm3r_ros: the only part of the package that imports rclpy.

* :mod:`vlm3r_ros.ros.node`: ``SpatialNode``, a lifecycle node over the ROS-free
  :class:`~vlm3r_ros.engine.spatial_engine.SpatialEngine`.
* :mod:`vlm3r_ros.ros.node_settings`: its parameter table, validation, and the engine the
  parameters build.
* :mod:`vlm3r_ros.ros.client_node`: a client's node in its own context, with bounded waits
  (the demo, ``vlm3r-eval --live``, the DDS tests).
* :mod:`vlm3r_ros.ros.conversions`: messages <-> engine values (images, poses, clouds).
* :mod:`vlm3r_ros.ros.main`: the ``vlm3r-node`` entry point.

This module itself imports no rclpy at import time: :func:`apply_transport_setting` must run
before the process creates its first DDS participant; :func:`ros_process` then starts rclpy.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

PACKAGE = "vlm3r_ros"
FASTDDS_PROFILE_NAME = "fastdds_large_data.xml"
FASTDDS_PROFILES_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
FASTDDS_BUILTIN_ENV = "FASTDDS_BUILTIN_TRANSPORTS"


def config_dir() -> Path:
    """The package's config/ folder: the source checkout's (pip install -e), else
    share/vlm3r_ros/config of a ROS install (found through the ament index)."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "package.xml").is_file() and (checkout / "config").is_dir():
        return checkout / "config"
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE)) / "config"
    except (ImportError, LookupError, OSError, ValueError):  # no ament index, or not registered
        return checkout / "config"


def fastdds_profile_path() -> Path:
    """config/fastdds_large_data.xml: a 16 MiB shared-memory segment for large images."""
    return config_dir() / FASTDDS_PROFILE_NAME


def apply_transport_setting(environ=os.environ) -> str:
    """Select the shipped Fast DDS profile unless the user configured Fast DDS already.

    Must run before the first DDS participant of the process exists (before ``rclpy.init``).
    A set ``FASTDDS_DEFAULT_PROFILES_FILE`` or ``FASTDDS_BUILTIN_TRANSPORTS`` is kept (set
    ``FASTDDS_BUILTIN_TRANSPORTS=DEFAULT`` to opt out). Returns a sentence for the log.
    """
    if environ.get(FASTDDS_PROFILES_ENV):
        return f"Fast DDS profile from {FASTDDS_PROFILES_ENV}={environ[FASTDDS_PROFILES_ENV]} (kept)"
    if environ.get(FASTDDS_BUILTIN_ENV):
        return f"Fast DDS transports from {FASTDDS_BUILTIN_ENV}={environ[FASTDDS_BUILTIN_ENV]} (kept)"
    path = fastdds_profile_path()
    if not path.is_file():
        return f"Fast DDS default transports: {path} not found (large best-effort images may be lost)"
    environ[FASTDDS_PROFILES_ENV] = str(path)
    return f"Fast DDS profile {path} (16 MiB shared memory for large images; set {FASTDDS_PROFILES_ENV} to override)"


@contextmanager
def ros_process(argv: list[str], forced_exit_code: int = 130):
    """rclpy in a context of its own for a command's whole run: yields ``(context, stop)``.

    SIGINT and SIGTERM set the ``stop`` event, so the command can shut its node down in
    order (rclpy's own handler would tear the context down under it); a second signal exits
    at once with ``forced_exit_code``. On leaving, the context is shut down and the previous
    handlers are restored. Call :func:`apply_transport_setting` first.
    """
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    stop = threading.Event()

    def on_signal(signum, _frame):
        if stop.is_set():  # a second signal: the user insists
            os._exit(forced_exit_code)
        stop.set()

    context = rclpy.Context()
    rclpy.init(args=argv, context=context, signal_handler_options=SignalHandlerOptions.NO)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield context, stop
    finally:
        rclpy.try_shutdown(context=context)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
