"""The training loop, measured on this CPU (not a test): sim rooms -> QA -> train a tiny VLM-3R -> score.

    .venv/bin/python benchmarks/bench_train.py --out out/bench_train --rooms 16 --steps 400

1. vlm3r-sim-dataset: --rooms procedural pybullet rooms, split train/test by room (3:1), QA rows.
2. The tiny random VLM-3R (its frozen LLM at trained scales: trainable_scale_tiny) + tiny CUT3R.
3. Scores on the test rooms' VSI-Bench rows: untrained, chance (random), chance (frequency from the
   training rows), trained (--steps optimizer steps, batch 1, lr --lr, official LoRA r 128 / alpha 256,
   features from the cache, no time instruction: the scores come through the evaluation prompt).
4. Training throughput (samples/s) with and without the feature cache (a few steps each), peak RSS.
Prints one table and writes OUT/bench.json, OUT/run/loss.png and the trained model's answers
(OUT/predictions_trained.jsonl). Tiny random models: the point is the
loop and whether training moves the score, not the score itself.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch


def answer_rows(pipe, rows, data_root, frames):
    """Each test row answered through the normal pipeline (one ingest per video)."""
    from vlm3r_ros.eval.benchmark import resolve_media
    from vlm3r_ros.eval.harness import load_scene_frames

    records, by_video = [], {}
    for row in rows:
        by_video.setdefault(row.video_path, []).append(row)
    for video, group in by_video.items():
        clip = load_scene_frames(resolve_media(group[0], data_root), frames)
        stream = pipe.new_stream()
        feats = [pipe.ingest(im, stream) for im in clip.images]
        for row in group:
            options = list(row.options) if row.options else None
            reply = pipe.answer(feats, row.question, options)
            records.append({**row.to_dict(), "prediction": reply.text})
    return records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/bench_train")
    p.add_argument("--rooms", type=int, default=16)
    p.add_argument("--frames", type=int, default=8, help="frames rendered per room")
    p.add_argument("--num-frames", type=int, default=4, help="frames sampled per clip for training and scoring")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from vlm3r_ros.engine.vlm3r_pipeline import Vlm3rPipeline
    from vlm3r_ros.eval import baselines
    from vlm3r_ros.eval.benchmark import load_benchmark
    from vlm3r_ros.eval.metrics import score
    from vlm3r_ros.models.cut3r.tiny import random_cut3r
    from vlm3r_ros.models.vlm.tiny import random_vlm3r
    from vlm3r_ros.models.vlm.tokenizer import build_qwen2_tokenizer
    from vlm3r_ros.train.data import load_mix, parse_source
    from vlm3r_ros.train.feature_cache import FeatureCache
    from vlm3r_ros.train.model import trainable_scale_tiny
    from vlm3r_ros.train.run import LoadedBase, TrainOptions, train
    from vlm3r_ros.train.sim_dataset import SimDatasetOptions, make_sim_dataset
    from vlm3r_ros.train.trainer import LOSS_PLOT

    out = Path(args.out)
    t0 = time.perf_counter()
    make_sim_dataset(SimDatasetOptions(out=str(out / "data"), rooms=args.rooms, fractions=(3, 0, 1),
                                       frames=args.frames, size=(160, 120), types=None))
    sim_s = time.perf_counter() - t0
    train_file, test_file = out / "data" / "qa_train_vsibench.jsonl", out / "data" / "qa_test_vsibench.jsonl"
    test = load_benchmark(test_file)
    tok = build_qwen2_tokenizer()

    def fresh():
        return LoadedBase(trainable_scale_tiny(random_vlm3r()), random_cut3r("tiny_dpt"), tok, "tiny-random")

    base = fresh()
    untrained = score(answer_rows(Vlm3rPipeline(base.vlm, base.cut3r, tok), test.rows, test_file.parent,
                                  args.num_frames), test.spec)
    samples = load_mix([parse_source(str(train_file))])
    t0 = time.perf_counter()
    FeatureCache(out / "cache").build(samples, base.vlm, base.cut3r, args.num_frames)
    cache_s = time.perf_counter() - t0

    common = dict(data=[str(train_file)], num_frames=args.num_frames, lora_dropout=0.0, fusion_dropout=0.0,
                  learning_rate=args.lr, grad_accum=1, save_steps=10**6, logging_steps=10,
                  gradient_checkpointing=False, progress=False,
                  time_instruction=False)  # scored through the evaluation prompt, which has none
    speed = {}
    for name, cache in (("no cache", None), ("feature cache", str(out / "cache"))):
        tr = train(TrainOptions(output_dir=str(out / f"speed_{name.replace(' ', '_')}"), max_steps=8,
                                feature_cache=cache, **common), fresh())
        speed[name] = tr.state.log_history[-1]["train_samples_per_second"]
    base = fresh()
    cut3r = base.cut3r
    t0 = time.perf_counter()
    trainer = train(TrainOptions(output_dir=str(out / "run"), max_steps=args.steps, feature_cache=str(out / "cache"),
                                 **common), base)
    train_s = time.perf_counter() - t0
    model = trainer.model.eval()
    model.vlm.llm = model.vlm.llm.merge_and_unload()
    trained_records = answer_rows(Vlm3rPipeline(model.vlm, cut3r, tok), test.rows, test_file.parent, args.num_frames)
    trained = score(trained_records, test.spec)
    with open(out / "predictions_trained.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, default=str) + "\n" for r in trained_records)
    train_rows = [json.loads(line) for line in train_file.read_text().splitlines()]
    columns = {"untrained": untrained, baselines.RANDOM: baselines.random_chance(test.rows, test.spec),
               baselines.FREQUENCY: baselines.frequency_chance(train_rows, test.rows, test.spec), "trained": trained}
    table = baselines.format_comparison(columns, trained.per_type_count)
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"sim dataset: {args.rooms} rooms ({len(samples)} train rows, {len(test.rows)} test rows), {sim_s:.0f} s; "
          f"feature cache {cache_s:.1f} s")
    print(f"training: {args.steps} steps in {train_s:.0f} s; loss {losses[0]:.3f} -> {losses[-1]:.3f}; "
          f"curve {out / 'run' / LOSS_PLOT}")
    print(f"samples/s: no cache {speed['no cache']:.2f}, feature cache {speed['feature cache']:.2f} "
          f"(x{speed['feature cache'] / speed['no cache']:.1f}); peak RSS {rss_mib:.0f} MiB")
    print(table)
    (out / "bench.json").write_text(json.dumps({
        "rooms": args.rooms, "train_rows": len(samples), "test_rows": len(test.rows), "steps": args.steps,
        "lr": args.lr, "num_frames": args.num_frames, "train_seconds": train_s, "loss_first": losses[0],
        "loss_last": losses[-1], "samples_per_s": speed, "peak_rss_mib": rss_mib,
        "scores": {k: (v.per_type if hasattr(v, "per_type") else v) for k, v in columns.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
