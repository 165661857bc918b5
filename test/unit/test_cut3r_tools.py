"""The CUT3R command-line tools on real files: sample data, vlm3r-cut3r, vlm3r-convert-cut3r, demo.

Tiny real models (random weights saved and loaded through the real checkpoint code),
real images and videos in tmp_path; no mocks, no timing assertions.
"""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from vlm3r_ros.engine.checkpoint import load_cut3r, save_cut3r_safetensors
from vlm3r_ros.engine.cut3r_stream import Cut3rStream
from vlm3r_ros.media.writers import PLY_DTYPE, PointSampler
from vlm3r_ros.models.cut3r.tiny import TINY_CONFIGS, random_cut3r
from vlm3r_ros.media import sample_scene
from vlm3r_ros.tools import convert_cut3r, demo, run_cut3r, sample_data

SMALL = (128, 96)  # (width, height) of the test frames


@pytest.fixture(scope='module')
def frames_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp('frames')
    sample_scene.write_sequence(folder, n_frames=4, size=SMALL, seed=1)
    return folder


@pytest.fixture(scope='module')
def tiny_weights(tmp_path_factory):
    model = random_cut3r('tiny_dpt', seed=3)
    path = tmp_path_factory.mktemp('weights') / 'tiny.safetensors'
    save_cut3r_safetensors(model.config, model.state_dict(), path)
    return path


def read_tum(path):
    rows = [line.split() for line in path.read_text().splitlines() if line and not line.startswith('#')]
    return np.array([[float(v) for v in row] for row in rows])


def read_ply(path):
    """(header lines, records) of a binary little-endian x y z red green blue PLY."""
    data = path.read_bytes()
    end = data.index(b'end_header\n') + len(b'end_header\n')
    header = data[:end].decode('ascii').splitlines()
    count = int(next(line.split()[2] for line in header if line.startswith('element vertex')))
    assert len(data) == end + count * PLY_DTYPE.itemsize, 'vertex count does not match the file size'
    return header, np.frombuffer(data[end:], dtype=PLY_DTYPE)


def run_tool(argv, capsys):
    code = run_cut3r.main(argv + ['--no-progress'])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ sample_data
def test_sample_frames_are_textured_and_change():
    frames = sample_scene.generate_sequence(3, SMALL, seed=0)
    assert len(frames) == 3
    for frame in frames:
        assert frame.shape == (SMALL[1], SMALL[0], 3) and frame.dtype == np.uint8
        assert frame.std() > 10  # not constant
        assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 100  # textured, several colours
    for a, b in zip(frames, frames[1:]):
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 2  # the camera moves
    again = sample_scene.generate_sequence(3, SMALL, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(frames, again))  # deterministic
    other = sample_scene.generate_sequence(1, SMALL, seed=1)[0]
    assert not np.array_equal(frames[0], other)  # the seed changes the textures


def test_write_sequence_files(tmp_path, capsys):
    assert sample_data.main([str(tmp_path / 'seq'), '--frames', '2', '--size', '64x48']) == 0
    assert 'wrote 2 frames' in capsys.readouterr().out
    folder = tmp_path / 'seq'
    assert sorted(p.name for p in folder.glob('*.png')) == ['frame_000000.png', 'frame_000001.png']
    assert Image.open(folder / 'frame_000001.png').size == (64, 48)
    assert sample_scene.is_complete(folder, 2, (64, 48))
    assert not sample_scene.is_complete(folder, 3, (64, 48))
    gt = read_tum(folder / 'groundtruth.tum')
    assert gt.shape == (2, 8)
    np.testing.assert_allclose(gt[0, 1:], [0, 0, 0, 0, 0, 0, 1], atol=1e-9)  # world = first camera
    assert sample_data.main([str(folder / 'frame_000000.png')]) == 2  # a file, not a folder


# ---------------------------------------------------------------- vlm3r-cut3r
def test_run_cut3r_on_a_folder(frames_dir, tiny_weights, tmp_path, capsys):
    out = tmp_path / 'out'
    code, stdout, err = run_tool(['--weights', str(tiny_weights), '--input', str(frames_dir),
                                  '--out', str(out)], capsys)
    assert code == 0, err
    assert 'patch tokens (768, 32)' in stdout  # default cut3r512: 128x96 -> 512x384 -> 32x24 patches

    tum_text = (out / 'trajectory.tum').read_text()
    assert tum_text.startswith('#')
    poses = read_tum(out / 'trajectory.tum')
    assert poses.shape == (4, 8)
    np.testing.assert_allclose(poses[:, 0], np.arange(4) / 30.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(poses[:, 4:8], axis=1), 1.0, atol=1e-6)

    # The first pose is what the model itself outputs on the first frame.
    model = load_cut3r(tiny_weights)
    first = np.asarray(Image.open(frames_dir / 'frame_000000.png').convert('RGB'))
    pose = Cut3rStream(model, 'cut3r512').step(first, with_heads=True).heads.camera_pose[0].double().numpy()
    q = pose[3:7] / np.linalg.norm(pose[3:7])
    np.testing.assert_allclose(poses[0, 1:4], pose[:3], atol=1e-5)
    np.testing.assert_allclose(poses[0, 4:8], [q[1], q[2], q[3], q[0]], atol=1e-5)

    header, points = read_ply(out / 'points.ply')
    assert header[:2] == ['ply', 'format binary_little_endian 1.0']
    assert [h for h in header if h.startswith('property')] == [
        'property float x', 'property float y', 'property float z',
        'property uchar red', 'property uchar green', 'property uchar blue']
    assert 0 < len(points) <= 4 * (384 // 4) * (512 // 4)  # default --point-stride 4
    xyz = np.stack([points['x'], points['y'], points['z']], axis=1)
    assert np.isfinite(xyz).all()
    rgb = np.stack([points['red'], points['green'], points['blue']], axis=1)
    assert rgb.std() > 5  # colours of the textured frames, not a constant

    summary = json.loads((out / 'summary.json').read_text())
    assert summary['frames'] == 4 and summary['skipped'] == 0
    assert summary['camera_token_shape'] == [1, 32] and summary['patch_tokens_shape'] == [768, 32]
    assert summary['weights'] == str(tiny_weights)
    assert summary['points_written'] == len(points)
    assert summary['mean_step_seconds'] > 0
    assert summary['preprocessing'] == 'cut3r512'


def test_corrupt_image_is_skipped_and_counted(frames_dir, tmp_path, capsys):
    folder = tmp_path / 'frames'
    folder.mkdir()
    for p in sorted(frames_dir.glob('*.png'))[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / 'frame_000001b.jpg').write_bytes(b'not a jpeg at all')
    (folder / 'notes.txt').write_text('ignored: not an image extension')
    out = tmp_path / 'out'
    code, stdout, err = run_tool(['--tiny-random', '--input', str(folder), '--out', str(out),
                                  '--preprocessing', 'cut3r224', '--max-points', '50', '--point-stride', '8'],
                                 capsys)
    assert code == 0, err
    assert 'frame_000001b.jpg' in err and 'meaningless outputs' in err + stdout
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['frames'] == 3 and summary['skipped'] == 1
    assert summary['skipped_names'] == ['frame_000001b.jpg']
    assert summary['patch_tokens_shape'] == [196, 32]
    # source indices follow the sorted folder (frame_000001b.jpg is index 2), timestamps index / fps
    np.testing.assert_allclose(read_tum(out / 'trajectory.tum')[:, 0], [0, 1 / 30, 3 / 30], atol=1e-6)
    _, points = read_ply(out / 'points.ply')
    assert len(points) == 50 == summary['points_written'] < summary['points_above_conf']


def test_video_input_stride_and_fps(tmp_path, tiny_weights, capsys):
    video = sample_scene.write_video(tmp_path / 'clip.mp4', sample_scene.generate_sequence(5, SMALL, seed=2), SMALL)
    out = tmp_path / 'out'
    code, _, err = run_tool(['--weights', str(tiny_weights), '--input', str(video), '--out', str(out),
                             '--stride', '2', '--max-frames', '2', '--preprocessing', 'cut3r224'], capsys)
    assert code == 0, err
    np.testing.assert_allclose(read_tum(out / 'trajectory.tum')[:, 0], [0.0, 0.2], atol=1e-6)
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['input_kind'] == 'video' and summary['fps'] == pytest.approx(10.0)


def test_missing_weights_exit_2_naming_the_path(frames_dir, tmp_path, capsys):
    missing = tmp_path / 'nowhere' / 'cut3r_512_dpt_4_64.pth'
    code, _, err = run_tool(['--weights', str(missing), '--input', str(frames_dir), '--out', str(tmp_path / 'o')],
                            capsys)
    assert code == 2
    assert str(missing) in err and 'github.com/CUT3R/CUT3R' in err
    assert 'Traceback' not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize('kind', ['missing', 'empty_folder', 'bad_video'])
def test_bad_input_exit_2(kind, tmp_path, capsys):
    path = tmp_path / 'input'
    if kind == 'empty_folder':
        path.mkdir()
    elif kind == 'bad_video':
        path = tmp_path / 'broken.mp4'
        path.write_bytes(b'\x00garbage' * 100)
    code, _, err = run_tool(['--tiny-random', '--input', str(path), '--out', str(tmp_path / 'o')], capsys)
    assert code == 2
    assert str(path) in err and 'Traceback' not in err


def test_cuda_request_without_cuda_is_a_clear_error(frames_dir, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip('CUDA is available here')
    code, _, err = run_tool(['--tiny-random', '--input', str(frames_dir), '--out', str(tmp_path / 'o'),
                             '--device', 'cuda'], capsys)
    assert code == 2 and 'CUDA is not available' in err


def test_point_sampler_is_an_even_bounded_subset():
    sampler = PointSampler(max_points=100, seed=0)
    for start in range(0, 1000, 70):
        n = min(70, 1000 - start)
        xyz = np.arange(start, start + n, dtype=np.float32)[:, None].repeat(3, axis=1)
        sampler.add(xyz, np.zeros((n, 3), dtype=np.uint8))
    kept = sampler.result()['x']
    assert len(kept) == 100
    assert np.all(np.diff(kept) > 0)  # kept in the order added
    assert kept.min() < 200 and kept.max() > 800  # spread over all of them, not the first or last


# -------------------------------------------------------- vlm3r-convert-cut3r
def constructor_string(config):
    """The official ``ARCroco3DStereo(ARCroco3DStereoConfig(...))`` string of a config."""
    def render(value):
        if isinstance(value, (list, tuple)):
            return '(' + ', '.join(render(v) for v in value) + ')'
        if value in ('inf', '-inf'):
            return value
        return repr(value)
    kwargs = ', '.join(f'{k}={render(v)}' for k, v in config.to_official_kwargs().items())
    return f'ARCroco3DStereo(ARCroco3DStereoConfig({kwargs}))'


def test_convert_round_trip(tmp_path, capsys):
    from omegaconf import OmegaConf

    config = TINY_CONFIGS['tiny_dpt']
    model = random_cut3r(config, seed=5)
    src = tmp_path / 'tiny.pth'
    torch.save({'model': model.state_dict(), 'args': OmegaConf.create({'model': constructor_string(config)})}, src)
    dst = tmp_path / 'converted' / 'tiny.safetensors'
    assert convert_cut3r.main([str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert 'tensors' in out and f'{dst.stat().st_size:,} bytes' in out
    assert dst.with_suffix('.json').is_file()

    frame = sample_scene.generate_sequence(1, SMALL, seed=0)[0]
    results = []
    for path in (src, dst):
        res = Cut3rStream(load_cut3r(path), 'cut3r224').step(frame, with_heads=True)
        results.append(res)
    a, b = results
    assert torch.equal(a.camera_token, b.camera_token) and torch.equal(a.patch_tokens, b.patch_tokens)
    assert torch.equal(a.heads.pts3d_in_other_view, b.heads.pts3d_in_other_view)
    assert torch.equal(a.heads.camera_pose, b.heads.camera_pose)

    assert convert_cut3r.main([str(src), str(dst)]) == 2  # exists: needs --force
    assert 'force' in capsys.readouterr().err
    assert convert_cut3r.main([str(src), str(dst), '--force']) == 0


def test_convert_errors(tmp_path, capsys):
    assert convert_cut3r.main([str(tmp_path / 'none.pth'), str(tmp_path / 'x.safetensors')]) == 2
    assert str(tmp_path / 'none.pth') in capsys.readouterr().err
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'4 definitely not a checkpoint' * 10)
    assert convert_cut3r.main([str(bad), str(tmp_path / 'x.safetensors')]) == 2
    err = capsys.readouterr().err
    assert 'not a readable torch checkpoint' in err and 'Traceback' not in err
    assert convert_cut3r.main([str(bad), str(tmp_path / 'x.bin')]) == 2
    assert '.safetensors' in capsys.readouterr().err


# ------------------------------------------------------------------------ demo
def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / 'demo'
    assert demo.main(['--cut3r-only', '--out', str(out), '--frames', '3', '--no-progress']) == 0
    text = capsys.readouterr().out
    assert 'MEANINGLESS' in text and 'vlm3r-cut3r --weights' in text
    assert "camera token z'_t: 1x32" in text and '729x32' in text
    assert (out / 'cut3r_tiny_random.safetensors').is_file()
    for name in ('trajectory.tum', 'points.ply', 'summary.json'):
        assert (out / 'cut3r' / name).is_file()
    assert read_tum(out / 'cut3r' / 'trajectory.tum').shape == (3, 8)
    assert math.isfinite(json.loads((out / 'cut3r' / 'summary.json').read_text())['mean_step_seconds'])
    # a second run keeps the complete frames
    assert demo.main(['--cut3r-only', '--out', str(out), '--frames', '3', '--no-progress']) == 0
    assert 'already complete, kept' in capsys.readouterr().out
