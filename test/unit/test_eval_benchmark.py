"""Benchmark files: jsonl / json / parquet rows, validation errors that name the row and field,
question-type selection and media paths."""
import json
import sys

import pytest

from vlm3r_ros.eval.benchmark import (
    BenchmarkError, check_media, load_benchmark, read_raw_rows, resolve_media, select_rows)


def vsi_rows():
    return [
        dict(id=0, dataset='scannet', scene_name='scene0000_00', question_type='object_counting',
             question='How many chairs are in this room?', options=None, ground_truth='4'),
        dict(id=1, dataset='scannet', scene_name='scene0000_00', question_type='object_rel_direction_easy',
             question='Is the sofa left or right?', options=['A. left', 'B. right'], ground_truth='B'),
        dict(id=2, dataset='arkitscenes', scene_name='41069025', question_type='room_size_estimation',
             question='What is the size of this room (in square meters)?', options=None, ground_truth=21.5,
             video_path='videos/41069025.mp4', category='room'),
        dict(id='q3', dataset='scannet', scene_name='scene0001_00', question_type='object_rel_distance',
             question='Which is closest to the bed?', options=['A. sofa', 'B. desk', 'C. tv'],
             ground_truth='desk', mc_answer='B', frames=['f/0.png', 'f/1.png'], frame_indices=[3, 9]),
    ]


def write_jsonl(path, rows):
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return path


def test_jsonl_rows_load_with_their_fields(tmp_path):
    bench = load_benchmark(write_jsonl(tmp_path / 'b.jsonl', vsi_rows()))
    assert bench.name == 'vsibench' and len(bench.rows) == 4
    counting, direction, room, distance = bench.rows
    assert counting.options is None and counting.ground_truth == '4' and counting.line == 1
    assert direction.options == ('A. left', 'B. right')
    assert room.video_path == 'videos/41069025.mp4' and room.extra == {'category': 'room'}
    assert distance.key == 'q3' and distance.mc_answer == 'B'
    assert distance.frames == ('f/0.png', 'f/1.png') and distance.frame_indices == (3, 9)
    assert distance.to_dict()['frames'] == ['f/0.png', 'f/1.png']
    assert counting.key == '0'  # ids compare as strings in results files


def test_json_and_parquet_give_the_same_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = vsi_rows()
    jsonl = load_benchmark(write_jsonl(tmp_path / 'b.jsonl', rows)).rows
    (tmp_path / 'b.json').write_text(json.dumps(rows))
    as_json = load_benchmark(tmp_path / 'b.json').rows
    # Parquet columns have one type: VSI-Bench publishes ids as ints and ground truths as strings.
    for i, row in enumerate(rows):
        row['id'] = i
        row['ground_truth'] = str(row['ground_truth'])
    columns = {key: [row.get(key) for row in rows] for key in dict.fromkeys(k for row in rows for k in row)}
    pq.write_table(pa.table(columns), tmp_path / 'b.parquet')
    parquet = load_benchmark(tmp_path / 'b.parquet').rows
    assert [r.question for r in as_json] == [r.question for r in jsonl] == [r.question for r in parquet]
    assert [r.options for r in parquet] == [r.options for r in jsonl]
    assert parquet[2].ground_truth == '21.5' and parquet[3].frames == ('f/0.png', 'f/1.png')
    assert parquet[0].video_path is None  # a null column entry is no path


def test_vstibench_is_told_from_its_types(tmp_path):
    rows = [dict(id=0, dataset='scannet', scene_name='s', video_path='scannet/s.mp4',
                 question_type='camera_displacement', question='How far did the camera move?', options=['A. 1.0', 'B. 2.0'], ground_truth=1.0,
                 mc_answer='A', frame_indices=[1, 9]),
            dict(id=1, dataset='scannet', scene_name='s', video_path='scannet/s.mp4',
                 question_type='obj_obj_relative_pos_lr', question='Left or right?', options=['A. left', 'B. right'],
                 ground_truth='left', mc_answer='A')]
    assert load_benchmark(write_jsonl(tmp_path / 'v.jsonl', rows)).name == 'vstibench'
    with pytest.raises(BenchmarkError, match="field 'question_type': unknown question type "
                                             "'camera_displacement' for vsibench"):
        load_benchmark(tmp_path / 'v.jsonl', 'vsibench')


def bad(tmp_path, change, name='b.jsonl'):
    rows = vsi_rows()
    change(rows)
    return write_jsonl(tmp_path / name, rows)


@pytest.mark.parametrize('change, message', [
    (lambda r: r[1].pop('question'), r"row 2 \(id 1\): missing field\(s\) 'question'"),
    (lambda r: r[1].update(id=True), r"row 2 \(id True\): field 'id': expected an int or a non-empty string"),
    (lambda r: r[2].update(id=0), r"row 3 \(id 0\): field 'id': 0 repeats the id of row 1"),
    (lambda r: r[0].update(ground_truth='four'),
     r"row 1 \(id 0\): field 'ground_truth': expected a finite number for the numeric type object_counting, "
     r"got 'four'"),
    (lambda r: r[0].update(ground_truth='nan'), r"field 'ground_truth': expected a finite number"),
    (lambda r: r[1].update(options=None),
     r"row 2 \(id 1\): field 'options': expected a non-empty list of options for the multiple-choice type"),
    (lambda r: r[1].update(options='A. left'), r"field 'options': expected a list of non-empty strings or null"),
    (lambda r: r[1].update(options=['A. left', '']), r"field 'options': expected a list of non-empty strings"),
    (lambda r: r[1].update(ground_truth=None),
     r"row 2 \(id 1\): no answer letter: vsibench multiple-choice rows need it in 'mc_answer' or 'ground_truth'"),
    (lambda r: r[0].update(question='  '), r"field 'question': expected a non-empty string"),
    (lambda r: r[0].update(frames='a.png'), r"field 'frames': expected a non-empty list of image paths"),
    (lambda r: r[0].update(frame_indices=[1, 'x']), r"field 'frame_indices': expected a list of ints"),
    (lambda r: r[0].update(video_path=3), r"field 'video_path': expected a non-empty string or null"),
    (lambda r: r[0].update(mc_answer=''), r"field 'mc_answer': expected a non-empty string"),
    (lambda r: r[3].update(question_type='object_colour'), r"unknown question type\(s\) 'object_colour'"),
])
def test_bad_rows_are_named(tmp_path, change, message):
    with pytest.raises(BenchmarkError, match=message):
        load_benchmark(bad(tmp_path, change))


def test_vstibench_multiple_choice_needs_mc_answer(tmp_path):
    row = dict(id=0, dataset='scannet', scene_name='s', question_type='camera_movement_direction',
               question='Where did the camera turn?', options=['A. left', 'B. right'], ground_truth='A')
    with pytest.raises(BenchmarkError, match="no answer letter: vstibench multiple-choice rows need it in "
                                             "'mc_answer' \\(got mc_answer=None\\)"):
        load_benchmark(write_jsonl(tmp_path / 'v.jsonl', [row]))


def test_bad_files_are_named(tmp_path):
    path = tmp_path / 'b.jsonl'
    path.write_text(json.dumps(vsi_rows()[0]) + '\n\n{"id": 1,\n')
    with pytest.raises(BenchmarkError, match=r'b.jsonl: line 3 is not valid JSON'):
        load_benchmark(path)
    path.write_text('[1, 2]\n')
    with pytest.raises(BenchmarkError, match='line 1 must be a JSON object, got list'):
        load_benchmark(path)
    path.write_text('')
    with pytest.raises(BenchmarkError, match='no rows'):
        load_benchmark(path)
    (tmp_path / 'b.json').write_text('{"rows": []}')
    with pytest.raises(BenchmarkError, match='must be an array of objects'):
        load_benchmark(tmp_path / 'b.json')
    (tmp_path / 'b.csv').write_text('id\n')
    with pytest.raises(BenchmarkError, match="unknown benchmark format '.csv'"):
        load_benchmark(tmp_path / 'b.csv')
    (tmp_path / 'b.parquet').write_bytes(b'not parquet at all')
    with pytest.raises(BenchmarkError, match='b.parquet: cannot read as parquet'):
        load_benchmark(tmp_path / 'b.parquet')
    with pytest.raises(BenchmarkError, match='benchmark file not found'):
        load_benchmark(tmp_path / 'none.jsonl')
    with pytest.raises(BenchmarkError, match="unknown benchmark 'scanqa'"):
        load_benchmark(write_jsonl(path, vsi_rows()), 'scanqa')


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / 'b.parquet').write_bytes(b'PAR1')
    monkeypatch.setitem(sys.modules, 'pyarrow', None)  # the import then fails as on a machine without it
    monkeypatch.setitem(sys.modules, 'pyarrow.parquet', None)
    with pytest.raises(BenchmarkError, match='needs pyarrow, which is not installed: pip install'):
        read_raw_rows(tmp_path / 'b.parquet')


def test_select_rows_by_type_merged_name_and_limit(tmp_path):
    bench = load_benchmark(write_jsonl(tmp_path / 'b.jsonl', vsi_rows()))
    assert [r.id for r in select_rows(bench)] == [0, 1, 2, 'q3']
    assert [r.id for r in select_rows(bench, ['object_rel_direction'])] == [1]
    assert [r.id for r in select_rows(bench, ['room_size_estimation', 'object_counting'])] == [0, 2]
    assert [r.id for r in select_rows(bench, None, limit=2)] == [0, 1]
    with pytest.raises(BenchmarkError, match="'object_colour' is not a vsibench question type"):
        select_rows(bench, ['object_colour'])
    with pytest.raises(BenchmarkError, match='limit must be >= 1'):
        select_rows(bench, None, limit=0)


def test_media_paths_resolve_against_the_data_root(tmp_path):
    bench = load_benchmark(write_jsonl(tmp_path / 'b.jsonl', vsi_rows()))
    counting, _, room, distance = bench.rows
    root = tmp_path / 'data'
    assert resolve_media(counting, root).path == root / 'scannet' / 'scene0000_00.mp4'  # the official layout
    assert resolve_media(room, root).path == root / 'videos' / '41069025.mp4'
    media = resolve_media(distance, root)
    assert media.kind == 'frames' and media.frames == (root / 'f/0.png', root / 'f/1.png')
    absolute = bench.rows[2].__class__(**{**room.__dict__, 'video_path': str(tmp_path / 'abs.mp4')})
    assert resolve_media(absolute, root).path == tmp_path / 'abs.mp4'
    (root / 'videos' / 'folder.mp4').mkdir(parents=True)  # a folder of images, whatever its name
    folder_row = bench.rows[2].__class__(**{**room.__dict__, 'video_path': 'videos/folder.mp4'})
    assert resolve_media(folder_row, root).kind == 'folder'


def test_check_media_lists_what_is_missing(tmp_path):
    bench = load_benchmark(write_jsonl(tmp_path / 'b.jsonl', vsi_rows()))
    root = tmp_path / 'data'
    (root / 'f').mkdir(parents=True)
    (root / 'f' / '0.png').write_bytes(b'')
    with pytest.raises(BenchmarkError) as info:
        check_media(bench.rows, root)
    text = str(info.value)
    assert "row 1 (id 0): field 'dataset/scene_name':" in text and 'scene0000_00.mp4 not found' in text
    assert "row 3 (id 2): field 'video_path':" in text
    assert "row 4 (id 'q3'): field 'frames': 1 file(s) not found" in text
    (root / 'scannet').mkdir()
    (root / 'scannet' / 'scene0000_00.mp4').write_bytes(b'')
    (root / 'videos').mkdir()
    (root / 'videos' / '41069025.mp4').write_bytes(b'')
    (root / 'f' / '1.png').write_bytes(b'')
    check_media(bench.rows, root)  # everything exists now
