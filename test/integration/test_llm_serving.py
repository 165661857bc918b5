"""llm_backend 'openai' against a REAL vLLM server (test/integration/conftest.py: one per run).

* equality: for the same frames and question, the openai backend's token ids are the local
  backend's, in float32 (the tiny random VLM-3R, its LLM exported with vlm3r-export-llm);
* two robots: two vlm3r-node processes (namespaces /robot_a, /robot_b) stream frames and ask at
  once; every answer equals the local engine's on the same frames (rebuilt in this process);
* a paused server (SIGSTOP): the question fails with LLM_TIMEOUT after llm_timeout while the
  node keeps ingesting;
* a stopped server: LLM_UNAVAILABLE, the node keeps ingesting, and once the server is back
  the answers resume (equal to local's again).

Frames are published reliably and one at a time (the next after the node has processed the
last), so the node's window holds exactly the frames the local engine ingested. The tests run
in file order; the last restarts the server. No assertion is about timing: the timelines are
printed (pytest -s).
"""
import json
import math
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import yaml
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from vlm3r_ros.ros.client_node import ClientNode
from vlm3r_ros.msg import SpatialState
from vlm3r_ros.srv import SpatialQuery

pytestmark = [pytest.mark.ros, pytest.mark.llm_server, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / 'test' / 'fixtures'
TINY_YAML = ROOT / 'config' / 'tiny.yaml'
TINY = yaml.safe_load(TINY_YAML.read_text())['/**']['ros__parameters']
STATE_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
WAIT_S = 180.0
ROBOTS = {'/robot_a': 0, '/robot_b': 50}  # namespace -> first frame seed
TIMEOUT_ROBOT, TIMEOUT_S = '/robot_b', 20.0
QUESTIONS = [
    dict(question='How many chairs are in the room?', answer_type='number'),
    dict(question='Which is closer to the door?', options=['A. sofa', 'B. table', 'C. lamp'], answer_type='choice'),
    dict(question='What is on the table?', answer_type='text', max_new_tokens=16),
]


def frame(seed, width=64, height=48):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def image_msg(rgb, stamp_ns):
    h, w, _ = rgb.shape
    msg = Image(height=h, width=w, encoding='rgb8', is_bigendian=0, step=w * 3, data=rgb.tobytes())
    msg.header.frame_id = 'camera_optical_frame'
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    return msg


# ------------------------------------------------------------------ the local reference, in this process
def node_settings(**changes):
    """The node's settings for config/tiny.yaml (+ changes), as vlm3r-node reads them."""
    from vlm3r_ros.ros.node_settings import PARAMETERS, NodeSettings

    values = {p.name: p.default for p in PARAMETERS}
    values.update(TINY)
    values.update(changes)
    return NodeSettings(**{f.name: values[f.name] for f in fields(NodeSettings)})


def local_engine():
    """The local backend's engine built as the node builds it (tiny random, seed 0)."""
    from vlm3r_ros.ros.node_settings import build_engine

    return build_engine(node_settings(geometry=False))


@pytest.fixture(scope='module')
def tiny_pipelines(llm_server):
    """(local, openai) Vlm3rPipelines on the same tiny random weights; openai's has no LLM layers."""
    from vlm3r_ros.engine.llm_backend import OpenAiLlm
    from vlm3r_ros.ros.node_settings import build_engine

    local = build_engine(node_settings(geometry=False)).pipeline
    remote = build_engine(node_settings(geometry=False, llm_backend='openai', llm_url=llm_server.url,
                                        llm_model=llm_server.model, llm_timeout=120.0)).pipeline
    assert isinstance(remote.llm, OpenAiLlm)
    yield local, remote
    remote.llm.close()


# ------------------------------------------------------------------ 1. equality
def token_ids(pipeline, features, q):
    """The generated token ids of ``pipeline``'s LLM backend for question ``q`` over ``features``."""
    import torch

    from vlm3r_ros.models.vlm.prompting import build_prompt, tokenize_with_image

    ids = tokenize_with_image(build_prompt(q['question'], q.get('options')), pipeline.tokenizer)
    pooled = torch.stack([f.visual_tokens for f in features])
    return pipeline.llm.generate(pipeline.vlm, ids, pooled, max_new_tokens=q.get('max_new_tokens', 16),
                                 stop_token_ids=pipeline.stop_ids).token_ids


def test_openai_and_local_give_the_same_token_ids(tiny_pipelines):
    local, remote = tiny_pipelines
    assert sum(p.numel() for p in remote.vlm.parameters()) < sum(p.numel() for p in local.vlm.parameters())
    stream = local.new_stream()
    features = [local.ingest(frame(seed), stream) for seed in range(8)]
    lines = []
    for frames in (1, 4, 8):
        for q in QUESTIONS:
            mine, theirs = token_ids(local, features[:frames], q), token_ids(remote, features[:frames], q)
            lines.append(f"{frames} frame(s) {q['question'][:28]!r}: local {mine} openai {theirs}")
            assert theirs == mine, lines[-1]
            assert mine, 'no token generated: nothing compared'
    # and through the whole pipeline: the same text, token counts and prompt sizes
    q = QUESTIONS[1]
    a = local.answer(features, q['question'], q['options'], answer_type='choice')
    b = remote.answer(features, q['question'], q['options'], answer_type='choice')
    assert (a.text, a.new_tokens, a.prompt_tokens, a.visual_tokens) == (b.text, b.new_tokens, b.prompt_tokens,
                                                                        b.visual_tokens)
    print('\nlocal vs openai token ids (float32, tiny random VLM-3R, vLLM CPU):\n  ' + '\n  '.join(lines))


# ------------------------------------------------------------------ 2. vlm3r-eval and vlm3r-sim-eval
def test_vlm3r_eval_offline_openai_scores_as_local(llm_server, tmp_path):
    from vlm3r_ros.tools import eval as eval_tool
    from vlm3r_ros.media import sample_scene

    sample_scene.write_sequence(tmp_path / 'scannet' / 'room_a', n_frames=6, size=(96, 72), seed=1)
    scene = dict(dataset='scannet', scene_name='room_a', video_path='scannet/room_a')
    rows = [dict(id=0, **scene, question_type='object_counting', question='How many chairs are in this room?',
                 options=None, ground_truth='4'),
            dict(id=1, **scene, question_type='object_rel_distance', question='Which is closest to the bed?',
                 options=['A. sofa', 'B. desk', 'C. lamp'], ground_truth='B')]
    bench = tmp_path / 'bench.jsonl'
    bench.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    results = {}
    for backend in ('local', 'openai'):
        out = tmp_path / f'{backend}.jsonl'
        argv = [str(bench), '-o', str(out), '--tiny-random', '--num-frames', '4', '--threads', '1', '--no-progress',
                '--llm-backend', backend, '--llm-url', llm_server.url, '--llm-model', llm_server.model]
        assert eval_tool.main(argv) == 0
        results[backend] = [json.loads(line) for line in out.read_text().splitlines()]
    keep = ('id', 'prediction', 'prediction_value', 'score', 'error', 'frames_used')
    local = [{k: r[k] for k in keep} for r in results['local']]
    assert local == [{k: r[k] for k in keep} for r in results['openai']]
    assert all(r['error'] == '' and r['prediction'] for r in local), local


def test_vlm3r_ask_openai_answers_as_local(llm_server, tmp_path, capsys):
    from vlm3r_ros.media import sample_scene
    from vlm3r_ros.tools import ask

    sample_scene.write_sequence(tmp_path / 'frames', n_frames=5, size=(96, 72), seed=4)
    docs = {}
    for backend in ('local', 'openai'):
        capsys.readouterr()
        assert ask.main(['--tiny-random', '--frames', str(tmp_path / 'frames'), '--question', 'How far is the door?',
                         '--json', '--no-progress', '--threads', '1', '--llm-backend', backend,
                         '--llm-url', llm_server.url, '--llm-model', llm_server.model]) == 0
        docs[backend] = json.loads(capsys.readouterr().out)
    assert docs['openai']['answer'] == docs['local']['answer'] and docs['local']['answer']


def sim_eval_predictions(start_child, out, extra):
    argv = [sys.executable, '-m', 'vlm3r_ros.tools.sim_eval', '--frames', '6', '--size', '160x120',
            '--max-per-type', '1', '--out', str(out), '--no-progress', '--timeout', '300', *extra]
    child = start_child(argv, 'sim_eval', log_dir=out.parent, stop_timeout=15.0)
    code = child.wait(400)
    assert code == 0, child.tail()
    rows = [json.loads(line) for f in sorted(out.glob('results_*.jsonl')) for line in f.read_text().splitlines()]
    return child.output(), {(r['id'], r['question']): r['prediction'] for r in rows}, (out / 'node.log').read_text()


def test_vlm3r_sim_eval_with_the_openai_backend_answers_as_local(llm_server, start_child, tmp_path):
    _, local, _ = sim_eval_predictions(start_child, tmp_path / 'local', [])
    text, remote, node_log = sim_eval_predictions(
        start_child, tmp_path / 'openai', ['--llm-backend', 'openai', '--llm-url', llm_server.url,
                                           '--llm-model', llm_server.model])
    assert f"LLM server {llm_server.url} serves '{llm_server.model}'" in node_log
    assert 'llm_backend:=openai' in text
    assert local and remote == local  # the same frames (lockstep), the same answers
    assert all(p is not None for p in remote.values()), remote


# ------------------------------------------------------------------ nodes
class Robots:
    """This process's ROS client for the robots' nodes, and a local engine mirroring each one."""

    def __init__(self, nodes):
        self.nodes = nodes
        self.ros = ClientNode('llm_serving_test_client')
        self.node = self.ros.node
        self.states, self.images, self.queries, self.local, self.next_seed, self.next_stamp = {}, {}, {}, {}, {}, {}
        for ns, seed in ROBOTS.items():
            self.states[ns] = []
            self.node.create_subscription(SpatialState, f'{ns}/vlm3r_node/state', self.states[ns].append, STATE_QOS)
            self.images[ns] = self.node.create_publisher(Image, f'{ns}/image', QoSProfile(
                depth=10, reliability=ReliabilityPolicy.RELIABLE))
            self.queries[ns] = self.node.create_client(SpatialQuery, f'{ns}/spatial_query')
            self.local[ns] = local_engine()
            self.next_seed[ns], self.next_stamp[ns] = seed, 1000 * 10**9

    def close(self):
        self.ros.close()

    def spin_until(self, done, what, timeout=WAIT_S):
        self.ros.spin_until(done, timeout, what, watch=self.nodes.values())

    def processed(self, ns):
        return self.states[ns][-1].frames_processed if self.states[ns] else 0

    def stream(self, ns, count):
        """Publish ``count`` frames one at a time (each after the last is processed); mirror them locally."""
        pub = self.images[ns]
        self.spin_until(lambda: pub.get_subscription_count() > 0, f'{ns} subscribes to its images')
        for _ in range(count):
            rgb, stamp = frame(self.next_seed[ns]), self.next_stamp[ns]
            self.next_seed[ns] += 1
            self.next_stamp[ns] += 10**8
            before = self.processed(ns)
            pub.publish(image_msg(rgb, stamp))
            self.local[ns].ingest(rgb, stamp)
            self.spin_until(lambda: self.processed(ns) > before, f'{ns} processed a frame')

    def ask_async(self, ns, **fields):
        client = self.queries[ns]
        self.spin_until(client.service_is_ready, f'{ns}/spatial_query available')
        return client.call_async(SpatialQuery.Request(**fields))

    def wait(self, future, what):
        self.spin_until(future.done, what)
        return future.result()

    def local_answer(self, ns, **fields):
        q = dict(fields)
        return self.local[ns].query(q.pop('question'), q.pop('options', None), **q).answer.text


@pytest.fixture(scope='module')
def robots(llm_server, start_child, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp('llm_nodes')
    nodes = {}
    for ns in ROBOTS:
        timeout = TIMEOUT_S if ns == TIMEOUT_ROBOT else 300.0
        nodes[ns] = start_child(
            [sys.executable, FIXTURES / 'node_vlm3r.py', '--ros-args', '--params-file', TINY_YAML, '-r', f'__ns:={ns}',
             '-p', 'llm_backend:=openai', '-p', f'llm_url:={llm_server.url}', '-p', f'llm_model:={llm_server.model}',
             '-p', f'llm_timeout:={timeout}', '-p', 'llm_retries:=2', '-p', 'llm_backoff:=0.2',
             '-p', 'image_qos_reliability:=reliable', '-p', 'max_concurrent_queries:=4', '-p', 'geometry:=false'],
            f'node{ns.replace("/", "_")}', log_dir=log_dir)
    r = Robots(nodes)
    try:
        yield r
    finally:
        r.close()
        for proc in nodes.values():
            proc.stop()


def test_two_robots_stream_and_ask_at_once_with_local_answers(robots):
    for ns in ROBOTS:
        robots.stream(ns, 6)
    expected = {ns: {6: [robots.local_answer(ns, **q) for q in QUESTIONS]} for ns in ROBOTS}
    asked = [(ns, i) for i in range(len(QUESTIONS)) for ns in ROBOTS]
    futures = [robots.ask_async(ns, **QUESTIONS[i]) for ns, i in asked]  # six at once, both robots
    robots.stream('/robot_a', 1)  # robot_a streams on while they run
    responses = [robots.wait(f, f'answer of {ns}') for f, (ns, _) in zip(futures, asked)]
    expected['/robot_a'][7] = [robots.local_answer('/robot_a', **q) for q in QUESTIONS]
    lines = []
    for (ns, i), r in zip(asked, responses):
        assert r.success, (ns, r.error)
        # robot_a's question saw 6 or 7 frames, depending on when it took its window: frames_used says which
        assert r.frames_used in expected[ns], (ns, r.frames_used)
        assert r.answer == expected[ns][r.frames_used][i], (ns, QUESTIONS[i]['question'], r.frames_used)
        lines.append(f"{ns} {QUESTIONS[i]['question'][:30]!r} over {r.frames_used} frames: {r.answer!r} "
                     f"(local: {expected[ns][r.frames_used][i]!r})")
    print('\ntwo robots, one server, asked at once:\n  ' + '\n  '.join(lines))


def test_a_paused_server_times_out_while_ingestion_goes_on(robots, llm_server):
    ns = TIMEOUT_ROBOT
    timeline, t0 = [], time.monotonic()

    def mark(event):
        timeline.append(f'{time.monotonic() - t0:7.1f} s  {event}')

    llm_server.pause()
    mark('server paused (SIGSTOP): it accepts connections, never answers')
    try:
        before = robots.processed(ns)
        future = robots.ask_async(ns, **QUESTIONS[0])
        mark(f'question sent ({ns}, llm_timeout {TIMEOUT_S:g} s)')
        while not future.done():
            robots.stream(ns, 1)
        mark(f'answer: {future.result().error[:60]!r}; frames processed meanwhile: {robots.processed(ns) - before}')
        response = future.result()
        assert not response.success and response.error.startswith('LLM_TIMEOUT: '), response.error
        assert robots.processed(ns) > before  # ingestion went on while the question waited
    finally:
        llm_server.resume()
    mark('server resumed (SIGCONT)')
    response = robots.wait(robots.ask_async(ns, **QUESTIONS[0]), 'answer after resume')
    mark(f'answer: success={response.success}')
    assert response.success and response.answer == robots.local_answer(ns, **QUESTIONS[0])
    print('\ntimeout timeline:\n  ' + '\n  '.join(timeline))


def test_a_stopped_server_is_unavailable_and_answers_resume_when_it_is_back(robots, llm_server):
    ns = '/robot_a'
    timeline, t0 = [], time.monotonic()

    def mark(event):
        timeline.append(f'{time.monotonic() - t0:7.1f} s  {event}')

    robots.stream(ns, 2)
    ok = robots.wait(robots.ask_async(ns, **QUESTIONS[1]), 'answer before the stop')
    mark(f'answer with the server up: success={ok.success} {ok.answer!r}')
    assert ok.success
    llm_server.stop()
    mark('server stopped (SIGINT, then SIGKILL)')
    before = robots.processed(ns)
    robots.stream(ns, 2)
    down = robots.wait(robots.ask_async(ns, **QUESTIONS[1]), 'answer with the server down')
    mark(f'answer: {down.error[:80]!r}')
    robots.stream(ns, 2)
    mark(f'frames processed since the stop: {robots.processed(ns) - before}')
    assert not down.success and down.error.startswith('LLM_UNAVAILABLE: '), down.error
    assert '3 tries' in down.error
    assert robots.processed(ns) == before + 4  # every frame was ingested; nothing lost
    mark('server restarting')
    llm_server.start(while_waiting=lambda: robots.stream(ns, 1))  # the robot streams while the server comes back
    mark(f'server healthy again (start-up {llm_server.starts[-1]:.0f} s); frames processed since the stop: '
         f'{robots.processed(ns) - before}')
    back = robots.wait(robots.ask_async(ns, **QUESTIONS[1]), 'answer after the restart')
    mark(f'answer: success={back.success} {back.answer!r} over {back.frames_used} frames')
    assert back.success and back.answer == robots.local_answer(ns, **QUESTIONS[1])
    assert math.isfinite(back.latency_s)
    print('\nfault timeline:\n  ' + '\n  '.join(timeline))
