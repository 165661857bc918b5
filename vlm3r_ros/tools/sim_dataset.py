"""vlm3r-sim-dataset: N procedural rooms rendered (pybullet) -> videos, official metadata, QA rows,
split into train / val / test by room.

    vlm3r-sim-dataset --out data/sim --rooms 240 --split 200,0,40 --frames 32 --size 320x240

Writes OUT/videos/*.mp4, OUT/sim_metadata_{split}.json (+ frame metadata), OUT/qa_{split}_{vsibench,
vstibench}.jsonl and OUT/summary.json. Train with vlm3r-train --data OUT/qa_train_vsibench.jsonl; score
with vlm3r-eval OUT/qa_test_vsibench.jsonl --baselines OUT/qa_train_vsibench.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys

from .cli import image_size

PROG = "vlm3r-sim-dataset"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--rooms", type=int, default=10, help="number of procedural rooms (default 10)")
    p.add_argument("--split", default="0.8,0.1,0.1",
                   help="train,val,test shares of the rooms (fractions or counts; default 0.8,0.1,0.1)")
    p.add_argument("--frames", type=int, default=32, help="frames rendered per room (default 32)")
    p.add_argument("--size", type=lambda t: image_size(t, minimum=8), default=(320, 240),
                   help="WIDTHxHEIGHT (default 320x240)")
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--trajectory", choices=("handheld", "patrol", "scan"), default="handheld")
    p.add_argument("--types", nargs="+", metavar="TYPE", help="question types (default: every registered type)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default="sim", help="dataset name in the metadata file names (default sim)")
    return p


def main(argv: list[str] | None = None) -> int:
    from vlm3r_ros.train.sim_dataset import SimDatasetOptions, make_sim_dataset

    args = build_parser().parse_args(argv)
    try:
        fractions = tuple(float(v) for v in args.split.split(","))
        if len(fractions) != 3:
            raise ValueError
    except ValueError:
        print(f"{PROG}: error: --split must be three numbers train,val,test, got {args.split!r}", file=sys.stderr)
        return 2
    if args.rooms < 1 or args.frames < 1:
        print(f"{PROG}: error: --rooms and --frames must be >= 1", file=sys.stderr)
        return 2
    opts = SimDatasetOptions(out=args.out, rooms=args.rooms, fractions=fractions, frames=args.frames, size=args.size,
                             fps=args.fps, trajectory=args.trajectory, seed=args.seed, dataset=args.dataset,
                             types=args.types)
    try:
        summary = make_sim_dataset(opts, progress=lambda i, n: print(f"\r{PROG}: room {i}/{n}", end="",
                                                                       file=sys.stderr, flush=True))
    except (ValueError, KeyError) as exc:
        print(f"\n{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(file=sys.stderr)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
