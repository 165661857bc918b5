"""vlm3r_ros.ros.conversions and the node's latest-frame slot, without a ROS graph.

Messages are built and read in this process only (no rclpy.init, no DDS).
"""
import io
import math
import threading

import numpy as np
import pytest
import torch
from builtin_interfaces.msg import Time
from PIL import Image as PilImage
from sensor_msgs.msg import CompressedImage, Image, PointField

from vlm3r_ros.engine.spatial_engine import EngineError
from vlm3r_ros.ros import conversions as conv
from vlm3r_ros.ros.node import Frame, LatestFrameSlot


# ------------------------------------------------------------------ stamps
@pytest.mark.parametrize('ns', [0, 1, 999_999_999, 1_000_000_000, 1_700_000_000_123_456_789])
def test_stamp_round_trip(ns):
    stamp = conv.ns_to_stamp(ns)
    assert isinstance(stamp, Time) and 0 <= stamp.nanosec < 10**9
    assert conv.stamp_to_ns(stamp) == ns


def test_negative_stamp_refused():
    with pytest.raises(ValueError, match='>= 0'):
        conv.ns_to_stamp(-1)


# ------------------------------------------------------------------ images
def image_msg(pixels, encoding, step=None):
    h, w = pixels.shape[:2]
    c = 1 if pixels.ndim == 2 else pixels.shape[2]
    step = step if step is not None else w * c
    rows = np.zeros((h, step), dtype=np.uint8)
    rows[:, :w * c] = pixels.reshape(h, w * c)
    return Image(height=h, width=w, encoding=encoding, step=step, data=rows.tobytes())


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8'])
def test_image_encodings_decode_to_rgb(rgb, encoding):
    enc = encoding
    if enc == 'mono8':
        src, expected = rgb[:, :, 0], np.repeat(rgb[:, :, :1], 3, axis=2)
    elif enc.startswith('bgr'):
        src = rgb[:, :, ::-1] if enc == 'bgr8' else np.concatenate([rgb[:, :, ::-1], rgb[:, :, :1]], axis=2)
        expected = rgb
    else:
        src = rgb if enc == 'rgb8' else np.concatenate([rgb, rgb[:, :, :1]], axis=2)
        expected = rgb
    out = conv.image_to_rgb(image_msg(np.ascontiguousarray(src), encoding))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, expected)


def test_image_with_row_padding(rgb):
    out = conv.image_to_rgb(image_msg(rgb, 'rgb8', step=7 * 3 + 11))
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize('mutate, reason', [
    (lambda m: setattr(m, 'encoding', '16UC1'), 'not a colour format'),
    (lambda m: setattr(m, 'encoding', '8UC3'), 'not a colour format'),
    (lambda m: setattr(m, 'encoding', ''), 'unsupported encoding'),
    (lambda m: setattr(m, 'encoding', 'RGB8'), "case-sensitive.*publish 'rgb8'"),
    (lambda m: setattr(m, 'step', 7 * 3 - 1), 'step'),
    (lambda m: setattr(m, 'data', bytes(m.data)[:-1]), 'bytes of data'),
    (lambda m: setattr(m, 'data', bytes(m.data) + bytes(1000)), '1000 bytes more than step'),
    (lambda m: (setattr(m, 'width', 0), setattr(m, 'height', 0)), 'empty image'),
    (lambda m: (setattr(m, 'width', 8000), setattr(m, 'height', 8000), setattr(m, 'step', 24000)), 'pixel limit'),
], ids=['depth-16UC1', 'generic-8UC3', 'no-encoding', 'upper-case-RGB8', 'step-mismatch', 'truncated', 'extra-data', 'zero-size',
        '8000x8000'])
def test_malformed_images_are_refused_with_the_reason(rgb, mutate, reason):
    msg = image_msg(rgb, 'rgb8')
    mutate(msg)
    with pytest.raises(EngineError, match=reason) as info:
        conv.image_to_rgb(msg)
    assert info.value.code == 'BAD_IMAGE'


@pytest.mark.parametrize('encoding', ['rgb16', 'bgra16', 'mono16', 'bayer_grbg16'])
@pytest.mark.parametrize('big_endian', [0, 1])
def test_sixteen_bit_images_follow_is_bigendian(rgb, encoding, big_endian):
    from vlm3r_ros.ros.image_encodings import encode_rgb

    grey = np.repeat(rgb[:, :, :1], 3, axis=2)  # exact through every encoding but Bayer's borders
    data, step = encode_rgb(grey, encoding, big_endian=bool(big_endian))
    msg = Image(height=5, width=7, encoding=encoding, is_bigendian=big_endian, step=step, data=data)
    out = conv.image_to_rgb(msg)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    if not encoding.startswith('bayer'):
        np.testing.assert_array_equal(out, grey)


def test_is_bigendian_is_read_from_the_message():
    msg = Image(height=1, width=1, encoding='mono16', is_bigendian=1, step=2, data=b'\x12\x34')
    assert conv.image_to_rgb(msg).tolist() == [[[18, 18, 18]]]  # 0x1234 / 257 = 18.1
    msg.is_bigendian = 0
    assert conv.image_to_rgb(msg).tolist() == [[[52, 52, 52]]]  # 0x3412 / 257 = 51.9


def test_pixel_limit_is_a_parameter(rgb):
    with pytest.raises(EngineError, match='34-pixel limit'):
        conv.image_to_rgb(image_msg(rgb, 'rgb8'), max_pixels=34)
    assert conv.image_to_rgb(image_msg(rgb, 'rgb8'), max_pixels=35).shape == (5, 7, 3)


def compressed(pixels, fmt):
    buf = io.BytesIO()
    PilImage.fromarray(pixels).save(buf, format=fmt)
    return CompressedImage(format=fmt.lower(), data=buf.getvalue())


def test_compressed_png_is_lossless(rgb):
    np.testing.assert_array_equal(conv.compressed_image_to_rgb(compressed(rgb, 'PNG')), rgb)


def test_compressed_jpeg_and_grey_decode_to_rgb():
    grey = np.full((16, 24), 128, dtype=np.uint8)
    out = conv.compressed_image_to_rgb(compressed(grey, 'JPEG'))
    assert out.shape == (16, 24, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - 128).max() <= 2


@pytest.mark.parametrize('data, reason', [
    (b'', 'no data'),
    (b'not an image at all', 'not a jpeg or png image'),
], ids=['empty', 'garbage'])
def test_bad_compressed_data_is_refused(data, reason):
    with pytest.raises(EngineError, match=reason):
        conv.compressed_image_to_rgb(CompressedImage(format='jpeg', data=data))


def test_truncated_jpeg_is_refused():
    data = compressed(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8), 'JPEG').data
    with pytest.raises(EngineError, match='cannot decode'):
        conv.compressed_image_to_rgb(CompressedImage(format='jpeg', data=bytes(data)[:len(data) // 2]))


def test_compressed_size_checked_before_decoding():
    big = compressed(np.zeros((300, 400), dtype=np.uint8), 'PNG')
    with pytest.raises(EngineError, match='400x300 exceeds the 1000-pixel limit'):
        conv.compressed_image_to_rgb(big, max_pixels=1000)


def test_compressed_other_formats_refused():
    buf = io.BytesIO()
    PilImage.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(buf, format='BMP')
    with pytest.raises(EngineError, match="'BMP'.*jpeg or png"):
        conv.compressed_image_to_rgb(CompressedImage(format='bmp', data=buf.getvalue()))


# ------------------------------------------------------------------ poses
def rotation(axis, angle):
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def matrix_from_quaternion(x, y, z, w):
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


@pytest.mark.parametrize('axis, angle', [
    ((1, 0, 0), 0.0), ((0, 0, 1), math.pi / 2), ((1, 2, 3), 1.0), ((0, 1, 0), math.pi),
    ((1, 1, 0), math.pi - 1e-9), ((1, -1, 1), 3.0), ((0, 0, 1), -2.5),
])
def test_quaternion_from_matrix_round_trip(axis, angle):
    r = rotation(axis, angle)
    q = conv.quaternion_from_matrix(r)
    assert math.isclose(sum(v * v for v in q), 1.0, rel_tol=1e-12)
    assert q[3] >= 0
    np.testing.assert_allclose(matrix_from_quaternion(*q), r, atol=1e-9)


def test_quaternion_known_value():
    x, y, z, w = conv.quaternion_from_matrix(rotation((0, 0, 1), math.pi / 2))
    np.testing.assert_allclose((x, y, z, w), (0, 0, math.sqrt(0.5), math.sqrt(0.5)), atol=1e-12)


def test_quaternion_of_slightly_off_rotation_is_unit():
    r = rotation((1, 2, 3), 0.7).astype(np.float32) * 1.001  # float32 network output, not orthonormal
    q = conv.quaternion_from_matrix(r)
    assert math.isclose(sum(v * v for v in q), 1.0, rel_tol=1e-12)
    np.testing.assert_allclose(matrix_from_quaternion(*q), rotation((1, 2, 3), 0.7), atol=1e-6)


def test_quaternion_refuses_bad_input():
    with pytest.raises(ValueError, match='3x3'):
        conv.quaternion_from_matrix(np.eye(4))
    with pytest.raises(ValueError, match='finite'):
        conv.quaternion_from_matrix(np.full((3, 3), np.nan))


def test_optical_to_world_axes_follow_rep_103():
    # The first camera looks along its optical z: that is world x (forward); optical x
    # (right) is world -y; optical y (down) is world -z.
    np.testing.assert_array_equal(conv.OPTICAL_TO_WORLD @ [0, 0, 1], [1, 0, 0])
    np.testing.assert_array_equal(conv.OPTICAL_TO_WORLD @ [1, 0, 0], [0, -1, 0])
    np.testing.assert_array_equal(conv.OPTICAL_TO_WORLD @ [0, 1, 0], [0, 0, -1])
    assert np.linalg.det(conv.OPTICAL_TO_WORLD) == pytest.approx(1.0)


def test_first_camera_pose_in_world():
    """Identity c2w (the segment's first frame): the optical frame sits at the origin with
    z along world x, x along world -y, y along world -z."""
    pose = conv.pose_from_c2w(torch.eye(4))
    assert (pose.position.x, pose.position.y, pose.position.z) == (0.0, 0.0, 0.0)
    q = pose.orientation
    r = matrix_from_quaternion(q.x, q.y, q.z, q.w)
    np.testing.assert_allclose(r, conv.OPTICAL_TO_WORLD, atol=1e-12)
    np.testing.assert_allclose((q.x, q.y, q.z, q.w), (-0.5, 0.5, -0.5, 0.5), atol=1e-12)


def test_camera_moved_forward_is_world_x():
    c2w = np.eye(4)
    c2w[:3, 3] = [0.5, -0.25, 2.0]  # right 0.5, up 0.25, forward 2 (optical axes)
    pose = conv.pose_from_c2w(torch.tensor(c2w, dtype=torch.float32))
    assert (pose.position.x, pose.position.y, pose.position.z) == pytest.approx((2.0, -0.5, 0.25))


def test_points_follow_the_camera_pose_convention():
    """A point 2 m in front of the first camera and 0.5 m to its right is at world
    (2, -0.5, 0), the same place pose_from_c2w puts a camera moved there."""
    np.testing.assert_allclose(conv.points_to_world(torch.tensor([[0.5, 0.0, 2.0]])), [[2.0, -0.5, 0.0]])
    c2w = np.eye(4)
    c2w[:3, 3] = [0.5, 0.0, 2.0]
    pose = conv.pose_from_c2w(c2w)
    assert (pose.position.x, pose.position.y, pose.position.z) == pytest.approx((2.0, -0.5, 0.0))
    assert conv.points_to_world(np.zeros((4, 5, 3))).shape == (4, 5, 3)


def test_pose_conversion_refuses_bad_shapes():
    with pytest.raises(ValueError, match=r'\(4, 4\)'):
        conv.pose_from_c2w(np.eye(3))
    with pytest.raises(ValueError, match='finite'):
        conv.matrix_to_pose(np.full((4, 4), np.inf))


def test_pose_stamped_header():
    msg = conv.pose_stamped(conv.matrix_to_pose(np.eye(4)), 5_000_000_123, 'vlm3r_world')
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (5, 123, 'vlm3r_world')
    assert msg.pose.orientation.w == 1.0


# ------------------------------------------------------------------ point clouds
def test_point_cloud_round_trip():
    xyz = np.array([[0.0, 1.0, 2.0], [-1.5, 2.5, 1e3], [3.0, -4.0, 0.125]], dtype=np.float32)
    rgb = np.array([[255, 0, 0], [0, 255, 0], [1, 2, 3]], dtype=np.uint8)
    msg = conv.point_cloud2(xyz, rgb, 7 * 10**9 + 1, 'vlm3r_world')
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 3, 16, 48)
    assert len(msg.data) == 48 and msg.is_dense
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ('x', 0, PointField.FLOAT32, 1), ('y', 4, PointField.FLOAT32, 1), ('z', 8, PointField.FLOAT32, 1),
        ('rgb', 12, PointField.FLOAT32, 1)]
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (7, 1, 'vlm3r_world')
    back_xyz, back_rgb = conv.point_cloud2_to_arrays(msg)
    np.testing.assert_array_equal(back_xyz, xyz)
    np.testing.assert_array_equal(back_rgb, rgb)


def test_point_cloud_rgb_is_packed_like_pcl():
    msg = conv.point_cloud2(np.zeros((1, 3), np.float32), np.array([[0x12, 0x34, 0x56]], np.uint8), 0, 'w')
    packed = np.frombuffer(bytes(msg.data), dtype=np.uint32)[3]
    assert packed == 0x00123456


def test_point_cloud_without_colours_is_white_and_empty_cloud_is_valid():
    _, rgb = conv.point_cloud2_to_arrays(conv.point_cloud2(np.ones((2, 3)), None, 0, 'w'))
    assert (rgb == 255).all()
    empty = conv.point_cloud2(np.zeros((0, 3)), None, 0, 'w')
    assert empty.width == 0 and len(empty.data) == 0


def test_decimation_drops_non_finite_and_low_confidence_and_caps_the_count():
    pts = torch.arange(6 * 5 * 3, dtype=torch.float32).reshape(6, 5, 3)  # an organised (H, W, 3) map
    pts[0, 0, 0] = float('nan')
    pts[1, 1, 2] = float('inf')
    conf = torch.ones(6, 5) * 2
    conf[2, :] = 1.0
    colors = torch.zeros(6, 5, 3)  # CUT3R rgb head range [-1, 1]: 0 is mid grey
    xyz, rgb = conv.decimate_points(pts, colors, max_points=100, confidence=conf, min_confidence=1.5)
    assert xyz.shape == (30 - 2 - 5, 3) and xyz.dtype == np.float32
    assert np.isfinite(xyz).all()
    assert (rgb == 128).all()
    xyz, rgb = conv.decimate_points(pts, colors, max_points=4)
    assert xyz.shape == (4, 3) and rgb.shape == (4, 3)
    # Regular stride over the kept points: first and last kept points are included.
    np.testing.assert_array_equal(xyz[-1], pts.reshape(-1, 3)[-1].numpy())


def test_decimation_checks_sizes():
    with pytest.raises(ValueError, match='colours'):
        conv.decimate_points(np.zeros((4, 3)), np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match='max_points'):
        conv.decimate_points(np.zeros((4, 3)), max_points=0)


def test_colour_conversion():
    assert conv.colors_to_uint8(np.array([[-1.0, 0.0, 1.0]])).tolist() == [[0, 128, 255]]
    assert conv.colors_to_uint8(np.array([[-3.0, 0.5, 9.0]])).tolist() == [[0, 191, 255]]
    assert conv.colors_to_uint8(torch.tensor([[1, 2, 3]], dtype=torch.uint8)).tolist() == [[1, 2, 3]]


# ------------------------------------------------------------------ latest-frame slot
def frame(i):
    return Frame(np.zeros((1, 1, 3), np.uint8), i, 'cam', 0.0)


def test_slot_keeps_only_the_latest_frame_and_reports_drops():
    slot = LatestFrameSlot()
    assert slot.take(timeout=0.0) is None
    assert slot.put(frame(1)) is False
    assert slot.put(frame(2)) is True  # frame 1 was never taken: a drop
    assert slot.take(timeout=0.0).stamp_ns == 2
    assert slot.take(timeout=0.0) is None
    assert slot.put(frame(3)) is False
    assert slot.clear() == 1 and slot.clear() == 0


def test_slot_wakes_a_waiting_worker():
    slot = LatestFrameSlot()
    got = []
    worker = threading.Thread(target=lambda: got.append(slot.take(timeout=10.0)))
    worker.start()
    slot.put(frame(7))
    worker.join(10.0)
    assert not worker.is_alive() and got[0].stamp_ns == 7
