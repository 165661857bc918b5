"""A stateful CUT3R stream: one camera, one recurrent state, frame by frame.

This is what the ROS node and the command-line tools use. It owns device and dtype,
preprocesses raw RGB frames, validates everything before touching the model, and keeps
the previous state if a step fails (the model itself is functional).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from vlm3r_ros.models.cut3r import Cut3rHeadOutput, Cut3rInputError, Cut3rModel
from vlm3r_ros.models.cut3r.processing import preprocess_cut3r, preprocess_vlm3r

PREPROCESSING = ("vlm3r", "cut3r512", "cut3r224")


@dataclass
class Cut3rFrameResult:
    """Outputs for one frame of a single stream (batch dimension removed)."""

    index: int  # frame index since the stream was created (or last reset())
    camera_token: torch.Tensor  # (1, D) z'_t
    patch_tokens: torch.Tensor  # (N, D) F'_t, row-major over grid_hw
    grid_hw: tuple[int, int]
    image: torch.Tensor  # (3, H, W) the model input, [-1, 1]
    heads: Cut3rHeadOutput | None  # batch dimension kept (B = 1)
    step_seconds: float


class Cut3rStream:
    """Streams frames of one camera through CUT3R.

    Args:
        model: a loaded :class:`Cut3rModel` (already on its device and dtype).
        preprocessing: ``"vlm3r"`` (SigLIP 384 -> 432x432, what VLM-3R uses), ``"cut3r512"``
            or ``"cut3r224"`` (CUT3R's own demo preprocessing).
    """

    def __init__(self, model: Cut3rModel, preprocessing: str = "vlm3r"):
        if preprocessing not in PREPROCESSING:
            raise ValueError(f"preprocessing must be one of {PREPROCESSING}, got {preprocessing!r}")
        self.model = model
        self.preprocessing = preprocessing
        self.reset()

    def reset(self) -> None:
        """Start a new stream: the next frame is frame 0 of a fresh state."""
        self.state = self.model.init_state(1)
        self.frames_seen = 0

    def prepare(self, image) -> torch.Tensor:
        """RGB uint8 (H, W, 3) array or PIL image -> normalised (3, H', W') model input."""
        if self.preprocessing == "vlm3r":
            return preprocess_vlm3r(image)
        return preprocess_cut3r(image, size=512 if self.preprocessing == "cut3r512" else 224)

    @torch.inference_mode()
    def step(self, image, *, update: bool = True, reset_after: bool = False,
             with_heads: bool = False, heads=None) -> Cut3rFrameResult:
        """Process one RGB frame; on any error the stream is left exactly as it was.

        ``update=False`` reads the scene without changing the state; ``reset_after=True``
        is the official per-view reset (outputs first, then the state returns to its
        initial value, while the frame counter keeps going). ``with_heads=True`` runs every
        head; ``heads`` names only those wanted (see ``vlm3r_ros.models.cut3r.HEAD_OUTPUTS``).
        """
        pixels = image if isinstance(image, torch.Tensor) and image.is_floating_point() else self.prepare(image)
        if pixels.ndim != 3:
            raise Cut3rInputError(f"a prepared frame must be (3, H, W), got {tuple(pixels.shape)}")
        start = time.perf_counter()
        frames = pixels[None].to(self.model.device)
        out, new_state = self.model.step(self.state, frames, update=update, reset=reset_after,
                                         with_heads=with_heads, heads=heads)
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)
        elapsed = time.perf_counter() - start
        self.state = new_state
        index = self.frames_seen
        self.frames_seen += 1
        return Cut3rFrameResult(index=index, camera_token=out.camera_token[0], patch_tokens=out.patch_tokens[0],
                                grid_hw=out.grid_hw, image=pixels, heads=out.heads, step_seconds=elapsed)
