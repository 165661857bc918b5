"""Time to first token and total latency of a question vs window size, with and without the
visual-prefix KV cache.

    python benchmarks/bench_query.py                          # tiny, windows 8/16/32/64
    python benchmarks/bench_query.py --size 0.5b --windows 8,16,32 --runs 1
    python benchmarks/bench_query.py --size 0.5b --windows 64 --runs 1 --warmup-frames 8

For each window of F frames (seeded random pooled tokens of the real layout: 196 per frame,
210 with the grid newlines), a VSI-Bench style multiple-choice question, 16 new tokens
(stop tokens ignored so every run decodes 16), greedy, in this process (no ROS):

* ``off``: no cache: one prefill of the whole prompt, then decoding (what every question cost
  before the cache).
* ``first``: cache on, first question on this window: the visual prefix is computed
  (``Vlm3rModel.prefill_prefix``), then the question on it. What a cache miss costs.
* ``repeat``: cache on, the same window again (a second question): only the question and the
  assistant header are prefilled. Goal: total <= 0.2 x ``off``.
* ``+1 keyframe``: stream mode with keyframes: the prefix of the first F-1 frames is cached,
  one new keyframe arrives, the question extends the prefix by that frame and answers. Goal:
  time to first token <= 0.3 x a cold prefill of the same F frames (``off`` TTFT). The last
  column splits that TTFT into extending the prefix (one frame's tokens over the cached F-1)
  and the question's own part (its ~50 tokens' prefill and generate's set-up, what a
  ``repeat`` costs too), so the fixed part of the ratio is visible: about 1/F + repeat/off.

Sizes: ``tiny`` (the test model, ``TINY_VLM3R``) and ``0.5b`` (``TINY_VLM3R`` with the LLM at
Qwen2-0.5B's width and depth, as ``bench_vlm3r.py``'s realistic query). Weights are seeded
random (same compute as trained ones). Medians over ``--runs`` after one warm-up on the
smallest window; the ratios compare runs of the same process, so machine load affects both
sides. Numbers go into notes and docs; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QUESTION = "Which of these objects is closest to the door?"
OPTIONS = ["A. sofa", "B. table", "C. lamp", "D. bed"]
NEW_TOKENS = 16


def first_token_streamer(start: float):
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):
        """The time of the first generated token (the first ``put`` is the prompt)."""

        def __init__(self):
            self.puts, self.first = 0, float("nan")

        def put(self, value):
            self.puts += 1
            if self.puts == 2:
                self.first = time.perf_counter() - start

        def end(self):
            pass

    return FirstToken()


def build(size: str):
    from vlm3r_ros.models.vlm.tiny import QWEN2_0_5B, TINY_VLM3R, random_vlm3r

    config = TINY_VLM3R if size == "tiny" else TINY_VLM3R.replace(llm=QWEN2_0_5B)
    return random_vlm3r(config, seed=0)


def timed(vlm, ids, pooled, prefix=None, prefix_build=None):
    """(time to first token, total, time in ``prefix_build``) in seconds; ``prefix_build()`` (if given)
    runs inside the timing, so TTFT - build is the question's own part (its prefill and generate's set-up)."""
    start = time.perf_counter()
    if prefix_build is not None:
        prefix = prefix_build()
    built = time.perf_counter() - start
    streamer = first_token_streamer(start)
    vlm.generate(ids, pooled, max_new_tokens=NEW_TOKENS, stop_token_ids=(), prefix=prefix, streamer=streamer)
    return streamer.first, time.perf_counter() - start, built


def run_window(vlm, ids, head, frames: int, runs: int, hidden: int):
    import torch

    torch.manual_seed(frames)
    pooled = torch.randn(frames, 196, hidden, dtype=vlm.dtype)
    rows = {"off": [], "first": [], "repeat": [], "+1 keyframe": []}
    for _ in range(runs):
        rows["off"].append(timed(vlm, ids, pooled))
        holder = {}

        def first_build():
            holder["prefix"] = vlm.prefill_prefix(head, pooled)
            return holder["prefix"]

        rows["first"].append(timed(vlm, ids, pooled, prefix_build=first_build))
        rows["repeat"].append(timed(vlm, ids, pooled, prefix=holder["prefix"]))
        base = vlm.prefill_prefix(head, pooled[:-1])  # cached before the new keyframe came (not timed)
        rows["+1 keyframe"].append(timed(vlm, ids, pooled, prefix_build=lambda: vlm.prefill_prefix(head, pooled,
                                                                                                    base)))
        del holder, base
    return {k: tuple(statistics.median(run[i] for run in v) for i in range(3)) for k, v in rows.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "0.5b"), default="tiny")
    parser.add_argument("--windows", default="8,16,32,64", help="frames per window, comma separated")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per window (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--warmup-frames", type=int, default=0,
                        help="window of the untimed warm-up run (default: the smallest window)")
    args = parser.parse_args(argv)

    import torch

    from vlm3r_ros.models.vlm.modeling_vlm3r import IMAGE_TOKEN_INDEX
    from vlm3r_ros.models.vlm.prompting import build_prompt, tokenize_with_image
    from vlm3r_ros.models.vlm.tokenizer import build_qwen2_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    windows = [int(w) for w in args.windows.split(",") if w]
    vlm = build(args.size)
    hidden = vlm.config.llm.hidden_size
    ids = tokenize_with_image(build_prompt(QUESTION, OPTIONS), build_qwen2_tokenizer())
    head = ids[:ids.index(IMAGE_TOKEN_INDEX)]
    print(f"size {args.size} (LLM {vlm.config.llm.num_hidden_layers} layers x {hidden}), float32 on CPU, "
          f"{torch.get_num_threads()} torch thread(s), load average {os.getloadavg()[0]:.1f}; {NEW_TOKENS} new "
          f"tokens; median of {args.runs} run(s)")
    run_window(vlm, ids, head, args.warmup_frames or min(windows), 1, hidden)  # warm-up
    print(f"| frames | prompt tokens | TTFT off | TTFT first | TTFT repeat | TTFT +1 keyframe | total off | "
          f"total first | total repeat | total +1 keyframe | repeat / off (total) | +1 keyframe / off (TTFT) | "
          f"+1 keyframe TTFT: extend + question |")
    print("|---" * 13 + "|")
    for frames in windows:
        r = run_window(vlm, ids, head, frames, args.runs, hidden)
        tokens = len(ids) - 1 + frames * vlm.config.tokens_per_frame
        ttft = " | ".join(f"{r[k][0]:.3f}" for k in r)
        total = " | ".join(f"{r[k][1]:.3f}" for k in r)
        extend = r["+1 keyframe"][2]
        print(f"| {frames} | {tokens} | {ttft} | {total} | {r['repeat'][1] / r['off'][1]:.3f} | "
              f"{r['+1 keyframe'][0] / r['off'][0]:.3f} | {extend:.3f} + {r['+1 keyframe'][0] - extend:.3f} |",
              flush=True)
    print("(seconds; TTFT = time to first token; 'first' includes computing the prefix, '+1 keyframe' "
          "extending a cached prefix of F-1 frames by one; its TTFT split: extending the prefix + the "
          "question's prefill up to the first token)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
