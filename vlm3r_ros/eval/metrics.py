"""The scores of VSI-Bench and VSTI-Bench, computed as their official evaluation computes them.

Facts taken from the official lmms-eval task code (``lmms_eval/tasks/vsibench/utils.py`` of
thinking-in-space and lmms-eval; ``thinking-in-space/lmms_eval/tasks/vstibench/utils.py`` of
VLM-3R); docs/eval.md cites them and says where we differ:

* The reply is cut to its **first token**: split at the first ``" "`` (a space only, not
  any whitespace), trailing ``"."`` removed, then whitespace stripped (:func:`first_token`).
* **Multiple choice** (MCA): 1 when that token equals the answer letter ignoring case, else 0.
  VSI-Bench's answer letter is ``ground_truth``; VSTI-Bench's is ``mc_answer`` (its
  ``ground_truth`` holds the option's text, or the number for numeric types). Rows written by
  VLM-3R's data pipeline (and :mod:`vlm3r_ros.data`) keep the letter in ``mc_answer`` for
  every type, so a VSI-Bench row's ``mc_answer``, when present, is used first.
* **Numeric** (NA): the token read by Python's ``float()`` (nothing read: 0), then the
  **mean relative accuracy** over the 10 thresholds 0.50, 0.55, ..., 0.95:
  ``mean(|pred - gt| / gt <= 1 - theta)`` (``<=``, as the code; the papers write ``<``).
* Per question type the mean; **overall** the unweighted mean over the types. VSI-Bench first
  averages ``object_rel_direction_easy/medium/hard`` into one type ``object_rel_direction``;
  VSTI-Bench merges nothing. Reported x100.

Edge cases the official code leaves undefined (it raises or returns a meaningless number),
decided here and documented in docs/eval.md: ground truth 0 (official: ZeroDivisionError)
scores 1 for a prediction of exactly 0, else 0; a negative ground truth (official: always 1,
as the ratio is negative) is divided by ``|gt|``; NaN / infinite predictions score 0 (as the
official comparisons give); a non-finite or unreadable ground truth is an error.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping

import numpy as np

# The official thresholds: np.linspace(.5, .95, int((.95 - .5) / .05 + 2)); the float
# arithmetic gives int(10.999...) = 10 points, i.e. 0.50, 0.55, ..., 0.95.
MRA_THRESHOLDS = np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2))
# What a relative error must not exceed, computed as the official code does (1 - theta),
# so that boundary cases such as |1.45 - 1| / 1 compare bit for bit alike.
MRA_TOLERANCES = 1 - MRA_THRESHOLDS


class ScoringError(ValueError):
    """A row or benchmark that cannot be scored (unknown question type, bad ground truth, ...)."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """Which question types a benchmark has, how each is scored and how types are merged."""

    name: str
    mca_types: tuple[str, ...]
    na_types: tuple[str, ...]
    mca_answer_fields: tuple[str, ...]  # row fields that may hold the correct letter, first present wins
    merged_types: Mapping[str, tuple[str, ...]]  # reported type -> its subtypes, averaged
    na_units: Mapping[str, str]  # unit of the ground truth per numeric type ("" = a count)
    merge_rule: str  # one sentence for the summary

    @property
    def question_types(self) -> tuple[str, ...]:
        return self.mca_types + self.na_types

    def kind(self, question_type: str) -> str:
        """``"MCA"`` or ``"NA"``; :class:`ScoringError` for a type the benchmark does not have."""
        if question_type in self.mca_types:
            return "MCA"
        if question_type in self.na_types:
            return "NA"
        raise ScoringError(f"unknown question type {question_type!r} for {self.name}; its types are "
                           f"{', '.join(self.question_types)}")

    def reported_type(self, question_type: str) -> str:
        """The type a question's score is reported under (after merging)."""
        for merged, parts in self.merged_types.items():
            if question_type in parts:
                return merged
        return question_type


VSIBENCH = BenchmarkSpec(
    name="vsibench",
    mca_types=("object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard",
               "object_rel_distance", "route_planning", "obj_appearance_order"),
    na_types=("object_counting", "object_abs_distance", "object_size_estimation", "room_size_estimation"),
    mca_answer_fields=("mc_answer", "ground_truth"),  # official test rows: ground_truth only
    merged_types=MappingProxyType({"object_rel_direction": ("object_rel_direction_easy",
                                                            "object_rel_direction_medium",
                                                            "object_rel_direction_hard")}),
    # The official questions ask for centimetres (size), metres (distance), square metres (room).
    na_units=MappingProxyType({"object_counting": "", "object_abs_distance": "m",
                               "object_size_estimation": "cm", "room_size_estimation": "m2"}),
    merge_rule="VSI-Bench: object_rel_direction_easy/medium/hard averaged into object_rel_direction "
               "before the overall mean",
)

VSTIBENCH = BenchmarkSpec(
    name="vstibench",
    mca_types=("obj_obj_relative_pos_nf", "obj_obj_relative_pos_ud", "obj_obj_relative_pos_lr",
               "camera_obj_rel_dist_v1", "camera_obj_rel_dist_v2", "camera_obj_rel_dist_v3",
               "camera_movement_direction"),
    na_types=("camera_obj_abs_dist", "camera_displacement", "camera_obj_dist_change"),
    mca_answer_fields=("mc_answer",),
    merged_types=MappingProxyType({}),
    na_units=MappingProxyType({"camera_obj_abs_dist": "m", "camera_displacement": "m",
                               "camera_obj_dist_change": "m"}),
    merge_rule="VSTI-Bench: no merging; the overall is the mean over every question type",
)

BENCHMARKS = MappingProxyType({spec.name: spec for spec in (VSIBENCH, VSTIBENCH)})


def get_benchmark(benchmark: str | BenchmarkSpec) -> BenchmarkSpec:
    if isinstance(benchmark, BenchmarkSpec):
        return benchmark
    if benchmark not in BENCHMARKS:
        raise ScoringError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)} (or 'auto')")
    return BENCHMARKS[benchmark]


def detect_benchmark(question_types: Iterable[str]) -> BenchmarkSpec:
    """The benchmark whose question types include all of ``question_types`` (their type sets are disjoint)."""
    types = set(question_types)
    if not types:
        raise ScoringError("no question types to tell the benchmark from")
    for spec in BENCHMARKS.values():
        if types <= set(spec.question_types):
            return spec
    known = set().union(*(spec.question_types for spec in BENCHMARKS.values()))
    unknown = sorted(types - known)
    if unknown:
        raise ScoringError(f"unknown question type(s) {', '.join(map(repr, unknown))}; VSI-Bench has "
                           f"{', '.join(VSIBENCH.question_types)}; VSTI-Bench has "
                           f"{', '.join(VSTIBENCH.question_types)}")
    raise ScoringError(f"the question types mix VSI-Bench and VSTI-Bench ({', '.join(sorted(types))}); "
                       f"score each benchmark on its own")


# ------------------------------------------------------------------ one row
def first_token(prediction: str) -> str:
    """The part of a reply the official scorer reads: up to the first space, trailing dots
    removed, then stripped. ``"B. sofa"`` -> ``"B"``; ``"2.5 m"`` -> ``"2.5"``; a reply with a
    line break before its first space keeps it (``"B\\nsofa"`` -> ``"B\\nsofa"``), as officially."""
    if not isinstance(prediction, str):
        raise ScoringError(f"a prediction must be a string, got {type(prediction).__name__}")
    return prediction.split(" ")[0].rstrip(".").strip()


def to_float(value) -> float | None:
    """``float(value)``, or None when Python cannot read it (the official ``to_float``).

    Accepts what ``float()`` accepts: ``"3"``, ``" 2.5\\n"``, ``"1e3"``, ``"1_000"``, ``"nan"``,
    ``"inf"``; not ``"3m"``, ``"2,5"`` or ``"three"``.
    """
    if isinstance(value, bool):  # float(True) is 1.0; a boolean is no number here
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def multiple_choice_accuracy(prediction: str, answer: str) -> float:
    """1.0 when the reply's first token equals ``answer`` ignoring case, else 0.0."""
    if not isinstance(answer, str) or not answer.strip():
        raise ScoringError(f"the answer letter must be a non-empty string, got {answer!r}")
    return 1.0 if first_token(prediction).lower() == answer.lower() else 0.0


def mean_relative_accuracy(pred: float | None, gt: float) -> float:
    """Mean over theta in {0.50, 0.55, ..., 0.95} of ``1[|pred - gt| / gt <= 1 - theta]``.

    ``pred`` None, NaN or infinite scores 0. ``gt`` must be finite. ``gt == 0``: 1.0 when
    ``pred == 0``, else 0.0 (no relative error exists; the official code raises). ``gt < 0``:
    the error is divided by ``|gt|`` (the official code divides by ``gt`` and so scores any
    prediction 1.0).
    """
    gt = _finite_ground_truth(gt)
    if pred is None or isinstance(pred, bool):
        return 0.0
    pred = float(pred)
    if not math.isfinite(pred):
        return 0.0
    if gt == 0.0:
        return 1.0 if pred == 0.0 else 0.0
    relative_error = abs(pred - gt) / abs(gt)  # same float operations as the official code for gt > 0
    return float(np.mean(relative_error <= MRA_TOLERANCES))


def _finite_ground_truth(gt) -> float:
    value = to_float(gt)
    if value is None or not math.isfinite(value):
        raise ScoringError(f"a numeric ground truth must be a finite number, got {gt!r}")
    return value


def numeric_prediction(prediction) -> float | None:
    """The number the official scorer reads from a reply (first token, ``float()``), or None.
    A number (not a string) is taken as it is."""
    if prediction is None:
        return None
    if isinstance(prediction, (int, float)) and not isinstance(prediction, bool):
        return float(prediction)
    return to_float(first_token(prediction))


# lmms-eval after #1386 (lmms_eval/tasks/vsibench/utils.py, extract_number): the first number in the
# whole reply, digits or English number words, whichever comes first.
SCORERS = ("vlm3r", "lmms-eval")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
_WORD_RE = re.compile(r"[a-z]+")
_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_NUMBER_WORDS.update({"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
                      "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000})


def extract_number(text) -> float | None:
    """The number lmms-eval's current VSI-Bench scorer reads from a reply (None: none found).

    The reply is stripped and lower-cased; the first match of ``-?\\d+(?:\\.\\d+)?`` competes with
    the first run of number words (``"twenty-one"``, ``"three hundred and twenty-one"``: "and" is
    skipped inside a run, any other word ends it); whichever starts first wins. ``"2.0m"`` -> 2.0,
    ``"about 10"`` -> 10.0, ``"1e3"`` -> 1.0, ``"three boxes"`` -> 3.0."""
    if text is None:
        return None
    s = str(text).strip().lower()
    if not s:
        return None
    digits = _NUMBER_RE.search(s)
    run_start, run = None, []
    for m in _WORD_RE.finditer(s):
        word = m.group(0)
        if run_start is None:
            if word in _NUMBER_WORDS:
                run_start, run = m.start(), [word]
        elif word == "and":
            continue
        elif word in _NUMBER_WORDS:
            run.append(word)
        else:
            break
    if digits is not None and (run_start is None or digits.start() < run_start):
        return float(digits.group(0))
    if run_start is None:
        return None
    total, current = 0, 0
    for word in run:
        value = _NUMBER_WORDS[word]
        if value == 100:
            current = max(current, 1) * 100
        elif value == 1000:
            total, current = total + max(current, 1) * 1000, 0
        else:
            current += value
    return float(total + current)


def score_row(row: Mapping, benchmark: str | BenchmarkSpec, *, numeric: str = "official",
              scorer: str = "vlm3r") -> float:
    """The score in [0, 1] of one answered question.

    ``row``: ``question_type``, ``prediction`` (the reply text; None or a row ``error`` scores
    0, as the official worst case), ``ground_truth`` and, for VSTI-Bench multiple choice,
    ``mc_answer``. ``numeric="converted"`` reads a numeric answer from ``prediction_value``
    (the reply's number converted to the benchmark's unit) when it is a number, else as
    ``"official"``. ``scorer``: how a numeric reply is read: ``"vlm3r"`` (the paper's: ``float()``
    of the first word) or ``"lmms-eval"`` (:func:`extract_number` on the whole reply); multiple
    choice is read the same way by both.
    """
    spec = get_benchmark(benchmark)
    if numeric not in ("official", "converted"):
        raise ScoringError(f"numeric must be 'official' or 'converted', got {numeric!r}")
    if scorer not in SCORERS:
        raise ScoringError(f"scorer must be one of {', '.join(SCORERS)}, got {scorer!r}")
    where = _where(row)
    qtype = row.get("question_type")
    try:
        kind = spec.kind(qtype)
    except ScoringError as exc:
        raise ScoringError(f"{where}: {exc}") from None
    prediction = row.get("prediction")
    failed = bool(row.get("error")) or prediction is None
    if kind == "MCA":
        answer = mca_answer(row, spec)
        if failed:
            return 0.0
        if not isinstance(prediction, str):
            raise ScoringError(f"{where}: a multiple-choice prediction must be a string, got "
                               f"{type(prediction).__name__}")
        return multiple_choice_accuracy(prediction, answer)
    try:
        gt = _finite_ground_truth(row.get("ground_truth"))
    except ScoringError as exc:
        raise ScoringError(f"{where}: {exc}") from None
    if failed:
        return 0.0
    value = None
    if numeric == "converted":
        converted = row.get("prediction_value")
        if isinstance(converted, (int, float)) and not isinstance(converted, bool):
            value = float(converted)
    if value is None:
        if scorer == "lmms-eval" and not isinstance(prediction, (int, float)):
            value = extract_number(prediction)
        else:
            value = numeric_prediction(prediction)
    return mean_relative_accuracy(value, gt)


def mca_answer(row: Mapping, benchmark: str | BenchmarkSpec) -> str:
    """The correct letter of a multiple-choice row: the first of the benchmark's answer fields
    that holds a non-empty string (VSI-Bench: ``mc_answer``, else ``ground_truth``; VSTI-Bench:
    ``mc_answer``)."""
    spec = get_benchmark(benchmark)
    for name in spec.mca_answer_fields:
        answer = row.get(name)
        if isinstance(answer, str) and answer.strip():
            return answer
    fields = " or ".join(f"'{name}'" for name in spec.mca_answer_fields)
    got = ", ".join(f"{name}={row.get(name)!r}" for name in spec.mca_answer_fields)
    raise ScoringError(f"{_where(row)}: {spec.name} multiple-choice rows need the answer letter in {fields}; "
                       f"got {got}")


def _where(row: Mapping) -> str:
    return f"row id {row.get('id')!r}" if row.get("id") is not None else "row"


# ------------------------------------------------------------------ the summary
@dataclass
class ScoreSummary:
    """Scores x100. ``per_type`` is after merging (what the overall averages), ``subtypes`` before."""

    benchmark: str
    merge_rule: str
    numeric: str  # "official" or "converted"
    per_type: dict[str, float]
    per_type_count: dict[str, int]
    overall: float
    subtypes: dict[str, float] = field(default_factory=dict)
    subtype_count: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # reported type -> "MCA" / "NA"
    rows: int = 0
    failed_rows: int = 0  # rows with an error or no prediction (scored 0)
    missing_subtypes: dict[str, list[str]] = field(default_factory=dict)  # merged type -> absent parts
    scorer: str = "vlm3r"  # how numeric replies were read: "vlm3r" or "lmms-eval"

    def to_dict(self) -> dict:
        return asdict(self)


def score(rows: Iterable[Mapping], benchmark: str | BenchmarkSpec = "auto", *,
          numeric: str = "official", scorer: str = "vlm3r") -> ScoreSummary:
    """Per-type means and the overall score of answered rows (see the module docstring).

    ``benchmark``: ``"vsibench"``, ``"vstibench"``, a :class:`BenchmarkSpec`, or ``"auto"``
    (told from the question types). A merged type averages the subtypes present; when one is
    absent (a filtered run) it is named in ``missing_subtypes`` (the official code needs all
    three: upstream lmms-eval raises KeyError; thinking-in-space raises KeyError when easy is there
    without medium or hard, and keeps medium / hard as types of their own when easy is missing).
    """
    rows = list(rows)
    if not rows:
        raise ScoringError("no rows to score")
    for row in rows:
        if not isinstance(row, Mapping):
            raise ScoringError(f"rows must be dicts, got {type(row).__name__}")
    if benchmark == "auto":
        spec = detect_benchmark(row.get("question_type") for row in rows)
    else:
        spec = get_benchmark(benchmark)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    failed = 0
    for row in rows:
        value = score_row(row, spec, numeric=numeric, scorer=scorer)
        qtype = row["question_type"]
        sums[qtype] = sums.get(qtype, 0.0) + value
        counts[qtype] = counts.get(qtype, 0) + 1
        failed += bool(row.get("error")) or row.get("prediction") is None
    subtypes = {t: 100.0 * sums[t] / counts[t] for t in spec.question_types if t in counts}
    subtype_count = {t: counts[t] for t in spec.question_types if t in counts}

    per_type: dict[str, float] = {}
    per_type_count: dict[str, int] = {}
    kinds: dict[str, str] = {}
    missing: dict[str, list[str]] = {}
    for qtype in spec.question_types:  # the benchmark's order; a merged type where its first part is
        reported = spec.reported_type(qtype)
        if reported in per_type or (reported == qtype and qtype not in subtypes):
            continue
        parts = spec.merged_types.get(reported, (qtype,))
        present = [p for p in parts if p in subtypes]
        if not present:
            continue
        per_type[reported] = sum(subtypes[p] for p in present) / len(present)
        per_type_count[reported] = sum(subtype_count[p] for p in present)
        kinds[reported] = spec.kind(present[0])
        if len(present) < len(parts):
            missing[reported] = [p for p in parts if p not in subtypes]
    overall = sum(per_type.values()) / len(per_type)
    return ScoreSummary(benchmark=spec.name, merge_rule=spec.merge_rule, numeric=numeric, per_type=per_type,
                        per_type_count=per_type_count, overall=overall, subtypes=subtypes,
                        subtype_count=subtype_count, kinds=kinds, rows=len(rows), failed_rows=failed,
                        missing_subtypes=missing, scorer=scorer)
