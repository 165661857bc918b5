"""Image preprocessing for CUT3R, for both ways a frame reaches it.

* VLM-3R's path (:func:`preprocess_vlm3r`): the SigLIP processor's 384x384 image
  (bicubic resize without crop, x/255, mean 0.5, std 0.5) is resized bilinearly to
  432x432 (``align_corners=False``, no antialias), giving 27x27 = 729 patch tokens.
* CUT3R's own demo path (:func:`preprocess_cut3r`): size 512 resizes the long side to 512
  (LANCZOS when shrinking, BICUBIC otherwise) and centre-crops both sides to multiples of
  16 (square images to 4:3 unless ``square_ok``); size 224 resizes the short side to 224
  and centre-crops 224x224. Then x/255 and (x - 0.5) / 0.5.

Inputs are RGB ``uint8`` arrays of shape (H, W, 3) or PIL images. Outputs are float32
tensors (3, H, W) in [-1, 1].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SIGLIP_SIZE = 384
VLM3R_CUT3R_SIZE = 432


class ImageFormatError(ValueError):
    """An image that is not an RGB uint8 (H, W, 3) array or a PIL image."""


def as_pil_rgb(image) -> Image.Image:
    """Validate and convert an RGB image (uint8 (H, W, 3) array or PIL) to a PIL RGB image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ImageFormatError(f"expected an RGB uint8 array (H, W, 3) or a PIL image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageFormatError(f"expected dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageFormatError(f"expected shape (H, W, 3) RGB, got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageFormatError(f"empty image of shape {image.shape}")
    return Image.fromarray(np.ascontiguousarray(image), mode="RGB")


def _to_normalized_tensor(img: Image.Image) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255.0)
    return (x - 0.5) / 0.5  # (3, H, W) in [-1, 1]


def preprocess_siglip(image) -> torch.Tensor:
    """SigLIP so400m-384 input: bicubic 384x384 (aspect not kept), normalised to [-1, 1]."""
    img = as_pil_rgb(image).resize((SIGLIP_SIZE, SIGLIP_SIZE), Image.BICUBIC)
    return _to_normalized_tensor(img)


def siglip_to_cut3r(pixels: torch.Tensor, size: int = VLM3R_CUT3R_SIZE) -> torch.Tensor:
    """(B, 3, 384, 384) or (3, 384, 384) SigLIP pixels -> the 432x432 CUT3R input of VLM-3R."""
    squeeze = pixels.ndim == 3
    x = pixels[None] if squeeze else pixels
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x[0] if squeeze else x


def preprocess_vlm3r(image) -> torch.Tensor:
    """One frame as VLM-3R feeds CUT3R: (3, 432, 432) float32 in [-1, 1]."""
    return siglip_to_cut3r(preprocess_siglip(image))


def _resize_long_edge(img: Image.Image, long_edge: int) -> Image.Image:
    s = max(img.size)
    resample = Image.LANCZOS if s > long_edge else Image.BICUBIC
    new_size = tuple(int(round(x * long_edge / s)) for x in img.size)
    return img.resize(new_size, resample)


def preprocess_cut3r(image, size: int = 512, square_ok: bool = False) -> torch.Tensor:
    """One frame as CUT3R's own demo loads it: (3, H, W) float32 in [-1, 1], H and W multiples of 16."""
    img = as_pil_rgb(image)
    w1, h1 = img.size
    if size == 224:
        img = _resize_long_edge(img, round(size * max(w1 / h1, h1 / w1)))  # short side -> 224
        w, h = img.size
        cx, cy = w // 2, h // 2
        half = min(cx, cy)
        img = img.crop((cx - half, cy - half, cx + half, cy + half))
    elif size == 512:
        img = _resize_long_edge(img, size)
        w, h = img.size
        cx, cy = w // 2, h // 2
        halfw, halfh = ((2 * cx) // 16) * 8, ((2 * cy) // 16) * 8
        if not square_ok and w == h:
            halfh = 3 * halfw // 4
        img = img.crop((cx - halfw, cy - halfh, cx + halfw, cy + halfh))
    else:
        raise ValueError(f"size must be 512 or 224 (the released checkpoints), got {size}")
    if img.size[0] < 16 or img.size[1] < 16:
        raise ImageFormatError(f"image {w1}x{h1} is too small for CUT3R after resizing ({img.size})")
    return _to_normalized_tensor(img)
