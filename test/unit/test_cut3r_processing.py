"""Image preprocessing for CUT3R: CUT3R's own demo path (size 512 / 224) and VLM-3R's path
(SigLIP 384x384 bicubic, then bilinear 432x432), checked against hand-computed references."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlm3r_ros.models.cut3r.processing import (
    ImageFormatError, preprocess_cut3r, preprocess_siglip, preprocess_vlm3r, siglip_to_cut3r)

pytestmark = pytest.mark.usefixtures('torch_single_thread')


def noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def smooth(h, w):
    """A smooth colour image (gradients), so resampling differences stay small but non-zero."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 127 + 100 * np.sin(x / 7.0 + y / 11.0)], -1)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def normalize(pil_image):
    """The reference normalisation: uint8 -> x/255 -> (x - 0.5) / 0.5, as (3, H, W) float32."""
    x = np.asarray(pil_image, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    return torch.from_numpy((x - np.float32(0.5)) / np.float32(0.5)).permute(2, 0, 1)


# ---------------------------------------------------------- CUT3R demo path
@pytest.mark.parametrize('wh, size, square_ok, expected', [
    ((640, 480), 512, False, (3, 384, 512)),
    ((480, 640), 512, False, (3, 512, 384)),
    ((1920, 1080), 512, False, (3, 288, 512)),
    ((500, 500), 512, False, (3, 384, 512)),
    ((500, 500), 512, True, (3, 512, 512)),
    ((1024, 1024), 512, False, (3, 384, 512)),
    ((640, 480), 224, False, (3, 224, 224)),
    ((1920, 1080), 224, False, (3, 224, 224)),
    ((300, 700), 224, False, (3, 224, 224)),
    ((100, 100), 224, False, (3, 224, 224)),
])
def test_cut3r_output_shapes(wh, size, square_ok, expected):
    w, h = wh
    out = preprocess_cut3r(noise(h, w), size=size, square_ok=square_ok)
    assert tuple(out.shape) == expected
    assert out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1


def test_cut3r_512_downscale_is_lanczos_then_exact_normalisation():
    img = noise(480, 640, seed=1)
    out = preprocess_cut3r(img, size=512)
    lanczos = Image.fromarray(img).resize((512, 384), Image.LANCZOS)
    assert torch.allclose(out, normalize(lanczos), atol=1e-6)
    bicubic = Image.fromarray(img).resize((512, 384), Image.BICUBIC)
    assert (out - normalize(bicubic)).abs().max() > 0.05  # the check can tell the filters apart


def test_cut3r_512_upscale_is_bicubic_and_square_crops_to_4_3():
    img = noise(500, 500, seed=2)
    out = preprocess_cut3r(img, size=512)
    ref = Image.fromarray(img).resize((512, 512), Image.BICUBIC).crop((0, 64, 512, 448))
    assert torch.allclose(out, normalize(ref), atol=1e-6)
    full = preprocess_cut3r(img, size=512, square_ok=True)
    assert torch.allclose(full[:, 64:448], out, atol=1e-6)


def test_cut3r_512_crops_to_multiples_of_16_around_the_centre():
    img = noise(1080, 1920, seed=3)
    out = preprocess_cut3r(img, size=512)
    resized = Image.fromarray(img).resize((512, 288), Image.LANCZOS)
    assert torch.allclose(out, normalize(resized), atol=1e-6)  # 288 already a multiple of 16
    odd = noise(1000, 1900, seed=4)  # resizes to 512 x 269 -> centre crop to 512 x 256
    out = preprocess_cut3r(odd, size=512)
    resized = Image.fromarray(odd).resize((512, 269), Image.LANCZOS)
    cy = 269 // 2
    assert tuple(out.shape) == (3, 256, 512)
    assert torch.allclose(out, normalize(resized.crop((0, cy - 128, 512, cy + 128))), atol=1e-6)


def test_cut3r_224_resizes_the_short_side_and_centre_crops():
    img = noise(480, 640, seed=5)
    out = preprocess_cut3r(img, size=224)
    resized = Image.fromarray(img).resize((299, 224), Image.LANCZOS)  # round(224 * 640/480) = 299
    ref = resized.crop((149 - 112, 0, 149 + 112, 224))
    assert torch.allclose(out, normalize(ref), atol=1e-6)


def test_cut3r_refuses_other_sizes_and_degenerate_images():
    with pytest.raises(ValueError, match='512 or 224'):
        preprocess_cut3r(noise(64, 64), size=384)
    with pytest.raises(ImageFormatError, match='too small'):
        preprocess_cut3r(noise(1, 1000), size=512)  # resizes to 512 x 1, crops to 512 x 0


# --------------------------------------------------------------- VLM-3R path
def test_vlm3r_output_shape_and_range():
    for h, w in ((480, 640), (1080, 1920), (300, 300), (17, 23)):
        out = preprocess_vlm3r(noise(h, w, seed=h))
        assert tuple(out.shape) == (3, 432, 432) and out.dtype == torch.float32
        assert out.min() >= -1 and out.max() <= 1
    extremes = preprocess_vlm3r(np.where(noise(64, 64) > 127, 255, 0).astype(np.uint8))
    assert extremes.min() >= -1 and extremes.max() <= 1 and extremes.max() > 0.9 and extremes.min() < -0.9


def test_constant_grey_maps_to_its_normalised_value_everywhere():
    grey = np.full((480, 640, 3), 128, dtype=np.uint8)
    expected = (128 / 255 - 0.5) / 0.5  # 0.00392...
    for out in (preprocess_vlm3r(grey), preprocess_siglip(grey), preprocess_cut3r(grey, 512),
                preprocess_cut3r(grey, 224)):
        assert torch.allclose(out, torch.full_like(out, expected), atol=1e-6)


def test_siglip_step_by_hand():
    img = smooth(480, 640)
    got = preprocess_siglip(img)
    assert tuple(got.shape) == (3, 384, 384)
    resized = Image.fromarray(img).resize((384, 384), Image.BICUBIC)  # no crop: aspect not kept
    assert torch.allclose(got, normalize(resized), atol=1e-6)
    squashed_bilinear = Image.fromarray(img).resize((384, 384), Image.BILINEAR)
    assert not torch.allclose(got, normalize(squashed_bilinear), atol=1e-6)


def _bilinear_half_pixel(x, out_h, out_w):
    """Reference bilinear resize (align_corners=False, no antialias) in numpy float64."""
    c, in_h, in_w = x.shape

    def coords(out_n, in_n):
        src = (np.arange(out_n) + 0.5) * (in_n / out_n) - 0.5
        src = np.clip(src, 0, None)
        i0 = np.minimum(np.floor(src).astype(int), in_n - 1)
        i1 = np.minimum(i0 + 1, in_n - 1)
        return i0, i1, src - i0

    y0, y1, fy = coords(out_h, in_h)
    x0, x1, fx = coords(out_w, in_w)
    top = x[:, y0][:, :, x0] * (1 - fx) + x[:, y0][:, :, x1] * fx
    bottom = x[:, y1][:, :, x0] * (1 - fx) + x[:, y1][:, :, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def test_432_bilinear_step_by_hand():
    img = noise(480, 640, seed=6)
    siglip = preprocess_siglip(img)
    got = preprocess_vlm3r(img)
    ref = F.interpolate(siglip[None], size=(432, 432), mode='bilinear', align_corners=False)[0]
    assert torch.allclose(got, ref, atol=1e-6)
    by_hand = torch.from_numpy(_bilinear_half_pixel(siglip.double().numpy(), 432, 432)).float()
    assert torch.allclose(got, by_hand, atol=1e-4)  # torch computes the source coordinate in float32
    corners = F.interpolate(siglip[None], size=(432, 432), mode='bilinear', align_corners=True)[0]
    assert (got - corners).abs().max() > 1e-2  # the check can tell the conventions apart


def test_siglip_to_cut3r_takes_batches():
    pixels = torch.stack([preprocess_siglip(noise(100, 120, seed=s)) for s in range(2)])
    batched = siglip_to_cut3r(pixels)
    assert tuple(batched.shape) == (2, 3, 432, 432)
    assert torch.allclose(batched[1], siglip_to_cut3r(pixels[1]), atol=1e-6)
    assert tuple(siglip_to_cut3r(pixels[0], size=224).shape) == (3, 224, 224)


# ------------------------------------------------------------- input kinds
def test_pil_tensor_and_strided_inputs_agree():
    img = noise(96, 128, seed=7)
    ref = preprocess_vlm3r(img)
    assert torch.equal(preprocess_vlm3r(Image.fromarray(img)), ref)
    assert torch.equal(preprocess_vlm3r(torch.from_numpy(img)), ref)
    flipped = img[:, ::-1]  # a non-contiguous view
    assert torch.equal(preprocess_vlm3r(flipped), preprocess_vlm3r(np.ascontiguousarray(flipped)))
    assert not torch.equal(preprocess_vlm3r(flipped), ref)
    # other PIL modes are converted to RGB
    rgba = Image.fromarray(img).convert('RGBA')
    assert torch.equal(preprocess_vlm3r(rgba), ref)
    grey = preprocess_vlm3r(Image.fromarray(img).convert('L'))
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


# ------------------------------------------------------------------ errors
BAD_IMAGES = {
    'float32 array': (np.zeros((32, 32, 3), np.float32), 'uint8'),
    'float64 array': (np.zeros((32, 32, 3)), 'uint8'),
    'uint16 array': (np.zeros((32, 32, 3), np.uint16), 'uint8'),
    'bool array': (np.zeros((32, 32, 3), bool), 'uint8'),
    'float tensor': (torch.zeros(32, 32, 3), 'uint8'),
    'RGBA array': (np.zeros((32, 32, 4), np.uint8), r'\(H, W, 3\)'),
    'grayscale (H, W)': (np.zeros((32, 32), np.uint8), r'\(H, W, 3\)'),
    'one channel': (np.zeros((32, 32, 1), np.uint8), r'\(H, W, 3\)'),
    'CHW array': (np.zeros((3, 32, 32), np.uint8), r'\(H, W, 3\)'),
    'batch (B, H, W, 3)': (np.zeros((2, 32, 32, 3), np.uint8), r'\(H, W, 3\)'),
    'empty': (np.zeros((0, 32, 3), np.uint8), 'empty'),
    'list': ([[[0, 0, 0]]], 'list'),
    'string': ('frame.png', 'str'),
    'None': (None, 'NoneType'),
    'bytes': (b'\x89PNG', 'bytes'),
}


@pytest.mark.parametrize('fn', [preprocess_vlm3r, preprocess_siglip, preprocess_cut3r],
                         ids=['vlm3r', 'siglip', 'cut3r'])
@pytest.mark.parametrize('case', sorted(BAD_IMAGES))
def test_bad_images_raise_image_format_error(fn, case):
    image, match = BAD_IMAGES[case]
    with pytest.raises(ImageFormatError, match=match):
        fn(image)


def test_image_format_error_is_a_value_error():
    assert issubclass(ImageFormatError, ValueError)
