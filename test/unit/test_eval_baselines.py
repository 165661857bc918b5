"""Blind baselines of vlm3r-eval (chance random / frequency), with hand-worked values."""
import json

import pytest

from vlm3r_ros.eval.baselines import format_comparison, frequency_chance, most_frequent_answers, random_chance
from vlm3r_ros.tools import eval as eval_tool


def mca(i, qtype, answer, n=4):
    return dict(id=i, dataset='d', scene_name='s', question_type=qtype, question='q',
                options=[f'{"ABCD"[k]}. o{k}' for k in range(n)], ground_truth=answer, mc_answer=answer)


def na(i, qtype, value):
    return dict(id=i, dataset='d', scene_name='s', question_type=qtype, question='q', options=None,
                ground_truth=value)


TRAIN = [mca(0, 'object_rel_distance', 'B'), mca(1, 'object_rel_distance', 'B'), mca(2, 'object_rel_distance', 'C'),
         na(3, 'object_counting', 2), na(4, 'object_counting', 3), na(5, 'object_counting', 3),
         na(6, 'room_size_estimation', 20.0), na(7, 'room_size_estimation', 10.0)]
TEST = [mca(10, 'object_rel_distance', 'B'), mca(11, 'object_rel_distance', 'A'),
        mca(12, 'object_rel_direction_easy', 'A', n=2), mca(13, 'object_rel_direction_hard', 'A', n=4),
        na(14, 'object_counting', 3), na(15, 'object_counting', 4), na(16, 'room_size_estimation', 12.0)]


def test_random_chance_is_one_over_the_options_and_none_for_numbers():
    got = random_chance(TEST, 'vsibench')
    assert got['object_rel_distance'] == pytest.approx(25.0)
    assert got['object_rel_direction'] == pytest.approx((50.0 + 25.0) / 2)  # merged: mean of its parts
    assert got['object_counting'] is None and got['room_size_estimation'] is None


def test_frequency_chance_answers_the_most_frequent_training_answer():
    assert most_frequent_answers(TRAIN, 'vsibench') == {'object_rel_distance': 'B', 'object_counting': 3.0,
                                                        'room_size_estimation': 10.0}  # 10 vs 20 tie: smaller
    summary = frequency_chance(TRAIN, TEST, 'vsibench')
    assert summary.per_type['object_rel_distance'] == pytest.approx(50.0)  # B right, A wrong
    assert summary.per_type['object_rel_direction'] == pytest.approx(0.0)  # no training rows: failed
    # MRA (official: relative error <= 1 - t, t = 0.50..0.95): 3 vs 3 -> 1; 3 vs 4: 0.25 <= 1 - t for t <= 0.75 -> 6/10
    assert summary.per_type['object_counting'] == pytest.approx(100 * (1.0 + 0.6) / 2)
    # 10 vs 12: relative error 1/6 <= 1 - t for t = 0.50..0.80 -> 7/10
    assert summary.per_type['room_size_estimation'] == pytest.approx(70.0)


def test_comparison_table_puts_the_systems_side_by_side():
    text = format_comparison({'model': {'a': 10.0, 'b': 20.0}, 'chance (random)': {'a': 25.0, 'b': None}})
    lines = text.splitlines()
    assert lines[0].split()[-3:] == ['model', 'chance', '(random)']
    assert lines[2].split() == ['a', '10.00', '25.00'] and lines[3].split() == ['b', '20.00', '-']
    assert lines[-1].split() == ['overall', '15.00', '-']


def test_vlm3r_eval_prints_the_baselines_beside_the_model(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    (tmp_path / 'room').mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / 'room' / f'{i}.png')
    rows = [dict(r, video_path='room') for r in TEST[:2] + TEST[4:6]]
    (tmp_path / 'test.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    (tmp_path / 'train.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in TRAIN))
    code = eval_tool.main([str(tmp_path / 'test.jsonl'), '-o', str(tmp_path / 'out.jsonl'), '--tiny-random',
                           '--num-frames', '2', '--max-new-tokens', '2', '--no-progress',
                           '--baselines', str(tmp_path / 'train.jsonl')])
    out = capsys.readouterr().out
    assert code == 0
    table = out[out.index('blind baselines'):].splitlines()
    assert 'chance (random)' in table[1] and 'chance (frequency)' in table[1]
    counting = next(line for line in table if line.startswith('object_counting'))
    assert counting.split()[-2:] == ['-', '80.00']
    assert eval_tool.main([str(tmp_path / 'test.jsonl'), '-o', str(tmp_path / 'o2.jsonl'), '--tiny-random',
                           '--baselines', str(tmp_path / 'nope.jsonl')]) == 2
