"""VLM-3R end to end: frames (or per-frame tokens) + a question -> a parsed answer.

Split in the two halves the streaming node needs:

* :meth:`Vlm3rPipeline.ingest` — one RGB frame -> SigLIP 384x384 pixels -> CUT3R step on
  the same pixels resized to 432x432 (as VLM-3R does) -> fused, projected, pooled visual
  tokens for that frame (:class:`FrameFeatures`). Done at ingest time.
* :meth:`Vlm3rPipeline.answer` — the chosen frames' tokens + a question -> prompt (qwen_1_5
  template, the benchmark's formats) -> greedy decoding -> :class:`Vlm3rAnswer`.

:meth:`Vlm3rPipeline.answer_video` reproduces the official evaluation on a whole video:
uniform sampling of 32 frames (``np.linspace``), one fresh CUT3R stream over them in order.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from transformers.generation.streamers import BaseStreamer

from vlm3r_ros.engine.cut3r_stream import Cut3rStream
from vlm3r_ros.engine.llm_backend import LocalLlm
from vlm3r_ros.media.frames import EVAL_NUM_FRAMES, uniform_frame_indices  # the official sampling
from vlm3r_ros.models.cut3r import Cut3rModel
from vlm3r_ros.models.cut3r.processing import preprocess_siglip, siglip_to_cut3r
from vlm3r_ros.models.vlm.answers import ParsedAnswer, parse_answer
from vlm3r_ros.models.vlm.modeling_vlm3r import IMAGE_TOKEN_INDEX, VisualPrefix, Vlm3rInputError, Vlm3rModel
from vlm3r_ros.models.vlm.prompting import (EVAL_MAX_NEW_TOKENS, build_prompt, decode_reply, stop_token_ids,
                                             tokenize_with_image)


@dataclass
class FrameFeatures:
    """What a frame leaves behind for later questions (the per-frame half)."""

    visual_tokens: torch.Tensor  # (g*g, H) pooled LLM-space tokens, e.g. (196, 3584)
    camera_token: torch.Tensor  # (1, Dc) CUT3R z'_t
    c2w: torch.Tensor | None = None  # (4, 4) camera-to-world, when heads were run
    ingest_seconds: float = 0.0
    # Transient per-frame geometry (only with with_geometry); not meant to be stored in a window.
    points_world: torch.Tensor | None = field(default=None, repr=False)  # (H, W, 3) CUT3R world frame
    colors: torch.Tensor | None = field(default=None, repr=False)  # (H, W, 3) model input in [-1, 1]
    confidence: torch.Tensor | None = field(default=None, repr=False)  # (H, W) >= 1

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.visual_tokens, self.camera_token)
                   if t is not None)


@dataclass
class Vlm3rAnswer:
    text: str  # the decoded answer, special tokens removed, stripped
    parsed: ParsedAnswer
    frames_used: int
    prompt_tokens: int
    visual_tokens: int
    new_tokens: int
    latency_s: float
    prompt: str = field(repr=False, default="")
    prefilled_tokens: int = 0  # prompt tokens the LLM ran for this question (the rest came from a cached prefix)
    first_token_s: float = math.nan  # from the call to the first generated token (time to first token)


class Vlm3rPipeline:
    def __init__(self, vlm: Vlm3rModel, cut3r: Cut3rModel, tokenizer, *, with_geometry: bool = False, llm=None):
        if cut3r.config.dec_embed_dim != vlm.config.spatial_dim:
            raise ValueError(f"CUT3R tokens are {cut3r.config.dec_embed_dim} wide but the VLM fusion block "
                             f"expects {vlm.config.spatial_dim}: mismatched checkpoints")
        self.vlm = vlm
        self.cut3r = cut3r
        self.tokenizer = tokenizer
        self.with_geometry = with_geometry
        self.stop_ids = stop_token_ids(tokenizer)  # <|im_end|>, as the official KeywordsStoppingCriteria
        self.llm = llm if llm is not None else LocalLlm()  # where the LLM half runs (engine/llm_backend.py)
        self._head_ids: tuple[int, ...] | None = None

    def new_stream(self) -> Cut3rStream:
        return Cut3rStream(self.cut3r, preprocessing="vlm3r")

    # ------------------------------------------------------------ per frame
    def geometry_heads(self, points: bool | None = None) -> tuple[str, ...]:
        """CUT3R head outputs a frame needs: none without geometry; else the pose, plus the world
        points unless ``points`` is False. Never the self-view or rgb heads: nothing here uses them."""
        if not self.with_geometry:
            return ()
        return ("pose", "world_points") if points is None or points else ("pose",)

    @torch.inference_mode()
    def ingest(self, image, stream: Cut3rStream, *, points: bool | None = None) -> FrameFeatures:
        """One RGB uint8 (H, W, 3) frame -> its visual tokens; advances ``stream``'s CUT3R state.

        With geometry, the pose comes with every frame; ``points=False`` skips this frame's
        world points (the dense head), ``None``/``True`` computes them.
        """
        start = time.perf_counter()
        siglip = preprocess_siglip(image)  # (3, 384, 384), validates the image
        step = stream.step(siglip_to_cut3r(siglip), heads=self.geometry_heads(points))
        pooled = self.vlm.frame_features(siglip[None], step.camera_token[None], step.patch_tokens[None])[0]
        if pooled.device.type == "cuda":
            torch.cuda.synchronize(pooled.device)  # so ingest_seconds covers the VLM half too
        # clone: CUT3R's camera token is a view into the whole decoder output (1 + patches tokens);
        # kept as a view, every frame in the window would hold all of it alive (at 768 wide and 729
        # patches: 2.2 MB per frame, not the 3 KB FrameFeatures.nbytes() reports)
        features = FrameFeatures(pooled, step.camera_token.clone(), ingest_seconds=time.perf_counter() - start)
        if step.heads is not None:
            h = step.heads
            features.c2w = h.camera_c2w[0]
            if h.pts3d_in_other_view is not None:
                features.points_world, features.confidence = h.pts3d_in_other_view[0], h.conf[0]
                features.colors = step.image.permute(1, 2, 0)
        return features

    # ---------------------------------------------------------- per question
    def prompt_head_ids(self) -> tuple[int, ...]:
        """Token ids of the prompt before ``<image>`` (system message + user header): the same for
        every question, so it belongs to the cached visual prefix."""
        if self._head_ids is None:
            ids = tokenize_with_image(build_prompt("?"), self.tokenizer)
            self._head_ids = tuple(ids[:ids.index(IMAGE_TOKEN_INDEX)])
        return self._head_ids

    @staticmethod
    def _pooled(frames: list[FrameFeatures] | torch.Tensor) -> torch.Tensor:
        if isinstance(frames, torch.Tensor):
            pooled = frames
        else:
            pooled = torch.stack([f.visual_tokens for f in frames]) if frames else None
        if pooled is None or pooled.ndim != 3 or pooled.shape[0] == 0:
            raise Vlm3rInputError("no frames to answer about")
        return pooled

    def build_prefix(self, frames: list[FrameFeatures] | torch.Tensor, base: VisualPrefix | None = None
                     ) -> VisualPrefix:
        """The LLM cache of the prompt head + these frames' visual tokens (see Vlm3rModel.prefill_prefix);
        ``base``, built over the first ``base.frames`` of them, is extended rather than recomputed."""
        return self.vlm.prefill_prefix(self.prompt_head_ids(), self._pooled(frames), base)

    @torch.inference_mode()
    def answer(self, frames: list[FrameFeatures] | torch.Tensor, question: str, options: list[str] | None = None,
               *, answer_type: str = "auto", max_new_tokens: int = EVAL_MAX_NEW_TOKENS,
               prefix: VisualPrefix | None = None, on_token=None, stop_event=None) -> Vlm3rAnswer:
        """Answer ``question`` about the frames (in time order).

        ``prefix`` (:meth:`build_prefix` of the same frames) skips their prefill. ``on_token(ids, text)``
        is called after every generated token with the ids and the reply text so far. ``stop_event``
        (threading.Event) stops decoding after the step in progress.
        """
        start = time.perf_counter()
        pooled = self._pooled(frames)
        if max_new_tokens < 1:
            raise Vlm3rInputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        prompt = build_prompt(question, options)
        ids = tokenize_with_image(prompt, self.tokenizer)
        streamer = _ReplyStreamer(self.tokenizer, start, on_token)
        gen = self.llm.generate(self.vlm, ids, pooled, max_new_tokens=max_new_tokens, stop_token_ids=self.stop_ids,
                                prefix=prefix, streamer=streamer, stop_event=stop_event)
        text = decode_reply(gen.token_ids, self.tokenizer)
        parsed = parse_answer(text, options, answer_type)
        return Vlm3rAnswer(text=text, parsed=parsed, frames_used=pooled.shape[0], prompt_tokens=gen.prompt_tokens,
                           visual_tokens=gen.visual_tokens, new_tokens=len(gen.token_ids),
                           latency_s=time.perf_counter() - start, prompt=prompt,
                           prefilled_tokens=gen.prefilled_tokens, first_token_s=streamer.first_token_s)

    def answer_video(self, images: list, question: str, options: list[str] | None = None, *,
                     num_frames: int = EVAL_NUM_FRAMES, progress=None, **kwargs) -> Vlm3rAnswer:
        """Official evaluation path: uniform sampling, one fresh CUT3R stream over the sampled frames."""
        indices = uniform_frame_indices(len(images), num_frames)
        if not indices:
            raise Vlm3rInputError("the video has no frames")
        stream = self.new_stream()
        features = []
        for i in indices:
            features.append(self.ingest(images[i], stream))
            if progress is not None:
                progress(len(features), len(indices))
        return self.answer(features, question, options, **kwargs)



class _ReplyStreamer(BaseStreamer):
    """transformers' streamer protocol: notes the time to the first new token and passes the ids and
    the reply text so far to ``on_token`` (the first ``put`` is the prompt, which is skipped)."""

    def __init__(self, tokenizer, start: float, on_token=None):
        self.tokenizer, self.start, self.on_token = tokenizer, start, on_token
        self.ids: list[int] = []
        self.first_token_s = math.nan
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if math.isnan(self.first_token_s):
            self.first_token_s = time.perf_counter() - self.start
        self.ids.extend(int(t) for t in torch.as_tensor(value).flatten().tolist())
        if self.on_token is not None:
            self.on_token(list(self.ids), decode_reply(self.ids, self.tokenizer))

    def end(self) -> None:
        pass
