"""vlm3r-ask on real files: an image folder and an mp4, tiny random models, the real tokenizer.

No mocks, no timing assertions: ``ask.main`` runs in this process on generated frames and
videos written with imageio-ffmpeg; errors must be one line on stderr with exit status 2.
"""
import json

import numpy as np
import pytest
from PIL import Image

from vlm3r_ros.models.vlm.prompting import build_prompt, tokenize_with_image
from vlm3r_ros.models.vlm.tokenizer import build_qwen2_tokenizer, save_tokenizer_json
from vlm3r_ros.media import sample_scene
from vlm3r_ros.tools import ask

pytestmark = pytest.mark.usefixtures('torch_single_thread')

SMALL = (128, 96)  # (width, height)
QUESTION = 'How many chairs are in the room?'


@pytest.fixture(scope='module')
def frames_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp('frames')
    sample_scene.write_sequence(folder, n_frames=5, size=SMALL, seed=1)
    return folder


def write_video(path, frames):
    return sample_scene.write_video(path, frames, SMALL)


@pytest.fixture(scope='module')
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp('video') / 'clip.mp4', sample_scene.generate_sequence(12, SMALL, seed=2))


def run_ask(argv, capsys, progress=False):
    code = ask.main(argv + ([] if progress else ['--no-progress']))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    assert 'Traceback' not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith('WARNING: --tiny-random')]
    assert len(lines) == 1 and lines[0].startswith('vlm3r-ask: error: '), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ------------------------------------------------------------------ answers
def test_image_folder_json(frames_dir, capsys):
    code, out, err = run_ask(['--tiny-random', '--frames', str(frames_dir), '--question', QUESTION,
                              '--num-frames', '3', '--max-new-tokens', '4', '--json'], capsys)
    assert code == 0, err
    doc = json.loads(out)  # exactly one JSON object on stdout
    assert isinstance(doc['answer'], str)
    assert set(doc['parsed']) == {'choice', 'value', 'unit', 'raw'} and doc['parsed']['raw'] == doc['answer']
    assert doc['meaningless'] is True and 'MEANINGLESS' in doc['note'] and 'MEANINGLESS' in err
    assert doc['input_kind'] == 'images' and doc['total_frames'] == 5
    assert doc['frame_indices'] == [0, 2, 4] and doc['frames_used'] == 3 and doc['skipped'] == []
    assert doc['visual_tokens_per_frame'] == 210 and doc['visual_tokens'] == 3 * 210
    text_tokens = sum(1 for i in tokenize_with_image(build_prompt(QUESTION), build_qwen2_tokenizer()) if i >= 0)
    assert doc['text_tokens'] == text_tokens
    assert doc['prompt_tokens'] == text_tokens + doc['visual_tokens']
    assert 0 <= doc['new_tokens'] <= 4
    t = doc['timings']
    assert t['ingest_per_frame_median_s'] > 0 and t['query_s'] > 0 and t['load_s'] > 0
    assert t['ingest_total_s'] >= t['ingest_per_frame_median_s']


def test_mp4_multiple_choice_plain_text_with_progress(video, capsys):
    code, out, err = run_ask(['--tiny-random', '--video', str(video), '--question', 'Which is closer to the door?',
                              '--options', 'A. sofa', 'B. desk', '--num-frames', '4', '--max-new-tokens', '3',
                              '--threads', '1'], capsys, progress=True)
    assert code == 0, err
    assert 'answer: ' in out and 'parsed (auto): choice=' in out
    assert 'frames: 4 of 12 (video ' in out
    assert 'visual 840 (210 per frame)' in out and 'ingest ' in out and 'query ' in out
    assert out.count('MEANINGLESS') == 2  # before and after the answer
    assert 'ingest' in err and 'generating' in err  # the progress bar


def test_mp4_json_samples_like_the_official_eval(video, capsys):
    code, out, err = run_ask(['--tiny-random', '--video', str(video), '-q', QUESTION, '--num-frames', '4',
                              '--max-new-tokens', '2', '--json', '--answer-type', 'number'], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc['input_kind'] == 'video' and doc['total_frames'] == 12
    assert doc['frame_indices'] == np.linspace(0, 11, 4, dtype=int).tolist() == [0, 3, 7, 11]
    assert doc['visual_tokens'] == 4 * 210 and doc['answer_type'] == 'number'


# ------------------------------------------------------------------ errors
def test_missing_video_names_the_path(tmp_path, capsys):
    missing = tmp_path / 'nowhere' / 'room.mp4'
    code, _, err = run_ask(['--tiny-random', '--video', str(missing), '-q', QUESTION], capsys)
    assert_one_line_error(code, err, str(missing), 'not found')


def test_missing_frames_folder_names_the_path(tmp_path, capsys):
    missing = tmp_path / 'no_frames'
    code, _, err = run_ask(['--tiny-random', '--frames', str(missing), '-q', QUESTION], capsys)
    assert_one_line_error(code, err, str(missing))


@pytest.mark.parametrize('question', ['', '   '])
def test_empty_question(frames_dir, question, capsys):
    code, _, err = run_ask(['--tiny-random', '--frames', str(frames_dir), '--question', question], capsys)
    assert_one_line_error(code, err, 'question is empty')


def test_missing_question(frames_dir, capsys):
    code, _, err = run_ask(['--tiny-random', '--frames', str(frames_dir)], capsys)
    assert_one_line_error(code, err, '--question')


def test_options_without_question(frames_dir, capsys):
    code, _, err = run_ask(['--tiny-random', '--frames', str(frames_dir), '--options', 'A. sofa', 'B. desk'],
                           capsys)
    assert_one_line_error(code, err, '--options given without a question')


def test_video_without_frames(tmp_path, capsys):
    empty = write_video(tmp_path / 'empty.mp4', [])  # ffmpeg writes a container with no video stream
    code, _, err = run_ask(['--tiny-random', '--video', str(empty), '-q', QUESTION], capsys)
    assert_one_line_error(code, err, str(empty), 'no frames')


def test_unreadable_video(tmp_path, capsys):
    broken = tmp_path / 'broken.mp4'
    broken.write_bytes(b'\x00garbage' * 100)
    code, _, err = run_ask(['--tiny-random', '--video', str(broken), '-q', QUESTION], capsys)
    assert_one_line_error(code, err, str(broken))


def test_more_frames_than_the_context_holds(tmp_path, capsys):
    # 160 frames x 210 tokens = 33,600 > the 32,768-token context: refused before any frame is ingested
    folder = tmp_path / 'long'
    folder.mkdir()
    image = Image.fromarray(np.full((16, 16, 3), 128, dtype=np.uint8))
    for i in range(160):
        image.save(folder / f'{i:04d}.png')
    code, _, err = run_ask(['--tiny-random', '--frames', str(folder), '-q', QUESTION, '--num-frames', '160'], capsys)
    assert_one_line_error(code, err, '160 frames x 210 visual tokens', '32768-token context', '--num-frames 155')


def test_weights_are_required_without_tiny_random(frames_dir, capsys):
    code, _, err = run_ask(['--frames', str(frames_dir), '-q', QUESTION], capsys)
    assert_one_line_error(code, err, '--base', '--adapter', '--cut3r', '--tiny-random')


def test_missing_weight_path_is_named(frames_dir, tmp_path, capsys):
    (tmp_path / 'base').mkdir()
    (tmp_path / 'adapter').mkdir()
    missing = tmp_path / 'cut3r_512_dpt_4_64.pth'
    code, _, err = run_ask(['--frames', str(frames_dir), '-q', QUESTION, '--base', str(tmp_path / 'base'),
                            '--adapter', str(tmp_path / 'adapter'), '--cut3r', str(missing)], capsys)
    assert_one_line_error(code, err, '--cut3r not found', str(missing))


@pytest.fixture
def weight_folders(tmp_path):
    """A base folder with the real tokenizer but a broken config, an empty adapter folder, a junk CUT3R file."""
    base, adapter = tmp_path / 'base', tmp_path / 'adapter'
    base.mkdir()
    adapter.mkdir()
    save_tokenizer_json(base)
    (base / 'config.json').write_text('{"hidden_size": ')
    cut3r = tmp_path / 'cut3r.pth'
    cut3r.write_bytes(b'not a checkpoint' * 10)
    return base, adapter, cut3r


def test_cut3r_checkpoint_error(frames_dir, weight_folders, capsys):
    base, adapter, cut3r = weight_folders
    code, _, err = run_ask(['--frames', str(frames_dir), '-q', QUESTION, '--base', str(base),
                            '--adapter', str(adapter), '--cut3r', str(cut3r)], capsys)
    assert_one_line_error(code, err, str(cut3r))


def test_vlm_checkpoint_error(frames_dir, weight_folders, tmp_path, capsys):
    from vlm3r_ros.engine.checkpoint import save_cut3r_safetensors
    from vlm3r_ros.models.cut3r.tiny import random_cut3r

    base, adapter, _ = weight_folders
    model = random_cut3r('tiny_dpt', seed=0)
    cut3r = save_cut3r_safetensors(model.config, model.state_dict(), tmp_path / 'cut3r.safetensors')
    code, _, err = run_ask(['--frames', str(frames_dir), '-q', QUESTION, '--base', str(base),
                            '--adapter', str(adapter), '--cut3r', str(cut3r)], capsys)
    assert_one_line_error(code, err, 'config.json')


def test_tiny_random_refuses_weight_paths(frames_dir, tmp_path, capsys):
    code, _, err = run_ask(['--tiny-random', '--frames', str(frames_dir), '-q', QUESTION,
                            '--base', str(tmp_path)], capsys)
    assert_one_line_error(code, err, '--tiny-random', '--base')
    code, _, err = run_ask(['--tiny-random', '--frames', str(frames_dir), '-q', QUESTION,
                            '--vlm-config-overrides', '{"fusion_num_heads": 16}'], capsys)
    assert_one_line_error(code, err, '--tiny-random replaces', 'drop --vlm-config-overrides')


def test_unreadable_sampled_image_is_skipped_and_reported(frames_dir, tmp_path, capsys):
    folder = tmp_path / 'frames'
    folder.mkdir()
    names = sorted(p.name for p in frames_dir.glob('*.png'))
    for name in names:
        (folder / name).write_bytes((frames_dir / name).read_bytes())
    (folder / names[2]).write_bytes(b'not a png')  # sampled: indices 0, 2, 4 of 5
    code, out, err = run_ask(['--tiny-random', '--frames', str(folder), '-q', QUESTION, '--num-frames', '3',
                              '--max-new-tokens', '1', '--json'], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc['skipped'] == [names[2]] and doc['frame_indices'] == [0, 4] and doc['frames_used'] == 2
    assert doc['visual_tokens'] == 2 * 210
    assert f'skipping unreadable {names[2]}' in err


def test_a_video_shorter_than_counted_is_sampled_again(tmp_path):
    from vlm3r_ros.media.frames import FrameSource, SampledFrames, SampledInput, uniform_frame_indices

    path = write_video(tmp_path / 'six.mp4', sample_scene.generate_sequence(6, SMALL, seed=3))
    # As if ffmpeg had counted 20 frames: the sampled indices run past the real end.
    sampled = SampledInput(FrameSource(path), 'video', 20, uniform_frame_indices(20, 4))
    reader = SampledFrames(sampled)
    assert len([f for f in reader if f.image is not None]) < 4
    assert sampled.ended_early(reader.frames_seen) and reader.frames_seen == 6
    sampled.resample(reader.frames_seen, 4)
    assert (sampled.total, sampled.indices) == (6, uniform_frame_indices(6, 4))
    again = SampledFrames(sampled)
    frames = [f for f in again if f.image is not None]
    assert [f.index for f in frames] == sampled.indices and not sampled.ended_early(again.frames_seen)
    sampled.source.close()
