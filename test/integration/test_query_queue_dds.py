"""No question is ever lost: the node's query queue over real DDS.

One node process (vlm3r-node's main on config/tiny.yaml, namespace /vlm3r_qq) while a second
process streams frames at 10 Hz. Four client nodes in this process (service QoS keep-all: a
client's reader must hold every response it has not taken yet) send 100 questions at once;
every one must get exactly one response (answered, BUSY, QUEUE_TIMEOUT), and /diagnostics
must count them the same way. With the stream paused (SIGSTOP to the publisher), three
questions over the still window must share one cached visual prefix. The action tests check
feedback before the result, cancel mid-generation, and an action goal and a service request at
once. The last test stops the node with SIGTERM while questions run and wait: each gets its
response (SHUTTING_DOWN for those not finished) and the log has no error line. Every wait is
bounded; no assertion is about timing.
"""
import math
import os
import re
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from action_msgs.msg import GoalStatus
from rclpy.action import ActionClient
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from vlm3r_ros.action import SpatialQuery as SpatialQueryAction
from vlm3r_ros.ros.client_node import ClientNode
from vlm3r_ros.srv import SpatialQuery

pytestmark = [pytest.mark.ros, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / 'test' / 'fixtures'
NS = '/vlm3r_qq'
NODE = f'{NS}/vlm3r_node'
WAIT_S = 120.0
QUEUE_DEPTH = 8
LONG_ANSWER = 512  # tokens: generation that must still run when a cancel or SIGTERM arrives, on any machine
ERROR_LINE_RE = re.compile(r'\[(ERROR|FATAL)\]|Traceback|exception was never retrieved|Destroyable')


@pytest.fixture(scope='module')
def node_proc(start_child, tmp_path_factory):
    node = start_child([sys.executable, FIXTURES / 'node_vlm3r.py', '--ros-args', '--params-file',
                        ROOT / 'config' / 'tiny.yaml', '-r', f'__ns:={NS}',
                        '-p', f'query_queue_depth:={QUEUE_DEPTH}', '-p', 'query_queue_timeout:=60.0',
                        '-p', 'diagnostics_period:=0.2', '-p', f'max_new_tokens_limit:={LONG_ANSWER}'],
                       'node_vlm3r_qq', log_dir=tmp_path_factory.mktemp('query_queue_dds'), stop_timeout=30.0)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope='module')
def frames(node_proc, start_child, tmp_path_factory):
    """Frames at 10 Hz for as long as the module runs (up to 10 minutes)."""
    publisher = start_child([sys.executable, FIXTURES / 'node_image_publisher.py', f'{NS}/image', 6000, 10.0,
                             96, 72, 'reliable'], 'frames_qq', log_dir=tmp_path_factory.mktemp('frames_qq'))
    try:
        yield publisher
    finally:
        publisher.stop()


class Clients:
    """``n`` client nodes (KEEP_ALL service QoS) and a /diagnostics subscription, on one executor."""

    def __init__(self, node_proc, n=4):
        self.node_proc = node_proc
        self.ros = ClientNode('vlm3r_qq_client_0')
        self.nodes = [self.ros.node] + [self.ros.add_node(f'vlm3r_qq_client_{i}') for i in range(1, n)]
        # A client's own DDS reader keeps only `depth` responses it has not taken yet (10 by default;
        # with Fast DDS it also sees the responses to the other clients of the service), so a client
        # with many questions outstanding loses answers the node did send unless it keeps all.
        qos = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
        self.clients = [node.create_client(SpatialQuery, f'{NS}/spatial_query', qos_profile=qos)
                        for node in self.nodes]
        self.action = ActionClient(self.nodes[0], SpatialQueryAction, f'{NS}/spatial_query')
        self.diagnostics = []
        self.nodes[0].create_subscription(DiagnosticArray, '/diagnostics', self.diagnostics.append, 10)

    def close(self):
        self.action.destroy()
        self.ros.close()

    def spin_until(self, done, what, timeout=WAIT_S, node_must_run=True, progress=lambda: ''):
        self.ros.spin_until(done, timeout, what, watch=[self.node_proc] if node_must_run else (),
                            details=lambda: f'{progress()} {self.counters()}', step_s=0.02)

    def ready(self):
        self.spin_until(lambda: all(c.service_is_ready() for c in self.clients) and self.action.server_is_ready(),
                        'spatial_query service and action available')

    def send_goal(self, events, **fields):
        """Send a goal; ``events`` gets ('feedback', msg) and later ('result', wrapped result) in arrival
        order. Returns the accepted goal handle."""
        goal = SpatialQueryAction.Goal(**fields)
        future = self.action.send_goal_async(goal, feedback_callback=lambda fb: events.append(('feedback',
                                                                                               fb.feedback)))
        self.spin_until(future.done, 'the goal is accepted')
        handle = future.result()
        assert handle.accepted
        handle.get_result_async().add_done_callback(lambda f: events.append(('result', f.result())))
        return handle

    def call(self, request):
        future = self.clients[0].call_async(request)
        self.spin_until(future.done, 'a service response')
        return future.result()

    def counters(self):
        """The node's query counters from its latest /diagnostics message."""
        for msg in reversed(self.diagnostics):
            for status in msg.status:
                if status.name.startswith(f'{NODE}:'):
                    return {kv.key: kv.value for kv in status.values}
        return None

    def wait_counters(self, predicate, what):
        self.diagnostics.clear()
        self.spin_until(lambda: (c := self.counters()) is not None and predicate(c), what)
        return self.counters()


@pytest.fixture(scope='module')
def clients(node_proc, frames):
    c = Clients(node_proc)
    try:
        yield c
    finally:
        c.close()


def outcome(response):
    return 'ANSWERED' if response.success else response.error.split(':')[0]


QUERY_KEYS = ('queries_answered', 'queries_failed', 'queries_invalid', 'queries_not_active', 'queries_refused_busy',
              'queries_timed_out', 'queries_cancelled', 'queries_shutting_down', 'queries_waiting', 'queries_running')


def test_100_questions_from_4_clients_at_once_all_get_one_response(clients):
    clients.ready()
    clients.wait_counters(lambda c: int(c['frames_processed']) >= 2, 'frames are streaming into the node')
    before = clients.counters()
    futures = []
    for i in range(25):  # interleaved: all four clients send at once
        for k, client in enumerate(clients.clients):
            request = SpatialQuery.Request(question=f'How many chairs are there? (client {k}, #{i})',
                                           answer_type='number', max_new_tokens=16)
            futures.append(client.call_async(request))
    clients.spin_until(lambda: all(f.done() for f in futures), 'a response to each of the 100 questions',
                       progress=lambda: Counter(outcome(f.result()) for f in futures if f.done()))
    responses = [f.result() for f in futures]
    outcomes = Counter(outcome(r) for r in responses)
    print(f'\n100 questions from 4 clients while frames stream: {dict(outcomes)}')
    assert len(responses) == 100 and sum(outcomes.values()) == 100
    assert set(outcomes) <= {'ANSWERED', 'BUSY', 'QUEUE_TIMEOUT'}, outcomes
    assert outcomes['ANSWERED'] >= 1 + QUEUE_DEPTH  # the running one and a full queue behind it
    assert outcomes['BUSY'] >= 1, 'the queue never filled: the test sent too slowly'
    assert all(r.frames_used >= 1 and math.isfinite(r.latency_s) for r in responses if r.success)

    after = clients.wait_counters(lambda c: c['queries_waiting'] == '0' and c['queries_running'] == '0',
                                  '/diagnostics after the burst')
    delta = {k: int(after[k]) - int(before[k]) for k in ('queries_received', *QUERY_KEYS)}
    print('/diagnostics, change over the burst:', delta)
    assert delta['queries_received'] == 100
    assert sum(delta[k] for k in QUERY_KEYS) == 100  # the counters add up
    assert (delta['queries_answered'], delta['queries_refused_busy'], delta['queries_timed_out']) == \
        (outcomes['ANSWERED'], outcomes['BUSY'], outcomes['QUEUE_TIMEOUT'])
    assert after['query_queue_depth'] == str(QUEUE_DEPTH)
    # No prefix-cache assertion here: at 10 Hz a new frame may reach the window between any two of
    # the answered questions (uniform selection then picks other frames), so hits depend on timing.
    # The next test holds the window still.


def test_questions_over_an_unchanged_window_share_one_cached_prefix(clients, frames):
    """The frame stream paused (SIGSTOP to the publisher), three questions at once: one prefix is
    computed, the other two reuse it."""
    clients.ready()
    os.kill(frames.pid, signal.SIGSTOP)
    try:
        before = clients.wait_counters(lambda c: True, '/diagnostics')
        for _ in range(30):  # a frame already in the node's queue is still processed: wait until none comes
            clients.ros.spin_for(1.0)
            now = clients.wait_counters(lambda c: True, '/diagnostics')
            in_flight = int(now['frames_received']) - sum(int(now[f'frames_{k}'])
                                                          for k in ('processed', 'dropped', 'rejected'))
            if in_flight == 0 and (now['frames_received'], now['frames_processed']) == \
                    (before['frames_received'], before['frames_processed']):
                break
            before = now
        else:
            pytest.fail(f'frames kept arriving for 30 s with the publisher stopped: {now}')
        futures = [client.call_async(SpatialQuery.Request(question=f'How far is the door? ({k})',
                                                          answer_type='number', max_new_tokens=4))
                   for k, client in enumerate(clients.clients[:3])]
        clients.spin_until(lambda: all(f.done() for f in futures), 'the three answers')
        responses = [f.result() for f in futures]
        after = clients.wait_counters(lambda c: c['queries_waiting'] == '0' and c['queries_running'] == '0',
                                      '/diagnostics after the three questions')
    finally:
        os.kill(frames.pid, signal.SIGCONT)
    assert all(r.success for r in responses), [r.error for r in responses]
    assert after['frames_processed'] == before['frames_processed']  # the window did not move
    assert len({(r.frames_used, r.window_start.sec, r.window_start.nanosec, r.window_end.sec,
                 r.window_end.nanosec) for r in responses}) == 1  # ... and all three used the same frames
    delta = {k: int(after[f'prefix_cache_{k}']) - int(before[f'prefix_cache_{k}'])
             for k in ('hits', 'misses', 'extensions')}
    print('\nprefix cache, three questions over one window:', delta)
    assert sum(delta.values()) == 3  # one cache look-up per question
    assert delta['hits'] >= 2 and float(after['prefix_cache_mb']) > 0


def test_action_feedback_comes_before_the_result(clients):
    clients.ready()
    events = []
    clients.send_goal(events, question='Describe the room.', answer_type='text', max_new_tokens=12)
    clients.spin_until(lambda: events and events[-1][0] == 'result', 'the action result')
    kinds = [kind for kind, _ in events]
    result = events[-1][1]
    assert result.status == GoalStatus.STATUS_SUCCEEDED and result.result.success, result.result.error
    assert kinds.count('result') == 1 and kinds[-1] == 'result' and 'feedback' in kinds
    counts = [fb.tokens_generated for kind, fb in events if kind == 'feedback']
    assert counts == sorted(counts) and counts[0] >= 1  # one message per token, in order (none lost here)
    assert result.result.answer.startswith(events[-2][1].text[:1])  # the last feedback is the reply so far
    assert result.result.frames_used >= 1 and result.result.latency_s > 0


def test_action_cancel_mid_generation_stops_it_and_frees_the_slot(clients):
    clients.ready()
    events, limit = [], LONG_ANSWER
    handle = clients.send_goal(events, question='Describe the room in detail.', answer_type='text',
                               max_new_tokens=limit)
    clients.spin_until(lambda: any(kind == 'feedback' for kind, _ in events), 'the first feedback')
    cancel = handle.cancel_goal_async()
    clients.spin_until(lambda: cancel.done() and events[-1][0] == 'result', 'the cancelled goal\'s result')
    result = events[-1][1]
    tokens = max(fb.tokens_generated for kind, fb in events if kind == 'feedback')
    print(f'\ncancelled after the first feedback: {tokens} of {limit} tokens generated')
    assert len(cancel.result().goals_canceling) == 1
    assert result.status == GoalStatus.STATUS_CANCELED, (result.status, result.result.error)
    assert result.result.error.startswith('CANCELLED: ') and not result.result.success
    assert tokens < limit  # generation stopped; it did not run to max_new_tokens
    # the slot is free: the queue is empty again and a new question is answered
    counters = clients.wait_counters(lambda c: c['queries_running'] == '0', 'no question running')
    assert int(counters['queries_cancelled']) >= 1
    assert clients.call(SpatialQuery.Request(question='How far is the door?', max_new_tokens=2)).success


def test_action_and_service_at_once_are_both_answered(clients):
    clients.ready()
    events = []
    service = clients.clients[1].call_async(SpatialQuery.Request(question='How far is the door?', max_new_tokens=8))
    clients.send_goal(events, question='How many chairs are there?', answer_type='number', max_new_tokens=8)
    clients.spin_until(lambda: service.done() and events and events[-1][0] == 'result', 'both answers')
    assert service.result().success, service.result().error
    assert events[-1][1].result.success and events[-1][1].status == GoalStatus.STATUS_SUCCEEDED


def test_sigterm_answers_running_and_waiting_questions_and_logs_no_error(clients, node_proc):
    clients.ready()
    futures = [clients.clients[i % 4].call_async(SpatialQuery.Request(
        question=f'Describe the room in detail ({i}).', answer_type='text', max_new_tokens=LONG_ANSWER))
        for i in range(6)]
    clients.wait_counters(lambda c: c['queries_running'] == '1' and int(c['queries_waiting']) >= 1,
                          'one question running and others waiting')
    node_proc.proc.send_signal(signal.SIGTERM)
    clients.spin_until(lambda: all(f.done() for f in futures), 'a response to each question after SIGTERM',
                       node_must_run=False)
    outcomes = Counter(outcome(f.result()) for f in futures)
    print(f'\nSIGTERM with questions running and waiting: {dict(outcomes)}')
    assert set(outcomes) <= {'ANSWERED', 'SHUTTING_DOWN'} and outcomes['SHUTTING_DOWN'] >= 1, outcomes
    assert node_proc.wait(30.0) == 0, node_proc.describe()
    log = node_proc.output()
    assert 'shutting down' in log
    assert not ERROR_LINE_RE.search(log), log[-4000:]
