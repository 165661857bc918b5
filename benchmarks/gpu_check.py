"""One command for a GPU machine: is the project fast and correct on CUDA? (< 8 minutes)

    benchmarks/gpu_check.sh                   # set-up if needed, then this script on cuda
    python benchmarks/gpu_check.py [--device cuda] [--frames 5] [--out result.json]
    python benchmarks/gpu_check.py --tiny     # tiny sizes, any device (cpu here): proves it runs

Sections, each printed as it finishes and collected in one JSON (``--out``):
  1. cut3r      full-size cut3r_512_dpt_4_64 with seeded random weights at 432x432 in float16 and
                bfloat16 (heads in float32, as the node loads them): steps/s for tokens only, with
                the pose, with pose + world points (the node default), after a warm-up.
  2. frame      SigLIP so400m (26 layers) + the fusion block + projector + pooling on one frame
                (the per-frame VLM half), float16 / bfloat16, ms per frame.
  3. ttft       time to first token for 32 frames (6,720 visual tokens) + a VSI-Bench style prompt
                with a Qwen2-7B-shaped LLM (28 layers, 3584 wide, GQA 28/4, vocab 152,064) in
                bfloat16 with random weights (~15 GiB): one prefill, ``logits_to_keep=1``.
  4. parity     every public CUT3R fixture run on the CPU and on the device (float32): the
                fixtures' robust rule on each, and the largest CPU-vs-device difference.
All weights are random (same cost as trained ones). Timings synchronise the device. With
``--tiny`` every model is a tiny test config (and 2 frames for the TTFT), so the script runs
in seconds anywhere; its numbers then mean nothing but every code path has run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

CUT3R_MODES = {"tokens": (), "pose": ("pose",), "points": ("pose", "world_points")}
TTFT_FRAMES = 32
# the public CUT3R parity fixtures: in the repository, or shared/ beside or inside the checkout
FIXTURE_DIRS = (ROOT / "test" / "fixtures" / "reference" / "cut3r", ROOT.parent / "shared" / "reference" / "cut3r",
                ROOT / "shared" / "reference" / "cut3r")
FIXTURES = next((d for d in FIXTURE_DIRS if d.is_dir()), FIXTURE_DIRS[1])


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def check_cut3r(device, dtypes, tiny: bool, frames: int) -> dict:
    import torch

    from vlm3r_ros.engine.checkpoint import build_cut3r
    from vlm3r_ros.engine.loading import random_cut3r_model

    arch = "tiny_dpt" if tiny else "cut3r_512_dpt_4_64"
    base = random_cut3r_model(arch)
    state_dict = base.state_dict()
    out = {"arch": arch, "size": "432x432"}
    pixels = torch.rand(1, 3, 432, 432, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for dtype in dtypes:
        model = build_cut3r(base.config, state_dict, device=device, dtype=dtype)  # heads stay float32
        x = pixels.to(device)
        _, state = model.step(model.init_state(1), x)  # frame 0; later frames read the pose memory
        row = {}
        for mode, heads in CUT3R_MODES.items():
            model.step(state, x, heads=heads)  # warm-up (kernels, RoPE tables)
            times = _timed(lambda: model.step(state, x, heads=heads), device, frames)
            row[mode] = {"steps_per_s": 1 / statistics.median(times), "median_ms": 1e3 * statistics.median(times)}
        out[str(dtype).replace("torch.", "")] = row
        print(f"  cut3r {arch} 432x432 {str(dtype).replace('torch.', '')}: " + ", ".join(
            f"{m} {r['steps_per_s']:.2f} steps/s ({r['median_ms']:.1f} ms)" for m, r in row.items()), flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def _vlm_config(tiny: bool, llm_layers: int | None = None):
    from vlm3r_ros.models.vlm.config import Qwen2Settings, Vlm3rConfig
    from vlm3r_ros.models.vlm.tiny import TINY_VLM3R

    if tiny:
        return TINY_VLM3R if llm_layers is None else TINY_VLM3R.replace(
            llm=Qwen2Settings(**{**vars(TINY_VLM3R.llm), "num_hidden_layers": llm_layers}))
    config = Vlm3rConfig()  # released sizes: SigLIP so400m, fusion 1152/768/18, Qwen2-7B
    if llm_layers is not None:
        config = config.replace(llm=Qwen2Settings(num_hidden_layers=llm_layers, vocab_size=1024))
    return config


def _random_vlm(config, device, dtype):
    """Random weights drawn on ``device`` (seconds for 7B on a GPU), then cast to ``dtype``."""
    from vlm3r_ros.models.vlm.tiny import random_vlm3r

    return random_vlm3r(config, seed=0, device=device).to_dtype(dtype)


def check_frame(device, dtypes, tiny: bool, frames: int) -> dict:
    import torch

    out = {}
    config = _vlm_config(tiny, llm_layers=1)  # the LLM is never run here
    for dtype in dtypes:
        model = _random_vlm(config, device, dtype)
        pixels = torch.rand(1, 3, 384, 384, device=device) * 2 - 1
        n = (432 // 16) ** 2
        camera = torch.randn(1, 1, config.spatial_dim, device=device)
        patches = torch.randn(1, n, config.spatial_dim, device=device)
        model.frame_features(pixels, camera, patches)  # warm-up
        times = _timed(lambda: model.frame_features(pixels, camera, patches), device, frames)
        out[str(dtype).replace("torch.", "")] = {"median_ms": 1e3 * statistics.median(times)}
        print(f"  frame (SigLIP + fusion + projector + pool) {str(dtype).replace('torch.', '')}: "
              f"{1e3 * statistics.median(times):.1f} ms",
              flush=True)
        del model
    return out


def check_ttft(device, tiny: bool, repeats: int) -> dict:
    import torch

    from vlm3r_ros.models.vlm.prompting import build_prompt, tokenize_with_image
    from vlm3r_ros.models.vlm.tokenizer import build_qwen2_tokenizer

    config = _vlm_config(tiny)
    frames = 2 if tiny else TTFT_FRAMES
    model = _random_vlm(config, device, torch.bfloat16)
    tokenizer = build_qwen2_tokenizer()
    ids = tokenize_with_image(build_prompt("Which of these objects is closest to the door?",
                                           ["A. sofa", "B. table", "C. lamp", "D. bed"]), tokenizer)
    g = config.pooled_grid
    pooled = torch.randn(frames, g * g, config.llm.hidden_size, device=device, dtype=torch.bfloat16)
    first = model.generate(ids, pooled, max_new_tokens=1)  # warm-up
    times = _timed(lambda: model.generate(ids, pooled, max_new_tokens=1), device, repeats)
    out = {"frames": frames, "visual_tokens": first.visual_tokens, "prompt_tokens": first.prompt_tokens,
           "llm_params": sum(p.numel() for p in model.llm.parameters()), "median_s": statistics.median(times)}
    if device.type == "cuda":
        out["cuda_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(f"  ttft: {frames} frames ({first.visual_tokens} visual tokens, {first.prompt_tokens} prompt tokens), "
          f"LLM {out['llm_params'] / 1e9:.2f} B params bf16: {out['median_s'] * 1e3:.1f} ms to the first token",
          flush=True)
    return out


def check_parity(device, fixtures_dir: Path) -> dict:
    from vlm3r_ros.engine.parity import compare, run_cut3r_fixture

    files = sorted(fixtures_dir.glob("cut3r_*.safetensors"))
    if not files:
        raise SystemExit(f"no cut3r_*.safetensors fixture in {fixtures_dir}: pass --fixtures DIR")
    out = {}
    for path in files:
        cpu, expected, _ = run_cut3r_fixture(path, "cpu")
        dev, _, _ = run_cut3r_fixture(path, device)
        reports = {"cpu": compare(cpu, expected), "device": compare(dev, expected)}
        max_diff = max(float((cpu[k].double() - dev[k].double()).abs().max()) for k in expected)
        row = {side: all(r.robust_ok for r in rep) for side, rep in reports.items()}
        row["worst_norm_err_device"] = max(r.worst_norm_err for r in reports["device"])
        row["max_abs_cpu_vs_device"] = max_diff
        out[path.stem] = row
        print(f"  parity {path.stem}: robust rule cpu {'pass' if row['cpu'] else 'FAIL'}, {device} "
              f"{'pass' if row['device'] else 'FAIL'} (worst normalised error {row['worst_norm_err_device']:.3g}); "
              f"max |cpu - {device.type}| {max_diff:.3g}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny models: a quick run anywhere (numbers mean nothing)")
    parser.add_argument("--frames", type=int, default=5, help="timed repeats per measurement (default 5)")
    parser.add_argument("--sections", default="cut3r,frame,ttft,parity", help="comma list (default all four)")
    parser.add_argument("--fixtures", type=Path, default=FIXTURES, help=f"CUT3R fixtures folder (default {FIXTURES})")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available to this torch ({torch.__version__}); "
                     f"use --tiny --device cpu to check that the script runs")
    if device.type != "cuda" and not args.tiny:
        parser.error("full sizes are for a GPU; on a CPU use --tiny")
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - {"cut3r", "frame", "ttft", "parity"}
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_check on {name} ({device}), torch {torch.__version__}, {'tiny' if args.tiny else 'full'} sizes",
          flush=True)
    started = time.perf_counter()
    dtypes = [torch.float16, torch.bfloat16]
    results = {"device": name, "torch": torch.__version__, "tiny": args.tiny}
    with torch.inference_mode():
        if "cut3r" in sections:
            results["cut3r"] = check_cut3r(device, dtypes, args.tiny, args.frames)
        if "frame" in sections:
            results["frame"] = check_frame(device, dtypes, args.tiny, args.frames)
        if "ttft" in sections:
            results["ttft"] = check_ttft(device, args.tiny, max(1, args.frames // 2))
    if "parity" in sections:
        results["parity"] = check_parity(device, args.fixtures)
    results["total_s"] = time.perf_counter() - started
    ok = all(row["cpu"] and row["device"] for row in results.get("parity", {}).values())
    results["parity_ok"] = ok
    print(f"done in {results['total_s']:.0f} s; parity {'pass' if ok else 'FAIL'}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
