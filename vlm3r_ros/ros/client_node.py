"""A node that talks to our nodes from outside: its own rclpy context, an executor, waits.

The demo, ``vlm3r-eval --live``, the benchmarks and the DDS tests are clients of a node running
in another process. Each needs the same few things: rclpy initialised in a context of its own
(so it never shares global state with another client in the process), one or more nodes on one
single-threaded executor, "spin until this is true, or fail saying why", and a shutdown that
always runs. :class:`ClientNode` is that, once.

A wait fails with :class:`WaitError`: :class:`WaitTimeout` when the time is up, and
:class:`ProcessExited` when a watched process (anything with ``running()``; ``describe()`` is
used for the message when it has one) stopped first, since then the wait can never succeed.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable, Protocol

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node


class WaitError(RuntimeError):
    """A wait that cannot succeed; the message says what was awaited and why it failed."""


class WaitTimeout(WaitError):
    pass


class ProcessExited(WaitError):
    def __init__(self, message: str, process: "Watched"):
        super().__init__(message)
        self.process = process  # the watched process that was not running


class Watched(Protocol):
    def running(self) -> bool: ...


def _describe(proc: Watched) -> str:
    describe = getattr(proc, "describe", None)
    return describe() if callable(describe) else repr(proc)


class ClientNode:
    """``node`` (named ``name``) in a context of its own, spun by the caller's thread on demand.

    ``args``: rclpy's command-line arguments (e.g. ``--ros-args -r __ns:=/robot``);
    ``node_options``: keyword arguments of ``rclpy.create_node`` (``namespace``,
    ``parameter_overrides``, ...) for ``node``. Use it as a
    context manager, or call :meth:`close` (safe to call twice). Either spin with the waits below
    from one thread, or hand spinning to a thread with :meth:`spin_in_background`.
    """

    def __init__(self, name: str, args: list[str] | None = None, **node_options):
        self._thread: threading.Thread | None = None
        self.context = rclpy.Context()
        rclpy.init(args=args, context=self.context)
        try:
            self.executor = SingleThreadedExecutor(context=self.context)
            self.nodes: list[Node] = []
            self.node = self.add_node(name, **node_options)
        except BaseException:
            rclpy.try_shutdown(context=self.context)
            raise

    def add_node(self, name: str, **node_options) -> Node:
        """Another node in the same context and executor (e.g. one per simulated client)."""
        node = rclpy.create_node(name, context=self.context, **node_options)
        self.executor.add_node(node)
        self.nodes.append(node)
        return node

    def spin_until(self, done: Callable[[], bool], timeout_s: float, what: str, *,
                   watch: Iterable[Watched] = (), details: Callable[[], str] = lambda: "",
                   step_s: float = 0.05) -> None:
        """Spin until ``done()`` is true. Raises :class:`ProcessExited` as soon as a process in
        ``watch`` is not running, :class:`WaitTimeout` after ``timeout_s`` seconds; both messages
        start with ``what`` and end with ``details()`` and the watched processes' descriptions."""
        watch = tuple(watch)
        deadline = time.monotonic() + timeout_s
        while not done():
            for proc in watch:
                if not proc.running():
                    raise ProcessExited(self._message(f"{what}: a process exited first", details, (proc,)), proc)
            if time.monotonic() > deadline:
                raise WaitTimeout(self._message(f"{what}: not done after {timeout_s:g} s", details, watch))
            self.executor.spin_once(timeout_sec=step_s)

    def spin_for(self, seconds: float, step_s: float = 0.05) -> None:
        """Spin for ``seconds`` whatever arrives (to collect messages)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=step_s)

    def spin_in_background(self, thread_name: str) -> None:
        """Spin in a daemon thread until :meth:`close` (callbacks then run on that thread)."""
        def spin():
            try:
                self.executor.spin()
            except ExternalShutdownException:
                pass

        self._thread = threading.Thread(target=spin, name=thread_name, daemon=True)
        self._thread.start()

    @staticmethod
    def _message(head: str, details: Callable[[], str], procs: Iterable[Watched]) -> str:
        parts = [head, details(), *(_describe(p) for p in procs)]
        return ". ".join(p for p in parts if p)

    def close(self, timeout_s: float | None = None) -> None:
        """Shut down: ``timeout_s`` bounds the wait for callbacks still running (None: no bound)."""
        if self.context is None:
            return
        self.executor.shutdown(timeout_sec=timeout_s)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        for node in self.nodes:
            node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.context = None

    def __enter__(self) -> "ClientNode":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
