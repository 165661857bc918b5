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

``--cut3r-only`` runs the earlier CUT3R-only demo instead: CUT3R with tiny random weights
over the rendered frames, writing OUT/cut3r/ (trajectory.tum, points.ply, summary.json).
Giving ``--out`` selects it too (it is that demo's option).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from vlm3r_ros.errors import UserError
from vlm3r_ros.media import sample_scene
from vlm3r_ros.media.frames import FrameSource

BANNER = "=" * 78
REAL_WEIGHTS_HINT = "vlm3r-cut3r --weights /path/cut3r_512_dpt_4_64.pth --input VIDEO --out DIR"
DEFAULT_WORK_DIR = Path("out/demo")
DEFAULT_FRAMES = 24
DEFAULT_RATE_HZ = 10.0
NODE_START_TIMEOUT_S = 180.0
FRAMES_TIMEOUT_S = 90.0
QUERY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
STATE_TYPE = "vlm3r_ros/msg/SpatialState"
IMAGE_TYPE = "sensor_msgs/msg/Image"

# The questions: one of each answer type of /spatial_query.
QUESTIONS = [
    dict(question="Which box is closest to where the camera started?",
         options=["A. the red box", "B. the blue box", "C. the yellow box", "D. the green box"],
         answer_type="choice", kind="multiple choice"),
    dict(question="How far apart are the red box and the blue box, in meters?", options=[],
         answer_type="number", kind="number"),
    dict(question="What colour is the tallest box?", options=[], answer_type="text", kind="text"),
]


class DemoError(Exception):
    """Printed as one line; exit status 1 (2 for bad arguments)."""


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


# ------------------------------------------------------------------ child processes
class Child:
    """A process started by the demo: own process group, output in a log file, always stopped."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str]):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True, preexec_fn=_die_with_parent)

    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 25) -> str:
        return "\n".join("    " + line for line in self.output().splitlines()[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> tuple[int, bool]:
        """SIGINT, wait; then SIGKILL the whole group. Returns (exit code, stopped cleanly)."""
        clean = True
        if self.running():
            try:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                clean = False
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything it started, and itself if still there
        except (ProcessLookupError, PermissionError):
            pass
        code = self.proc.wait()
        return code, clean and code in (0, -signal.SIGINT, 130)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the demo dies (Linux), even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def console_script(name: str, module: str) -> list[str]:
    """``[bin/name]`` next to this interpreter if installed, else ``[python, -m, module]``."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.is_file() else [sys.executable, "-m", module]


# ------------------------------------------------------------------ params
def repo_config_dir() -> Path:
    try:
        from vlm3r_ros.ros import config_dir

        return config_dir()
    except ImportError:
        return Path(__file__).resolve().parents[2] / "config"


def read_node_params(path: Path) -> dict:
    """The ros__parameters of a params file, merged over all its node keys (``/**`` first)."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise DemoError(f"cannot read params file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise DemoError(f"params file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise DemoError(f"params file {path}: expected `NODE: ros__parameters: ...` mappings")
    params: dict = {}
    for key in sorted(doc, key=lambda k: k != "/**"):
        section = doc[key]
        if isinstance(section, dict) and isinstance(section.get("ros__parameters"), dict):
            params.update(section["ros__parameters"])
    if not params:
        raise DemoError(f"params file {path} holds no ros__parameters")
    return params


def node_defaults() -> dict:
    """The node's declared parameter defaults (vlm3r_ros.ros.node.PARAMETERS)."""
    from vlm3r_ros.ros.node import PARAMETERS

    return {p.name: p.default for p in PARAMETERS}


def weights_description(params: dict) -> tuple[bool, str]:
    """(random, sentence) from the node parameters (``model_source`` and the weight paths)."""
    if params.get("model_source") == "tiny_random":
        return True, "TINY RANDOM WEIGHTS (model_source: tiny_random): every answer below is MEANINGLESS"
    paths = {k: params.get(k) for k in ("cut3r_weights", "vlm_base_dir", "vlm_adapter_dir")}
    return False, "weights: " + ", ".join(f"{k}={v or '(not set)'}" for k, v in paths.items())


def isolate_ros_environment(env) -> str:
    """A private ROS domain on this host unless the user chose one."""
    if not env.get("ROS_DOMAIN_ID"):
        env["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 101))
        chosen = "picked at random"
    else:
        chosen = "from your environment"
    if not env.get("ROS_AUTOMATIC_DISCOVERY_RANGE") and not env.get("ROS_LOCALHOST_ONLY"):
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return (f"ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} ({chosen}), "
            f"discovery {env.get('ROS_AUTOMATIC_DISCOVERY_RANGE') or 'ROS_LOCALHOST_ONLY'}")


# ------------------------------------------------------------------ the node demo
def node_demo(args) -> int:
    frames = DEFAULT_FRAMES if args.frames is None else args.frames
    min_frames = frames if args.min_frames is None else args.min_frames
    if frames < 2 or not (math.isfinite(args.rate) and args.rate > 0) or min_frames < 1:
        print("demo: error: --frames must be >= 2, --rate > 0 and --min-frames >= 1", file=sys.stderr)
        return 2
    params_file = args.params_file or (repo_config_dir() / "tiny.yaml")
    try:
        params = read_node_params(params_file)
    except DemoError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    params = {**node_defaults(), **params}
    is_random, weights_line = weights_description(params)
    image_topic = str(params["image_topic"])

    print(BANNER)
    print("VLM3R_ROS DEMO: camera stream -> vlm3r-node (CUT3R + VLM-3R) -> /spatial_query")
    print(f"{weights_line}.")
    if is_random:
        print("It checks the system end to end over DDS, not the model. For real answers: "
              "--params-file config/vlm3r.yaml with real weight paths.")
    print(BANNER)

    env = dict(os.environ)
    ros_line = isolate_ros_environment(env)
    for key in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE"):
        if key in env:
            os.environ[key] = env[key]  # for this process's own participant too
    env["PYTHONUNBUFFERED"] = "1"
    from vlm3r_ros.ros import apply_transport_setting

    apply_transport_setting()  # the node's Fast DDS setting: this process and (via env) the children
    for key in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS"):
        if key in os.environ:
            env[key] = os.environ[key]

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
    print(f"  window           {state.window_size:>6} / {state.window_capacity} frames, segment {state.segment_id}")
    print(f"  last step        {state.last_step_latency_s * 1000:>6.1f} ms")
    lines = [line for line in player.output().splitlines() if line.startswith("vlm3r-play: ")]
    if lines:
        print(f"Camera: {lines[-1][len('vlm3r-play: '):]}")


class DemoClient:
    """This process's ROS side: the /spatial_query client and a ~/state subscription."""

    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from vlm3r_ros.srv import SpatialQuery

        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(args=None, context=self.context)
        self.node = rclpy.create_node("vlm3r_demo", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.client = self.node.create_client(SpatialQuery, "/spatial_query")
        self.states: list = []
        self.state_topic = ""

    def spin_until(self, done, timeout_s: float, children: list[Child], what: str):
        deadline = time.monotonic() + timeout_s
        while not done():
            for child in children:
                if not child.running():
                    raise DemoError(f"{child.name} exited with status {child.proc.returncode} while {what}")
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout_s:g} s {what}")
            self.executor.spin_once(timeout_sec=0.05)

    def wait_for_node(self, node: Child, timeout_s: float) -> None:
        self.spin_until(self.client.service_is_ready, timeout_s, [node], "waiting for /spatial_query")
        self.spin_until(self._find_state_topic, 30.0, [node], "looking for the node's SpatialState topic")

    def _find_state_topic(self) -> bool:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from vlm3r_ros.msg import SpatialState

        topics = [name for name, types in self.node.get_topic_names_and_types() if STATE_TYPE in types]
        if not topics:
            return False
        self.state_topic = sorted(topics, key=lambda t: (not t.endswith("/state"), t))[0]
        # Best effort matches both reliable and best-effort publishers.
        self.node.create_subscription(SpatialState, self.state_topic, self.states.append,
                                      QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
        return True

    def wait_for_frames(self, count: int, timeout_s: float, children: list[Child]):
        self.spin_until(lambda: self.states and self.states[-1].frames_processed >= count, timeout_s, children,
                        f"waiting for the node to process {count} frames")
        return self.states[-1]

    def ask(self, q: dict, timeout_s: float, children: list[Child]):
        from vlm3r_ros.srv import SpatialQuery

        request = SpatialQuery.Request(question=q["question"], options=list(q["options"]),
                                       answer_type=q["answer_type"])
        start = time.monotonic()
        future = self.client.call_async(request)
        self.spin_until(future.done, timeout_s, children, f"waiting for the answer to {q['question']!r}")
        return future.result(), time.monotonic() - start

    def latest_state(self, wait_s: float):
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.05)
        return self.states[-1] if self.states else None

    def close(self) -> None:
        if self.context is None:
            return
        self.executor.shutdown()
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)
        self.context = None


# ------------------------------------------------------------------ the CUT3R-only demo
def cut3r_only(args) -> int:
    """CUT3R with tiny random weights over the rendered frames, into OUT/cut3r/."""
    # torch and the models only here: the node demo's own process never loads them
    from vlm3r_ros.engine.checkpoint import save_cut3r_safetensors
    from vlm3r_ros.engine.cut3r_run import TINY_RANDOM_NOTE, RunOptions, run_pipeline
    from vlm3r_ros.engine.cut3r_stream import Cut3rStream
    from vlm3r_ros.engine.loading import load_cut3r_model
    from vlm3r_ros.models.cut3r.tiny import random_cut3r

    out = args.out or DEFAULT_WORK_DIR
    n_frames = sample_scene.DEFAULT_FRAMES if args.frames is None else args.frames
    if n_frames < 1:
        print(f"demo: error: --frames must be >= 1, got {n_frames}", file=sys.stderr)
        return 2
    if out.exists() and not out.is_dir():
        print(f"demo: error: --out {out} exists and is not a folder", file=sys.stderr)
        return 2

    print(BANNER)
    print("CUT3R DEMO WITH TINY RANDOM WEIGHTS: the poses and points below are MEANINGLESS.")
    print("It checks the pipeline (frames -> CUT3R -> tokens, trajectory, point cloud), not the model.")
    print(f"With real weights: {REAL_WEIGHTS_HINT}")
    print(BANNER)

    frames_dir = out / "frames"
    start = time.perf_counter()
    if sample_scene.is_complete(frames_dir, n_frames):
        print(f"[1/3] sample frames: {frames_dir} (already complete, kept)")
    else:
        sample_scene.write_sequence(frames_dir, n_frames)
        print(f"[1/3] sample frames: rendered {n_frames} frames of "
              f"{sample_scene.DEFAULT_SIZE[0]}x{sample_scene.DEFAULT_SIZE[1]} into {frames_dir} "
              f"({time.perf_counter() - start:.1f} s)")

    weights = out / "cut3r_tiny_random.safetensors"
    random_model = random_cut3r("tiny_dpt", seed=0)
    save_cut3r_safetensors(random_model.config, random_model.state_dict(), weights, source="tiny random (demo)")
    model = load_cut3r_model(weights)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[2/3] tiny random CUT3R ({model.config.head_type} head, {n_params / 1e6:.2f} M parameters) saved to "
          f"{weights} and loaded back with load_cut3r")

    stream = Cut3rStream(model, preprocessing="vlm3r")
    source = FrameSource(frames_dir)
    label = f"{weights} ({TINY_RANDOM_NOTE})"
    try:
        result = run_pipeline(stream, source, out / "cut3r", RunOptions(progress=not args.no_progress),
                              weights_label=label)
    except UserError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    print(f"[3/3] ran CUT3R (preprocessing vlm3r: SigLIP 384 -> {result.image_hw[1]}x{result.image_hw[0]}) "
          f"over {result.frames} frames")
    print()
    print(f"  {'frame':>5}  {'step (s)':>8}")
    for i, seconds in enumerate(result.step_seconds):
        print(f"  {i:>5}  {seconds:>8.3f}")
    s = result.summary
    print(f"  mean step {s['mean_step_seconds']:.3f} s, median {s['median_step_seconds']:.3f} s")
    d = result.camera_token_shape[-1]
    print(f"  camera token z'_t: {'x'.join(map(str, result.camera_token_shape))} (1xD, D={d}); "
          f"patch tokens F'_t: {'x'.join(map(str, result.patch_tokens_shape))} "
          f"(NxD, N={result.grid_hw[0]}x{result.grid_hw[1]} patches)")
    print()
    print("Output files:")
    for path in result.files.values():
        print(f"  {path}")
    print(f"  ({s['points_written']:,} points in points.ply; ground truth of the rendered camera in "
          f"{frames_dir / sample_scene.GROUNDTRUTH_TUM})")
    print()
    print(BANNER)
    print("REMINDER: tiny random weights, meaningless geometry. For real outputs:")
    print(f"  {REAL_WEIGHTS_HINT}")
    print(BANNER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
