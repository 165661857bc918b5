"""VLM-3R costs: visual tokens per frame and per window, per-frame time, query time, peak memory.

    python benchmarks/bench_vlm3r.py [--threads N] [--skip-realistic] [--frames 10] [--runs 5]
                                     [--realistic-frames 2] [--realistic-runs 2] [--window 32]

1. Visual tokens per frame and per ``--window``-frame window for every pool / newline mode,
   from the config (``Vlm3rConfig.tokens_per_frame``) and checked against the real
   pooling + newline code on zero tensors. The official settings: bilinear + grid 210 / 6720,
   average + grid (README demo) 182 / 5824.
2. Time, each part in its own child process (this script with ``--child``), so that peak
   resident memory (``ru_maxrss``) is that part's own:
   - ``frame``: the per-frame half of the VLM, batch 1 as at ingest: SigLIP (26 layers on
     384x384) -> fusion with the frame's CUT3R tokens -> mm_projector -> 2x2 pool, each stage
     timed; plus the image preprocessing (PIL bicubic 384, bilinear 432).
   - ``cut3r``: one CUT3R step on the 432x432 pixels (tokens only, no heads: what VLM-3R uses).
   - ``query``: the per-question half over a ``--window``-frame window: newline layout + splice
     + prefill of the whole prompt (the real Qwen2 tokenizer on a VSI-Bench style multiple-choice
     prompt), then greedy decoding of 16 new tokens, as ``Vlm3rModel.generate`` does (the first
     token comes from the prefill logits, then 15 one-token forwards with the KV cache; stop
     tokens ignored so that every run decodes 16). Prefill and per-token decode are reported
     separately; query = prefill + the 15 decode steps.
   Configurations:
   - ``tiny``: ``TINY_VLM3R`` + the tiny dpt CUT3R (the test models).
   - ``realistic``: the brief's ``TINY_VLM3R.replace(llm=QWEN2_0_5B)`` for the query (an LLM of
     Qwen2-0.5B's width and depth); the frame half with the real SigLIP so400m and the real
     fusion block (1152 wide, 18 heads, CUT3R width 768) projecting to 896; the CUT3R step with
     the released cut3r_512_dpt_4_64 architecture (793 M parameters). Each child builds only
     what it times: the frame child's LLM is cut to one small layer (it is never run), the
     query child keeps the tiny SigLIP (never run), so peak RSS is the part's own, not the
     whole model's.
   All weights are seeded random (same compute as trained ones). Inputs: rendered frames;
   CUT3R tokens for the frame half and the pooled window for the query are random tensors of
   the right shapes (values do not change the cost).

Medians over the timed frames / runs after one warm-up. On a shared CPU, other processes
inflate times (torch threads wait at barriers): the load average is printed; ``--threads 1``
is the steadiest. Numbers go into notes and docs; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vlm3r_ros.ros.launching import run_for_result  # noqa: E402

RESULT_PREFIX = "BENCH_RESULT "
N_SOURCE_FRAMES = 4  # rendered once (640x480) by the parent and cycled by the children
QUESTION = "Which of these objects is closest to the door?"
OPTIONS = ["A. sofa", "B. table", "C. lamp", "D. bed"]
NEW_TOKENS = 16  # EVAL_MAX_NEW_TOKENS
PARTS = ("frame", "cut3r", "query")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------- configs
def vlm_config(config_key: str, part: str):
    """The Vlm3rConfig a child builds (see the module docstring)."""
    from vlm3r_ros.models.vlm.config import Qwen2Settings, SiglipSettings
    from vlm3r_ros.models.vlm.tiny import QWEN2_0_5B, TINY_VLM3R

    if config_key == "tiny":
        return TINY_VLM3R
    if part == "query":
        return TINY_VLM3R.replace(llm=QWEN2_0_5B)  # the brief's realistic LLM width
    # frame half: real SigLIP + real fusion into a Qwen2-0.5B-wide projector; a stub LLM (never run)
    stub_llm = Qwen2Settings(hidden_size=QWEN2_0_5B.hidden_size, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=QWEN2_0_5B.num_attention_heads,
                             num_key_value_heads=QWEN2_0_5B.num_key_value_heads, vocab_size=16)
    return TINY_VLM3R.replace(vision=SiglipSettings(), spatial_dim=768, fusion_num_heads=18, llm=stub_llm)


def cut3r_arch(config_key: str) -> str:
    return "tiny_dpt" if config_key == "tiny" else "cut3r_512_dpt_4_64"


def token_counts(window: int) -> list[dict]:
    """Visual tokens per frame / per window for every mode: from the config, checked on real tensors."""
    import torch

    from vlm3r_ros.models.vlm.config import NEWLINE_MODES, POOL_MODES, Vlm3rConfig
    from vlm3r_ros.models.vlm.projector import add_newlines, pool_2d

    rows = []
    base = Vlm3rConfig()  # the published model's grid (27x27) and pool stride (2)
    for pool in POOL_MODES:
        for newline in NEWLINE_MODES:
            cfg = base.replace(pool_mode=pool, newline_mode=newline)
            per_window = window * cfg.tokens_per_frame + (1 if newline == "one_token" else 0)
            g = cfg.vision.grid
            pooled = pool_2d(torch.zeros(window, g * g, 4), g, pool, cfg.pool_stride)
            built = add_newlines(pooled, torch.zeros(4), newline).shape[0]
            rows.append({"pool": pool, "newline": newline, "pooled_grid": cfg.pooled_grid,
                         "per_frame": cfg.tokens_per_frame, "per_window": per_window, "built": built})
    return rows


# ---------------------------------------------------------------------- children
def _build_vlm(config):
    from vlm3r_ros.models.vlm.tiny import random_vlm3r

    return random_vlm3r(config, seed=0)


def child_frame(args, config_key: str, images) -> dict:
    import torch

    from vlm3r_ros.models.cut3r.processing import preprocess_siglip, siglip_to_cut3r

    config = vlm_config(config_key, "frame")
    t0 = time.perf_counter()
    vlm = _build_vlm(config)
    build_s = time.perf_counter() - t0
    rss_loaded = _rss_mib()
    n_cut3r = 1 + config.vision.grid ** 2  # camera + patch tokens (432 / 16 = 27)
    gen = torch.Generator().manual_seed(0)
    stages = {"preprocess": [], "siglip": [], "fusion": [], "projector": [], "pool": [], "total": []}
    timed = args.timed
    with torch.inference_mode():
        for i in range(1 + timed):
            image = images[i % len(images)]
            t = [time.perf_counter()]
            siglip = preprocess_siglip(image)
            siglip_to_cut3r(siglip)  # what ingest hands to CUT3R
            t.append(time.perf_counter())
            cam = torch.randn(1, 1, config.spatial_dim, generator=gen)
            patch = torch.randn(1, n_cut3r - 1, config.spatial_dim, generator=gen)
            t.append(time.perf_counter())  # random CUT3R tokens: not timed
            vision = vlm.vision_features(siglip[None])
            t.append(time.perf_counter())
            fused = vlm.fuse(vision, cam, patch)
            t.append(time.perf_counter())
            projected = vlm.mm_projector(fused)
            t.append(time.perf_counter())
            pooled = vlm.pool(projected)
            t.append(time.perf_counter())
            if i == 0:
                continue  # warm-up
            stages["preprocess"].append(t[1] - t[0])
            for name, k in (("siglip", 3), ("fusion", 4), ("projector", 5), ("pool", 6)):
                stages[name].append(t[k] - t[k - 1])
            stages["total"].append(t[6] - t[2])
    v = config.vision
    siglip_params = sum(p.numel() for p in vlm.vision_tower.parameters())
    return {
        "what": f"SigLIP {v.hidden_size} wide x {v.num_hidden_layers} layers ({siglip_params / 1e6:.2f} M), "
                f"fusion {v.hidden_size}/{config.fusion_num_heads} heads <- CUT3R {config.spatial_dim}, "
                f"projector -> {config.llm.hidden_size}, {config.pool_mode} pool",
        "timed": timed, "median_s": {k: statistics.median(x) for k, x in stages.items()},
        "min_total_s": min(stages["total"]), "pooled_shape": list(pooled.shape), "build_s": build_s,
        "rss_loaded_mib": rss_loaded,
    }


def child_cut3r(args, config_key: str, images) -> dict:
    from vlm3r_ros.engine.cut3r_stream import Cut3rStream
    from vlm3r_ros.engine.loading import random_cut3r_model

    arch = cut3r_arch(config_key)
    t0 = time.perf_counter()
    model = random_cut3r_model(arch, seed=0)
    build_s = time.perf_counter() - t0
    rss_loaded = _rss_mib()
    stream = Cut3rStream(model, preprocessing="vlm3r")
    pixels = [stream.prepare(img) for img in images]  # (3, 432, 432)
    times = []
    for i in range(1 + args.timed):
        res = stream.step(pixels[i % len(pixels)], with_heads=False)
        if i > 0:
            times.append(res.step_seconds)
    return {
        "what": f"{arch} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M), 432x432, tokens only",
        "timed": len(times), "median_s": {"step": statistics.median(times)}, "min_total_s": min(times),
        "camera_token": list(res.camera_token.shape), "patch_tokens": list(res.patch_tokens.shape),
        "build_s": build_s, "rss_loaded_mib": rss_loaded,
    }


def child_query(args, config_key: str) -> dict:
    import torch

    from vlm3r_ros.models.vlm.prompting import build_prompt, tokenize_with_image
    from vlm3r_ros.models.vlm.tokenizer import build_qwen2_tokenizer

    config = vlm_config(config_key, "query")
    t0 = time.perf_counter()
    vlm = _build_vlm(config)
    build_s = time.perf_counter() - t0
    rss_loaded = _rss_mib()
    ids = tokenize_with_image(build_prompt(QUESTION, OPTIONS), build_qwen2_tokenizer())
    g, h = config.pooled_grid, config.llm.hidden_size
    pooled = torch.randn(args.window, g * g, h, generator=torch.Generator().manual_seed(0)) * 0.02
    llm = vlm.llm

    def prefill(window_frames: int):
        visual = vlm.visual_sequence(pooled[:window_frames])
        embeds = vlm.splice(ids, visual)
        out = llm(inputs_embeds=embeds[None], use_cache=True, logits_to_keep=1)
        return out, embeds.shape[0], visual.shape[0]

    def decode(out, steps: int) -> list[float]:
        cache, next_id, times = out.cache, int(out.logits[0, -1].argmax()), []
        for _ in range(steps):
            start = time.perf_counter()
            out = llm(input_ids=torch.tensor([[next_id]]), cache=cache, use_cache=True, logits_to_keep=1)
            cache, next_id = out.cache, int(out.logits[0, -1].argmax())
            times.append(time.perf_counter() - start)
        return times

    with torch.inference_mode():
        warm, _, _ = prefill(1)  # warm-up: one frame, two decode steps
        decode(warm, 2)
        prefill_s, decode_s, query_s = [], [], []
        for _ in range(args.timed):
            start = time.perf_counter()
            out, prompt_tokens, visual_tokens = prefill(args.window)
            prefill_s.append(time.perf_counter() - start)
            steps = decode(out, NEW_TOKENS - 1)  # token 1 comes from the prefill logits
            decode_s.append(statistics.median(steps))
            query_s.append(prefill_s[-1] + sum(steps))
            del out
    q = config.llm
    return {
        "what": f"Qwen2 {q.hidden_size} wide x {q.num_hidden_layers} layers "
                f"({sum(p.numel() for p in llm.parameters()) / 1e6:.0f} M incl. {q.vocab_size:,}-row embed + head)",
        "timed": args.timed, "prompt_tokens": prompt_tokens, "visual_tokens": visual_tokens,
        "text_tokens": prompt_tokens - visual_tokens, "window": args.window, "new_tokens": NEW_TOKENS,
        "median_s": {"prefill": statistics.median(prefill_s), "decode_per_token": statistics.median(decode_s),
                     "query": statistics.median(query_s)},
        "min_total_s": min(query_s), "build_s": build_s, "rss_loaded_mib": rss_loaded,
    }


def run_child(args) -> int:
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    config_key, part = args.child
    if part == "query":
        result = child_query(args, config_key)
    else:
        images = list(np.load(args.frames_file))
        result = (child_frame if part == "frame" else child_cut3r)(args, config_key, images)
    result.update({"config": config_key, "part": part, "threads": torch.get_num_threads(),
                   "peak_rss_mib": _peak_rss_mib()})
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------- parent
def spawn(args, config_key: str, part: str, timed: int, frames_file: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", config_key, part, "--timed", str(timed),
           "--frames-file", frames_file, "--window", str(args.window)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    result = run_for_result(cmd, RESULT_PREFIX, f"{config_key}/{part}")
    m = result["median_s"]
    main_value = m.get("total", m.get("step", m.get("query")))
    print(f"  {config_key:<9} {part:<6} median {main_value:.4f} s over {result['timed']}, peak RSS "
          f"{result['peak_rss_mib']:,.0f} MiB (child wall {result['wall_s']:.0f} s, load average "
          f"{os.getloadavg()[0]:.2f})", flush=True)
    return result


def print_tokens(rows: list[dict], window: int) -> None:
    print(f"\nVisual tokens (27x27 SigLIP grid, pool stride 2; from Vlm3rConfig.tokens_per_frame, checked by "
          f"building the sequence):")
    header = f"{'pool':<9} {'newline':<10} {'pooled':>7} {'per frame':>10} {f'per {window} frames':>15}  built"
    print(header)
    print("-" * len(header))
    for r in rows:
        mark = "ok" if r["built"] == r["per_window"] else f"MISMATCH {r['built']}"
        g = r["pooled_grid"]
        print(f"{r['pool']:<9} {r['newline']:<10} {f'{g}x{g}':>7} {r['per_frame']:>10} {r['per_window']:>15}  {mark}")
    official = {(r["pool"], r["newline"]): r for r in rows}
    b, a = official[("bilinear", "grid")], official[("average", "grid")]
    print(f"official eval (bilinear + grid): {b['per_frame']} / {b['per_window']}; "
          f"README demo (average + grid): {a['per_frame']} / {a['per_window']}")


def print_table(results: list[dict]) -> None:
    print()
    header = (f"{'config':<9} {'part':<28} {'median s':>10} {'n':>3} {'peak RSS MiB':>13}  what")
    print(header)
    print("-" * 120)
    for r in results:
        m, cfg, rss = r["median_s"], r["config"], f"{r['peak_rss_mib']:,.0f}"
        if r["part"] == "frame":
            rows = [("frame half total /frame", m["total"], rss, r["what"]),
                    ("  SigLIP", m["siglip"], "", ""), ("  fusion", m["fusion"], "", ""),
                    ("  projector", m["projector"], "", ""), ("  pool", m["pool"], "", ""),
                    ("preprocess 384+432 /frame", m["preprocess"], "", "PIL bicubic 384, bilinear 432")]
        elif r["part"] == "cut3r":
            rows = [("CUT3R step /frame", m["step"], rss, r["what"])]
        else:
            rows = [(f"query ({r['window']} frames)", m["query"], rss,
                     f"{r['what']}; prompt {r['prompt_tokens']} = {r['visual_tokens']} visual + "
                     f"{r['text_tokens']} text, {r['new_tokens']} new"),
                    ("  prefill", m["prefill"], "", ""),
                    ("  decode /token", m["decode_per_token"], "", "")]
        for name, value, rss_text, what in rows:
            print(f"{cfg:<9} {name:<28} {value:>10.4f} {r['timed']:>3} {rss_text:>13}  {what}".rstrip())
    print()
    by = {(r["config"], r["part"]): r for r in results}
    for cfg in ("tiny", "realistic"):
        if all((cfg, p) in by for p in PARTS):
            per_frame = by[(cfg, "frame")]["median_s"]["total"] + by[(cfg, "frame")]["median_s"]["preprocess"] \
                + by[(cfg, "cut3r")]["median_s"]["step"]
            q = by[(cfg, "query")]
            print(f"{cfg}: ingest ~{per_frame:.3f} s/frame (preprocess + frame half + CUT3R step); a "
                  f"{q['window']}-frame window = {q['window'] * per_frame:.1f} s of ingest, then a query of "
                  f"{q['median_s']['query']:.2f} s")


def run_parent(args) -> int:
    import numpy as np
    import torch

    from vlm3r_ros.media.sample_scene import generate_sequence

    print(f"torch {torch.__version__}, cpu float32, threads {args.threads or torch.get_num_threads()} "
          f"(of {os.cpu_count()} CPUs), load average {os.getloadavg()[0]:.2f} at start")
    print_tokens(token_counts(args.window), args.window)
    print("\nTimings (each part in a fresh process):", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_vlm3r_") as tmp:
        frames_file = str(Path(tmp) / "frames.npy")
        np.save(frames_file, np.stack(generate_sequence(N_SOURCE_FRAMES)))
        plan = [("tiny", "frame", args.frames), ("tiny", "cut3r", args.frames), ("tiny", "query", args.runs)]
        if not args.skip_realistic:
            plan += [("realistic", "frame", args.realistic_frames), ("realistic", "cut3r", args.realistic_frames),
                     ("realistic", "query", args.realistic_runs)]
        for config_key, part, timed in plan:
            results.append(spawn(args, config_key, part, timed, frames_file))
    print_table(results)
    print(f"load average {os.getloadavg()[0]:.2f} at end (other work on this machine inflates times)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-realistic", action="store_true",
                        help="only the tiny configuration (the realistic one takes minutes on a CPU)")
    parser.add_argument("--frames", type=int, default=10, help="timed frames, tiny (default 10)")
    parser.add_argument("--runs", type=int, default=5, help="timed queries, tiny (default 5)")
    parser.add_argument("--realistic-frames", type=int, default=2, help="timed frames, realistic (default 2)")
    parser.add_argument("--realistic-runs", type=int, default=2, help="timed queries, realistic (default 2)")
    parser.add_argument("--window", type=int, default=32, help="frames per query window (default 32)")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "PART"), help=argparse.SUPPRESS)
    parser.add_argument("--timed", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--frames-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.frames, args.runs, args.realistic_frames, args.realistic_runs, args.window) < 1:
        parser.error("--frames, --runs, --realistic-frames, --realistic-runs and --window must be >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    return run_child(args) if args.child else run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
