"""A bounded FIFO of questions in front of the model, with exactly one outcome per question (no ROS).

Admission (:meth:`QueryQueue.submit`) never waits: a question either gets a place in the
queue at once or is refused at once (``BUSY`` when ``depth`` questions already wait,
``SHUTTING_DOWN`` after :meth:`QueryQueue.close`). ``workers`` threads take questions in
arrival order and run them. Every admitted question ends in exactly one of:

* its job's result (the answer) or the job's :class:`EngineError` / exception;
* ``QUEUE_TIMEOUT``: it waited longer than ``timeout_s`` before a worker took it;
* ``CANCELLED``: :meth:`Ticket.cancel` (while waiting: it leaves the queue; while running:
  the job sees :attr:`Ticket.cancel_event` and stops, e.g. after the decoding step in progress);
* ``SHUTTING_DOWN``: :meth:`QueryQueue.close` answers the waiting ones at once and cancels the
  running ones the same way.

So a caller that submits a question and waits on its :class:`Ticket` always hears back, and
:class:`QueueStats` adds up: ``admitted = waiting + running + succeeded + failed + timed_out +
cancelled + shut_down``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from vlm3r_ros.engine.errors import EngineError

BUSY = "BUSY"
QUEUE_TIMEOUT = "QUEUE_TIMEOUT"
CANCELLED = "CANCELLED"
SHUTTING_DOWN = "SHUTTING_DOWN"


@dataclass(frozen=True)
class QueueStats:
    depth: int  # most questions waiting
    workers: int  # questions run at once
    timeout_s: float  # longest wait in the queue (0: no limit)
    waiting: int = 0
    running: int = 0
    admitted: int = 0
    refused_busy: int = 0
    refused_shutting_down: int = 0  # refused at admission after close()
    succeeded: int = 0
    failed: int = 0  # the job raised (an EngineError such as NO_FRAMES, or a bug)
    timed_out: int = 0
    cancelled: int = 0
    shut_down: int = 0  # admitted, then answered SHUTTING_DOWN by close()

    @property
    def outcomes(self) -> int:
        """Admitted questions that have their answer."""
        return self.succeeded + self.failed + self.timed_out + self.cancelled + self.shut_down


class Ticket:
    """One admitted question: its job, its place in the queue and, at the end, its outcome."""

    def __init__(self, queue: "QueryQueue", job: Callable[["Ticket"], Any], deadline: float | None):
        self._queue = queue
        self.job = job
        self.deadline = deadline  # time.monotonic() after which it may no longer start
        self.admitted_at = time.monotonic()
        self.started_at: float | None = None
        self.cancel_event = threading.Event()  # set to stop a running job (checked between decoding steps)
        self.cancel_code = CANCELLED  # the code a job stopped by cancel_event reports
        self.state = "waiting"  # waiting -> running -> done, or waiting -> done
        self._done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Ticket], None]] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------ for the job
    def raise_if_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise EngineError(self.cancel_code, _CANCEL_MESSAGES[self.cancel_code])

    # ------------------------------------------------------------ for the caller
    def cancel(self) -> bool:
        """Ask the question to stop; False when it already has its outcome."""
        return self._queue.cancel(self)

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> Any:
        """The job's result; raises its error (EngineError with the outcome's code, or the job's exception)."""
        if not self._done.wait(timeout):
            raise TimeoutError("the question has no outcome yet")
        if self._error is not None:
            raise self._error
        return self._result

    @property
    def error(self) -> BaseException | None:
        return self._error

    def add_done_callback(self, fn: Callable[["Ticket"], None]) -> None:
        """Call ``fn(ticket)`` once the outcome is known (at once if it is), from the thread that finished it."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def _finish(self, result: Any = None, error: BaseException | None = None) -> None:
        with self._lock:
            self._result, self._error, self.state = result, error, "done"
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)


_CANCEL_MESSAGES = {
    CANCELLED: "the question was cancelled",
    SHUTTING_DOWN: "the node is shutting down; the question was not answered",
}


class QueryQueue:
    """``workers`` threads running jobs from a FIFO of at most ``depth`` waiting ones."""

    def __init__(self, *, depth: int, workers: int = 1, timeout_s: float = 0.0, name: str = "query"):
        if depth < 0 or workers < 1 or timeout_s < 0:
            raise ValueError(f"depth must be >= 0, workers >= 1 and timeout_s >= 0; got {depth}, {workers}, "
                             f"{timeout_s}")
        self.depth, self.workers, self.timeout_s = depth, workers, timeout_s
        self._cond = threading.Condition()
        self._waiting: deque[Ticket] = deque()
        self._running: set[Ticket] = set()
        self._closed = False
        self._counts = dict(admitted=0, refused_busy=0, refused_shutting_down=0, succeeded=0, failed=0,
                            timed_out=0, cancelled=0, shut_down=0)
        self._threads = [threading.Thread(target=self._work, name=f"{name}_worker_{i}", daemon=True)
                         for i in range(workers)]
        if timeout_s > 0:
            self._threads.append(threading.Thread(target=self._expire, name=f"{name}_timeouts", daemon=True))
        for thread in self._threads:
            thread.start()

    # ---------------------------------------------------------------- admission
    def submit(self, job: Callable[[Ticket], Any]) -> Ticket:
        """Admit ``job`` (called later as ``job(ticket)`` on a worker thread) or refuse it at once.

        Raises EngineError BUSY when the queue is full and SHUTTING_DOWN after close().
        A question is admitted while a worker is free even with ``depth`` 0.
        """
        with self._cond:
            if self._closed:
                self._counts["refused_shutting_down"] += 1
                raise EngineError(SHUTTING_DOWN, _CANCEL_MESSAGES[SHUTTING_DOWN])
            if len(self._waiting) + len(self._running) >= self.workers + self.depth:
                self._counts["refused_busy"] += 1
                raise EngineError(BUSY, f"{len(self._running)} question(s) running and {len(self._waiting)} "
                                        f"waiting (query_queue_depth {self.depth}); try again shortly")
            deadline = time.monotonic() + self.timeout_s if self.timeout_s > 0 else None
            ticket = Ticket(self, job, deadline)
            self._waiting.append(ticket)
            self._counts["admitted"] += 1
            self._cond.notify_all()
            return ticket

    def cancel(self, ticket: Ticket, code: str = CANCELLED) -> bool:
        with self._cond:
            if ticket.state == "done":
                return False
            if ticket.state == "running":
                ticket.cancel_code = code
                ticket.cancel_event.set()  # the worker finishes it when the job stops
                return True
            self._waiting.remove(ticket)
            ticket.state = "done"
            self._count_error_locked(code)
        ticket.cancel_code = code
        ticket.cancel_event.set()
        ticket._finish(error=EngineError(code, _CANCEL_MESSAGES[code]))
        return True

    # ---------------------------------------------------------------- shutdown
    def close(self, timeout: float | None = 30.0) -> bool:
        """Refuse new questions, answer the waiting ones SHUTTING_DOWN, stop the running ones
        (they answer SHUTTING_DOWN too) and join the threads. True when they all ended in time."""
        with self._cond:
            self._closed = True
            waiting = list(self._waiting)
            for ticket in self._running:
                ticket.cancel_code = SHUTTING_DOWN
                ticket.cancel_event.set()
            self._cond.notify_all()
        for ticket in waiting:
            self.cancel(ticket, SHUTTING_DOWN)
        end = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(None if end is None else max(end - time.monotonic(), 0.0))
        return not any(t.is_alive() for t in self._threads)

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> QueueStats:
        with self._cond:
            return QueueStats(self.depth, self.workers, self.timeout_s, waiting=len(self._waiting),
                              running=len(self._running), **self._counts)

    # ---------------------------------------------------------------- threads
    def _count_error_locked(self, code: str) -> None:
        key = {QUEUE_TIMEOUT: "timed_out", CANCELLED: "cancelled", SHUTTING_DOWN: "shut_down"}.get(code, "failed")
        self._counts[key] += 1

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if not self._waiting:  # closed and nothing left
                    return
                ticket = self._waiting.popleft()
                if ticket.deadline is not None and time.monotonic() > ticket.deadline:
                    ticket.state = "done"
                    self._count_error_locked(QUEUE_TIMEOUT)
                    expired = True
                else:
                    expired = False
                    ticket.state, ticket.started_at = "running", time.monotonic()
                    self._running.add(ticket)
            if expired:
                ticket._finish(error=self._timeout_error())
                continue
            result, error = None, None
            try:
                if ticket.cancel_event.is_set():  # close() or cancel() came between taking it and now
                    ticket.raise_if_cancelled()
                result = ticket.job(ticket)
            except BaseException as exc:  # noqa: BLE001 - every question must get its outcome
                error = exc
            with self._cond:
                self._running.discard(ticket)
                if error is None:
                    self._counts["succeeded"] += 1
                else:
                    self._count_error_locked(error.code if isinstance(error, EngineError) else "")
                self._cond.notify_all()
            ticket._finish(result, error)

    def _timeout_error(self) -> EngineError:
        return EngineError(QUEUE_TIMEOUT, f"the question waited {self.timeout_s:g} s (query_queue_timeout) "
                                          f"without a free worker; ask again, or ask less often")

    def _expire(self) -> None:
        """Answer QUEUE_TIMEOUT for questions that waited too long while every worker was busy."""
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                expired = []
                while self._waiting and self._waiting[0].deadline <= now:  # FIFO: the head waited longest
                    ticket = self._waiting.popleft()
                    ticket.state = "done"
                    self._count_error_locked(QUEUE_TIMEOUT)
                    expired.append(ticket)
                if not expired:
                    self._cond.wait(self._waiting[0].deadline - now if self._waiting else None)
                    continue
            for ticket in expired:
                ticket._finish(error=self._timeout_error())
