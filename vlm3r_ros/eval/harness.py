"""Run a model backend over a benchmark, one result line per question, resumable.

Flow (:func:`run`): the results file is read first and the ids already answered are skipped
(rows whose result carries an ``error`` are asked again; the newest line per id wins). The
remaining rows are grouped by scene (the same video / frames), in file order; per scene the
backend's :meth:`Backend.start_scene` runs once (decode + ingest, or stream to the node),
then each question is asked and its result line is appended, flushed and fsynced before
the next question, so a crash loses at most the question being answered. A truncated last
line (a crash in the middle of a write) is cut off on the next start.

Backends (the :class:`Backend` protocol): :class:`OfflineBackend` (the in-process pipeline)
here, ``LiveBackend`` (a running ``vlm3r-node``) in :mod:`vlm3r_ros.eval.live_client`.

Prompts follow the official evaluation: numeric types are asked without options (VSTI-Bench's
numeric rows carry options; the official prompt leaves them out), multiple-choice types with
their options as written. Each result line keeps the raw reply (``prediction``, what the
official scorer reads) and the reply's number converted to the benchmark's unit
(``prediction_value``: VSI-Bench sizes in cm, distances in m, room sizes in m2) when the reply
gave one.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np

from vlm3r_ros.media.frames import MediaError, SampledFrames, open_input, read_image, uniform_frame_indices
from vlm3r_ros.models.vlm.answers import parse_answer, to_meters

from .benchmark import Benchmark, BenchmarkRow, SceneMedia, resolve_media
from .metrics import BenchmarkSpec, ScoreSummary, mca_answer, score, score_row

TINY_RANDOM_WARNING = ("tiny random weights: every answer is MEANINGLESS and so are the scores; "
                       "this run only tests the evaluation pipeline")


class HarnessError(Exception):
    """A user error (bad results file, bad settings): one line, no traceback."""


class SceneError(Exception):
    """A scene that cannot be prepared (unreadable video, node refused): its questions get
    ``error`` = this message and are asked again by a resumed run."""


# ------------------------------------------------------------------ backends
@dataclass
class Reply:
    """A backend's answer to one question."""

    text: str = ""  # the raw reply (special tokens removed)
    error: str = ""  # "" on success, else "CODE: sentence"
    frames_used: int = 0
    latency_s: float = 0.0


@dataclass
class Scene:
    key: str
    media: SceneMedia
    rows: list[BenchmarkRow]


class Backend(Protocol):
    name: str
    meaningless: bool  # tiny random weights: scores mean nothing

    def start_scene(self, scene: Scene) -> None: ...

    def answer(self, row: BenchmarkRow, options: list[str] | None) -> Reply: ...

    def end_scene(self) -> None: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------ frames of a scene
@dataclass
class SceneFrames:
    images: list[np.ndarray]  # (H, W, 3) uint8 RGB, in time order
    indices: list[int]  # their indices in the source
    total: int  # frames in the source
    skipped: list[str] = field(default_factory=list)  # unreadable sampled frames
    seconds: float = 0.0


def load_scene_frames(media: SceneMedia, num_frames: int) -> SceneFrames:
    """The ``num_frames`` frames the official evaluation samples (``np.linspace`` over the
    source), decoded. Raises :class:`SceneError` when none can be read."""
    start = time.perf_counter()
    if media.kind == "frames":
        indices = uniform_frame_indices(len(media.frames), num_frames)
        images, used, skipped = [], [], []
        for i in indices:
            image, error = read_image(media.frames[i])
            if image is None:
                skipped.append(f"{media.frames[i].name}: {error}")
            else:
                images.append(image)
                used.append(i)
        total = len(media.frames)
    else:
        try:
            sampled = open_input(media.path if media.kind == "video" else None,
                                     media.path if media.kind == "folder" else None, num_frames)
            images, used, skipped, seen = _read_sampled(sampled)
            if sampled.ended_early(seen) and seen > 0:
                sampled.resample(seen, num_frames)
                images, used, skipped, _ = _read_sampled(sampled)
            total = sampled.total
        except MediaError as exc:
            raise SceneError(f"MEDIA: {exc}") from None
    if not images:
        raise SceneError(f"MEDIA: no sampled frame of {media.describe()} could be read"
                         + (f" ({skipped[0]})" if skipped else ""))
    return SceneFrames(images, used, total, skipped, time.perf_counter() - start)


def _read_sampled(sampled) -> tuple[list, list[int], list[str], int]:
    reader = SampledFrames(sampled)
    images, used, skipped = [], [], []
    try:
        for frame in reader:
            if frame.image is None:
                skipped.append(f"{frame.name}: {frame.error}")
            else:
                images.append(frame.image)
                used.append(frame.index)
    finally:
        sampled.source.close()
    return images, used, skipped, reader.frames_seen


class OfflineBackend:
    """The in-process pipeline (:class:`~vlm3r_ros.engine.vlm3r_pipeline.Vlm3rPipeline`).

    Per scene the sampled frames go through one fresh CUT3R stream once; every question of
    the scene is answered from those frame features (the official path runs the same frames
    per question, so the answers are the same).
    """

    def __init__(self, pipeline, *, num_frames: int = 32, max_new_tokens: int = 16, label: str = "offline",
                 meaningless: bool = False):
        if num_frames < 1 or max_new_tokens < 1:
            raise HarnessError(f"num_frames and max_new_tokens must be >= 1, got {num_frames}, {max_new_tokens}")
        self.pipeline = pipeline
        self.num_frames = num_frames
        self.max_new_tokens = max_new_tokens
        self.name = label
        self.meaningless = meaningless
        self._features = None
        self.scenes_ingested = 0  # how many scenes were decoded and ingested (tests count these)

    def start_scene(self, scene: Scene) -> None:
        # torch only for the offline backend: a live run (vlm3r-sim-eval, --backend live) never loads it
        from vlm3r_ros.models.cut3r import Cut3rInputError
        from vlm3r_ros.models.cut3r.processing import ImageFormatError

        self._features = None
        frames = load_scene_frames(scene.media, self.num_frames)
        stream = self.pipeline.new_stream()
        features = []
        for image in frames.images:
            try:
                features.append(self.pipeline.ingest(image, stream))
            except (ImageFormatError, Cut3rInputError) as exc:
                frames.skipped.append(str(exc))
        if not features:
            raise SceneError(f"MEDIA: no frame of {scene.media.describe()} could be ingested "
                             f"({frames.skipped[0] if frames.skipped else 'none sampled'})")
        self._features = features
        self.scenes_ingested += 1

    def answer(self, row: BenchmarkRow, options: list[str] | None) -> Reply:
        # torch only for the offline backend (see start_scene)
        from vlm3r_ros.engine.llm_backend import LlmBackendError
        from vlm3r_ros.models.vlm.modeling_vlm3r import Vlm3rInputError
        from vlm3r_ros.models.vlm.prompting import PromptError

        if self._features is None:
            raise RuntimeError("answer() before start_scene()")
        try:
            result = self.pipeline.answer(self._features, row.question, options, answer_type="auto",
                                          max_new_tokens=self.max_new_tokens)
        except PromptError as exc:
            return Reply(error=f"BAD_REQUEST: {exc}")
        except Vlm3rInputError as exc:
            code = "CONTEXT_TOO_LONG" if "context" in str(exc) else "BAD_REQUEST"
            return Reply(error=f"{code}: {exc}")
        except LlmBackendError as exc:  # the LLM server (--llm-backend openai): asked again on resume
            return Reply(error=str(exc))
        return Reply(text=result.text, frames_used=result.frames_used, latency_s=result.latency_s)

    def end_scene(self) -> None:
        self._features = None

    def close(self) -> None:
        self._features = None


# ------------------------------------------------------------------ results file
def read_results(path: str | Path, *, repair: bool = True) -> dict[str, dict]:
    """The result lines of ``path`` by id (the last line of an id wins).

    A last line without its newline that is not valid JSON (a crash mid-write) is dropped
    and, with ``repair``, cut off the file so that appending stays valid. Any other bad line
    is a :class:`HarnessError`.
    """
    path = Path(path)
    if not path.exists():
        return {}
    data = path.read_bytes()
    results: dict[str, dict] = {}
    offset = 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines, 1):
        last = number == len(lines)
        end = offset + len(line) + (0 if last else 1)
        if line.strip():
            try:
                doc = json.loads(line)
                if not isinstance(doc, dict) or "id" not in doc:
                    raise ValueError("not a result object")
            except ValueError as exc:
                if last:  # no newline after it: an interrupted write
                    if repair:
                        with open(path, "r+b") as f:
                            f.truncate(offset)
                    break
                raise HarnessError(f"{path}: line {number} is not a result line ({exc}); fix or remove the "
                                   f"file, or pass --no-resume to start again") from None
            results[str(doc["id"])] = doc
        offset = end
    return results


class ResultsWriter:
    """Appends one JSON line per result: write, flush, fsync (durable before the next question)."""

    def __init__(self, path: str | Path, *, fresh: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w" if fresh else "a", encoding="utf-8")
        if not fresh and self._file.tell() > 0:
            self._ensure_newline()

    def _ensure_newline(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                self._file.write("\n")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


# ------------------------------------------------------------------ one result
def convert_value(text: str, target_unit: str) -> tuple[float | None, str]:
    """The reply's number (tolerant reader) in ``target_unit``, and the unit the reply wrote.

    No number: (None, ""). No unit in the reply, or a count (``target_unit`` ""): the number
    as it is. A unit of another dimension (an area for a length): (None, unit).
    """
    parsed = parse_answer(text, None, "number")
    if not parsed.has_value or not math.isfinite(parsed.value):
        return None, ""
    if not parsed.unit or not target_unit:
        return float(parsed.value), parsed.unit
    if _dimension(parsed.unit) != _dimension(target_unit):
        return None, parsed.unit
    return to_meters(parsed.value, parsed.unit) / to_meters(1.0, target_unit), parsed.unit


def _dimension(unit: str) -> int:
    return int(unit[-1]) if unit[-1] in "23" else 1


def make_record(row: BenchmarkRow, reply: Reply, spec: BenchmarkSpec, backend_name: str,
                options: list[str] | None) -> dict:
    kind = spec.kind(row.question_type)
    record = row.to_dict()
    record.update({
        "kind": kind,
        "asked_options": options,
        "prediction": None if reply.error else reply.text,
        "prediction_value": None,
        "prediction_unit": "",
        "error": reply.error,
        "frames_used": reply.frames_used,
        "latency_s": round(reply.latency_s, 6),
        "backend": backend_name,
    })
    if kind == "NA" and not reply.error:
        value, unit = convert_value(reply.text, spec.na_units.get(row.question_type, ""))
        record["prediction_value"], record["prediction_unit"] = value, unit
    if kind == "MCA":
        record["answer_letter"] = mca_answer(record, spec)
    record["score"] = score_row(record, spec)
    return record


def question_options(row: BenchmarkRow, spec: BenchmarkSpec) -> list[str] | None:
    """Options as the official prompt shows them: none for numeric types."""
    return list(row.options) if spec.kind(row.question_type) == "MCA" else None


# ------------------------------------------------------------------ running
@dataclass
class RunResult:
    summary: ScoreSummary | None  # None when no selected row has a result yet
    records: list[dict]  # results of the selected rows, in benchmark order
    answered: int  # questions asked in this run
    skipped: int  # questions already in the results file
    missing: list[str]  # selected ids without a result (an interrupted run)


def group_scenes(rows: Iterable[BenchmarkRow], data_root: str | Path) -> list[Scene]:
    """Rows grouped by their media, in the order each scene first appears."""
    scenes: dict[str, Scene] = {}
    for row in rows:
        media = resolve_media(row, data_root)
        scenes.setdefault(media.key, Scene(media.key, media, [])).rows.append(row)
    return list(scenes.values())


def run(benchmark: Benchmark, rows: Sequence[BenchmarkRow], backend: Backend, output: str | Path, *,
        data_root: str | Path | None = None, resume: bool = True, progress: bool = True,
        numeric: str = "official", scorer: str = "vlm3r", log: Callable[[str], None] | None = None) -> RunResult:
    """Answer ``rows`` with ``backend``, appending results to ``output`` (see the module docstring)."""
    from tqdm import tqdm

    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    spec = benchmark.spec
    data_root = Path(data_root) if data_root is not None else benchmark.path.parent
    output = Path(output)
    done = read_results(output) if resume else {}
    _check_same_benchmark(done, benchmark, output)
    finished = {key for key, rec in done.items() if not rec.get("error")}
    pending = [row for row in rows if row.key not in finished]
    skipped = len(rows) - len(pending)
    if skipped:
        log(f"resuming {output}: {skipped} of {len(rows)} questions already answered, {len(pending)} to go")
    if backend.meaningless:
        log(f"WARNING: {TINY_RANDOM_WARNING}")

    writer = ResultsWriter(output, fresh=not resume)
    answered = 0
    bar = tqdm(total=len(pending), unit="question", desc="eval", file=sys.stderr, disable=not progress)
    try:
        for scene in group_scenes(pending, data_root):
            bar.set_postfix_str(scene.rows[0].scene_name, refresh=True)
            scene_error = ""
            try:
                backend.start_scene(scene)
            except SceneError as exc:
                scene_error = str(exc)
                bar.write(f"scene {scene.rows[0].scene_name}: {scene_error}", file=sys.stderr)
            try:
                for row in scene.rows:
                    options = question_options(row, spec)
                    reply = Reply(error=scene_error) if scene_error else backend.answer(row, options)
                    record = make_record(row, reply, spec, backend.name, options)
                    writer.write(record)
                    done[row.key] = record
                    answered += 1
                    bar.update(1)
            finally:
                if not scene_error:
                    backend.end_scene()
    finally:
        bar.close()
        writer.close()
    return summarize(benchmark, rows, done, answered=answered, skipped=skipped, numeric=numeric, scorer=scorer)


def summarize(benchmark: Benchmark, rows: Sequence[BenchmarkRow], results: dict[str, dict], *,
              answered: int = 0, skipped: int = 0, numeric: str = "official", scorer: str = "vlm3r") -> RunResult:
    """Score the results of ``rows`` (those that have one)."""
    records = [results[row.key] for row in rows if row.key in results]
    missing = [row.key for row in rows if row.key not in results]
    summary = score(records, benchmark.spec, numeric=numeric, scorer=scorer) if records else None
    return RunResult(summary, records, answered, skipped, missing)


def _check_same_benchmark(results: dict[str, dict], benchmark: Benchmark, output: Path) -> None:
    """A results file of another benchmark would be silently mixed in: refuse it."""
    by_key = {row.key: row for row in benchmark.rows}
    for key, record in results.items():
        row = by_key.get(key)
        if row is None or record.get("question") != row.question or \
                record.get("question_type") != row.question_type:
            raise HarnessError(f"{output} holds a result for id {key!r} that is not this benchmark's question "
                               f"({benchmark.path}); use another --output, or --no-resume to overwrite it")


# ------------------------------------------------------------------ reporting
def format_table(summary: ScoreSummary, *, meaningless: bool = False) -> str:
    """The per-type table and the overall score, as text."""
    width = max([len("question type"), len("overall")] + [len(t) for t in summary.per_type])
    lines = [f"{summary.benchmark}: {summary.merge_rule}"]
    if summary.numeric == "converted":
        lines.append("numeric answers: the reply's number converted to the benchmark's unit (not the official reading)")
    if summary.scorer == "lmms-eval":
        lines.append("numeric replies read as lmms-eval reads them now (extract_number; the paper used float())")
    lines.append(f"{'question type':<{width}}  kind  {'count':>5}  {'score':>6}")
    lines.append("-" * (width + 23))
    for qtype, value in summary.per_type.items():
        lines.append(f"{qtype:<{width}}  {summary.kinds[qtype]:<4}  {summary.per_type_count[qtype]:>5}  "
                     f"{value:>6.2f}")
        for merged, parts in summary.missing_subtypes.items():
            if merged == qtype:
                lines.append(f"{'':<{width}}  (no rows of {', '.join(parts)}: averaged over the others)")
    lines.append("-" * (width + 23))
    lines.append(f"{'overall':<{width}}  {'':<4}  {summary.rows:>5}  {summary.overall:>6.2f}")
    if summary.failed_rows:
        lines.append(f"{summary.failed_rows} question(s) failed (error recorded, scored 0); rerun to retry them")
    if meaningless:
        lines.append(f"NOTE: {TINY_RANDOM_WARNING}")
    return "\n".join(lines)


def save_plot(summary: ScoreSummary, path: str | Path, *, title: str = "") -> Path:
    """A bar chart of the per-type scores and the overall, as PNG. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise HarnessError("--plot needs matplotlib, which is not installed: pip install -c constraints.txt "
                           "matplotlib (pinned in requirements.txt)") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(summary.per_type) + ["overall"]
    values = list(summary.per_type.values()) + [summary.overall]
    colours = ["tab:blue" if summary.kinds[n] == "MCA" else "tab:orange" for n in summary.per_type] + ["tab:gray"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(names) + 2), 4.5))
    try:
        bars = ax.bar(range(len(names)), values, color=colours)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("score (accuracy / MRA, x100)")
        ax.set_title(title or f"{summary.benchmark}: overall {summary.overall:.2f}")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path
