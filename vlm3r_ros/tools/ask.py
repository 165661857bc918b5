"""Ask VLM-3R a question about a video or a folder of images, offline.

    vlm3r-ask --base LLaVA-Video-7B-Qwen2/ --adapter vlm-3r-llava-qwen2-lora/ \\
              --cut3r cut3r_512_dpt_4_64.pth --video room.mp4 \\
              --question "How many chairs are in this room?"
    vlm3r-ask ... --frames FOLDER --question "Which is closer to the bed?" --options "A. sofa" "B. desk"
    vlm3r-ask --tiny-random --frames FOLDER --question "..."   # pipeline test: meaningless answers

What it does is the official VSI-Bench evaluation path (test/fixtures/reference/vlm3r/README.md, sections 2-3):

  1. Sampling: ``--num-frames`` (32) frames at ``np.linspace(0, total-1, min(total, 32), dtype=int)``.
     An image folder (png/jpg/jpeg/bmp, sorted by name, numbers compared numerically) is
     counted by its files and only the sampled images are read. A video is counted first
     (ffmpeg decodes it once without handing frames over), then streamed once more; only
     the sampled frames are kept, and each goes through the model as soon as it arrives, so a
     long video never sits in memory. A video codec must decode every frame to reach the
     sampled ones, so both passes cost a full decode.
  2. Per sampled frame, in order: SigLIP on the 384x384 frame, one CUT3R step on the same
     pixels resized to 432x432 (one stream: CUT3R's state carries from frame to frame),
     fusion, projector, 2x2 pooling.
  3. The question in the benchmark's prompt (options make it multiple choice), greedy
     decoding of at most ``--max-new-tokens`` (16) tokens, stopping at ``<|im_end|>``.

The answer, what was read from it (option letter, or number and unit), token counts and
timings are printed; ``--json`` prints them as one JSON object instead. A progress bar on
stderr counts the frames ingested, then shows "generating".

Weights: ``--base`` is the local folder of the LLaVA-Video-Qwen2 base model (its tokenizer
is read from there too), ``--adapter`` the local folder of the VLM-3R LoRA adapter
(Journey9ni/vlm-3r-llava-qwen2-lora), ``--cut3r`` the CUT3R checkpoint
(cut3r_512_dpt_4_64.pth, or a .safetensors written by vlm3r-convert-cut3r). Nothing is
downloaded. ``--vlm-config-overrides JSON`` sets VLM-3R config fields over the checkpoint's
config.json, e.g. '{"fusion_num_heads": 16, "vision": {"hidden_size": 1024}}': the SigLIP
and fusion sizes are not in a LLaVA config.json, so a model other than the released one needs
them. ``--tiny-random`` uses tiny random models and the real Qwen2 tokenizer (built
offline) instead, to test the pipeline: its answers mean nothing.

``--llm-backend openai --llm-url URL --llm-model NAME`` runs the LLM half on a vLLM server
(prompt embeddings; docs/llm_serving.md) and loads no LLM layers here.

Exit status: 0 answered, 2 a user error (one line on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from vlm3r_ros.engine.loading import DTYPES, LoadedModels, dtype_name_for, load_models
from vlm3r_ros.engine.offline_ask import AskResult, ask_sampled
from vlm3r_ros.errors import UserError, one_line
from vlm3r_ros.media.frames import open_input
from vlm3r_ros.models.vlm.prompting import PromptError, build_prompt
from vlm3r_ros.tools.llm_args import add_llm_arguments, tool_llm
from vlm3r_ros.tools.model_options import OVERRIDES_HELP, WEIGHTS_HELP, check_weight_args, model_source, parse_device

PROG = "vlm3r-ask"
ANSWER_TYPES = ("auto", "choice", "number", "text")  # as vlm3r_ros.models.vlm.answers.ANSWER_TYPES
DEFAULT_NUM_FRAMES = 32  # lmms-eval max_frames_num (Vlm3rPipeline's EVAL_NUM_FRAMES)
DEFAULT_MAX_NEW_TOKENS = 16  # the task YAMLs (EVAL_MAX_NEW_TOKENS)
TINY_RANDOM_NOTE = ("tiny random weights (CUT3R and VLM) with the real Qwen2 tokenizer: the answer is "
                    "MEANINGLESS; this only tests the pipeline")


# ---------------------------------------------------------------------- output
def result_dict(args, loaded: LoadedModels, result: AskResult, device, dtype_name: str) -> dict:
    a, s = result.answer, result.sampled
    parsed = asdict(a.parsed)
    if isinstance(parsed.get("value"), float) and math.isnan(parsed["value"]):
        parsed["value"] = None  # JSON has no NaN
    cfg = loaded.pipeline.vlm.config
    times = result.ingest_seconds
    return {
        "answer": a.text,
        "parsed": parsed,
        "question": args.question,
        "options": args.options,
        "answer_type": args.answer_type,
        "meaningless": bool(args.tiny_random),
        "note": TINY_RANDOM_NOTE if args.tiny_random else "",
        "input": str(s.source.path),
        "input_kind": s.kind,
        "total_frames": s.total,
        "frames_used": a.frames_used,
        "frame_indices": result.frame_indices,
        "skipped": result.skipped,
        "prompt_tokens": a.prompt_tokens,
        "text_tokens": a.prompt_tokens - a.visual_tokens,
        "visual_tokens": a.visual_tokens,
        "visual_tokens_per_frame": cfg.tokens_per_frame,
        "new_tokens": a.new_tokens,
        "max_context_tokens": cfg.max_context_tokens,
        "timings": {
            "load_s": loaded.seconds,
            "read_s": result.read_seconds,
            "ingest_per_frame_median_s": statistics.median(times),
            "ingest_per_frame_mean_s": statistics.fmean(times),
            "ingest_total_s": sum(times),
            "query_s": a.latency_s,
        },
        "models": loaded.label,
        "device": str(device),
        "dtype": dtype_name,
        "threads": torch.get_num_threads(),
        "load_report": loaded.report.summary() if loaded.report is not None else "",
    }


def print_plain(doc: dict) -> None:
    p = doc["parsed"]
    t = doc["timings"]
    if doc["meaningless"]:
        print(f"NOTE: {doc['note']}")
    print(f"question: {doc['question']}")
    for option in doc["options"] or ():
        print(f"  {option}")
    print(f"answer: {doc['answer'] if doc['answer'].isprintable() else repr(doc['answer'])}")
    value = "none" if p["value"] is None else f"{p['value']:g}"
    print(f"parsed ({doc['answer_type']}): choice={p['choice'] or 'none'} value={value} unit={p['unit'] or 'none'}")
    print(f"frames: {doc['frames_used']} of {doc['total_frames']} ({doc['input_kind']} {doc['input']}), "
          f"{len(doc['skipped'])} skipped")
    print(f"tokens: prompt {doc['prompt_tokens']} = text {doc['text_tokens']} + visual {doc['visual_tokens']} "
          f"({doc['visual_tokens_per_frame']} per frame); generated {doc['new_tokens']}; "
          f"context {doc['max_context_tokens']}")
    print(f"timings: load {t['load_s']:.2f} s; read {t['read_s']:.2f} s; ingest {t['ingest_per_frame_median_s']:.3f} "
          f"s/frame median ({t['ingest_total_s']:.2f} s total); query {t['query_s']:.2f} s "
          f"(prompt, prefill, decode); {doc['device']} {doc['dtype']}, {doc['threads']} threads")
    if doc["meaningless"]:
        print(f"NOTE: {doc['note']}")


# ------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", type=Path, help="video file (mp4, mov, mkv, avi, ...; read with imageio-ffmpeg)")
    source.add_argument("--frames", type=Path, help="folder of images (png/jpg/jpeg/bmp), in name order")
    parser.add_argument("--question", "-q", help="the question (required)")
    parser.add_argument("--options", nargs="+", metavar="OPTION",
                        help='answer options, e.g. "A. sofa" "B. desk" (labelled A., B., ... if given without)')
    parser.add_argument("--answer-type", choices=ANSWER_TYPES, default="auto",
                        help="what to read from the reply: auto (a letter with options, else a number), "
                             "choice, number or text (option text); default auto")
    parser.add_argument("--base", type=Path, help="local folder of the base model (LLaVA-Video-7B-Qwen2)")
    parser.add_argument("--adapter", type=Path, help="local folder of the VLM-3R LoRA adapter")
    parser.add_argument("--cut3r", type=Path, help="CUT3R checkpoint (cut3r_512_dpt_4_64.pth or .safetensors)")
    parser.add_argument("--vlm-config-overrides", metavar="JSON", help=OVERRIDES_HELP)
    parser.add_argument("--tiny-random", action="store_true",
                        help="tiny random models + the real Qwen2 tokenizer, instead of --base/--adapter/--cut3r "
                             "(tests the pipeline; the answer is meaningless)")
    parser.add_argument("--num-frames", type=int, default=DEFAULT_NUM_FRAMES,
                        help=f"frames sampled uniformly (default {DEFAULT_NUM_FRAMES}, as the official evaluation)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help=f"longest answer in tokens (default {DEFAULT_MAX_NEW_TOKENS}, as the official evaluation)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES),
                        help="default float16 on CUDA (as the official evaluation), float32 on CPU")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --tiny-random weights (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_llm_arguments(parser)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


def check_args(args) -> list[str] | None:
    """User errors that need no file and no model; returns the options (None for an open question)."""
    for name in ("num_frames", "max_new_tokens", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.question is None or not args.question.strip():
        if args.options:
            raise UserError("--options given without a question; add --question TEXT")
        raise UserError("the question is empty; give --question TEXT" if args.question is not None
                        else "--question TEXT is required")
    if args.answer_type == "choice" and not args.options:
        raise UserError("--answer-type choice needs --options")
    try:
        build_prompt(args.question, args.options)  # the remaining question / option checks
    except PromptError as exc:
        raise UserError(one_line(str(exc))) from None
    check_weight_args(args, f"; {WEIGHTS_HELP}")
    return args.options


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sampled = None
    try:
        options = check_args(args)
        device = parse_device(args.device)
        dtype_name = dtype_name_for(args.dtype, device)
        if args.threads:
            torch.set_num_threads(args.threads)
        sampled = open_input(args.video, args.frames, args.num_frames)  # input errors before the slow load
        if args.tiny_random:
            print(f"WARNING: --tiny-random: {TINY_RANDOM_NOTE}", file=sys.stderr)
        loaded = load_models(model_source(args), device, DTYPES[dtype_name], llm=tool_llm(args))
        if loaded.report is not None and not args.json:
            print(loaded.report.summary(), file=sys.stderr)
        result = ask_sampled(loaded.pipeline, sampled, args.question, options, answer_type=args.answer_type,
                             max_new_tokens=args.max_new_tokens, num_frames=args.num_frames, progress=args.progress)
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        if sampled is not None:
            sampled.source.close()
    doc = result_dict(args, loaded, result, device, dtype_name)
    if args.json:
        print(json.dumps(doc))
    else:
        print_plain(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
