"""``make demo``: the streaming node answers spatial questions about a camera stream, over DDS.

    python -m vlm3r_ros.tools.demo [--params-file config/tiny.yaml] [--frames 24] [--rate 10]
    python -m vlm3r_ros.tools.demo --cut3r-only [--out out/demo] [--frames 12] [--no-progress]

The main demo, in about half a minute on a CPU:

1. renders the synthetic sample sequence (a textured room with four coloured boxes, a
   walking camera) into out/demo/frames (kept when already complete);
2. starts ``vlm3r-node --ros-args --params-file PARAMS`` in a child process (default
   config/tiny.yaml: TINY RANDOM WEIGHTS, built in memory, nothing downloaded);
3. starts ``vlm3r-play`` in a second child process, streaming the frames as
   sensor_msgs/Image over DDS at --rate Hz (looping);
4. once the node has processed some frames, asks a multiple-choice, a number and a text
   question through the ``/spatial_query`` service while the stream goes on, and prints
   the answers, their latencies and frames used;
5. prints the node's counters from its ``~/state`` topic (frames received, processed,
   dropped, rejected, window fill) and stops both children (SIGINT, then SIGKILL to their
   process groups after a timeout; also on Ctrl-C or an error).

With the tiny random weights the ANSWERS ARE MEANINGLESS: the demo checks the system (camera
stream -> CUT3R -> fused tokens -> question -> answer), not the model. For real answers,
pass a params file with real weight paths (see config/vlm3r.yaml).

Unless ROS_DOMAIN_ID is already set, the demo picks a random domain (1..101) and keeps
discovery on this host (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST), so it never talks to a
robot on your network; the domain is printed so you can watch with your own tools.

``--cut3r-only`` runs the earlier CUT3R-only demo instead (:mod:`vlm3r_ros.tools.demo_cut3r`):
CUT3R with tiny random weights over the rendered frames, writing OUT/cut3r/ (trajectory.tum,
points.ply, summary.json). Giving ``--out`` selects it too (it is that demo's option).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from vlm3r_ros.media import sample_scene
from vlm3r_ros.ros import config_dir
from vlm3r_ros.ros.demo_client import DemoClient, DemoError
from vlm3r_ros.ros.launching import (Child, ParamsFileError, child_environment, console_script, read_node_params,
                                     weights_description)
from vlm3r_ros.ros.node_settings import PARAMETERS
from vlm3r_ros.tools.demo_cut3r import BANNER, DEFAULT_OUT, cut3r_only

DEFAULT_WORK_DIR = DEFAULT_OUT
DEFAULT_FRAMES = 24
DEFAULT_RATE_HZ = 10.0
NODE_START_TIMEOUT_S = 180.0
FRAMES_TIMEOUT_S = 90.0
QUERY_TIMEOUT_S = 120.0

# The questions: one of each answer type of /spatial_query.
QUESTIONS = [
    dict(question="Which box is closest to where the camera started?",
         options=["A. the red box", "B. the blue box", "C. the yellow box", "D. the green box"],
         answer_type="choice", kind="multiple choice"),
    dict(question="How far apart are the red box and the blue box, in meters?", options=[],
         answer_type="number", kind="number"),
    dict(question="What colour is the tallest box?", options=[], answer_type="text", kind="text"),
]


# ------------------------------------------------------------------ argument handling
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vlm3r_ros.tools.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params-file", type=Path, default=None,
                        help="node parameters (default config/tiny.yaml: tiny random weights)")
    parser.add_argument("--frames", type=int, default=None,
                        help=f"frames to render (default {DEFAULT_FRAMES}; {sample_scene.DEFAULT_FRAMES} with "
                             f"--cut3r-only)")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE_HZ, help="camera rate in Hz (default 10)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                        help="where frames and child logs go (default out/demo)")
    parser.add_argument("--min-frames", type=int, default=None,
                        help="frames the node must have processed before the questions (default: --frames)")
    parser.add_argument("--cut3r-only", action="store_true", help="run the CUT3R-only demo instead")
    parser.add_argument("--out", type=Path, default=None,
                        help="--cut3r-only: output folder (default out/demo); implies --cut3r-only")
    parser.add_argument("--no-progress", action="store_true", help="--cut3r-only: no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cut3r_only or args.out is not None:
        return cut3r_only(args)
    return node_demo(args)


# ------------------------------------------------------------------ the node demo
def node_demo(args) -> int:
    frames = DEFAULT_FRAMES if args.frames is None else args.frames
    min_frames = frames if args.min_frames is None else args.min_frames
    if frames < 2 or not (math.isfinite(args.rate) and args.rate > 0) or min_frames < 1:
        print("demo: error: --frames must be >= 2, --rate > 0 and --min-frames >= 1", file=sys.stderr)
        return 2
    params_file = args.params_file or (config_dir() / "tiny.yaml")
    try:
        params = read_node_params(params_file)
    except ParamsFileError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    params = {**{p.name: p.default for p in PARAMETERS}, **params}  # the node's declared defaults
    is_random, weights_line = weights_description(params)
    image_topic = str(params["image_topic"])

    print(BANNER)
    print("VLM3R_ROS DEMO: camera stream -> vlm3r-node (CUT3R + VLM-3R) -> /spatial_query")
    print(f"{weights_line}.")
    if is_random:
        print("It checks the system end to end over DDS, not the model. For real answers: "
              "--params-file config/vlm3r.yaml with real weight paths.")
    print(BANNER)

    env, ros_line, _ = child_environment()  # the node's Fast DDS setting: this process and the children

    frames_dir = args.work_dir / "frames"
    start = time.monotonic()
    if sample_scene.is_complete(frames_dir, frames):
        print(f"[1/5] frames: {frames_dir} ({frames} frames, already complete, kept)")
    else:
        print(f"[1/5] frames: rendering {frames} frames of {sample_scene.DEFAULT_SIZE[0]}x"
              f"{sample_scene.DEFAULT_SIZE[1]} into {frames_dir} ...", flush=True)
        sample_scene.write_sequence(frames_dir, frames)
        print(f"      done in {time.monotonic() - start:.1f} s")

    children: list[Child] = []
    client = None
    try:
        node_argv = console_script("vlm3r-node", "vlm3r_ros.ros.main") + ["--ros-args", "--params-file",
                                                                          str(params_file)]
        node = Child("vlm3r-node", node_argv, args.work_dir / "node.log", env)
        children.append(node)
        print(f"[2/5] node: {' '.join(node_argv)}")
        print(f"      ({ros_line}; its log: {node.log_path})", flush=True)
        client = DemoClient()
        t0 = time.monotonic()
        client.wait_for_node(node, NODE_START_TIMEOUT_S)
        print(f"      /spatial_query is up after {time.monotonic() - t0:.1f} s; state on {client.state_topic}")

        player_argv = console_script("vlm3r-play", "vlm3r_ros.tools.play") + [
            "--input", str(frames_dir), "--rate", f"{args.rate:g}", "--loop", "--topic", image_topic,
            "--wait-for-subscribers", "1", "--quiet"]
        player = Child("vlm3r-play", player_argv, args.work_dir / "play.log", env)
        children.append(player)
        print(f"[3/5] camera: {' '.join(player_argv)}")
        print(f"      ({frames} frames of {sample_scene.DEFAULT_SIZE[0]}x{sample_scene.DEFAULT_SIZE[1]} rgb8 at "
              f"{args.rate:g} Hz, looping; its log: {player.log_path})", flush=True)

        t0 = time.monotonic()
        state = client.wait_for_frames(min_frames, FRAMES_TIMEOUT_S, children)
        print(f"[4/5] the node has processed {state.frames_processed} frames "
              f"({time.monotonic() - t0:.1f} s after the camera started); window {state.window_size}/"
              f"{state.window_capacity} frames, last step {state.last_step_latency_s * 1000:.0f} ms")

        print("[5/5] questions (asked while the camera keeps streaming):")
        answered = 0
        for q in QUESTIONS:
            response, round_trip = client.ask(q, QUERY_TIMEOUT_S, children)
            answered += print_answer(q, response, round_trip)
        if is_random:
            print("      ^ random weights: the words are arbitrary tokens; the point is that the whole path works.")

        code, clean_player = player.stop()
        final = client.latest_state(wait_s=1.0)
        print()
        print_state_summary(final, player)
        node_code, clean_node = node.stop()
        children.clear()
        client.close()
        client = None
        print(f"Stopped: camera exit {code}, node exit {node_code} "
              f"({'clean shutdown' if clean_player and clean_node else 'had to be killed'}).")
        print(BANNER)
        if is_random:
            print("REMINDER: tiny random weights; the answers above are meaningless. Real weights: "
                  "--params-file config/vlm3r.yaml")
        print(BANNER)
        ok = answered == len(QUESTIONS) and clean_node
        return 0 if ok else 1
    except DemoError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        for child in children:
            if child.output():
                print(f"--- last lines of {child.name} ({child.log_path}):\n{child.tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; stopping the children", file=sys.stderr)
        return 130
    finally:
        for child in reversed(children):
            child.stop(timeout=5.0)
        if client is not None:
            client.close()


def print_answer(q: dict, response, round_trip: float) -> int:
    print(f"  Q ({q['kind']}): {q['question']}")
    if q["options"]:
        print(f"     options: {', '.join(q['options'])}")
    if not response.success:
        print(f"     ERROR {response.error}  (round trip {round_trip * 1000:.0f} ms)")
        return 0
    parsed = []
    if response.choice:
        parsed.append(f"choice {response.choice}")
    if not math.isnan(response.value):
        parsed.append(f"value {response.value:g}{' ' + response.unit if response.unit else ''}")
    if not parsed:
        parsed.append({"choice": "no option letter in the reply", "number": "no number in the reply"}
                      .get(q["answer_type"], "free text"))
    print(f"     answer: {response.answer!r}  ({'; '.join(parsed)})")
    start = response.window_start.sec + response.window_start.nanosec * 1e-9
    end = response.window_end.sec + response.window_end.nanosec * 1e-9
    print(f"     {response.frames_used} frames used (stamps {end - start:.2f} s apart); latency "
          f"{response.latency_s * 1000:.0f} ms in the node, {round_trip * 1000:.0f} ms round trip")
    return 1


def print_state_summary(state, player: Child) -> None:
    if state is None:
        print("Node state: none received")
        return
    print("Node state (~/state):")
    print(f"  frames received  {state.frames_received:>6}")
    print(f"  frames processed {state.frames_processed:>6}")
    print(f"  frames dropped   {state.frames_dropped:>6}  (replaced in the latest-frame slot: the model was busy)")
    print(f"  frames rejected  {state.frames_rejected:>6}  (unusable images)")
    print(f"  frames lost      {state.frames_lost:>6}  (lost in transport before they reached the node)")
    print(f"  window           {state.window_size:>6} / {state.window_capacity} frames, segment {state.segment_id}")
    print(f"  last step        {state.last_step_latency_s * 1000:>6.1f} ms")
    lines = [line for line in player.output().splitlines() if line.startswith("vlm3r-play: ")]
    if lines:
        print(f"Camera: {lines[-1][len('vlm3r-play: '):]}")


if __name__ == "__main__":
    sys.exit(main())
