"""K robots asking questions: one shared vLLM server (llm_backend openai) vs K in-process LLMs (local).

    .venv/bin/python benchmarks/bench_llm_serving.py [--robots 1 2 4 8] [--questions 4]
                                                     [--min-frames 8] [--max-frames 32]
                                                     [--llm-url URL --llm-model NAME]

Each simulated robot is its own process (multiprocessing spawn, one torch thread) holding
the tiny random VLM-3R (models/vlm/tiny.py): the whole model for ``local``, the robot's part
only (no LLM layers) + the HTTP client for ``openai``. It ingests ``--max-frames`` rendered
frames (the per-frame half, not timed), waits for every other robot (a barrier), then asks
``--questions`` questions, each over the last N frames with N drawn in
[--min-frames, --max-frames] (210 visual tokens per frame: 1,680 to 6,720), greedy, up to 16
new tokens. Reported per (backend, K): answers/s over all robots (answers / wall time from the
barrier to the last answer), p50 / p95 latency of one question, mean resident memory (VmRSS)
per robot process, and for openai the server's resident memory (all its processes).

Without --llm-url the script exports the tiny LLM (vlm3r-export-llm --tiny-random, float32)
and starts vLLM from .venv-vllm (scripts/setup_vllm.sh) on 127.0.0.1 with --max-model-len
8192, and stops it at the end. On a shared CPU the numbers move with the load (printed);
the comparison is within one run. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVED_NAME = "vlm3r-tiny"


def rss_bytes(pid: int | str = "self") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss_bytes(root_pid: int) -> int:
    """Resident memory of a process and all its descendants (vLLM: API server + engine core)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        pid, ppid = map(int, line.split())
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += rss_bytes(pid)
        todo.extend(children.get(pid, []))
    return total


# ------------------------------------------------------------------ one robot (child process)
def robot(index: int, backend: str, url: str, model: str, questions: int, min_frames: int, max_frames: int,
          barrier, results) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from vlm3r_ros.engine.llm_backend import OpenAiLlm, OpenAiSettings, strip_llm_layers
    from vlm3r_ros.engine.vlm3r_pipeline import Vlm3rPipeline
    from vlm3r_ros.models.cut3r.tiny import random_cut3r
    from vlm3r_ros.models.vlm.tiny import random_vlm3r
    from vlm3r_ros.models.vlm.tokenizer import build_qwen2_tokenizer

    vlm, llm = random_vlm3r(seed=0), None
    if backend == "openai":
        strip_llm_layers(vlm)
        llm = OpenAiLlm(OpenAiSettings(url, model, timeout_s=600.0))
    pipeline = Vlm3rPipeline(vlm, random_cut3r("tiny_dpt", seed=0), build_qwen2_tokenizer(), llm=llm)
    rng = np.random.default_rng(index)
    stream = pipeline.new_stream()
    features = [pipeline.ingest(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), stream)
                for _ in range(max_frames)]
    barrier.wait()
    start, latencies = time.perf_counter(), []
    for q in range(questions):
        n = int(rng.integers(min_frames, max_frames + 1))
        answer = pipeline.answer(features[-n:], f"How many chairs are in the room? ({index}.{q})",
                                 answer_type="number", max_new_tokens=16)
        latencies.append(answer.latency_s)
    results.put((index, time.perf_counter() - start, latencies, rss_bytes()))


def run(backend: str, k: int, args, url: str, model: str) -> dict:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(k + 1), ctx.Queue()
    procs = [ctx.Process(target=robot, args=(i, backend, url, model, args.questions, args.min_frames,
                                             args.max_frames, barrier, results)) for i in range(k)]
    for p in procs:
        p.start()
    barrier.wait(timeout=1800)
    begin = time.perf_counter()
    rows = [results.get(timeout=3600) for _ in procs]
    wall = time.perf_counter() - begin
    for p in procs:
        p.join()
    latencies = sorted(x for _, _, lat, _ in rows for x in lat)
    return {"backend": backend, "k": k, "answers": len(latencies), "wall": wall,
            "answers_per_s": len(latencies) / wall, "p50": statistics.median(latencies),
            "p95": latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))],
            "rss_mib": statistics.mean(r for *_, r in rows) / 2**20}


# ------------------------------------------------------------------ the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path):
    from vlm3r_ros.tools.export_llm import main as export_main
    from vlm3r_ros.tools.vllm_server import CPU_SERVER_ENV, VLLM_PYTHON, server_argv, wait_healthy

    if not VLLM_PYTHON.is_file():
        sys.exit(f"no {VLLM_PYTHON}: run `make setup` (scripts/setup_vllm.sh), or pass --llm-url of a running server")
    model_dir = tmp / "vlm3r-tiny"
    if export_main(["--tiny-random", "--dtype", "float32", "--output", str(model_dir)]) != 0:
        sys.exit("export failed")
    port = free_port()
    log = open(tmp / "vllm.log", "wb")
    proc = subprocess.Popen(server_argv(model_dir, served_name=SERVED_NAME, port=port, max_model_len=8192,
                                        max_num_seqs=16), env={**os.environ, **CPU_SERVER_ENV}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    begin = time.monotonic()
    why = wait_healthy(port, lambda: proc.poll() is None, 1200)
    if why is not None:
        proc.kill()
        sys.exit(f"vLLM did not start ({why}); see {tmp / 'vllm.log'}")
    print(f"vLLM server up in {time.monotonic() - begin:.0f} s on port {port}", file=sys.stderr)
    return proc, f"http://127.0.0.1:{port}/v1"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--robots", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--questions", type=int, default=4, help="questions per robot (default 4)")
    p.add_argument("--min-frames", type=int, default=8)
    p.add_argument("--max-frames", type=int, default=32)
    p.add_argument("--backends", nargs="+", choices=("local", "openai"), default=["openai", "local"])
    p.add_argument("--llm-url", help="a running server (default: start vLLM from .venv-vllm)")
    p.add_argument("--llm-model", default=SERVED_NAME)
    args = p.parse_args()
    server, url = None, args.llm_url
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as tmp:
        if "openai" in args.backends and url is None:
            server, url = start_server(Path(tmp))
        try:
            rows = []
            for backend in args.backends:
                for k in args.robots:
                    row = run(backend, k, args, url or "", args.llm_model)
                    if backend == "openai" and server is not None:
                        row["server_mib"] = tree_rss_bytes(server.pid) / 2**20
                    rows.append(row)
                    print(f"{backend} K={k}: {row['answers_per_s']:.2f} answers/s, p50 {row['p50']:.2f} s, "
                          f"p95 {row['p95']:.2f} s, RSS/robot {row['rss_mib']:.0f} MiB "
                          f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr)
        finally:
            if server is not None:
                server.terminate()
                try:
                    server.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, 9)
    print(f"\n{args.questions} questions per robot over {args.min_frames}-{args.max_frames} frame windows "
          f"(tiny random VLM-3R, float32, 1 torch thread per robot; load average {os.getloadavg()[0]:.1f})\n")
    print("| backend | robots K | answers/s | p50 latency (s) | p95 latency (s) | RSS per robot (MiB) "
          "| server RSS (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        server_rss = f"{r['server_mib']:.0f}" if "server_mib" in r else "-"
        print(f"| {r['backend']} | {r['k']} | {r['answers_per_s']:.2f} | {r['p50']:.2f} | {r['p95']:.2f} | "
              f"{r['rss_mib']:.0f} | {server_rss} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
