"""Questions for many scenes and types at once: what ``vlm3r-gen-qa`` and ``vlm3r-sim-eval`` generate.

Each (question type, scene) draws from its own generator seeded by the seed, the type and the
scene name; answer letters are balanced per type over the scenes in sorted order; ids count
from 0 in output order (types in the order given, scenes sorted). The same inputs and seed
give the same rows.
"""

from __future__ import annotations

from vlm3r_ros.data.qa.common import AnswerBalancer, assign_ids, make_rng
from vlm3r_ros.data.qa.registry import get_spec, question_types
from vlm3r_ros.data.qa.vsibench import to_benchmark_dict

FORMATS = ("pipeline", "benchmark")


class GenQAError(ValueError):
    """A user error: printed as one line, exit status 2."""


def parse_types(text: str | None) -> list[str]:
    """'all', 'vsibench', 'vstibench' or a comma list of question types -> question types."""
    if text is None or text.strip() in ("", "all"):
        return question_types()
    out: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if item in ("vsibench", "vstibench"):
            out.extend(question_types(item))
            continue
        try:
            get_spec(item)
        except KeyError as exc:
            raise GenQAError(f"--types: {exc.args[0]}") from None
        out.append(item)
    return list(dict.fromkeys(out))  # keep the first of repeats


def parse_cap(text: str | None) -> int | None | str:
    """--max-per-scene: a positive int, 'all' (no cap) or None (each type's official default)."""
    if text is None:
        return "default"
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise GenQAError(f"--max-per-scene: expected a positive integer or 'all', got {text!r}")
    return value


def parse_seeds(text: str) -> list[int]:
    """'0-19' or '3,5,8' -> seeds."""
    seeds: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            lo, _, hi = part.partition("-")
            seeds.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        raise GenQAError(f"--sim-rooms: expected seeds such as 0-19 or 3,5, got {text!r}") from None
    if not seeds:
        raise GenQAError("--sim-rooms: no seed given")
    return seeds


def generate(scenes: dict, types: list[str], seed: int, cap="default", compat: str = "official") -> list[dict]:
    """Rows (dicts, pipeline format, ids assigned) for ``types`` over ``scenes`` (name -> SceneGraph);
    ``compat``: "official" (reproduce the official generators) or "exact" (docs/data.md)."""
    rows = []
    for qtype in types:
        spec = get_spec(qtype)
        try:
            generator = spec.load()
        except (ImportError, LookupError) as exc:
            raise GenQAError(f"question type {qtype}: cannot load {spec.target} ({exc})") from exc
        balancer = AnswerBalancer()
        max_per_scene = spec.max_per_scene if cap == "default" else cap
        for name in sorted(scenes):
            rng = make_rng(seed, qtype, name)
            rows.extend(generator(scenes[name], rng, max_per_scene=max_per_scene, balancer=balancer,
                                  compat=compat))
    assign_ids(rows)
    return [row.to_dict() for row in rows]


def as_format(row: dict, fmt: str) -> dict:
    if fmt == "benchmark" and get_spec(row["question_type"]).benchmark == "vsibench":
        return to_benchmark_dict(row)
    return row
