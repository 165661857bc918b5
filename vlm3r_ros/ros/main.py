"""``vlm3r-node``: run the vlm3r_ros node until SIGINT or SIGTERM.

    vlm3r-node --ros-args --params-file config/tiny.yaml     # tiny random weights
    vlm3r-node --ros-args --params-file config/vlm3r.yaml -p cut3r_weights:=... -r image:=/camera/image_raw

Builds a :class:`~vlm3r_ros.ros.node.SpatialNode`, configures and activates it (parameter
``autostart``, default true), and spins it on a ``MultiThreadedExecutor``. On SIGINT or
SIGTERM it deactivates the node (the worker thread is joined), frees the models and exits.

Exit status: 0 after a signal, 1 when the node could not start (bad parameters or weights:
the reason is logged) or when a thread would not stop, 2 for a parameter value refused at
start (the reason is printed). A second SIGINT/SIGTERM during shutdown exits at once (130).
"""

from __future__ import annotations

import os
import sys
import threading

from vlm3r_ros.ros import apply_transport_setting, ros_process

EXIT_OK = 0
EXIT_START_FAILED = 1
EXIT_BAD_PARAMETER = 2
EXIT_FORCED = 130
SHUTDOWN_TIMEOUT_S = 30.0


def main(argv: list[str] | None = None) -> int:
    code = _run(argv)
    lingering = [t.name for t in threading.enumerate()
                 if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if lingering:  # the interpreter would wait for them forever
        print(f"vlm3r-node: error: threads still running after shutdown: {', '.join(lingering)}",
              file=sys.stderr, flush=True)
        os._exit(code or EXIT_START_FAILED)
    return code


def _run(argv: list[str] | None) -> int:
    transport = apply_transport_setting()  # before rclpy creates the DDS participant

    from rclpy.exceptions import InvalidParameterValueException, ParameterException
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn

    from vlm3r_ros.ros.node import SpatialNode
    from vlm3r_ros.ros.node_settings import executor_threads

    with ros_process(sys.argv if argv is None else argv, EXIT_FORCED) as (context, stop):
        node = executor = None
        try:
            try:
                node = SpatialNode(context=context)
            except (InvalidParameterValueException, ParameterException) as exc:
                print(f"vlm3r-node: error: {exc}", file=sys.stderr)
                return EXIT_BAD_PARAMETER
            log = node.get_logger()
            log.info(transport)
            executor = MultiThreadedExecutor(num_threads=executor_threads(
                node.get_parameter("max_concurrent_queries").value, node.get_parameter("query_queue_depth").value),
                context=context)
            executor.add_node(node)
            if node.get_parameter("autostart").value:
                if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                    log.error("could not configure the node (the reason is above); exiting")
                    return EXIT_START_FAILED
                if stop.is_set():  # interrupted while the weights were loading
                    log.info("interrupted during start-up")
                elif node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                    log.error("could not activate the node (the reason is above); exiting")
                    return EXIT_START_FAILED
                else:
                    log.info("ready")
            else:
                log.info("autostart is false: waiting in the unconfigured state for lifecycle transitions")
            while not stop.is_set() and context.ok():
                executor.spin_once(timeout_sec=0.1)
            log.info("shutting down")
            # Answer every question first (SHUTTING_DOWN), then let the executor finish the callbacks
            # (their responses go out while the services exist), and only then destroy anything.
            node.stop_queries(SHUTDOWN_TIMEOUT_S)
            executor.shutdown(timeout_sec=SHUTDOWN_TIMEOUT_S)
            if node.current_state_label() in ("unconfigured", "inactive", "active"):
                node.trigger_shutdown()  # deactivate (joins the worker), free the models
            return EXIT_OK
        finally:
            if node is not None:
                if executor is not None:
                    executor.shutdown(timeout_sec=SHUTDOWN_TIMEOUT_S)
                node.stop_worker(SHUTDOWN_TIMEOUT_S)
                node.destroy_node()


if __name__ == "__main__":
    sys.exit(main())
