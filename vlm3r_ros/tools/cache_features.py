"""vlm3r-cache-features: run SigLIP and CUT3R once per video and store their features for vlm3r-train.

    vlm3r-cache-features --data qa_train.jsonl --out cache/ --base BASE --adapter ADAPTER --cut3r CUT3R.pth
    vlm3r-train --data qa_train.jsonl --feature-cache cache/ ...   # never runs SigLIP / CUT3R again

Per video: the --num-frames frames the evaluation samples (uniform), one fresh CUT3R stream over
them, SigLIP's layer -2 output and CUT3R's camera + patch tokens, in one safetensors shard keyed by
the video, the frame count and the encoders' weight hash. Entries that are current are kept; stale
ones (another video file, frame count or encoder weights) are recomputed.
"""

from __future__ import annotations

import argparse
import sys

import torch

PROG = "vlm3r-cache-features"


def build_parser() -> argparse.ArgumentParser:
    from vlm3r_ros.tools.model_options import OVERRIDES_HELP

    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", required=True, metavar="FILE[:WEIGHT]", help="as vlm3r-train")
    p.add_argument("--data-root", help="as vlm3r-train")
    p.add_argument("--out", required=True, help="cache folder (vlm3r-train --feature-cache)")
    p.add_argument("--base", help="local LLaVA-Video-7B-Qwen2 folder (its SigLIP)")
    p.add_argument("--adapter", help="local VLM-3R adapter folder (optional: only SigLIP and CUT3R run here)")
    p.add_argument("--cut3r", help="CUT3R checkpoint")
    p.add_argument("--vlm-config-overrides", metavar="JSON", help=OVERRIDES_HELP)
    p.add_argument("--tiny-random", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-frames", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--force", action="store_true", help="recompute every entry")
    return p


def main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    from vlm3r_ros.engine.loading import load_models
    from vlm3r_ros.errors import UserError as ToolError
    from vlm3r_ros.tools.model_options import model_source
    from vlm3r_ros.train.data import TrainDataError, check_media, load_mix, parse_source
    from vlm3r_ros.train.feature_cache import FeatureCache

    args = build_parser().parse_args(argv)
    for name in ("base", "adapter", "cut3r"):
        value = getattr(args, name)
        setattr(args, name, Path(value) if value is not None else None)
    try:
        samples = load_mix([parse_source(s, args.data_root) for s in args.data])
        check_media(samples)
        device = torch.device(args.device)
        dtype = torch.float16 if device.type == "cuda" else torch.float32  # the evaluation's encoders
        # the plain base is fine: the cache runs SigLIP and CUT3R only, never the fusion block
        pipe = load_models(model_source(args, fresh_fusion_without_adapter=True), device, dtype).pipeline
        report = FeatureCache(args.out).build(samples, pipe.vlm, pipe.cut3r, args.num_frames, force=args.force,
                                              progress=lambda i, n: print(f"\r{PROG}: video {i}/{n}", end="",
                                                                          file=sys.stderr, flush=True))
    except (ToolError, TrainDataError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(f"\n{PROG}: {report['videos']} videos, {report['written']} computed, {report['kept']} already current; "
          f"encoder hash {report['encoder_hash'][:16]}; cache {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
