"""Generate VSI-Bench / VSTI-Bench style questions from scene metadata files.

    vlm3r-gen-qa --root data/meta --dataset scannet --split val --out qa_scannet_val.jsonl
    vlm3r-gen-qa --metadata my_metadata.json --frame-metadata my_frame_metadata.json \\
                 --types object_counting,obj_appearance_order --seed 3 --out qa.jsonl

Input: the two metadata files of the official pipeline (docs/data.md): ``--metadata`` (scene
file) with an optional ``--frame-metadata``, or ``--root``/``--dataset``/``--split`` naming
``{root}/{dataset}_metadata_{split}.json`` (+ the frame file when it exists). Scenes without
frames still give the scene-level types.

Output: one JSON object per line (``--out``, ``-`` for stdout), and the same rows as a
Parquet table with ``--parquet PATH`` (needs pyarrow). ``--format pipeline`` (default) writes
the official generators' rows (``ground_truth`` the answer value, ``mc_answer`` its letter,
options for every type); ``--format benchmark`` writes VSI-Bench rows as the published
benchmark has them (numeric types without options, the letter as ``ground_truth``);
VSTI-Bench rows are the same in both.

Determinism: each (question type, scene) draws from its own generator seeded by ``--seed``,
the type and the scene name; answer letters are balanced per type over the scenes in sorted
order. The same inputs and seed give the same file. Ids count from 0 in output order
(types in the order given, scenes sorted).

Exit status: 0 done, 2 a user error (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from vlm3r_ros.data.metadata import load_dataset, load_scene_graphs
from vlm3r_ros.data.qa.batch import FORMATS, GenQAError, as_format, generate, parse_cap, parse_seeds, parse_types
from vlm3r_ros.data.qa.common import COMPAT_MODES
from vlm3r_ros.data.qa.registry import question_types
from vlm3r_ros.data.scene_graph import SceneGraphError
from vlm3r_ros.sim.procedural import generate_scene

PROG = "vlm3r-gen-qa"


def load_scenes(args) -> dict:
    if args.sim_rooms:
        seeds = parse_seeds(args.sim_rooms)
        if args.metadata or args.root or args.frame_metadata:
            raise GenQAError("give either --sim-rooms or metadata files, not both")
        graphs = [generate_scene(seed).scene_graph() for seed in seeds]
        return {g.scene_name: g for g in graphs}
    if args.metadata:
        if args.root or args.dataset or args.split:
            raise GenQAError("give either --metadata (and --frame-metadata) or --root/--dataset/--split, not both")
        return load_scene_graphs(args.metadata, args.frame_metadata)
    if args.frame_metadata:
        raise GenQAError("--frame-metadata needs --metadata (the scene file it belongs to)")
    if not (args.root and args.dataset and args.split):
        raise GenQAError("no input: give --metadata FILE, or --root DIR with --dataset and --split")
    return load_dataset(args.root, args.dataset, args.split)


def write_jsonl(rows: list[dict], out: str) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if out == "-":
        sys.stdout.write(text)
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_parquet(rows: list[dict], out: str) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise GenQAError("--parquet needs pyarrow (pip install pyarrow); the JSONL output needs nothing") from None
    # ground_truth mixes numbers and words across types: one string column, as VSI-Bench's parquet.
    table = pa.Table.from_pylist([{**row, "ground_truth": str(row["ground_truth"])} for row in rows])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("input")
    src.add_argument("--metadata", help="scene metadata JSON ({ds}_metadata_{split}.json layout)")
    src.add_argument("--frame-metadata", help="frame metadata JSON for the same scenes (optional)")
    src.add_argument("--root", help="folder holding {dataset}_metadata_{split}.json")
    src.add_argument("--dataset", help="dataset name in the file names, e.g. scannet")
    src.add_argument("--split", help="split name in the file names, e.g. val")
    p.add_argument("--out", required=True, help="output JSONL file, or - for stdout")
    p.add_argument("--parquet", help="also write the rows as a Parquet file (needs pyarrow)")
    p.add_argument("--types", default="all",
                   help="comma list of question types, or all / vsibench / vstibench (default: all). "
                        f"Known: {', '.join(question_types())}")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--max-per-scene", help="questions per scene and type: a number or 'all' "
                                           "(default: each type's official num_subsample)")
    p.add_argument("--scenes", help="comma list of scene names to use (default: all in the file)")
    p.add_argument("--format", choices=FORMATS, default="pipeline",
                   help="pipeline: official generator rows (default); benchmark: VSI-Bench rows as published")
    p.add_argument("--compat", choices=COMPAT_MODES, default="official",
                   help="official: reproduce the official VLM-3R generators, quirks included (default); "
                        "exact: exact geometry and our rules, for your own training data (docs/data.md)")
    src.add_argument("--sim-rooms", metavar="SEEDS",
                     help="procedural sim rooms instead of metadata, e.g. 0-19 or 3,5: their free space is "
                          "known, so route_planning is asked too (no frames: only scene-level types)")
    return p


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    types = parse_types(args.types)
    if not types:
        raise GenQAError("--types: no question type given")
    cap = parse_cap(args.max_per_scene)
    scenes = load_scenes(args)
    if args.scenes:
        wanted = [s.strip() for s in args.scenes.split(",") if s.strip()]
        missing = [s for s in wanted if s not in scenes]
        if missing:
            raise GenQAError(f"--scenes: not in the metadata: {', '.join(missing)} "
                             f"(it has {len(scenes)} scenes, e.g. {', '.join(sorted(scenes)[:3])})")
        scenes = {s: scenes[s] for s in wanted}
    rows = [as_format(row, args.format) for row in generate(scenes, types, args.seed, cap, args.compat)]
    write_jsonl(rows, args.out)
    if args.parquet:
        write_parquet(rows, args.parquet)
    counts = Counter(row["question_type"] for row in rows)
    summary = ", ".join(f"{t} {counts.get(t, 0)}" for t in types)
    print(f"{PROG}: {len(rows)} questions from {len(scenes)} scenes ({summary})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except (GenQAError, SceneGraphError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
