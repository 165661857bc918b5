"""vlm3r_ros.ros.image_encodings: every sensor_msgs/Image encoding cv_bridge converts to rgb8.

Round trips: a known RGB image is encoded as a driver would send it (encode_rgb) and decoded
back (decode_rgb) within the tolerance stated per encoding below. Hand-worked values pin the
conversions themselves (so an encoder/decoder pair that were both wrong would still fail):
BT.601 video-range YUV, cv_bridge's 16-to-8-bit scaling, byte order, Bayer patterns.
"""
import array

import numpy as np
import pytest

from vlm3r_ros.ros import image_encodings as ie
from vlm3r_ros.ros.image_encodings import ImageEncodingError, decode_rgb, encode_rgb

H, W = 48, 64


def smooth_rgb(h=H, w=W):
    """Gradients in three directions: what a camera sees, not noise (Bayer and 4:2:2 subsample)."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 / (w - 1), y * 255 / (h - 1), (x + y) * 255 / (w + h - 2)], axis=2)
    return rgb.round().astype(np.uint8)


def luma(rgb):
    """ITU-R BT.601 luma, rounded: what mono8 / mono16 carry."""
    y = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.repeat(np.clip(np.rint(y), 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


# Stated tolerances (max |error| in 0..255 over the whole image; Bayer also inside a 2-pixel
# border, where demosaicing has both neighbours). Exact encodings carry every bit of RGB8.
EXACT = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'rgb16', 'bgr16', 'rgba16', 'bgra16')
GREY = ('mono8', 'mono16')  # exact against the luma image
YUV422 = ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv')  # chroma shared by pixel pairs; video-range levels
BAYER = tuple(f'bayer_{p}{d}' for d in (8, 16) for p in ('rggb', 'bggr', 'gbrg', 'grbg'))
YUV_TOLERANCE = 4
BAYER_TOLERANCE, BAYER_INNER_TOLERANCE = 8, 1


def test_the_tables_cover_every_accepted_encoding():
    assert sorted(EXACT + GREY + YUV422 + BAYER) == sorted(ie.ENCODINGS)


def pad_rows(data, height, step, pad):
    rows = np.frombuffer(data, np.uint8).reshape(height, step)
    junk = np.full((height, pad), 0xAB, np.uint8)
    return np.concatenate([rows, junk], axis=1).tobytes(), step + pad


@pytest.mark.parametrize('big_endian', [False, True], ids=['little', 'big'])
@pytest.mark.parametrize('encoding', ie.ENCODINGS)
def test_round_trip_within_the_stated_tolerance(encoding, big_endian):
    rgb = smooth_rgb()
    data, step = encode_rgb(rgb, encoding, big_endian=big_endian)
    data, step = pad_rows(data, H, step, 4)  # drivers may pad rows; 4 keeps 16-bit samples aligned
    out = decode_rgb(array.array('B', data), H, W, step, encoding, is_bigendian=big_endian)  # rclpy's type
    assert out.shape == (H, W, 3) and out.dtype == np.uint8 and out.flags['C_CONTIGUOUS']
    err = np.abs(out.astype(int) - rgb)
    if encoding in EXACT:
        np.testing.assert_array_equal(out, rgb)
    elif encoding in GREY:
        np.testing.assert_array_equal(out, luma(rgb))
    elif encoding in YUV422:
        assert err.max() <= YUV_TOLERANCE, err.max()
    else:
        assert encoding in BAYER
        assert err.max() <= BAYER_TOLERANCE and err[2:-2, 2:-2].max() <= BAYER_INNER_TOLERANCE, err.max()


def test_yuv422_pure_red_by_hand():
    # BT.601 video range: Y 81, U 90, V 240 is red. R = 1.164 (81 - 16) + 1.596 (240 - 128) = 254.4;
    # G = 1.164 * 65 - 0.813 * 112 - 0.391 * (90 - 128) = -0.5 -> 0; B = 75.7 + 2.018 * (-38) = -1.0 -> 0.
    red = [[[254, 0, 0], [254, 0, 0]]]
    for encoding, data in (('yuyv', [81, 90, 81, 240]), ('yuv422_yuy2', [81, 90, 81, 240]),
                           ('uyvy', [90, 81, 240, 81]), ('yuv422', [90, 81, 240, 81])):
        assert decode_rgb(bytes(data), 1, 2, 4, encoding).tolist() == red, encoding
    # Y0 and Y1 are each pixel's own luma: black then white (U = V = 128: no colour)
    assert decode_rgb(bytes([16, 128, 235, 128]), 1, 2, 4, 'yuyv').tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_16_bit_scaling_and_byte_order_by_hand():
    # cv_bridge: convertTo(CV_8U, 255 / 65535), i.e. round(v / 257): 128 -> 0.498 -> 0, 129 -> 0.502 -> 1.
    values = [0, 128, 129, 257, 0x1234, 65535]
    expected = [0, 0, 1, 1, 18, 255]  # 0x1234 = 4660; 4660 / 257 = 18.13
    for big in (False, True):
        data = np.array(values, dtype='>u2' if big else '<u2').tobytes()
        out = decode_rgb(data, 1, len(values), 2 * len(values), 'mono16', is_bigendian=big)
        assert out[0, :, 0].tolist() == expected and (out == out[:, :, :1]).all()
    # the same bytes read in the other order: 0x3412 = 13330 -> 51.87 -> 52
    swapped = decode_rgb(np.array([0x1234], '>u2').tobytes(), 1, 1, 2, 'mono16', is_bigendian=False)
    assert swapped.tolist() == [[[52, 52, 52]]]
    # bgr16: channel order and alpha dropped
    bgra = np.array([[[65535, 0, 257, 1234]]], dtype='<u2').tobytes()  # B, G, R, A
    assert decode_rgb(bgra, 1, 1, 8, 'bgra16').tolist() == [[[1, 0, 255]]]


@pytest.mark.parametrize('pattern', ['rggb', 'bggr', 'gbrg', 'grbg'])
@pytest.mark.parametrize('bits', [8, 16])
def test_bayer_pattern_by_hand(pattern, bits):
    """A uniform colour (200, 100, 50) through a hand-made mosaic of ``pattern``: any mix-up
    of the pattern (cv_bridge maps bayer_rggb to OpenCV's BayerBG) swaps red and blue."""
    value = {'r': 200, 'g': 100, 'b': 50}
    tile = np.array([[value[pattern[0]], value[pattern[1]]], [value[pattern[2]], value[pattern[3]]]])
    mosaic = np.tile(tile, (3, 4))  # 6 x 8
    if bits == 16:
        mosaic = mosaic * 257
    data = mosaic.astype('<u2' if bits == 16 else np.uint8).tobytes()
    out = decode_rgb(data, 6, 8, 8 * bits // 8, f'bayer_{pattern}{bits}')
    assert np.unique(out.reshape(-1, 3), axis=0).tolist() == [[200, 100, 50]]


@pytest.mark.parametrize('encoding, reason', [
    ('8UC3', 'generic OpenCV type'),  # cv_bridge: "[8UC3] is not a color format. but [rgb8] is"
    ('8UC1', 'generic OpenCV type'),
    ('8UC4', 'generic OpenCV type'),
    ('16UC1', 'generic OpenCV type'),  # depth images
    ('32FC1', 'generic OpenCV type'),
    ('64FC3', 'generic OpenCV type'),
    ('nv12', 'not converted'),
    ('nv21', 'not converted'),
    ('nv24', 'not converted'),
    ('jpeg', 'unsupported encoding'),
    ('', 'unsupported encoding'),
])
def test_refused_encodings_say_why(encoding, reason):
    assert reason in ie.refusal_reason(encoding)
    with pytest.raises(ImageEncodingError, match=reason) as info:
        decode_rgb(bytes(4 * 4 * 3), 4, 4, 12, encoding)
    assert 'rgb8' in str(info.value)  # ... and what to publish instead
    with pytest.raises(ImageEncodingError):
        encode_rgb(smooth_rgb(4, 4), encoding)


@pytest.mark.parametrize('encoding', ['BGR8', 'Rgb8', 'MONO16', 'Bayer_rggb8', 'YUYV'])
def test_encoding_names_are_case_sensitive_as_in_cv_bridge(encoding):
    # cv_bridge compares names exactly (encoding == enc::BGR8): 'BGR8' would fail in any other ROS
    # node, so it is refused here too, naming the spelling to publish
    data, step = encode_rgb(smooth_rgb(4, 6), encoding.lower())
    with pytest.raises(ImageEncodingError, match=f"case-sensitive.*publish '{encoding.lower()}'"):
        decode_rgb(data, 4, 6, step, encoding)
    with pytest.raises(ImageEncodingError, match='case-sensitive'):
        encode_rgb(smooth_rgb(4, 6), encoding)


@pytest.mark.parametrize('case, reason', [
    ('data longer than step x height', '1000 bytes more than step'),
    ('data shorter', '1 bytes less than step'),
    ('step smaller than a row', 'step 95 is smaller'),
    ('odd step for 16-bit samples', 'whole number of 2-byte samples'),
    ('zero size', 'empty image'),
    ('over the pixel limit', 'exceeds the 100-pixel limit'),
    ('odd width in yuyv', 'width must be even'),
    ('bayer under 3x3', 'at least 3x3'),
])
def test_malformed_buffers_are_refused(case, reason):
    rgb = smooth_rgb(24, 32)
    data, step, h, w, encoding, limit = *encode_rgb(rgb, 'rgb8'), 24, 32, 'rgb8', None
    if case == 'data longer than step x height':  # the 32x24 rgb8 frame with 1,000 extra bytes
        data += bytes(1000)
    elif case == 'data shorter':
        data = data[:-1]
    elif case == 'step smaller than a row':
        step = 32 * 3 - 1
    elif case == 'odd step for 16-bit samples':
        encoding, step = 'rgb16', 32 * 6 + 1
        data = bytes(step * h)
    elif case == 'zero size':
        h = w = 0
    elif case == 'over the pixel limit':
        limit = 100
    elif case == 'odd width in yuyv':
        encoding, w, step = 'yuyv', 3, 6
        data = bytes(step * h)
    elif case == 'bayer under 3x3':
        encoding, h, w, step, data = 'bayer_rggb8', 2, 2, 2, bytes(4)
    with pytest.raises(ImageEncodingError, match=reason):
        decode_rgb(data, h, w, step, encoding, max_pixels=limit)


def test_pixel_limit_is_checked_from_the_header_alone():
    with pytest.raises(ImageEncodingError, match='8000x8000 exceeds'):
        decode_rgb(b'', 8000, 8000, 24000, 'rgb8', max_pixels=4096 * 4096)  # no 192 MB needed to refuse it


def test_encode_rgb_checks_its_input():
    with pytest.raises(ValueError, match='RGB uint8'):
        encode_rgb(np.zeros((4, 4), np.uint8), 'rgb8')
    data, step = encode_rgb(smooth_rgb(4, 6), 'rgba16', big_endian=True)
    assert step == 6 * 8 and len(data) == 4 * step
    assert data[6:8] == b'\xff\xff'  # opaque alpha, most significant byte first
