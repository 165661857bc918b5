"""The whole loop: ``vlm3r-sim-eval`` on tiny weights, its node and bridge in separate processes.

vlm3r-sim-eval (a child process) starts vlm3r-node (use_sim_time, tiny random weights) and
vlm3r-sim-bridge (pybullet, lockstep) as its own children, generates questions from the
ground truth of exactly the published frames, asks them over /spatial_query and prints a
score table. This process listens to /diagnostics meanwhile, to see the node's clock run on
simulation time, and afterwards checks the files against geometry measured here.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray

from vlm3r_ros.ros.client_node import ClientNode
from vlm3r_ros.ros.poses import stamp_to_ns

pytestmark = [pytest.mark.ros, pytest.mark.timeout(240)]

FRAMES = 8
TIMEOUT_S = 200.0


@pytest.fixture(scope='module')
def loop(start_child, tmp_path_factory):
    """(exit status, stdout, output folder, /diagnostics seen from vlm3r_node)."""
    out = tmp_path_factory.mktemp('sim_eval')
    # The shipped tiny.yaml, with /diagnostics every 0.1 s of simulation time: 8 frames at 10 Hz
    # span 0.7 s of sim time, so the default 1 s period ticks at most once, early, and that single
    # message may go out before this listener is matched.
    params = yaml.safe_load((Path(__file__).parents[2] / 'config' / 'tiny.yaml').read_text())
    params['/**']['ros__parameters']['diagnostics_period'] = 0.1
    params_file = out / 'tiny_fast_diagnostics.yaml'
    params_file.write_text(yaml.safe_dump(params))
    ros = ClientNode('sim_eval_listener')
    diagnostics = []
    ros.node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 50)
    argv = [sys.executable, '-m', 'vlm3r_ros.tools.sim_eval', '--params-file', str(params_file),
            '--frames', str(FRAMES), '--size', '160x120',
            '--max-per-type', '1', '--out', str(out), '--no-progress', '--timeout', '150']
    # 15 s after SIGINT: it stops its own node and bridge before it exits
    child = start_child(argv, 'sim_eval', log_dir=out, stop_timeout=15.0)
    try:
        ros.spin_until(lambda: not child.running(), TIMEOUT_S, 'vlm3r-sim-eval finishes', details=child.tail)
        yield child.returncode, child.output(), out, [
            d for d in diagnostics if any('vlm3r_node' in s.name for s in d.status)]
    finally:
        child.stop()
        ros.close()


def test_the_loop_runs_and_prints_a_score_table(loop):
    code, text, out, _ = loop
    assert code == 0, text[-6000:]
    assert 'THE SCORES BELOW ARE MEANINGLESS' in text and 'REMINDER: TINY RANDOM WEIGHTS' in text
    scores = json.loads((out / 'scores.json').read_text())
    assert scores['meaningless'] and scores['frames'] == FRAMES
    assert set(scores['scores']) == {'vsibench', 'vstibench'}
    for bench, summary in scores['scores'].items():
        assert summary['failed'] == 0
        assert 0.0 <= summary['overall'] <= 100.0
        for qtype, count in summary['count'].items():
            assert count >= 1
            # the printed table has a line per type: name, kind, count, score
            line = next(line for line in text.splitlines() if line.startswith(qtype + ' '))
            assert line.split()[2] == str(count) and float(line.split()[3]) == pytest.approx(
                summary['per_type'][qtype], abs=0.005)
        assert f'{bench}:' in text


def test_the_node_took_every_published_frame(loop):
    code, text, out, _ = loop
    assert code == 0, text[-6000:]
    scores = json.loads((out / 'scores.json').read_text())
    assert scores['bridge']['frames_published'] == FRAMES and scores['bridge']['lockstep']
    assert scores['bridge']['unconfirmed'] == 0
    node = scores['node']
    assert node['received'] == node['processed'] == FRAMES and node['dropped'] == node['rejected'] == 0


def test_every_question_was_answered_by_the_live_node(loop):
    code, text, out, _ = loop
    assert code == 0, text[-6000:]
    for bench in ('vsibench', 'vstibench'):
        questions = [json.loads(line) for line in (out / f'qa_{bench}.jsonl').read_text().splitlines()]
        results = [json.loads(line) for line in (out / f'results_{bench}.jsonl').read_text().splitlines()]
        assert [r['id'] for r in results] == [q['id'] for q in questions]
        for r in results:
            assert not r.get('error') and isinstance(r['prediction'], str) and r['frames_used'] == FRAMES


def test_answers_agree_with_geometry_measured_here(loop):
    """Ground truth from the scene the bridge rendered: counts recomputed from the instances
    that the published frames show (rendered again here from the scene and trajectory files),
    floor area from the scene file; the ground-truth frames are exactly the published ones."""
    from vlm3r_ros.ros.sim_messages import scene_graph_from_payload
    from vlm3r_ros.sim.core import SimScene, Trajectory
    from vlm3r_ros.sim.pybullet_backend import PyBulletRenderer

    code, text, out, _ = loop
    assert code == 0, text[-6000:]
    scene = SimScene.load(out / 'sim' / 'scene.json')
    trajectory = Trajectory.load(out / 'sim' / 'trajectory.json')
    graph, doc = scene_graph_from_payload((out / 'sim' / 'scene_graph.json').read_text())
    assert [f.frame_id for f in graph.frames] == list(range(FRAMES)) and doc['frames_published'] == FRAMES
    renderer = PyBulletRenderer(scene)
    try:
        intr = trajectory.intrinsics
        min_pixels = max(1, round(intr.width * intr.height / 5000))  # what counts as seen, as the sim core
        shown = set()
        for pose in trajectory.camera_to_world[:FRAMES]:
            ids, counts = np.unique(renderer.render(pose, intr).instance_ids, return_counts=True)
            shown |= {int(i) for i, n in zip(ids, counts) if i >= 0 and n >= min_pixels}
    finally:
        renderer.close()
    assert shown and len(shown) < len(scene.objects), 'the default run shows part of the room, not all'
    categories = [o.category for o in scene.objects if o.instance_id in shown]
    polygon = np.asarray(scene.room.floor, float)  # (K, 2) floor vertices in order
    x, y = polygon[:, 0], polygon[:, 1]
    area = abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2
    rows = [json.loads(line) for line in (out / 'qa_vsibench.jsonl').read_text().splitlines()]
    checked = set()
    for row in rows:
        if row['question_type'] == 'object_counting':
            category = row['question'].split('How many ')[1].split('(s)')[0]
            assert float(row['ground_truth']) == categories.count(category)
            checked.add('object_counting')
        if row['question_type'] == 'room_size_estimation':
            assert float(row['ground_truth']) == pytest.approx(area, abs=0.05)
            checked.add('room_size_estimation')
    assert checked == {'object_counting', 'room_size_estimation'}


def test_the_node_ran_on_simulation_time(loop):
    code, text, out, diagnostics = loop
    assert code == 0, text[-6000:]
    assert diagnostics, 'the node published /diagnostics during the run'
    bridge = json.loads((out / 'scores.json').read_text())['bridge']
    stamps = [stamp_to_ns(d.header.stamp) for d in diagnostics]
    # Its clock is /clock: never wall-clock time (about 1.8e18 ns), and inside the simulated span.
    assert all(0 <= s <= bridge['last_stamp_ns'] for s in stamps), stamps
    assert any(s >= bridge['first_stamp_ns'] for s in stamps), stamps
