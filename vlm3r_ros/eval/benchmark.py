"""Benchmark files in the VSI-Bench / VSTI-Bench row format: reading, validating, media paths.

A benchmark is a list of rows (``.jsonl``: one JSON object per line; ``.json``: one array of
objects; ``.parquet``: one row per question, as VSI-Bench is published). Fields:

==================  ==========================================================================
``id``              int or non-empty string, unique (the key that resumed runs skip by)
``dataset``         source dataset, e.g. ``scannet`` (str)
``scene_name``      the scene / video, e.g. ``scene0011_00`` (str)
``question_type``   one of the benchmark's types (:mod:`vlm3r_ros.eval.metrics`)
``question``        the question text (str)
``options``         list of strings (``"A. chair"``, ...) or null; required for multiple choice
``ground_truth``    numeric types: a number (or a numeric string); multiple choice: the letter
                    (VSI-Bench) or the option's value (VSTI-Bench, generated rows)
``mc_answer``       optional (VSTI-Bench: required for multiple choice): the correct letter
``video_path``      optional: a video file or a folder of images, relative to the data root
``frames``          optional: a list of image files (relative to the data root), the video's
                    frames in order; used instead of ``video_path``
``frame_indices``   optional list of ints: the frames a VSTI-Bench question names (kept as
                    data; sampling stays uniform over the whole video, as the official eval)
==================  ==========================================================================

Other fields are kept in :attr:`BenchmarkRow.extra`. Without ``video_path`` and ``frames``
the video is ``{data_root}/{dataset}/{scene_name}.mp4``, the official VSI-Bench layout.
The data root defaults to the benchmark file's folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .metrics import BenchmarkSpec, ScoringError, detect_benchmark, get_benchmark, mca_answer, to_float

FORMATS = (".jsonl", ".json", ".parquet")
REQUIRED_FIELDS = ("id", "dataset", "scene_name", "question_type", "question", "ground_truth")
KNOWN_FIELDS = REQUIRED_FIELDS + ("options", "mc_answer", "video_path", "frames", "frame_indices")


class BenchmarkError(ValueError):
    """A benchmark file or row we cannot use; the message names the file, row and field."""


@dataclass(frozen=True)
class BenchmarkRow:
    id: int | str
    dataset: str
    scene_name: str
    question_type: str
    question: str
    options: tuple[str, ...] | None
    ground_truth: Any
    mc_answer: str | None = None
    video_path: str | None = None
    frames: tuple[str, ...] | None = None
    frame_indices: tuple[int, ...] | None = None
    extra: dict = field(default_factory=dict, compare=False)
    line: int = 0  # 1-based row number in the file (the line of a .jsonl)

    @property
    def key(self) -> str:
        """The id as the string resumed runs compare (``7`` and ``"7"`` are the same question)."""
        return str(self.id)

    def to_dict(self) -> dict:
        out = {"id": self.id, "dataset": self.dataset, "scene_name": self.scene_name,
               "question_type": self.question_type, "question": self.question,
               "options": list(self.options) if self.options is not None else None,
               "ground_truth": self.ground_truth}
        for name in ("mc_answer", "video_path"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        for name in ("frames", "frame_indices"):
            if getattr(self, name) is not None:
                out[name] = list(getattr(self, name))
        return out


@dataclass(frozen=True)
class SceneMedia:
    """Where a row's video is: a video file, a folder of images, or a list of image files."""

    kind: str  # "video", "folder" or "frames"
    path: Path | None = None  # video file or folder
    frames: tuple[Path, ...] | None = None

    @property
    def key(self) -> str:
        """Rows with the same key share one decode / ingest."""
        if self.kind == "frames":
            return "frames:" + "\n".join(str(p) for p in self.frames)
        return f"{self.kind}:{self.path}"

    def describe(self) -> str:
        if self.kind == "frames":
            return f"{len(self.frames)} frame files ({self.frames[0].parent})"
        return f"{self.kind} {self.path}"


@dataclass
class Benchmark:
    path: Path
    spec: BenchmarkSpec
    rows: list[BenchmarkRow]

    @property
    def name(self) -> str:
        return self.spec.name


# ------------------------------------------------------------------ reading
def read_raw_rows(path: str | Path) -> list[dict]:
    """The rows of a .jsonl / .json / .parquet file as dicts (no validation)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"benchmark file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BenchmarkError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise BenchmarkError(f"{path}: line {number} must be a JSON object, got {type(row).__name__}")
                row.setdefault("__line__", number)
                rows.append(row)
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise BenchmarkError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise BenchmarkError(f"{path}: a .json benchmark must be an array of objects (one per question)")
        return data
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise BenchmarkError(f"reading {path} needs pyarrow, which is not installed: "
                                 f"pip install -c constraints.txt pyarrow (pinned in requirements.txt), "
                                 f"or convert the file to .jsonl") from None
        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
            raise BenchmarkError(f"{path}: cannot read as parquet ({type(exc).__name__}: {exc})") from None
    raise BenchmarkError(f"{path}: unknown benchmark format {suffix or '(no suffix)'!r}; use "
                         f"{', '.join(FORMATS)}")


def load_benchmark(path: str | Path, benchmark: str = "auto") -> Benchmark:
    """Read and validate a benchmark file. ``benchmark``: ``auto`` (told from the question
    types), ``vsibench`` or ``vstibench``. Raises :class:`BenchmarkError` naming the row and field."""
    path = Path(path)
    raw = read_raw_rows(path)
    if not raw:
        raise BenchmarkError(f"{path}: no rows")
    if benchmark == "auto":
        for i, row in enumerate(raw, 1):
            qtype = row.get("question_type")
            if not isinstance(qtype, str) or not qtype:
                raise BenchmarkError(f"{path}: {_where(row, i)}: field 'question_type': expected a non-empty "
                                     f"string, got {qtype!r}")
        try:
            spec = detect_benchmark(row["question_type"] for row in raw)
        except ScoringError as exc:
            raise BenchmarkError(f"{path}: {exc}") from None
    else:
        try:
            spec = get_benchmark(benchmark)
        except ScoringError as exc:
            raise BenchmarkError(str(exc)) from None
    rows, seen = [], {}
    for i, raw_row in enumerate(raw, 1):
        row = validate_row(raw_row, i, spec, path)
        if row.key in seen:
            raise BenchmarkError(f"{path}: {_where(raw_row, i)}: field 'id': {row.id!r} repeats the id of row "
                                 f"{seen[row.key]}; ids must be unique (results are resumed by id)")
        seen[row.key] = row.line
        rows.append(row)
    return Benchmark(path, spec, rows)


def _where(row: dict, index: int) -> str:
    line = row.get("__line__", index)
    where = f"row {line}"
    if row.get("id") is not None:
        where += f" (id {row.get('id')!r})"
    return where


def validate_row(raw: dict, index: int, spec: BenchmarkSpec, path: str | Path = "benchmark") -> BenchmarkRow:
    """One raw row -> :class:`BenchmarkRow`, or :class:`BenchmarkError` naming the row and field."""
    where = f"{path}: {_where(raw, index)}"

    def bad(name: str, expected: str) -> BenchmarkError:
        return BenchmarkError(f"{where}: field '{name}': expected {expected}, got {raw.get(name)!r}")

    missing = [name for name in REQUIRED_FIELDS if name not in raw]
    if missing:
        raise BenchmarkError(f"{where}: missing field(s) {', '.join(map(repr, missing))} (a row needs "
                             f"{', '.join(REQUIRED_FIELDS)})")
    rid = raw["id"]
    if isinstance(rid, bool) or not (isinstance(rid, int) or (isinstance(rid, str) and rid.strip())):
        raise bad("id", "an int or a non-empty string")
    for name in ("dataset", "scene_name", "question_type", "question"):
        if not isinstance(raw[name], str) or not raw[name].strip():
            raise bad(name, "a non-empty string")
    qtype = raw["question_type"]
    try:
        kind = spec.kind(qtype)
    except ScoringError as exc:
        raise BenchmarkError(f"{where}: field 'question_type': {exc}") from None

    options = raw.get("options")
    if options is not None:
        if isinstance(options, str) or not isinstance(options, Sequence):
            raise bad("options", "a list of non-empty strings or null")
        if kind == "NA" and all(isinstance(o, (int, float)) and not isinstance(o, bool) for o in options):
            options = [str(o) for o in options]  # official VSTI numeric rows: bare numbers (never asked)
        if not all(isinstance(o, str) and o.strip() for o in options):
            raise bad("options", "a list of non-empty strings or null")
        options = tuple(options)
    mc = raw.get("mc_answer")
    if mc is not None and (not isinstance(mc, str) or not mc.strip()):
        raise bad("mc_answer", "a non-empty string (the answer letter) or null")
    gt = raw["ground_truth"]
    if kind == "MCA":
        if not options:
            raise bad("options", f"a non-empty list of options for the multiple-choice type {qtype}")
        try:
            mca_answer(raw, spec)
        except ScoringError:
            fields = " or ".join(f"'{name}'" for name in spec.mca_answer_fields)
            raise BenchmarkError(f"{where}: no answer letter: {spec.name} multiple-choice rows need it in {fields} "
                                 f"(got {', '.join(f'{n}={raw.get(n)!r}' for n in spec.mca_answer_fields)})"
                                 ) from None
    else:
        value = to_float(gt)
        if value is None or not math.isfinite(value):
            raise bad("ground_truth", f"a finite number for the numeric type {qtype}")

    video_path = raw.get("video_path")
    if video_path is not None and (not isinstance(video_path, str) or not video_path.strip()):
        raise bad("video_path", "a non-empty string or null")
    frames = raw.get("frames")
    if frames is not None:
        if isinstance(frames, str) or not isinstance(frames, Sequence) or not frames or \
                not all(isinstance(f, str) and f.strip() for f in frames):
            raise bad("frames", "a non-empty list of image paths or null")
        frames = tuple(frames)
    indices = raw.get("frame_indices")
    if indices is not None:
        if isinstance(indices, str) or not isinstance(indices, Sequence) or \
                not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
            raise bad("frame_indices", "a list of ints or null")
        indices = tuple(indices)
    extra = {k: v for k, v in raw.items() if k not in KNOWN_FIELDS and k != "__line__"}
    return BenchmarkRow(id=rid, dataset=raw["dataset"], scene_name=raw["scene_name"], question_type=qtype,
                        question=raw["question"], options=options, ground_truth=gt, mc_answer=mc,
                        video_path=video_path, frames=frames, frame_indices=indices, extra=extra,
                        line=raw.get("__line__", index))


# ------------------------------------------------------------------ selecting
def select_rows(benchmark: Benchmark, question_types: Iterable[str] | None = None,
                limit: int | None = None) -> list[BenchmarkRow]:
    """The rows of the given types (a merged name such as ``object_rel_direction`` selects its
    parts), in file order, the first ``limit`` of them."""
    rows = benchmark.rows
    if question_types:
        spec = benchmark.spec
        wanted = set()
        for name in question_types:
            if name in spec.merged_types:
                wanted.update(spec.merged_types[name])
            elif name in spec.question_types:
                wanted.add(name)
            else:
                known = list(spec.question_types) + list(spec.merged_types)
                raise BenchmarkError(f"--question-types: {name!r} is not a {spec.name} question type; "
                                     f"known: {', '.join(known)}")
        rows = [r for r in rows if r.question_type in wanted]
    if limit is not None:
        if limit < 1:
            raise BenchmarkError(f"limit must be >= 1, got {limit}")
        rows = rows[:limit]
    return rows


# ------------------------------------------------------------------ media
def resolve_media(row: BenchmarkRow, data_root: str | Path) -> SceneMedia:
    """The row's video, frames or folder, relative paths joined to ``data_root`` (not checked)."""
    root = Path(data_root)
    if row.frames is not None:
        return SceneMedia("frames", frames=tuple(root / f for f in row.frames))
    path = root / (row.video_path if row.video_path is not None else f"{row.dataset}/{row.scene_name}.mp4")
    return SceneMedia("folder" if path.is_dir() else "video", path=path)


def check_media(rows: Sequence[BenchmarkRow], data_root: str | Path, *, max_listed: int = 5) -> None:
    """BenchmarkError listing rows whose video, folder or frame files do not exist."""
    problems = []
    checked: dict[str, str | None] = {}
    for row in rows:
        media = resolve_media(row, data_root)
        if media.key not in checked:
            checked[media.key] = _media_problem(row, media)
        if checked[media.key] is not None:
            problems.append(f"row {row.line} (id {row.id!r}): {checked[media.key]}")
    if problems:
        more = f" (and {len(problems) - max_listed} more)" if len(problems) > max_listed else ""
        raise BenchmarkError(f"missing media under --data-root {data_root}: " + "; ".join(problems[:max_listed])
                             + more)


def _media_problem(row: BenchmarkRow, media: SceneMedia) -> str | None:
    if media.kind == "frames":
        absent = [p for p in media.frames if not p.is_file()]
        return f"field 'frames': {len(absent)} file(s) not found, e.g. {absent[0]}" if absent else None
    if media.path.exists():
        return None
    name = "video_path" if row.video_path is not None else "dataset/scene_name"
    return f"field '{name}': {media.path} not found"
