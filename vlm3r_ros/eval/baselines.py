"""Blind baselines, as the VSI-Bench paper reports them beside the models (its Table 1):

* **chance (random)**: the expected score of picking an option uniformly at random, for the
  multiple-choice types (1 / number of options per question); numeric types have none ("-").
* **chance (frequency)**: always giving the most frequent answer of the question's type in the
  *training* rows (the option letter for multiple choice; the most frequent value for numeric
  types, ties to the smaller value), scored with the benchmark's own metrics.

Both see no video and no question text: a model that does not beat them has learned nothing
from the scene.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping, Sequence

from .metrics import BenchmarkSpec, ScoreSummary, get_benchmark, mca_answer, score, to_float

RANDOM, FREQUENCY = "chance (random)", "chance (frequency)"


def _merge(spec: BenchmarkSpec, subtype_means: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for qtype in spec.question_types:
        reported = spec.reported_type(qtype)
        if reported in out:
            continue
        present = [p for p in spec.merged_types.get(reported, (qtype,)) if p in subtype_means]
        if present:
            out[reported] = sum(subtype_means[p] for p in present) / len(present)
    return out


def random_chance(rows: Iterable, benchmark: str | BenchmarkSpec) -> dict[str, float | None]:
    """Per reported type (x100): the expected accuracy of a uniform random option; None for numeric types."""
    spec = get_benchmark(benchmark)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    numeric = set()
    for row in rows:
        qtype, options = _get(row, "question_type"), _get(row, "options")
        if spec.kind(qtype) != "MCA":
            numeric.add(spec.reported_type(qtype))
            continue
        sums[qtype] = sums.get(qtype, 0.0) + 1.0 / len(options)
        counts[qtype] = counts.get(qtype, 0) + 1
    out: dict[str, float | None] = {t: 100.0 * v for t, v in _merge(spec, {t: sums[t] / counts[t]
                                                                            for t in sums}).items()}
    out.update({t: None for t in numeric if t not in out})
    return out


def most_frequent_answers(train_rows: Iterable, benchmark: str | BenchmarkSpec) -> dict[str, str | float]:
    """question type -> its most frequent answer among ``train_rows`` (letter, or number)."""
    spec = get_benchmark(benchmark)
    counters: dict[str, Counter] = {}
    for row in train_rows:
        doc = row if isinstance(row, Mapping) else row.to_dict()
        qtype = doc["question_type"]
        if qtype not in spec.question_types:
            continue
        answer = mca_answer(doc, spec).strip().upper() if spec.kind(qtype) == "MCA" else to_float(doc["ground_truth"])
        counters.setdefault(qtype, Counter())[answer] += 1
    out = {}
    for qtype, counter in counters.items():
        top = max(counter.values())
        out[qtype] = min(a for a, c in counter.items() if c == top)  # ties: the smaller letter / value
    return out


def frequency_chance(train_rows: Iterable, test_rows: Sequence, benchmark: str | BenchmarkSpec,
                     *, numeric: str = "official") -> ScoreSummary:
    """The test rows scored with each type's most frequent training answer as the prediction.
    A type without training rows gets no prediction (scored 0, as a failed answer)."""
    spec = get_benchmark(benchmark)
    answers = most_frequent_answers(train_rows, spec)
    records = []
    for row in test_rows:
        doc = dict(row if isinstance(row, Mapping) else row.to_dict())
        guess = answers.get(doc["question_type"])
        doc["prediction"] = None if guess is None else guess if isinstance(guess, str) else f"{guess:g}"
        records.append(doc)
    return score(records, spec, numeric=numeric)


def _get(row, name):
    return row[name] if isinstance(row, Mapping) else getattr(row, name)


def format_comparison(columns: Mapping[str, Mapping[str, float | None] | ScoreSummary],
                      counts: Mapping[str, int] | None = None) -> str:
    """A table: one row per question type, one column per system (a ScoreSummary or type -> score)."""
    tables = {name: (col.per_type if isinstance(col, ScoreSummary) else col) for name, col in columns.items()}
    types: list[str] = []
    for table in tables.values():
        types += [t for t in table if t not in types]
    width = max([len("question type"), len("overall")] + [len(t) for t in types])
    widths = [max(len(name), 6) for name in tables]
    head = f"{'question type':<{width}}" + ("  count" if counts else "") + "".join(
        f"  {name:>{w}}" for name, w in zip(tables, widths))
    lines = [head, "-" * len(head)]

    def cell(v, w):
        return f"  {'-':>{w}}" if v is None else f"  {v:>{w}.2f}"

    for t in types:
        lines.append(f"{t:<{width}}" + (f"  {counts.get(t, 0):>5}" if counts else "")
                     + "".join(cell(table.get(t), w) for table, w in zip(tables.values(), widths)))
    lines.append("-" * len(head))
    overall = []
    for table in tables.values():
        values = [table.get(t) for t in types]
        overall.append(None if any(v is None for v in values) or not values else sum(values) / len(values))
    lines.append(f"{'overall':<{width}}" + ("       " if counts else "")
                 + "".join(cell(v, w) for v, w in zip(overall, widths)))
    return "\n".join(lines)
