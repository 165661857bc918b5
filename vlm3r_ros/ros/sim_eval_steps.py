"""The steps of ``vlm3r-sim-eval`` (simulator -> bridge -> node -> questions -> scores).

The bridge's command line, waiting for the node and for the bridge's run (with progress from
the node's ``~/state``), reading the ground truth the bridge wrote, and the questions with
known answers generated from it. ``vlm3r_ros.tools.sim_eval`` strings them together.
"""

from __future__ import annotations

import time
from pathlib import Path

from vlm3r_ros.data.qa.batch import GenQAError, as_format, generate, parse_types
from vlm3r_ros.data.qa.registry import get_spec
from vlm3r_ros.eval.live_client import LiveError
from vlm3r_ros.ros.launching import console_script
from vlm3r_ros.ros.sim_bridge import SCENE_GRAPH_FILE
from vlm3r_ros.ros.sim_messages import scene_graph_from_payload

NODE_START_TIMEOUT_S = 180.0


class SimEvalError(Exception):
    """A step failed: printed as one line (plus the children's last lines); exit status 1."""


def bridge_argv(args, params_file: Path, sim_dir: Path, image_topic: str, node_name: str = "vlm3r_node") -> list[str]:
    """The ``vlm3r-sim-bridge`` command line for this run."""
    width, height = args.size
    params = {
        "backend": args.backend, "seed": args.seed, "trajectory_kind": args.trajectory_kind,
        "num_frames": args.frames, "width": width, "height": height, "rate_hz": float(args.rate),
        "output_dir": str(sim_dir), "image_topic": image_topic, "lockstep_state_topic": f"{node_name}/state",
        "exit_when_done": True, "loop": False, "wait_timeout": NODE_START_TIMEOUT_S,
    }
    if args.scene_file is not None:
        params["scene_file"] = str(args.scene_file)
    argv = console_script("vlm3r-sim-bridge", "vlm3r_ros.ros.sim_bridge") + ["--ros-args", "--params-file",
                                                                               str(params_file)]
    for name, value in params.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        argv += ["-p", f"{name}:={text}"]
    return argv


def generate_questions(graph, types_text: str, seed: int, max_per_type: int) -> dict[str, list[dict]]:
    """Benchmark name -> rows (the published benchmark's shape, ids from 0) for ``graph``."""
    try:
        types = parse_types(types_text)
        rows = generate({graph.scene_name: graph}, types, seed, cap=max_per_type or "default")
    except GenQAError as exc:
        raise SimEvalError(f"--types: {exc}") from None
    by_benchmark: dict[str, list[dict]] = {}
    for row in rows:
        bench = get_spec(row["question_type"]).benchmark
        by_benchmark.setdefault(bench, []).append(as_format(row, "benchmark"))
    for bench_rows in by_benchmark.values():
        for i, row in enumerate(bench_rows):
            row["id"] = i
    return by_benchmark


def read_ground_truth(sim_dir: Path, expected_frames: int):
    """The bridge's scene graph file -> (SceneGraph, payload document)."""
    path = sim_dir / SCENE_GRAPH_FILE
    try:
        graph, doc = scene_graph_from_payload(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SimEvalError(f"cannot read the ground truth {path}: {exc}") from None
    if not doc.get("complete") or len(graph.frames) != expected_frames:
        raise SimEvalError(f"the ground truth in {path} covers {len(graph.frames)} of {expected_frames} frames "
                           f"(complete: {doc.get('complete')}); the bridge did not finish its run")
    return graph, doc


def wait_for_bridge(bridge, client, frames: int, timeout: float, node, progress: bool) -> dict:
    """Until the bridge exits: progress from the node's ~/state. Returns the node's counts."""
    deadline = time.monotonic() + timeout
    last_line = ""
    base = client.state
    base_processed = base.frames_processed if base is not None else 0
    while bridge.running():
        if not node.running():
            raise SimEvalError(f"vlm3r-node exited with status {node.proc.returncode} during the run")
        if time.monotonic() > deadline:
            raise SimEvalError(f"the simulation run took more than --timeout {timeout:g} s")
        state = client.state
        if progress and state is not None:
            line = f"      {state.frames_processed - base_processed}/{frames} frames processed by the node"
            if line != last_line:
                print(line, flush=True)
                last_line = line
        time.sleep(0.25)
    code = bridge.proc.returncode
    if code != 0:
        raise SimEvalError(f"vlm3r-sim-bridge exited with status {code}")
    state = client.wait_state(lambda s: s.frames_processed + s.frames_dropped + s.frames_rejected
                              >= s.frames_received, 30.0, "the node's last frame")
    return dict(received=state.frames_received - (base.frames_received if base is not None else 0),
                processed=state.frames_processed - base_processed,
                dropped=state.frames_dropped - (base.frames_dropped if base is not None else 0),
                rejected=state.frames_rejected - (base.frames_rejected if base is not None else 0),
                window=state.window_size, capacity=state.window_capacity)


def wait_for_node(client, node, timeout: float) -> None:
    """LiveSpatialClient.wait_for_node in short steps, so a node that dies is reported at once."""
    deadline = time.monotonic() + timeout
    while True:
        if not node.running():
            raise SimEvalError(f"vlm3r-node exited with status {node.proc.returncode} while starting")
        try:
            client.wait_for_node(min(2.0, max(deadline - time.monotonic(), 0.1)))
            return
        except LiveError:
            if time.monotonic() > deadline:
                raise
