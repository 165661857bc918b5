"""QueryQueue (vlm3r_ros/engine/query_queue.py): admission, FIFO, timeouts, cancel, shutdown, counters.

No ROS, no model: the jobs are plain functions that wait on threading.Events, so a test decides
when a "question" finishes. Every wait is bounded; nothing asserts a duration.
"""
import threading
import time

import pytest

from vlm3r_ros.engine.errors import EngineError
from vlm3r_ros.engine.query_queue import QueryQueue

WAIT_S = 30.0


def held_job(release, started=None, log=None, name=None):
    """A job that records that it started and returns ``name`` once ``release`` is set (or raises the
    ticket's cancel code when it is cancelled first, as the decoding loop does)."""
    def job(ticket):
        if log is not None:
            log.append(name)
        if started is not None:
            started.set()
        while not release.wait(0.01):
            ticket.raise_if_cancelled()
        return name
    return job


def code_of(ticket):
    with pytest.raises(EngineError) as info:
        ticket.result(WAIT_S)
    return info.value.code


def occupy_worker(queue):
    """Submit a question that holds the queue's (only) worker until ``release`` is set; returns
    (its ticket, release) once it runs."""
    release, started = threading.Event(), threading.Event()
    running = queue.submit(held_job(release, started))
    assert started.wait(WAIT_S)
    return running, release


def balanced(stats):
    return stats.admitted == stats.waiting + stats.running + stats.outcomes


def test_fifo_order_and_results():
    queue = QueryQueue(depth=5, workers=1)
    release, started, log = threading.Event(), threading.Event(), []
    first = queue.submit(held_job(release, started, log, 'a'))
    assert started.wait(WAIT_S)
    rest = [queue.submit(held_job(release, None, log, name)) for name in 'bcd']
    assert queue.stats().waiting == 3 and queue.stats().running == 1
    release.set()
    assert [t.result(WAIT_S) for t in [first, *rest]] == list('abcd')
    assert log == list('abcd')  # run in arrival order
    stats = queue.stats()
    assert (stats.admitted, stats.succeeded, stats.waiting, stats.running) == (4, 4, 0, 0) and balanced(stats)
    assert queue.close()


def test_full_queue_is_busy_at_once_and_nothing_else_changes():
    queue = QueryQueue(depth=2, workers=1)
    running, release = occupy_worker(queue)
    tickets = [running] + [queue.submit(held_job(release)) for _ in range(2)]
    with pytest.raises(EngineError) as info:
        queue.submit(held_job(release))
    assert info.value.code == 'BUSY' and 'query_queue_depth 2' in info.value.message
    stats = queue.stats()
    assert (stats.refused_busy, stats.admitted, stats.waiting) == (1, 3, 2)
    release.set()
    assert all(t.result(WAIT_S) is None for t in tickets)
    assert balanced(queue.stats())
    queue.close()


def test_depth_zero_still_admits_while_a_worker_is_free():
    queue = QueryQueue(depth=0, workers=2)
    release = threading.Event()
    a, b = queue.submit(held_job(release)), queue.submit(held_job(release))
    with pytest.raises(EngineError, match='BUSY'):
        queue.submit(held_job(release))
    release.set()
    a.result(WAIT_S), b.result(WAIT_S)
    queue.close()


def test_waiting_too_long_is_queue_timeout_while_the_worker_stays_busy():
    queue = QueryQueue(depth=4, workers=1, timeout_s=0.2)
    running, release = occupy_worker(queue)
    waiting = queue.submit(held_job(release))
    assert waiting.wait(WAIT_S), 'the timed-out question got no outcome while the worker was busy'
    assert code_of(waiting) == 'QUEUE_TIMEOUT' and not running.done()
    release.set()
    running.result(WAIT_S)
    stats = queue.stats()
    assert (stats.timed_out, stats.succeeded) == (1, 1) and balanced(stats)
    queue.close()


def test_cancel_waiting_leaves_the_queue_and_running_stops():
    queue = QueryQueue(depth=4, workers=1)
    running, release = occupy_worker(queue)
    waiting = queue.submit(held_job(release))
    assert waiting.cancel() and code_of(waiting) == 'CANCELLED'
    assert queue.stats().waiting == 0
    assert running.cancel() and code_of(running) == 'CANCELLED'
    assert not running.cancel()  # already has its outcome
    # the slot is free again: a new question runs
    release.set()
    assert queue.submit(lambda ticket: 42).result(WAIT_S) == 42
    stats = queue.stats()
    assert (stats.cancelled, stats.succeeded) == (2, 1) and balanced(stats)
    queue.close()


def test_close_answers_waiting_and_running_shutting_down_and_refuses_new():
    queue = QueryQueue(depth=4, workers=1)
    running, release = occupy_worker(queue)
    waiting = [queue.submit(held_job(release)) for _ in range(3)]
    assert queue.close(WAIT_S)
    assert [code_of(t) for t in [running, *waiting]] == ['SHUTTING_DOWN'] * 4
    with pytest.raises(EngineError, match='SHUTTING_DOWN'):
        queue.submit(held_job(release))
    stats = queue.stats()
    assert (stats.shut_down, stats.refused_shutting_down, stats.running, stats.waiting) == (4, 1, 0, 0)
    assert balanced(stats)


def test_job_errors_and_bugs_are_outcomes_too():
    queue = QueryQueue(depth=2, workers=1)

    def refused(ticket):
        raise EngineError('NO_FRAMES', 'no frame received yet')

    def bug(ticket):
        raise RuntimeError('boom')

    assert code_of(queue.submit(refused)) == 'NO_FRAMES'
    with pytest.raises(RuntimeError, match='boom'):
        queue.submit(bug).result(WAIT_S)
    stats = queue.stats()
    assert stats.failed == 2 and balanced(stats)
    queue.close()


def test_every_one_of_many_concurrent_submissions_gets_exactly_one_outcome():
    queue = QueryQueue(depth=5, workers=2, timeout_s=5.0)
    outcomes, lock = [], threading.Lock()

    def client(n):
        for _ in range(n):
            try:
                ticket = queue.submit(lambda t: time.sleep(0.001) or 'ok')
            except EngineError as exc:
                result = exc.code
            else:
                calls, called = [], threading.Event()
                ticket.add_done_callback(lambda t: (calls.append(t), called.set()))
                try:
                    result = ticket.result(WAIT_S)
                except EngineError as exc:
                    result = exc.code
                # callbacks run just after result() can return (as concurrent.futures): wait for it
                assert called.wait(WAIT_S) and calls == [ticket]  # the done callback ran exactly once
            with lock:
                outcomes.append(result)

    threads = [threading.Thread(target=client, args=(25,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert len(outcomes) == 100 and set(outcomes) <= {'ok', 'BUSY', 'QUEUE_TIMEOUT'}
    stats = queue.stats()
    assert stats.admitted + stats.refused_busy == 100 and balanced(stats)
    assert outcomes.count('ok') == stats.succeeded and outcomes.count('BUSY') == stats.refused_busy
    queue.close()


def test_bad_settings_are_refused():
    for kwargs in (dict(depth=-1), dict(depth=1, workers=0), dict(depth=1, timeout_s=-1.0)):
        with pytest.raises(ValueError, match='depth must be >= 0'):
            QueryQueue(**kwargs)
