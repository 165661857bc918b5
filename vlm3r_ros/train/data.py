"""Training rows: our QA files, the official LLaVA-format JSON, or a weighted mix of files.

Sources (one ``FILE[:WEIGHT]`` each):

* QA rows in the benchmark row format (``vlm3r-gen-qa`` JSONL, ``.json``, ``.parquet``;
  :mod:`vlm3r_ros.eval.benchmark` validates them). Each row becomes one question / answer:
  the question as the evaluation asks it (:func:`~vlm3r_ros.models.vlm.prompting.build_context`)
  and the answer the scorer accepts (the option letter, or the number).
* The official LLaVA-Video training JSON (VLM-3R's ``scripts/VLM_3R/*.yaml`` point at such
  files): an array of ``{"id", "video", "conversations": [{"from": "human"|"gpt", "value"}]}``.
  ``video`` is a video file or a folder of frames, relative to the data root.

The data root of a file is its own folder unless ``data_root`` is given. A weight repeats the
file's rows ``floor(weight)`` times and adds a seeded random ``weight - floor(weight)`` share
of them (0.5: a random half; 2: every row twice).
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from vlm3r_ros.eval.benchmark import BenchmarkError, SceneMedia, load_benchmark, read_raw_rows, resolve_media
from vlm3r_ros.eval.metrics import mca_answer, to_float
from vlm3r_ros.models.vlm.prompting import build_context

from .conversation import FOLDER_FPS, ConversationError, Turn, encode_conversation, normalize_turns
from .conversation import time_instruction as official_time_instruction
from .conversation import with_time_instruction


class TrainDataError(ValueError):
    """Training data we cannot use; the message names the file and row."""


@dataclass
class TrainSample:
    key: str  # "<file stem>:<row id>"
    media: SceneMedia
    turns: list[Turn]
    question_type: str | None = None
    answer: str | None = None  # the (first) answer text


@dataclass(frozen=True)
class DataSource:
    path: Path
    weight: float = 1.0
    data_root: Path | None = None


def parse_source(text: str, data_root: str | Path | None = None) -> DataSource:
    """``FILE`` or ``FILE:WEIGHT``."""
    path, weight = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
            path = head
        except ValueError:
            pass  # a ':' inside the path
    if not math.isfinite(weight) or weight <= 0:
        raise TrainDataError(f"--data {text}: the weight must be a positive number, got {weight}")
    return DataSource(Path(path), weight, Path(data_root) if data_root is not None else None)


def answer_text(row, spec) -> str:
    """What the model must say for a QA row: the option letter, or the number as written."""
    if spec.kind(row.question_type) == "MCA":
        return mca_answer(row.to_dict(), spec).strip()
    value = to_float(row.ground_truth)
    if isinstance(row.ground_truth, str):
        return row.ground_truth.strip()
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _qa_samples(source: DataSource) -> list[TrainSample]:
    try:
        bench = load_benchmark(source.path)
    except BenchmarkError as exc:
        raise TrainDataError(str(exc)) from None
    root = source.data_root or source.path.parent
    out = []
    for row in bench.rows:
        answer = answer_text(row, bench.spec)
        options = list(row.options) if row.options is not None and bench.spec.kind(row.question_type) == "MCA" \
            else None
        question = build_context(row.question, options)
        turns = normalize_turns([Turn("user", question), Turn("assistant", answer)],
                                where=f"{source.path}: row id {row.id!r}")
        out.append(TrainSample(f"{source.path.stem}:{row.id}", resolve_media(row, root), turns, row.question_type,
                               answer))
    return out


def _llava_samples(source: DataSource, raw: list[dict]) -> list[TrainSample]:
    root = source.data_root or source.path.parent
    out = []
    for i, row in enumerate(raw):
        where = f"{source.path}: item {i} (id {row.get('id')!r})"
        video = row.get("video")
        if not isinstance(video, str) or not video.strip():
            raise TrainDataError(f"{where}: field 'video': expected a video file or frame folder relative to "
                                 f"{root}, got {video!r} (image-only items are not supported: VLM-3R trains on videos)")
        try:
            turns = normalize_turns(row.get("conversations") or [], where=where)
        except ConversationError as exc:
            raise TrainDataError(str(exc)) from None
        path = root / video
        media = SceneMedia("folder" if path.is_dir() else "video", path=path)
        out.append(TrainSample(f"{source.path.stem}:{row.get('id', i)}", media, turns,
                               row.get("question_type"), turns[1].content))
    return out


def load_source(source: DataSource) -> list[TrainSample]:
    """Every row of one file, as samples (no weighting)."""
    try:
        raw = read_raw_rows(source.path)
    except BenchmarkError as exc:
        raise TrainDataError(str(exc)) from None
    if not raw:
        raise TrainDataError(f"{source.path}: no rows")
    if all("conversations" in r for r in raw):
        return _llava_samples(source, raw)
    if any("conversations" in r for r in raw):
        raise TrainDataError(f"{source.path}: some rows have 'conversations' (LLaVA format) and some do not; "
                             f"one file must be one format")
    return _qa_samples(source)


def load_mix(sources: Sequence[DataSource], seed: int = 0) -> list[TrainSample]:
    """The weighted mix of ``sources``, in file order (the trainer's sampler shuffles)."""
    if not sources:
        raise TrainDataError("no training data: give at least one --data FILE")
    rng = random.Random(seed)
    out: list[TrainSample] = []
    for source in sources:
        samples = load_source(source)
        whole = int(math.floor(source.weight))
        out.extend(samples * whole)
        part = round((source.weight - whole) * len(samples))
        if part:
            out.extend(samples[i] for i in sorted(rng.sample(range(len(samples)), part)))
    if not out:
        raise TrainDataError("the weights select no rows; raise them")
    return out


def check_media(samples: Sequence[TrainSample], max_listed: int = 5) -> None:
    """TrainDataError listing samples whose video / folder / frame files do not exist."""
    missing = []
    for s in samples:
        m = s.media
        ok = all(p.is_file() for p in m.frames) if m.kind == "frames" else m.path.exists()
        if not ok:
            missing.append(f"{s.key}: {m.describe()}")
    if missing:
        more = f" (and {len(missing) - max_listed} more)" if len(missing) > max_listed else ""
        raise TrainDataError("missing media (is --data-root right?): " + "; ".join(missing[:max_listed]) + more)


# ------------------------------------------------------------------- dataset
def training_frame_indices(total: int, num_frames: int) -> list[int]:
    """The official training sampling (``--frames_upbound N --force_sample True``; VLM-3R
    ``llava/utils.py`` ``process_video_with_decord`` and ``scripts/extract_spatial_features.py``):
    exactly ``np.linspace(0, total-1, N, dtype=int)``, so a clip shorter than N frames gives some
    frames twice (5 frames, N = 8: 0 0 1 1 2 2 3 4). The evaluation caps N at ``total`` instead
    (:func:`~vlm3r_ros.media.frames.uniform_frame_indices`); for ``total >= N`` both are the same."""
    if total <= 0:
        return []
    return np.linspace(0, total - 1, num_frames, dtype=int).tolist()


def read_clip(media: SceneMedia, num_frames: int) -> tuple[torch.Tensor, list[int]]:
    """The clip as the official training samples it -> SigLIP pixels (F, 3, 384, 384) and the
    frame indices (:func:`training_frame_indices`; an unreadable sampled frame is left out)."""
    from vlm3r_ros.eval.harness import SceneError, load_scene_frames
    from vlm3r_ros.models.cut3r.processing import preprocess_siglip

    try:
        frames = load_scene_frames(media, num_frames)  # every distinct frame the training sampling names
    except SceneError as exc:
        raise TrainDataError(str(exc)) from None
    decoded = dict(zip(frames.indices, frames.images))
    indices = [i for i in training_frame_indices(frames.total, num_frames) if i in decoded]
    return torch.stack([preprocess_siglip(decoded[i]) for i in indices]), indices


def clip_timing(media: SceneMedia, num_frames: int) -> tuple[int, float, list[int]]:
    """(frames in the source, frames per second, the sampled indices) of a clip, for the time
    instruction: a video's own frame count (counted by ffmpeg) and rate; a folder or a list of
    images at 2 frames per second (the official frame-folder branch). The indices are the
    training sampling (:func:`training_frame_indices`), the frames the model is given."""
    from vlm3r_ros.media.frames import MediaError, open_input

    if media.kind == "frames":
        total = len(media.frames)
        return total, FOLDER_FPS, training_frame_indices(total, num_frames)
    try:
        sampled = open_input(media.path if media.kind == "video" else None,
                             media.path if media.kind == "folder" else None, num_frames)
    except MediaError as exc:
        raise TrainDataError(f"{media.describe()}: {exc}") from None
    try:
        fps = sampled.source.fps if sampled.kind == "video" else FOLDER_FPS
        return sampled.total, fps, training_frame_indices(sampled.total, num_frames)
    finally:
        sampled.source.close()


class Vlm3rTrainDataset(torch.utils.data.Dataset):
    """Items: ``input_ids``, ``labels`` and either ``pixels`` (the frozen encoders run in the
    model) or the cached ``vision`` / ``camera`` / ``patch`` features (``features`` given).

    ``time_instruction``: put the official time instruction before each conversation's first
    question (:mod:`.conversation`); each clip's frames are counted once."""

    def __init__(self, samples: Sequence[TrainSample], tokenizer, *, num_frames: int = 32,
                 features: Callable[[TrainSample], dict] | None = None, clips_in_memory: int = 8,
                 time_instruction: bool = False):
        self.samples = list(samples)
        self.tokenizer = tokenizer
        self.num_frames = num_frames
        self.features = features
        self._clips: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._clips_in_memory = clips_in_memory
        self.time_instruction = time_instruction
        timings: dict[str, str] = {}
        self._encoded = []
        for s in self.samples:
            turns = s.turns
            if time_instruction:
                if s.media.key not in timings:
                    timings[s.media.key] = official_time_instruction(*clip_timing(s.media, num_frames))
                turns = with_time_instruction(turns, timings[s.media.key])
            self._encoded.append(encode_conversation(turns, tokenizer))

    def __len__(self) -> int:
        return len(self.samples)

    def pixels(self, sample: TrainSample) -> torch.Tensor:
        key = sample.media.key
        if key in self._clips:
            self._clips.move_to_end(key)
            return self._clips[key]
        pixels, _ = read_clip(sample.media, self.num_frames)
        self._clips[key] = pixels
        while len(self._clips) > self._clips_in_memory:
            self._clips.popitem(last=False)
        return pixels

    def __getitem__(self, i: int) -> dict:
        sample, enc = self.samples[i], self._encoded[i]
        item = {"input_ids": torch.tensor(enc.input_ids), "labels": torch.tensor(enc.labels)}
        if self.features is not None:
            item.update(self.features(sample))
        else:
            item["pixels"] = self.pixels(sample)
        return item


def collate(items: list[dict]) -> dict:
    """A batch as lists (samples differ in length and frame count; the model pads after splicing)."""
    return {key: [item[key] for item in items] for key in items[0]}
