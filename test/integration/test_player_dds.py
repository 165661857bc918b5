"""vlm3r-play over real DDS: the console script in a child process, a subscriber here.

The frames are a generated folder on disk (sample_data) at 640x480 rgb8, about 0.9 MB
each: with Fast DDS's default transports most such frames are lost on a best-effort
subscription, and FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA loses most of them too with
LOCALHOST discovery (measured here). The sample lives in the SENDER's shared-memory
segment, so receiving every frame best effort checks the setting the package ships
(config/fastdds_large_data.xml), which the player applies by itself. This process keeps
whatever Fast DDS reads at its first participant (the profile is loaded once per process).
Waits are bounded; no assertion is about timing.
"""
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PilImage
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from vlm3r_ros.media import sample_scene
from vlm3r_ros.ros import FASTDDS_BUILTIN_ENV, FASTDDS_PROFILES_ENV, fastdds_profile_path, image_messages
from vlm3r_ros.ros.player import PlayStats
from vlm3r_ros.tools import play

pytestmark = pytest.mark.ros

N_FRAMES = 6
SIZE = (640, 480)
FPS = 15.0  # written to sequence.json: the player's default rate and source-stamp rate
RECEIVE_TIMEOUT_S = 60.0


@pytest.fixture(scope='module')
def frames_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp('play_frames')
    sample_scene.write_sequence(folder, n_frames=N_FRAMES, size=SIZE, seed=4, fps=FPS)
    return folder


@pytest.fixture
def player_env(monkeypatch):
    """No Fast DDS setting in the environment the children inherit, so that the player
    applies the one the package ships by itself (as it does for a user)."""
    monkeypatch.delenv(FASTDDS_PROFILES_ENV, raising=False)
    monkeypatch.delenv(FASTDDS_BUILTIN_ENV, raising=False)
    return None


def player_script():
    script = Path(sys.executable).parent / 'vlm3r-play'
    if not script.is_file():
        pytest.fail(f'console script {script} not found: run `make setup` (pip install -e .)', pytrace=False)
    return script


def receive(executor, child, done, what):
    """Spin until done(); fail (saying what(), and the child's output) on timeout or early exit."""
    deadline = time.monotonic() + RECEIVE_TIMEOUT_S
    exited_at = None
    while not done():
        if not child.running() and exited_at is None:
            exited_at = time.monotonic()
        if exited_at is not None and time.monotonic() - exited_at > 2.0:  # grace for frames in flight
            pytest.fail(f'{what()}: the player exited first. {child.describe()}')
        if time.monotonic() > deadline:
            pytest.fail(f'{what()}: not done after {RECEIVE_TIMEOUT_S} s. {child.describe()}')
        executor.spin_once(timeout_sec=0.05)


def stamp_ns(msg):
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def wait_exit(child, timeout=30.0):
    try:
        return child.proc.wait(timeout=timeout)
    except Exception:  # noqa: BLE001 - report with the child's output
        pytest.fail(f'the player did not exit. {child.describe()}')


def test_player_streams_a_folder_best_effort(client_node, frames_dir, spawn_python, player_env):
    node, executor = client_node.node, client_node.executor
    images, infos = [], []
    # Best effort like the node; a deep history so that a slow spin here loses nothing.
    qos = QoSProfile(depth=N_FRAMES * 2, reliability=ReliabilityPolicy.BEST_EFFORT)
    node.create_subscription(Image, '/test_cam/image_raw', images.append, qos)
    node.create_subscription(CameraInfo, '/test_cam/camera_info', infos.append, qos)

    player = spawn_python(player_script(), '--input', frames_dir, '--topic', '/test_cam/image_raw',
                          '--frame-id', 'test_cam_optical', '--camera-info', '--rate', '10',
                          '--wait-for-subscribers', '1', '--wait-for-info-subscribers', '1', env=player_env)
    receive(executor, player, lambda: len(images) >= N_FRAMES and len(infos) >= N_FRAMES,
            lambda: f'frames ({len(images)} images, {len(infos)} camera infos received)')
    assert wait_exit(player) == 0, player.describe()
    executor.spin_once(timeout_sec=0.2)

    assert len(images) == N_FRAMES, player.describe()
    files = sorted(frames_dir.glob('frame_*.png'))
    for msg, path in zip(images, files):
        assert (msg.encoding, msg.width, msg.height, msg.step) == ('rgb8', SIZE[0], SIZE[1], SIZE[0] * 3)
        assert msg.header.frame_id == 'test_cam_optical' and msg.is_bigendian == 0
        pixels = np.frombuffer(msg.data, dtype=np.uint8).reshape(SIZE[1], SIZE[0], 3)
        assert np.array_equal(pixels, np.asarray(PilImage.open(path).convert('RGB'))), path.name
    stamps = [stamp_ns(m) for m in images]
    assert all(b > a for a, b in zip(stamps, stamps[1:])), stamps
    assert abs(stamps[-1] / 1e9 - time.time()) < 120  # 'now' stamps: the wall clock, not 0

    # The folder came from sample_data: its sequence.json intrinsics are used (exact, not guessed).
    assert len(infos) == N_FRAMES
    fx, fy, cx, cy = sample_scene.intrinsics(SIZE)
    for info, image in zip(infos, images):
        assert info.header == image.header
        assert (info.width, info.height, info.distortion_model) == (SIZE[0], SIZE[1], 'plumb_bob')
        np.testing.assert_allclose(info.k, [fx, 0, cx, 0, fy, cy, 0, 0, 1])
        np.testing.assert_allclose(info.p, [fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0])
    assert f'done: {N_FRAMES} frames' in player.output()
    assert f'Fast DDS profile {fastdds_profile_path()}' in player.output()  # the shipped setting, applied


def test_player_loops_with_source_stamps_reliable(client_node, frames_dir, spawn_python, player_env):
    node, executor = client_node.node, client_node.executor
    images = []
    total = N_FRAMES + 3  # one full pass and three frames of the second
    qos = QoSProfile(depth=total * 2, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(Image, 'image', images.append, qos)  # the default topic

    player = spawn_python(player_script(), '--input', frames_dir, '--qos', 'reliable', '--stamps', 'source',
                          '--loop', '--max-frames', total, '--encoding', 'bgr8', '--rate', '30',
                          '--wait-for-subscribers', '1', env=player_env)
    receive(executor, player, lambda: len(images) >= total, lambda: f'looped frames ({len(images)} received)')
    assert wait_exit(player) == 0, player.describe()

    assert len(images) == total
    assert {(m.encoding, m.step, m.header.frame_id) for m in images} == {('bgr8', SIZE[0] * 3,
                                                                           play.DEFAULT_FRAME_ID)}
    # Source stamps: index / fps (the folder's sequence.json says 15 fps); the second pass
    # continues after the first instead of going back to 0.
    expected = [i / FPS for i in range(total)]
    np.testing.assert_allclose([stamp_ns(m) / 1e9 for m in images], expected, atol=1e-6)
    first = np.asarray(PilImage.open(frames_dir / 'frame_000000.png').convert('RGB'))
    again = np.frombuffer(images[N_FRAMES].data, dtype=np.uint8).reshape(SIZE[1], SIZE[0], 3)
    assert np.array_equal(again[:, :, ::-1], first)  # bgr8 of the first frame, second pass
    assert f'done: {total} frames' in player.output() and '1 full pass' in player.output()


def test_player_guesses_camera_info_for_generated_size_mismatch():
    """No DDS: the guessed pinhole model and the topic naming."""
    fx, fy, cx, cy = image_messages.pinhole_guess(640, 480, 90.0)
    assert fx == pytest.approx(320.0) and fy == fx
    assert (cx, cy) == (319.5, 239.5)
    assert image_messages.camera_info_topic('image_raw') == 'camera_info'
    assert image_messages.camera_info_topic('/cam/front/image_raw') == '/cam/front/camera_info'
    assert image_messages.camera_info_topic('~/image') == '~/camera_info'
    rgb = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
    msg = Image()
    image_messages.fill_image_from_rgb(msg, rgb, 'bgra8')
    assert (msg.height, msg.width, msg.step, msg.is_bigendian) == (2, 4, 16, 0)
    bgra = np.frombuffer(bytes(msg.data), np.uint8).reshape(2, 4, 4)
    assert (bgra[:, :, 3] == 255).all() and np.array_equal(bgra[:, :, 2::-1], rgb)
    image_messages.fill_image_from_rgb(msg, np.full((1, 2, 3), 200, np.uint8), 'mono16', big_endian=True)
    assert (msg.step, msg.is_bigendian, bytes(msg.data)) == (4, 1, bytes([200, 200]) * 2)  # 200 * 257
    image_messages.fill_image_from_rgb(msg, rgb, 'yuyv')
    assert (msg.encoding, msg.step, len(msg.data)) == ('yuyv', 8, 16)  # two bytes a pixel
    assert math.isnan(PlayStats(published=1).rate_hz)


@pytest.mark.parametrize('argv, message', [
    (['--input', '/nonexistent/folder'], 'input not found'),
    (['--generated', '0'], '--generated must be >= 1'),
    (['--generated', '2', '--rate', '0'], '--rate must be'),
    (['--generated', '2', '--hfov', '180'], '--hfov'),
    (['--generated', '2', '--wait-for-info-subscribers', '1'], '--wait-for-info-subscribers needs --camera-info'),
])
def test_player_argument_errors_exit_2(argv, message, capsys):
    assert play.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err
