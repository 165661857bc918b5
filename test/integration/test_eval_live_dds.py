"""vlm3r-eval against a real vlm3r-node over DDS: the node (tiny random weights) in a child
process, the evaluation client in this one.

The strongest check: in stream mode the client resets the node, streams each scene's sampled
frames and asks; the node must then answer exactly as the offline pipeline does on the same
frames (same tiny seed, float32, CPU), which shows it ingested exactly those frames. Then the
external mode (frames already in the node), errors recorded on the rows (NO_FRAMES,
NOT_ACTIVE), and BUSY / timeouts against a deliberately overloaded service in this process.
Every wait is bounded; no assertion is about timing.
"""
import json
import sys
import threading
import time
from pathlib import Path

import pytest
import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from rclpy.executors import MultiThreadedExecutor
from rclpy.callback_groups import ReentrantCallbackGroup

from vlm3r_ros.eval.benchmark import load_benchmark, select_rows
from vlm3r_ros.eval.harness import OfflineBackend, run
from vlm3r_ros.eval.live_client import LiveBackend, LiveError, LiveSpatialClient
from vlm3r_ros.srv import SpatialQuery
from vlm3r_ros.tools import eval as eval_tool
from vlm3r_ros.media import sample_scene

pytestmark = [pytest.mark.ros, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / 'test' / 'fixtures'
TINY_YAML = ROOT / 'config' / 'tiny.yaml'
NS = '/eval_live'
NUM_FRAMES = 3
MAX_NEW_TOKENS = 4
START_TIMEOUT_S = 90.0  # torch import and tiny models on a loaded 2-core machine
SIZE = (96, 72)


# ------------------------------------------------------------------ data
@pytest.fixture(scope='module')
def bench_file(tmp_path_factory):
    root = tmp_path_factory.mktemp('live_bench')
    sample_scene.write_sequence(root / 'scannet' / 'room_a', n_frames=5, size=SIZE, seed=1)
    sample_scene.write_sequence(root / 'scannet' / 'room_b', n_frames=4, size=SIZE, seed=2)
    rows = []
    for i, scene in enumerate(('room_a', 'room_b')):
        common = dict(dataset='scannet', scene_name=scene, video_path=f'scannet/{scene}')
        rows.append(dict(id=2 * i, **common, question_type='object_counting', question='How many chairs are there?',
                         options=None, ground_truth='3'))
        rows.append(dict(id=2 * i + 1, **common, question_type='object_rel_distance',
                         question='Which is closest to the door?', options=['A. sofa', 'B. desk'],
                         ground_truth='A'))
    path = root / 'bench.jsonl'
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return path


@pytest.fixture(scope='module')
def offline_predictions(bench_file, tmp_path_factory):
    """The in-process pipeline's replies on the same frames: what the node must answer."""
    import torch

    from vlm3r_ros.engine.loading import ModelSource, load_models

    torch.set_num_threads(1)  # as config/tiny.yaml's torch_threads
    pipeline = load_models(ModelSource(tiny_random=True, seed=0), torch.device('cpu'), torch.float32).pipeline
    bench = load_benchmark(bench_file)
    out = tmp_path_factory.mktemp('offline') / 'offline.jsonl'
    result = run(bench, bench.rows, OfflineBackend(pipeline, num_frames=NUM_FRAMES, max_new_tokens=MAX_NEW_TOKENS),
                 out, progress=False)
    return {r['id']: r['prediction'] for r in result.records}


# ------------------------------------------------------------------ the node
@pytest.fixture(scope='module')
def node(start_child, tmp_path_factory):
    proc = start_child([sys.executable, FIXTURES / 'node_vlm3r.py', '--ros-args', '--params-file', TINY_YAML,
                        '-r', f'__ns:={NS}'], 'node', log_dir=tmp_path_factory.mktemp('live_node'), stop_timeout=10.0)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope='module')
def client(node):
    c = LiveSpatialClient(namespace=NS, client_name='eval_live_test_client')
    try:
        try:
            c.wait_for_node(START_TIMEOUT_S)
        except LiveError as exc:
            pytest.fail(f'{exc}\n{node.describe()}')
        yield c
    finally:
        c.close()


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------ tests, in order
def test_stream_mode_answers_exactly_as_offline(bench_file, offline_predictions, client, node, tmp_path, capsys):
    out = tmp_path / 'live.jsonl'
    code = eval_tool.main([str(bench_file), '-o', str(out), '--backend', 'live', '--namespace', NS,
                           '--num-frames', str(NUM_FRAMES), '--max-new-tokens', str(MAX_NEW_TOKENS),
                           '--no-progress', '--connect-timeout', str(START_TIMEOUT_S)])
    captured = capsys.readouterr()
    assert code == 0, f'{captured.err}\n{node.describe()}'
    records = lines(out)
    assert [r['id'] for r in records] == [0, 1, 2, 3]
    for record in records:
        assert record['error'] == '' and record['frames_used'] == NUM_FRAMES
        assert record['backend'] == f'live {NS}/spatial_query (stream)'
        assert record['prediction'] == offline_predictions[record['id']], record
    assert 'MEANINGLESS' in captured.out  # the node runs tiny random weights, and says so
    # One reset per scene, NUM_FRAMES frames each, all processed (the client waits for each).
    state = client.wait_state(lambda s: s.window_size == NUM_FRAMES, 30.0, 'the last scene in the window')
    assert state.segment_id >= 2 and state.frames_dropped == 0 and state.frames_rejected == 0


def test_external_mode_only_asks(bench_file, offline_predictions, client, tmp_path):
    # The node still holds room_b's frames from the stream run: someone else streamed them.
    bench = load_benchmark(bench_file)
    rows = [r for r in bench.rows if r.scene_name == 'room_b']
    segment = client.state.segment_id
    backend = LiveBackend(client, mode='external', num_frames=NUM_FRAMES, max_new_tokens=MAX_NEW_TOKENS,
                          owns_client=False)
    result = run(bench, rows, backend, tmp_path / 'external.jsonl', progress=False)
    assert {r['id']: r['prediction'] for r in result.records} == {2: offline_predictions[2],
                                                                   3: offline_predictions[3]}
    assert client.state.segment_id == segment  # no reset in external mode


def test_no_frames_is_recorded_on_each_row(bench_file, client, tmp_path):
    client.reset()
    bench = load_benchmark(bench_file)
    backend = LiveBackend(client, mode='external', num_frames=NUM_FRAMES, owns_client=False)
    out = tmp_path / 'empty.jsonl'
    result = run(bench, select_rows(bench, limit=2), backend, out, progress=False)
    assert [r['error'].split(':')[0] for r in lines(out)] == ['NO_FRAMES', 'NO_FRAMES']
    assert all(r['prediction'] is None and r['score'] == 0.0 for r in lines(out))
    assert result.summary.failed_rows == 2


def test_an_inactive_node_fails_the_scene_with_not_active(bench_file, client, tmp_path):
    change = client.node.create_client(ChangeState, f'{NS}/vlm3r_node/change_state')

    def transition(transition_id):
        assert change.wait_for_service(timeout_sec=30.0)
        response = client._call(change, ChangeState.Request(transition=Transition(id=transition_id)), 30.0)
        assert response is not None and response.success

    transition(Transition.TRANSITION_DEACTIVATE)
    try:
        bench = load_benchmark(bench_file)
        backend = LiveBackend(client, mode='stream', num_frames=NUM_FRAMES, owns_client=False)
        out = tmp_path / 'inactive.jsonl'
        run(bench, select_rows(bench, limit=2), backend, out, progress=False)
        errors = [r['error'] for r in lines(out)]
        assert len(errors) == 2 and all(e.startswith('NOT_ACTIVE: ') for e in errors), errors
        with pytest.raises(LiveError, match='NOT_ACTIVE'):
            client.reset()
        assert client.ask('How many chairs?').error.startswith('NOT_ACTIVE: ')
    finally:
        transition(Transition.TRANSITION_ACTIVATE)
        client.node.destroy_client(change)


# ------------------------------------------------------------------ BUSY and timeouts
class OverloadedService:
    """A spatial_query service in this process that answers BUSY ``busy`` times before a real
    reply, or never answers in time (``delay_s``): an overloaded node cannot be made on demand."""

    def __init__(self, namespace, busy=0, delay_s=0.0):
        self.busy, self.delay_s, self.calls = busy, delay_s, 0
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('overloaded_spatial_query', namespace=namespace, context=self.context)
        self.node.create_service(SpatialQuery, 'spatial_query', self.on_query,
                                 callback_group=ReentrantCallbackGroup())
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def on_query(self, request, response):
        self.calls += 1
        if self.calls <= self.busy:
            response.success, response.error = False, 'BUSY: 1 question(s) already running; try again shortly'
            return response
        if self.delay_s:
            time.sleep(self.delay_s)
        response.success, response.answer, response.frames_used = True, f'echo {request.question}', 3
        return response

    def close(self):
        self.executor.shutdown(timeout_sec=5.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def test_busy_is_retried_with_backoff():
    server = OverloadedService('/eval_busy', busy=2)
    try:
        with LiveSpatialClient(namespace='/eval_busy', client_name='eval_busy_client') as c:
            c.wait_for_node(30.0, need_reset=False)
            reply = c.ask('How many chairs?', busy_backoff=(0.05, 0.2), busy_timeout=30.0)
            assert reply.success and reply.answer == 'echo How many chairs?' and reply.attempts == 3
            # When BUSY outlasts busy_timeout, the last BUSY is returned as the row's error.
            server.calls, server.busy = 0, 100
            reply = c.ask('How many chairs?', busy_backoff=(0.05, 0.05), busy_timeout=2.0)
            assert not reply.success and reply.error.startswith('BUSY: ') and reply.attempts >= 2
    finally:
        server.close()


def test_a_reply_that_never_comes_is_a_timeout():
    server = OverloadedService('/eval_slow', delay_s=3.0)
    try:
        with LiveSpatialClient(namespace='/eval_slow', client_name='eval_slow_client') as c:
            c.wait_for_node(30.0, need_reset=False)
            reply = c.ask('How many chairs?', timeout=0.5)
            assert not reply.success and reply.error.startswith('TIMEOUT: no reply from /eval_slow/spatial_query')
    finally:
        server.close()


def test_no_node_is_a_clear_error():
    with LiveSpatialClient(namespace='/eval_nobody', client_name='eval_nobody_client') as c:
        with pytest.raises(LiveError, match='NO_NODE: no service /eval_nobody/spatial_query after 1 s'):
            c.wait_for_node(1.0)
