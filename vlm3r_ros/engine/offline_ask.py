"""One question about a video or an image folder, offline: the official VSI-Bench evaluation path.

What ``vlm3r-ask`` runs (test/fixtures/reference/vlm3r/README.md, sections 2-3):

  1. the sampled frames (:func:`vlm3r_ros.media.frames.open_input`) are read one by one;
  2. each goes through one CUT3R stream and the per-frame half of VLM-3R as it arrives, so a
     long video never sits in memory; a video that ends before its counted length is sampled
     again over the frames it really has;
  3. the question in the benchmark's prompt, greedy decoding of at most ``max_new_tokens``.

The prompt plus the answer must fit the model's context: that is checked before any frame
is read (:func:`check_context`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from vlm3r_ros.engine.llm_backend import LlmBackendError
from vlm3r_ros.engine.vlm3r_pipeline import Vlm3rAnswer, Vlm3rPipeline
from vlm3r_ros.errors import UserError, one_line
from vlm3r_ros.media.frames import EVAL_NUM_FRAMES, SampledFrames, SampledInput
from vlm3r_ros.models.cut3r import Cut3rInputError
from vlm3r_ros.models.cut3r.processing import ImageFormatError
from vlm3r_ros.models.vlm.modeling_vlm3r import Vlm3rInputError
from vlm3r_ros.models.vlm.prompting import EVAL_MAX_NEW_TOKENS, PromptError, build_prompt, tokenize_with_image


def visual_token_count(config, num_frames: int) -> int:
    """Visual tokens ``num_frames`` pooled frames put into the prompt (210 per frame for bilinear + grid)."""
    return num_frames * config.tokens_per_frame + (1 if config.newline_mode == "one_token" else 0)


def check_context(config, frames: int, text_tokens: int, max_new_tokens: int) -> None:
    """UserError when the prompt plus the answer would not fit the model's context (before any frame is ingested)."""
    visual = visual_token_count(config, frames)
    need = text_tokens + visual + max_new_tokens
    if need > config.max_context_tokens:
        fit = (config.max_context_tokens - text_tokens - max_new_tokens) // config.tokens_per_frame
        raise UserError(f"{frames} frames x {config.tokens_per_frame} visual tokens + {text_tokens} text tokens + "
                        f"{max_new_tokens} new tokens = {need} exceed the model's {config.max_context_tokens}-token "
                        f"context; use --num-frames {max(fit, 0)} or fewer")


@dataclass
class AskResult:
    answer: Vlm3rAnswer
    sampled: SampledInput
    frame_indices: list[int]  # source indices of the frames actually used
    skipped: list[str] = field(default_factory=list)
    ingest_seconds: list[float] = field(default_factory=list)
    read_seconds: float = 0.0  # reading / decoding the sampled frames (plus counting a video)
    text_tokens: int = 0


def ingest(pipeline, sampled: SampledInput, bar) -> tuple[list, list[int], list[str], float, int]:
    """One CUT3R stream over the sampled frames -> (features, used indices, skipped names, read s, frames seen)."""
    stream = pipeline.new_stream()
    features, used, skipped, read_seconds = [], [], [], 0.0
    reader = SampledFrames(sampled)
    tick = time.perf_counter()
    for frame in reader:
        read_seconds += time.perf_counter() - tick
        if frame.image is None:
            skipped.append(frame.name)
            bar.write(f"warning: skipping unreadable {frame.name}: {frame.error}", file=sys.stderr)
        else:
            try:
                features.append(pipeline.ingest(frame.image, stream))
                used.append(frame.index)
            except (ImageFormatError, Cut3rInputError) as exc:
                skipped.append(frame.name)
                bar.write(f"warning: skipping {frame.name}: {one_line(str(exc))}", file=sys.stderr)
        bar.update(1)
        tick = time.perf_counter()
    return features, used, skipped, read_seconds, reader.frames_seen


def ask_sampled(pipeline: Vlm3rPipeline, sampled: SampledInput, question: str, options: list[str] | None, *,
                answer_type: str = "auto", max_new_tokens: int = EVAL_MAX_NEW_TOKENS,
                num_frames: int = EVAL_NUM_FRAMES, progress: bool = True) -> AskResult:
    """Ingest the sampled frames, then answer (the steps of the module docstring)."""
    try:
        text_ids = tokenize_with_image(build_prompt(question, options), pipeline.tokenizer)
    except PromptError as exc:
        raise UserError(one_line(str(exc))) from None
    text_tokens = sum(1 for i in text_ids if i >= 0)
    check_context(pipeline.vlm.config, len(sampled.indices), text_tokens, max_new_tokens)

    bar = tqdm(total=len(sampled.indices), unit="frame", desc="ingest", file=sys.stderr,
               disable=not progress)
    try:
        features, used, skipped, read_seconds, seen = ingest(pipeline, sampled, bar)
        if sampled.ended_early(seen):
            bar.write(f"warning: video {sampled.source.path} ended after {seen} of the {sampled.total} frames "
                      f"counted; sampling again over {seen} frames", file=sys.stderr)
            if seen == 0:
                raise UserError(f"no frame of video {sampled.source.path} could be decoded")
            sampled.resample(seen, num_frames)
            bar.reset(total=len(sampled.indices))
            features, used, skipped, more_seconds, _ = ingest(pipeline, sampled, bar)
            read_seconds += more_seconds
        if not features:
            raise UserError(f"no sampled frame of {sampled.source.path} could be read ({len(skipped)} skipped)")
        bar.set_description("generating")
        bar.refresh()
        try:
            answer = pipeline.answer(features, question, options, answer_type=answer_type,
                                     max_new_tokens=max_new_tokens)
        except (Vlm3rInputError, PromptError, LlmBackendError) as exc:  # LlmBackendError: --llm-backend openai
            raise UserError(one_line(str(exc))) from None
    finally:
        bar.close()
        sampled.source.close()
    return AskResult(answer, sampled, used, skipped, [f.ingest_seconds for f in features],
                     read_seconds + sampled.count_seconds, text_tokens)
