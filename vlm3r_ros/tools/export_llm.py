"""Export the LLM half of VLM-3R as a standard Hugging Face Qwen2 checkpoint for vLLM.

    vlm3r-export-llm --base LLaVA-Video-7B-Qwen2/ --adapter vlm-3r-llava-qwen2-lora/ \\
                     --output vlm3r-llm/ --dtype float16
    vlm3r-export-llm --tiny-random --output out/tiny-llm    # tests: meaningless weights

The base is loaded with the VLM-3R LoRA merged and the vocabulary resized to the tokenizer, as
the local backend loads it (vlm3r_ros.engine.vlm_checkpoint), and its Qwen2 LLM written with
transformers' save_pretrained, plus tokenizer and generation config
(vlm3r_ros.engine.llm_export). Serve it with vLLM unchanged, e.g. on one GPU:

    vllm serve vlm3r-llm/ --served-model-name vlm3r --enable-prompt-embeds --dtype float16 \\
        --max-model-len 8192 --host 10.0.0.5 --port 8000 --api-key SECRET

(docs/llm_serving.md: tensor parallel, sizes, security). Exit status: 0 written, 2 a user error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vlm3r_ros.engine.loading import DTYPES
from vlm3r_ros.errors import UserError, one_line

PROG = "vlm3r-export-llm"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", "-o", type=Path, required=True, help="folder to write (created; files replaced)")
    p.add_argument("--base", type=Path, help="local LLaVA-Video-7B-Qwen2 folder (its tokenizer is read there too)")
    p.add_argument("--adapter", type=Path, help="local VLM-3R LoRA adapter folder (merged into the LLM)")
    p.add_argument("--tiny-random", action="store_true", help="the tiny random VLM-3R of the tests instead")
    p.add_argument("--seed", type=int, default=0, help="seed of the --tiny-random weights (default 0)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float16",
                   help="weights dtype written (default float16, the official evaluation's; float32 for exact "
                        "comparisons on a CPU)")
    return p


def load(args):
    """(Vlm3rModel, tokenizer, source description)."""
    import torch

    from vlm3r_ros.models.vlm.tokenizer import TokenizerError, build_qwen2_tokenizer, load_tokenizer

    dtype = DTYPES[args.dtype]
    try:
        if args.tiny_random:
            from vlm3r_ros.models.vlm.tiny import TINY_VLM3R, random_vlm3r

            return (random_vlm3r(TINY_VLM3R, seed=args.seed).to_dtype(dtype), build_qwen2_tokenizer(),
                    f"tiny random VLM-3R, seed {args.seed}")
        from vlm3r_ros.engine.vlm_checkpoint import CheckpointError, load_vlm3r

        tokenizer = load_tokenizer(args.base)
        try:
            vlm, report = load_vlm3r(args.base, args.adapter, dtype=dtype,
                                     tokenizer_size=tokenizer.get_vocab_size(with_added_tokens=True))
        except CheckpointError as exc:
            raise UserError(one_line(str(exc))) from None
        except torch.OutOfMemoryError:
            raise UserError(f"out of memory loading VLM-3R as {args.dtype}") from None
        print(report.summary(), file=sys.stderr)
        return vlm, tokenizer, f"base {args.base}, adapter {args.adapter} (LoRA merged)"
    except TokenizerError as exc:
        raise UserError(one_line(str(exc))) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.tiny_random == (args.base is not None):
            raise UserError("give either --base (with --adapter) or --tiny-random")
        if args.base is not None and args.adapter is None:
            raise UserError("--adapter is required with --base: VLM-3R's LLM is the base with its LoRA merged")
        from vlm3r_ros.engine.llm_export import export_llm

        start = time.perf_counter()
        vlm, tokenizer, source = load(args)
        try:
            out = export_llm(vlm, tokenizer, args.output, source=source)
        except (OSError, ValueError) as exc:
            raise UserError(one_line(str(exc))) from None
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({source}, {args.dtype}) in {time.perf_counter() - start:.1f} s")
    print(f"serve it: vllm serve {out} --served-model-name vlm3r --enable-prompt-embeds --dtype {args.dtype} "
          f"--max-model-len 8192")
    return 0


if __name__ == "__main__":
    sys.exit(main())
