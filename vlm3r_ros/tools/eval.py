"""``vlm3r-eval``: score VLM-3R on a VSI-Bench / VSTI-Bench style benchmark, resumably.

    vlm3r-eval BENCH.parquet --data-root VIDEOS/ -o out/eval/vsibench.jsonl \\
               --base LLaVA-Video-7B-Qwen2/ --adapter vlm-3r-llava-qwen2-lora/ --cut3r cut3r_512_dpt_4_64.pth
    vlm3r-eval BENCH.jsonl -o results.jsonl --tiny-random --limit 20 --plot scores.png   # smoke run
    vlm3r-eval BENCH.jsonl -o results.jsonl --backend live --namespace /robot1            # a running vlm3r-node

Each question goes through the backend, and its result is appended to ``--output`` (JSONL,
flushed and fsynced per line). Rerunning the same command resumes: questions already
answered are skipped (``--no-resume`` starts the file again). At the end a table of the
per-type scores and the overall score is printed (the official metrics: docs/eval.md), and a
summary JSON is written next to the results (``results.summary.json``).

Backends:
  offline (default)  the pipeline in this process: --tiny-random, or --base/--adapter/--cut3r
                     as vlm3r-ask takes them. Each scene's frames are decoded and ingested once.
  live               a running vlm3r-node, through its spatial_query service. --live-mode
                     stream (default): per scene, reset the node, stream the sampled frames to
                     its image topic one by one (each waits until the node processed it), then
                     ask; external: the frames are streamed by someone else (a simulator
                     bridge): only ask.

Exit status: 0 all answered; 2 a user error (one line on stderr); 3 some questions failed
(their error is in the results; rerun to retry them); 130 interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from vlm3r_ros.engine.loading import DTYPES, dtype_name_for, load_models
from vlm3r_ros.errors import UserError, one_line
from vlm3r_ros.eval import harness
from vlm3r_ros.eval.benchmark import BenchmarkError, check_media, load_benchmark, select_rows
from vlm3r_ros.eval.harness import HarnessError, OfflineBackend
from vlm3r_ros.eval.metrics import ScoringError
from vlm3r_ros.tools.ask import DEFAULT_MAX_NEW_TOKENS, DEFAULT_NUM_FRAMES
from vlm3r_ros.tools.llm_args import add_llm_arguments, tool_llm
from vlm3r_ros.tools.model_options import OVERRIDES_HELP, check_weight_args, model_source, parse_device, weight_options

PROG = "vlm3r-eval"
EXIT_OK, EXIT_USAGE, EXIT_FAILED_ROWS, EXIT_INTERRUPTED = 0, 2, 3, 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benchmark_file", type=Path, help="benchmark rows: .jsonl, .json or .parquet (docs/eval.md)")
    p.add_argument("--output", "-o", type=Path, required=True, help="results file (JSONL); resumed when it exists")
    p.add_argument("--data-root", type=Path, help="folder the rows' video / frame paths are relative to "
                                                  "(default: the benchmark file's folder)")
    p.add_argument("--benchmark", choices=("auto", "vsibench", "vstibench"), default="auto",
                   help="which official metric rules apply (default: told from the question types)")
    p.add_argument("--question-types", nargs="+", metavar="TYPE",
                   help="only these question types (object_rel_direction selects its three parts)")
    p.add_argument("--limit", type=int, help="only the first N selected questions")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start the results file again instead of skipping answered questions")
    p.add_argument("--num-frames", type=int, default=DEFAULT_NUM_FRAMES,
                   help=f"frames sampled uniformly per video (default {DEFAULT_NUM_FRAMES}, as VLM-3R is evaluated)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help=f"longest answer (default {DEFAULT_MAX_NEW_TOKENS}, the official setting)")
    p.add_argument("--numeric", choices=("official", "converted"), default="official",
                   help="numeric answers: official (float of the reply's first word) or converted (the reply's "
                        "number in the benchmark's unit, e.g. '1.5 m' -> 150 for a size in cm); default official")
    p.add_argument("--baselines", type=Path, metavar="TRAIN_ROWS",
                   help="also print the blind baselines beside the model's score: chance (random) and chance "
                        "(frequency), the most frequent answer per type in these training rows (.jsonl/.json/.parquet)")
    p.add_argument("--scorer", choices=("vlm3r", "lmms-eval"), default="vlm3r",
                   help="how numeric replies are read: vlm3r (the paper's: float() of the first word; default) or "
                        "lmms-eval (its current extract_number over the whole reply); docs/eval.md")
    p.add_argument("--plot", type=Path, metavar="PNG", help="also save a bar chart of the scores (needs matplotlib)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--backend", choices=("offline", "live"), default="offline", help="default offline")

    off = p.add_argument_group("offline backend (as vlm3r-ask)")
    off.add_argument("--tiny-random", action="store_true",
                     help="tiny random models: tests the pipeline, the scores are MEANINGLESS")
    off.add_argument("--base", type=Path, help="local LLaVA-Video-7B-Qwen2 folder")
    off.add_argument("--adapter", type=Path, help="local VLM-3R LoRA adapter folder")
    off.add_argument("--cut3r", type=Path, help="CUT3R checkpoint (cut3r_512_dpt_4_64.pth or .safetensors)")
    off.add_argument("--vlm-config-overrides", metavar="JSON", help=OVERRIDES_HELP)
    off.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    off.add_argument("--dtype", choices=sorted(DTYPES), help="default float16 on CUDA, float32 on CPU")
    off.add_argument("--threads", type=int, help="torch CPU threads")
    off.add_argument("--seed", type=int, default=0, help="seed of the --tiny-random weights (default 0)")

    add_llm_arguments(p)  # offline backend: where its LLM half runs
    live = p.add_argument_group("live backend (a running vlm3r-node)")
    live.add_argument("--namespace", default="", help="the node's namespace (default: none)")
    live.add_argument("--node-name", default="vlm3r_node", help="the node's name (default vlm3r_node)")
    live.add_argument("--image-topic", default="image",
                      help="topic the node reads images from, relative to the namespace (default image)")
    live.add_argument("--query-service", default="spatial_query",
                      help="the question service, relative to the namespace (default spatial_query)")
    live.add_argument("--live-mode", choices=("stream", "external"), default="stream",
                      help="stream: this tool resets the node and streams each scene; external: frames come "
                           "from elsewhere, only ask (default stream)")
    live.add_argument("--query-timeout", type=float, default=120.0, help="seconds per question (default 120)")
    live.add_argument("--frame-timeout", type=float, default=30.0,
                      help="seconds to wait for the node to process one streamed frame (default 30)")
    live.add_argument("--connect-timeout", type=float, default=30.0,
                      help="seconds to wait for the node's services (default 30)")
    return p


def check_args(args) -> None:
    for name in ("num_frames", "max_new_tokens", "limit", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if getattr(args, "baselines", None) is not None and not args.baselines.is_file():
        raise UserError(f"--baselines {args.baselines}: training rows file not found (the rows the frequency "
                        f"baseline counts answers in, e.g. the train split of vlm3r-sim-dataset)")
    weights = weight_options(args)
    if args.backend == "live":
        if args.llm_backend != "local":
            raise UserError("--llm-backend is for --backend offline; the live node's llm_backend parameter says "
                            "where its LLM runs")
        if args.tiny_random or weights:
            raise UserError("--tiny-random / --base / --adapter / --cut3r / --vlm-config-overrides are for --backend "
                            "offline; the live node loads its own weights (its vlm_config_overrides parameter)")
        for name in ("query_timeout", "frame_timeout", "connect_timeout"):
            if not getattr(args, name) > 0:
                raise UserError(f"--{name.replace('_', '-')} must be > 0")
        return
    check_weight_args(args)  # a typo in the overrides fails before the benchmark runs


def make_offline_backend(args):
    device = parse_device(args.device)
    dtype_name = dtype_name_for(args.dtype, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_models(model_source(args), device, DTYPES[dtype_name], llm=tool_llm(args))
    if loaded.report is not None:
        print(loaded.report.summary(), file=sys.stderr)
    print(f"{PROG}: models: {loaded.label} on {device} ({dtype_name}), loaded in {loaded.seconds:.1f} s",
          file=sys.stderr)
    return OfflineBackend(loaded.pipeline, num_frames=args.num_frames, max_new_tokens=args.max_new_tokens,
                          label=f"offline {loaded.label}", meaningless=bool(args.tiny_random))


def make_live_backend(args):
    # rclpy only for --backend live (live_client applies the Fast DDS setting before importing it)
    from vlm3r_ros.eval.live_client import LiveBackend, LiveError, LiveSpatialClient

    client = LiveSpatialClient(namespace=args.namespace, node_name=args.node_name, image_topic=args.image_topic,
                               query_service=args.query_service)
    try:
        client.wait_for_node(args.connect_timeout, need_reset=args.live_mode == "stream")
    except LiveError as exc:
        client.close()
        raise UserError(str(exc)) from None
    return LiveBackend(client, mode=args.live_mode, num_frames=args.num_frames, max_new_tokens=args.max_new_tokens,
                       query_timeout=args.query_timeout, frame_timeout=args.frame_timeout)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    backend = None
    try:
        check_args(args)
        bench = load_benchmark(args.benchmark_file, args.benchmark)
        rows = select_rows(bench, args.question_types, args.limit)
        if not rows:
            raise UserError(f"no question of {args.benchmark_file} is selected")
        data_root = args.data_root or bench.path.parent
        if args.backend == "offline" or args.live_mode == "stream":
            check_media(rows, data_root)
        if args.plot is not None:
            _check_matplotlib()  # before the run, not after it
        print(f"{PROG}: {bench.name}: {len(rows)} of {len(bench.rows)} questions from {bench.path}; "
              f"results in {args.output}", file=sys.stderr)
        backend = make_offline_backend(args) if args.backend == "offline" else make_live_backend(args)
        result = harness.run(bench, rows, backend, args.output, data_root=data_root, resume=args.resume,
                             progress=args.progress, numeric=args.numeric, scorer=args.scorer)
    except (UserError, BenchmarkError, ScoringError, harness.HarnessError) as exc:
        print(f"{PROG}: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the answered questions are in {args.output}: run the same command again to "
              f"resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if backend is not None:
            backend.close()

    summary = result.summary
    print(harness.format_table(summary, meaningless=backend.meaningless))
    if args.baselines is not None:
        print(_baseline_table(args, bench, rows, summary))
    summary_path = args.output.with_suffix(".summary.json")
    doc = {"benchmark_file": str(bench.path), "results": str(args.output), "backend": backend.name,
           "meaningless": backend.meaningless, "answered_this_run": result.answered,
           "skipped_already_answered": result.skipped, **summary.to_dict()}
    summary_path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"summary: {summary_path}", file=sys.stderr)
    if args.plot is not None:
        title = f"{summary.benchmark}: overall {summary.overall:.2f}" + (" (tiny random: meaningless)"
                                                                        if backend.meaningless else "")
        print(f"plot: {harness.save_plot(summary, args.plot, title=title)}", file=sys.stderr)
    return EXIT_FAILED_ROWS if summary.failed_rows else EXIT_OK


def _baseline_table(args, bench, rows, summary) -> str:
    """The model's per-type scores beside chance (random) and chance (frequency)."""
    from vlm3r_ros.eval import baselines
    from vlm3r_ros.eval.benchmark import read_raw_rows

    train_rows = read_raw_rows(args.baselines)
    columns = {"model": summary, baselines.RANDOM: baselines.random_chance(rows, bench.spec),
               baselines.FREQUENCY: baselines.frequency_chance(train_rows, rows, bench.spec, numeric=args.numeric)}
    return (f"blind baselines (frequency from {len(train_rows)} rows of {args.baselines}):\n"
            + baselines.format_comparison(columns, summary.per_type_count))


def _check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401 - only whether it imports
    except ImportError:
        raise HarnessError("--plot needs matplotlib, which is not installed: pip install -c constraints.txt "
                           "matplotlib (pinned in requirements.txt)") from None


if __name__ == "__main__":
    sys.exit(main())
