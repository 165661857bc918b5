"""The evaluation harness end to end: a tiny benchmark over generated scenes (an image folder,
an mp4 and a list of frame files), the tiny random pipeline, the results file, the table,
resuming after a crash, and vlm3r-eval itself.

The tiny random model's answers are meaningless, so its scores are 0; the scoring path is
checked with :class:`ScriptedModel`, a stand-in for a trained model (which cannot exist here)
that replies from a table.
"""
import json

import pytest

from vlm3r_ros.eval import harness
from vlm3r_ros.eval.benchmark import load_benchmark, select_rows
from vlm3r_ros.eval.harness import (
    HarnessError, OfflineBackend, Reply, SceneError, convert_value, format_table, read_results, run, save_plot)
from vlm3r_ros.tools import eval as eval_tool
from vlm3r_ros.media import sample_scene

pytestmark = pytest.mark.usefixtures('torch_single_thread')

SIZE = (96, 72)
NUM_FRAMES = 3


def bench_rows():
    """Nine questions over three scenes, every kind of answer; scene order interleaved in the file."""
    a = dict(dataset='scannet', scene_name='room_a', video_path='scannet/room_a')  # an image folder
    b = dict(dataset='arkitscenes', scene_name='room_b')  # the official layout: arkitscenes/room_b.mp4
    c = dict(dataset='scannet', scene_name='room_c', frames=[f'frames_c/{i}.png' for i in range(4)])
    mca = dict(options=['A. sofa', 'B. desk', 'C. lamp'])
    return [
        dict(id=0, **a, question_type='object_counting', question='How many chairs are in this room?',
             options=None, ground_truth='4'),
        dict(id=1, **b, question_type='object_size_estimation', question='How long is the sofa, in centimeters?',
             options=None, ground_truth='150'),
        dict(id=2, **a, question_type='object_rel_distance', question='Which is closest to the bed?', **mca,
             ground_truth='B'),
        dict(id=3, **c, question_type='object_abs_distance', question='How far is the bed from the door (in m)?',
             options=None, ground_truth='2.0'),
        dict(id=4, **b, question_type='object_rel_direction_easy', question='Is the lamp left or right?',
             options=['A. left', 'B. right'], ground_truth='A'),
        dict(id=5, **a, question_type='room_size_estimation', question='What is the size of this room (in square '
             'meters)?', options=None, ground_truth=20.0),
        dict(id=6, **c, question_type='route_planning', question='Which turn comes first?', **mca,
             ground_truth='C'),
        dict(id=7, **b, question_type='obj_appearance_order', question='What appears first?', **mca,
             ground_truth='A'),
        dict(id=8, **c, question_type='object_counting', question='How many lamps are there?', options=None,
             ground_truth=2),
    ]


@pytest.fixture(scope='module')
def bench_file(tmp_path_factory):
    root = tmp_path_factory.mktemp('bench')
    sample_scene.write_sequence(root / 'scannet' / 'room_a', n_frames=5, size=SIZE, seed=1)
    (root / 'arkitscenes').mkdir()
    sample_scene.write_video(root / 'arkitscenes' / 'room_b.mp4', sample_scene.generate_sequence(6, SIZE, seed=2), SIZE)
    (root / 'frames_c').mkdir()
    from PIL import Image
    for i, frame in enumerate(sample_scene.generate_sequence(4, SIZE, seed=3)):
        Image.fromarray(frame).save(root / 'frames_c' / f'{i}.png')
    path = root / 'bench.jsonl'
    path.write_text(''.join(json.dumps(r) + '\n' for r in bench_rows()))
    return path


@pytest.fixture(scope='module')
def pipeline():
    import torch

    from vlm3r_ros.engine.loading import ModelSource, load_models

    return load_models(ModelSource(tiny_random=True, seed=0), torch.device('cpu'), torch.float32).pipeline


class Counting:
    """Wraps a backend: records which ids were asked; raises after ``crash_after`` answers (a crash)."""

    def __init__(self, inner, crash_after=None):
        self.inner, self.crash_after = inner, crash_after
        self.name, self.meaningless = inner.name, inner.meaningless
        self.asked, self.scenes = [], []

    def start_scene(self, scene):
        self.scenes.append(scene.rows[0].scene_name)
        self.inner.start_scene(scene)

    def answer(self, row, options):
        if self.crash_after is not None and len(self.asked) >= self.crash_after:
            raise RuntimeError('simulated crash')
        self.asked.append(row.id)
        return self.inner.answer(row, options)

    def end_scene(self):
        self.inner.end_scene()

    def close(self):
        self.inner.close()


class ScriptedModel:
    """Replies from a table (id -> text); a stand-in for a trained model, which cannot exist here."""

    name, meaningless = 'scripted', False

    def __init__(self, replies, failing_scenes=()):
        self.replies, self.failing_scenes = replies, set(failing_scenes)

    def start_scene(self, scene):
        if scene.rows[0].scene_name in self.failing_scenes:
            raise SceneError(f'MEDIA: cannot read {scene.rows[0].scene_name}')

    def answer(self, row, options):
        return Reply(text=self.replies[row.id], frames_used=NUM_FRAMES)

    def end_scene(self):
        pass

    def close(self):
        pass


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_offline_run_writes_every_result_and_ingests_each_scene_once(bench_file, pipeline, tmp_path):
    bench = load_benchmark(bench_file)
    backend = Counting(OfflineBackend(pipeline, num_frames=NUM_FRAMES, max_new_tokens=4, label='tiny',
                                      meaningless=True))
    out = tmp_path / 'results.jsonl'
    result = run(bench, bench.rows, backend, out, progress=False)
    assert backend.scenes == ['room_a', 'room_b', 'room_c']  # grouped by scene, in order of first appearance
    assert backend.inner.scenes_ingested == 3
    records = lines(out)
    assert [r['id'] for r in records] == [0, 2, 5, 1, 4, 7, 3, 6, 8]
    for record in records:
        assert record['error'] == '' and isinstance(record['prediction'], str)
        assert record['frames_used'] == NUM_FRAMES and record['backend'] == 'tiny'
        assert record['score'] == 0.0  # a tiny random reply is neither a letter nor a number
    by_id = {r['id']: r for r in records}
    assert by_id[2]['asked_options'] == ['A. sofa', 'B. desk', 'C. lamp'] and by_id[2]['answer_letter'] == 'B'
    assert by_id[0]['asked_options'] is None and by_id[0]['kind'] == 'NA'
    assert result.answered == 9 and result.skipped == 0 and result.missing == []
    summary = result.summary
    assert summary.rows == 9 and summary.overall == 0.0
    assert summary.per_type_count == {'object_rel_direction': 1, 'object_rel_distance': 1, 'route_planning': 1,
                                      'obj_appearance_order': 1, 'object_counting': 2, 'object_abs_distance': 1,
                                      'object_size_estimation': 1, 'room_size_estimation': 1}
    table = format_table(summary, meaningless=True)
    for qtype in summary.per_type:
        assert qtype in table
    assert 'overall' in table and 'MEANINGLESS' in table
    assert 'no rows of object_rel_direction_medium, object_rel_direction_hard' in table


def test_the_same_frames_give_the_same_answers_as_the_one_question_path(bench_file, pipeline, tmp_path):
    # Ingesting a scene once for all its questions must answer as answer_video does per question.
    bench = load_benchmark(bench_file)
    out = tmp_path / 'results.jsonl'
    run(bench, select_rows(bench, ['object_counting'], limit=1), OfflineBackend(pipeline, num_frames=NUM_FRAMES,
                                                                                max_new_tokens=4), out,
        progress=False)
    images = sample_scene.generate_sequence(5, SIZE, seed=1)  # room_a, as written to PNG (lossless)
    direct = pipeline.answer_video(images, 'How many chairs are in this room?', None, num_frames=NUM_FRAMES,
                                   max_new_tokens=4)
    assert lines(out)[0]['prediction'] == direct.text


def test_resume_after_a_crash_redoes_nothing(bench_file, pipeline, tmp_path):
    bench = load_benchmark(bench_file)
    out = tmp_path / 'results.jsonl'
    offline = OfflineBackend(pipeline, num_frames=NUM_FRAMES, max_new_tokens=4)
    crashing = Counting(offline, crash_after=4)
    with pytest.raises(RuntimeError, match='simulated crash'):
        run(bench, bench.rows, crashing, out, progress=False)
    first = out.read_text().splitlines()
    assert [json.loads(line)['id'] for line in first] == [0, 2, 5, 1]  # durable before the crash
    # A crash in the middle of a write leaves half a line: it is cut off, not an error.
    with open(out, 'a') as f:
        f.write('{"id": 4, "dataset": "arkit')
    again = Counting(offline)
    result = run(bench, bench.rows, again, out, progress=False)
    # Only the questions without a result, grouped by scene in order of first appearance among
    # them (row 3 of room_c comes before row 4 of room_b); room_a is finished: not decoded again.
    assert again.asked == [3, 6, 8, 4, 7]
    assert again.scenes == ['room_c', 'room_b']
    assert result.skipped == 4 and result.answered == 5 and result.missing == []
    final = out.read_text().splitlines()
    assert final[:4] == first  # finished results are kept as they were
    assert sorted(json.loads(line)['id'] for line in final) == list(range(9))
    assert result.summary.rows == 9
    # A third run has nothing left to do.
    idle = Counting(offline)
    assert run(bench, bench.rows, idle, out, progress=False).answered == 0 and idle.asked == []


def test_failed_scenes_are_recorded_and_retried(bench_file, tmp_path):
    bench = load_benchmark(bench_file)
    out = tmp_path / 'results.jsonl'
    replies = {0: '4', 1: '1.5 m', 2: 'B.', 3: '2', 4: 'b', 5: '25', 6: 'A', 7: 'A', 8: 'two'}
    result = run(bench, bench.rows, ScriptedModel(replies, failing_scenes={'room_b'}), out, progress=False)
    failed = [r for r in lines(out) if r['error']]
    assert [r['id'] for r in failed] == [1, 4, 7]
    assert all(r['error'] == 'MEDIA: cannot read room_b' and r['prediction'] is None for r in failed)
    assert result.summary.failed_rows == 3
    assert 'question(s) failed' in format_table(result.summary)
    retried = Counting(ScriptedModel(replies))
    result = run(bench, bench.rows, retried, out, progress=False)
    assert retried.asked == [1, 4, 7]
    assert result.summary.failed_rows == 0
    # Hand-computed official scores of the scripted replies:
    #   counting: '4' vs 4 -> 1; 'two' vs 2 -> float('two') fails -> 0        => 50
    #   size: '1.5 m' -> 1.5 vs 150 -> 0                                      => 0
    #   abs distance: '2' vs 2.0 -> 1                                         => 100
    #   room size: '25' vs 20 -> error 0.25 <= 1 - theta for theta .5..0.75 -> 0.6  => 60
    #   rel distance 'B.' vs B -> 1; rel direction easy 'b' vs A -> 0; route 'A' vs C -> 0; order 'A' vs A -> 1
    s = result.summary
    assert s.per_type == pytest.approx({'object_rel_direction': 0.0, 'object_rel_distance': 100.0,
                                        'route_planning': 0.0, 'obj_appearance_order': 100.0,
                                        'object_counting': 50.0, 'object_abs_distance': 100.0,
                                        'object_size_estimation': 0.0, 'room_size_estimation': 60.0})
    assert s.overall == pytest.approx(410.0 / 8)
    by_id = {r['id']: r for r in read_results(out).values()}
    assert by_id[1]['prediction_value'] == pytest.approx(150.0) and by_id[1]['prediction_unit'] == 'm'
    converted = harness.summarize(bench, bench.rows, read_results(out), numeric='converted').summary
    assert converted.per_type['object_size_estimation'] == 100.0  # '1.5 m' read as 150 cm
    assert converted.per_type['object_counting'] == 100.0  # 'two' read as 2


def test_results_of_another_benchmark_are_refused(bench_file, tmp_path):
    bench = load_benchmark(bench_file)
    out = tmp_path / 'results.jsonl'
    out.write_text(json.dumps({'id': 0, 'question': 'Something else?', 'question_type': 'object_counting'}) + '\n')
    with pytest.raises(HarnessError, match="holds a result for id '0' that is not this benchmark's question"):
        run(bench, bench.rows, ScriptedModel({}), out, progress=False)
    out.write_text('{"id": 0}\nnot json\n{"id": 1}\n')
    with pytest.raises(HarnessError, match='line 2 is not a result line'):
        read_results(out)


def test_no_resume_starts_the_file_again(bench_file, tmp_path):
    bench = load_benchmark(bench_file)
    out = tmp_path / 'results.jsonl'
    out.write_text(json.dumps({'id': 0, 'question': 'Something else?'}) + '\n')
    replies = {i: 'A' for i in range(9)}
    result = run(bench, select_rows(bench, limit=2), ScriptedModel(replies), out, resume=False, progress=False)
    assert [r['id'] for r in lines(out)] == [0, 1] and result.answered == 2


@pytest.mark.parametrize('text, unit, expected', [
    ('1.5 m', 'cm', (150.0, 'm')),
    ('150', 'cm', (150.0, '')),  # no unit: taken as the unit the question asked for
    ('20 square meters', 'm2', (20.0, 'm2')),
    ('3 ft', 'm', (0.9144, 'ft')),
    ('3 m', 'm2', (None, 'm')),  # a length for an area: not converted
    ('three', '', (3.0, '')),  # a count
    ('no idea', 'm', (None, '')),
])
def test_convert_value(text, unit, expected):
    value, read_unit = convert_value(text, unit)
    assert read_unit == expected[1]
    assert value == (None if expected[0] is None else pytest.approx(expected[0]))


def test_plot_is_a_png(bench_file, tmp_path):
    bench = load_benchmark(bench_file)
    result = run(bench, bench.rows, ScriptedModel({i: 'A' for i in range(9)}), tmp_path / 'r.jsonl',
                 progress=False)
    path = save_plot(result.summary, tmp_path / 'plot' / 'scores.png')
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


# ------------------------------------------------------------------ vlm3r-eval
def test_vlm3r_eval_tiny_random_end_to_end(bench_file, tmp_path, capsys):
    out = tmp_path / 'cli.jsonl'
    argv = [str(bench_file), '-o', str(out), '--tiny-random', '--num-frames', '2', '--max-new-tokens', '2',
            '--threads', '1', '--no-progress', '--question-types', 'object_counting', 'object_rel_direction',
            '--plot', str(tmp_path / 'p.png')]
    assert eval_tool.main(argv) == 0
    captured = capsys.readouterr()
    assert 'object_counting' in captured.out and 'object_rel_direction' in captured.out
    assert 'overall' in captured.out and 'MEANINGLESS' in captured.out
    assert [r['id'] for r in lines(out)] == [0, 4, 8]
    summary = json.loads((tmp_path / 'cli.summary.json').read_text())
    assert summary['meaningless'] is True and summary['rows'] == 3 and summary['benchmark'] == 'vsibench'
    assert (tmp_path / 'p.png').is_file()
    # Run again: everything is answered already; the limit selects a subset.
    assert eval_tool.main(argv[:-2] + ['--limit', '2']) == 0
    assert 'resuming' in capsys.readouterr().err and len(lines(out)) == 3


@pytest.mark.parametrize('extra, message', [
    (['--tiny-random', '--base', 'x'], '--tiny-random replaces --base'),
    ([], 'missing --base, --adapter, --cut3r'),
    (['--tiny-random', '--num-frames', '0'], '--num-frames must be >= 1'),
    (['--tiny-random', '--question-types', 'object_colour'], "'object_colour' is not a vsibench question type"),
    (['--tiny-random', '--data-root', '/nonexistent'], 'missing media under --data-root /nonexistent'),
    (['--backend', 'live', '--tiny-random'], 'are for --backend offline'),
    (['--tiny-random', '--vlm-config-overrides', '{}'], 'drop --vlm-config-overrides'),
    (['--backend', 'live', '--vlm-config-overrides', '{"fusion_num_heads": 16}'], 'its vlm_config_overrides parameter'),
])
def test_vlm3r_eval_user_errors_are_one_line(bench_file, tmp_path, capsys, extra, message):
    assert eval_tool.main([str(bench_file), '-o', str(tmp_path / 'r.jsonl'), '--no-progress', *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith('vlm3r-eval: error: ') and message in err[-1]
