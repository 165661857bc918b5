"""``vlm3r-sim-eval``: simulator -> bridge -> node -> /spatial_query -> per-type scores, end to end.

    vlm3r-sim-eval                                   # tiny random weights: scores are MEANINGLESS
    vlm3r-sim-eval --params-file my_vlm3r.yaml --frames 32 --size 640x480   # real weights: the real test

The whole loop in separate processes over DDS, in five steps:

1. starts ``vlm3r-node`` (``--params-file``, default config/tiny.yaml: TINY RANDOM WEIGHTS)
   with ``use_sim_time:=true`` and waits for its ``spatial_query`` service;
2. starts ``vlm3r-sim-bridge`` (``--bridge-params``, default config/sim_bridge.yaml, with the
   options below on top) in lockstep with the node, so the node takes EVERY published frame,
   and shows progress until the trajectory ends;
3. reads the ground truth the bridge wrote for exactly the published frames
   (OUT/sim/scene_graph.json);
4. generates questions with known answers from it through the QA generators
   (:mod:`vlm3r_ros.data.qa.registry`, as ``vlm3r-gen-qa`` does), one file per benchmark
   (OUT/qa_vsibench.jsonl, OUT/qa_vstibench.jsonl);
5. asks them over ``/spatial_query`` with the live client of :mod:`vlm3r_ros.eval`
   (``LiveBackend`` in ``external`` mode: the bridge streamed the frames; each question uses
   all of them) and scores them with the official metrics: a per-type table per benchmark,
   results in OUT/results_*.jsonl and the scores in OUT/scores.json.

On tiny random weights every answer is noise and the scores mean nothing; the command says
so loudly. With real weights (``--params-file`` naming them) it is the real test.

Unless ROS_DOMAIN_ID is set, a random domain (1..101) on this host only is used, so the run
never talks to a robot on the network. The children's logs are OUT/node.log and OUT/bridge.log.
Exit status: 0 done, 1 a step failed (its reason and the child's last lines are printed),
2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from vlm3r_ros.eval import harness
from vlm3r_ros.eval.benchmark import load_benchmark
from vlm3r_ros.eval.live_client import LiveBackend, LiveError, LiveSpatialClient
from vlm3r_ros.ros import config_dir
from vlm3r_ros.ros.launching import (Child, ParamsFileError, child_environment, console_script, read_node_params,
                                     weights_description)
from vlm3r_ros.ros.sim_eval_steps import (NODE_START_TIMEOUT_S, SimEvalError, bridge_argv, generate_questions,
                                          read_ground_truth, wait_for_bridge, wait_for_node)
from vlm3r_ros.tools.llm_args import add_llm_arguments, node_llm_parameters, openai_settings

from .cli import image_size

BANNER = "=" * 78
STOP_TIMEOUT_S = 10.0
PROG = "vlm3r-sim-eval"


def _sim_image_size(text: str) -> tuple[int, int]:
    return image_size(text, minimum=8)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params-file", type=Path, default=None,
                        help="vlm3r-node parameters (default config/tiny.yaml: tiny random weights)")
    parser.add_argument("--bridge-params", type=Path, default=None,
                        help="vlm3r-sim-bridge parameters (default config/sim_bridge.yaml)")
    parser.add_argument("--backend", choices=("pybullet", "habitat"), default="pybullet",
                        help="simulator backend (default pybullet)")
    parser.add_argument("--seed", type=int, default=0, help="scene and trajectory seed (default 0)")
    parser.add_argument("--scene-file", type=Path, default=None, help="scene file instead of a generated room")
    parser.add_argument("--trajectory-kind", choices=("handheld", "patrol", "scan"), default="handheld",
                        help="generated camera path (default handheld)")
    parser.add_argument("--frames", type=int, default=16, help="frames to publish (default 16)")
    parser.add_argument("--size", type=_sim_image_size, default=(160, 120), metavar="WxH",
                        help="image size (default 160x120)")
    parser.add_argument("--rate", type=float, default=10.0,
                        help="most frames per wall second (default 10; the node's pace limits it: lockstep)")
    parser.add_argument("--types", default="all",
                        help="question types: all (default), vsibench, vstibench or a comma list")
    parser.add_argument("--max-per-type", type=int, default=2,
                        help="questions per type at most (default 2; 0 = each type's official cap)")
    parser.add_argument("--qa-seed", type=int, default=0, help="seed of the question generators (default 0)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer length limit (default 16)")
    parser.add_argument("--no-sim-time", action="store_true", help="run the node on wall-clock time")
    parser.add_argument("--out", type=Path, default=Path("out/sim_eval"), help="output folder (default out/sim_eval)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds the simulation run may take (default 600)")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines or bars")
    add_llm_arguments(parser)  # openai: the node asks that server (llm_* parameters over the params file)
    return parser


def check_args(args) -> None:
    if not 2 <= args.frames <= 100_000:
        raise ValueError(f"--frames must be in 2..100000, got {args.frames}")
    if not (math.isfinite(args.rate) and args.rate > 0):
        raise ValueError(f"--rate must be a positive number of Hz, got {args.rate}")
    if args.max_per_type < 0:
        raise ValueError(f"--max-per-type must be >= 0, got {args.max_per_type}")
    if not args.max_new_tokens >= 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not args.timeout > 0:
        raise ValueError(f"--timeout must be > 0 s, got {args.timeout}")
    for name in ("params_file", "bridge_params", "scene_file"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            raise ValueError(f"--{name.replace('_', '-')} {path}: no such file")
    openai_settings(args)  # ValueError for bad --llm-* options


# ------------------------------------------------------------------ the loop
def run(args) -> int:
    out: Path = args.out
    sim_dir = out / "sim"
    params_file = args.params_file or (config_dir() / "tiny.yaml")
    bridge_params = args.bridge_params or (config_dir() / "sim_bridge.yaml")
    try:
        node_params = read_node_params(params_file)
    except ParamsFileError as exc:
        raise SimEvalError(str(exc)) from None
    is_random, weights_line = weights_description(node_params)
    image_topic = str(node_params.get("image_topic", "image"))
    width, height = args.size

    print(BANNER)
    print("VLM3R_ROS SIMULATION EVAL: simulator -> vlm3r-sim-bridge -> vlm3r-node -> /spatial_query -> scores")
    print(f"{weights_line}.")
    if is_random:
        print("THE SCORES BELOW ARE MEANINGLESS: the weights are random. This run tests the loop, not the model.")
    print(BANNER)

    env, ros_line, _ = child_environment()
    out.mkdir(parents=True, exist_ok=True)
    for stale in [sim_dir / "scene_graph.json", *out.glob("results_*.jsonl"), *out.glob("qa_*.jsonl")]:
        stale.unlink(missing_ok=True)  # never score an earlier run's files

    children: list = []
    client = None
    try:
        node_argv = console_script("vlm3r-node", "vlm3r_ros.ros.main") + ["--ros-args", "--params-file",
                                                                          str(params_file)]
        if not args.no_sim_time:
            node_argv += ["-p", "use_sim_time:=true"]
        node_argv += node_llm_parameters(args)
        if args.llm_api_key:
            env["VLM3R_LLM_API_KEY"] = args.llm_api_key
        node = Child("vlm3r-node", node_argv, out / "node.log", env)
        children.append(node)
        print(f"[1/5] node: {' '.join(node_argv)}")
        print(f"      ({ros_line}; log {node.log_path})", flush=True)
        client = LiveSpatialClient()
        t0 = time.monotonic()
        try:
            wait_for_node(client, node, NODE_START_TIMEOUT_S)
            client.reset()
        except LiveError as exc:
            raise SimEvalError(str(exc)) from None
        print(f"      /spatial_query is up after {time.monotonic() - t0:.1f} s")

        argv = bridge_argv(args, bridge_params, sim_dir, image_topic)
        bridge = Child("vlm3r-sim-bridge", argv, out / "bridge.log", env)
        children.append(bridge)
        print(f"[2/5] simulator: {args.backend}, seed {args.seed}, {args.frames} frames of {width}x{height}, "
              f"{args.trajectory_kind} camera, lockstep with the node (log {bridge.log_path})", flush=True)
        t0 = time.monotonic()
        try:
            counts = wait_for_bridge(bridge, client, args.frames, args.timeout, node, not args.no_progress)
        except LiveError as exc:
            raise SimEvalError(str(exc)) from None
        children.remove(bridge)
        print(f"      trajectory done in {time.monotonic() - t0:.1f} s: the node received {counts['received']}, "
              f"processed {counts['processed']}, dropped {counts['dropped']}, rejected {counts['rejected']}; "
              f"window {counts['window']}/{counts['capacity']}")
        if counts["processed"] != args.frames:
            print(f"      WARNING: the node processed {counts['processed']} of {args.frames} published frames; "
                  f"questions are about all {args.frames}")

        graph, doc = read_ground_truth(sim_dir, args.frames)
        # The ground truth holds only what the published frames show (Simulation.ground_truth).
        print(f"[3/5] ground truth: scene {graph.scene_name!r}, {graph.room_size:.1f} m^2; the "
              f"{len(graph.frames)} frames show {len(graph.objects)} objects "
              f"({', '.join(f'{n} {c}' for c, n in sorted(graph.category_counts().items()))})")

        by_benchmark = generate_questions(graph, args.types, args.qa_seed, args.max_per_type)
        if not by_benchmark:
            raise SimEvalError(f"the QA generators made no question for this scene (--types {args.types})")
        qa_files = {}
        for bench, rows in by_benchmark.items():
            path = out / f"qa_{bench}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
            qa_files[bench] = path
            per_type: dict[str, int] = {}
            for r in rows:
                per_type[r["question_type"]] = per_type.get(r["question_type"], 0) + 1
            print(f"[4/5] {bench}: {len(rows)} questions with known answers -> {path}")
            print("      " + ", ".join(f"{t} {n}" for t, n in per_type.items()))

        print(f"[5/5] asking them over {client.query_name} ({args.frames} frames per question):", flush=True)
        backend = LiveBackend(client, mode="external", num_frames=args.frames, max_new_tokens=args.max_new_tokens,
                              owns_client=False)
        scores = {}
        ok = True
        for bench, path in qa_files.items():
            benchmark = load_benchmark(path, bench)
            result = harness.run(benchmark, benchmark.rows, backend, out / f"results_{bench}.jsonl",
                                 data_root=out, resume=False, progress=not args.no_progress)
            if result.summary is None:
                raise SimEvalError(f"{bench}: no question was answered")
            print()
            print(harness.format_table(result.summary, meaningless=backend.meaningless or is_random))
            scores[bench] = dict(overall=result.summary.overall, per_type=result.summary.per_type,
                                 count=result.summary.per_type_count, failed=result.summary.failed_rows)
            ok &= result.summary.failed_rows == 0
        summary = dict(scene=graph.scene_name, frames=args.frames, size=[width, height], backend=args.backend,
                       seed=args.seed, weights=weights_line, meaningless=is_random, node=counts,
                       bridge=json.loads((sim_dir / "run.json").read_text()), scores=scores)
        (out / "scores.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        print()
        print(BANNER)
        if is_random:
            print("REMINDER: TINY RANDOM WEIGHTS. The scores above are MEANINGLESS (random answers); they show that")
            print("the loop works. Real test: --params-file with real weights (config/vlm3r.yaml + paths).")
        print(f"scores: {out / 'scores.json'}; answers: {', '.join(str(out / f'results_{b}.jsonl') for b in scores)}")
        print(BANNER)
        return 0 if ok else 1
    except SimEvalError:
        for child in children:
            if child.output():
                print(f"--- last lines of {child.name} ({child.log_path}):\n{child.tail()}", file=sys.stderr)
        raise
    finally:
        if client is not None:
            client.close()
        for child in reversed(children):
            child.stop(timeout=STOP_TIMEOUT_S)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        return run(args)
    except SimEvalError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the children were stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
