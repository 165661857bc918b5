"""vlm3r-node end to end over DDS: throughput, drops, latency overhead, query latency, memory.

    .venv/bin/python benchmarks/bench_node.py                    # config/tiny.yaml, 5,000-frame RSS run
    .venv/bin/python benchmarks/bench_node.py --frames 1000      # shorter RSS run
    .venv/bin/python benchmarks/bench_node.py --params-file config/vlm3r.yaml --rates 5 --frames 0

Three processes, as on a robot: ``vlm3r-node`` (child), ``vlm3r-play`` (child; the camera:
640x480 rgb8 rendered frames, sensor-data QoS, stamps = publication time) and this script
(subscribes to the node's ``~/pose`` and ``~/state``, calls ``spatial_query``). Each uses the
Fast DDS setting the package ships. The ROS domain is private (random, LOCALHOST discovery).

Phases (node started once; its counters are read from ``~/state`` before and after each):

1. rate phases (``keeps_up`` with ``--keepup-frames``, then ``--rates``, default 10 and 30 Hz,
   ``--phase-frames`` frames each): frames published, received, processed, dropped
   (replaced in the node's latest-frame slot), rejected; end-to-end latency per frame = arrival here of the ``~/pose`` stamped with the
   image's stamp minus that stamp (publication time), next to the node's own engine step for
   the same frame (``~/state`` ``last_step_latency_s``, stamped the same way). When the
   camera is faster than the model, e2e includes the time a frame waits in the node's
   latest-frame slot for the previous step to end (inherent to keeping only the newest
   frame); the script estimates that wait from the previous frame's output arrival, which
   also subtracts that output's transport, so "without the slot wait" slightly UNDER-states
   the overhead. The clean overhead measure is a first phase ("keeps_up") where the camera
   runs at half the model's speed, so no frame ever waits: there e2e / step is the node's
   own overhead (goal <= 1.05): transport both ways, decoding, publishing. Also: the engine
   step alone, measured in THIS process on the same frames with the same parameters (no
   ROS, nothing else running), for reference.
2. query phase: ``--queries`` questions one after the other while the camera runs at the
   first rate: latency inside the node (response ``latency_s``) and round trip here.
3. memory phase: the camera at ``--rss-rate`` Hz until the node has processed ``--frames``
   frames (default 5,000); the node's RSS (/proc/PID/statm) every second; first/last/max, the
   slope over the second half, the growth after ``--rss-warmup-frames`` in % (goal: < 2 % over
   10,000 frames with a question every 15 s, ``--rss-query-period 15``) and the series.
   ``--node-env MALLOC_ARENA_MAX=2`` (and the like) runs the node with another allocator set-up.

Numbers: medians, p90, p99 over frames. Clocks: stamps and arrival times are this host's wall
clock (one machine, so no sync error). On a 2-core CPU the three processes compete for the
cores, which is part of what is measured. Results go to stdout and, with --json, to a file.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from vlm3r_ros.media import sample_scene
from vlm3r_ros.ros.launching import Child, child_environment, console_script, read_node_params

REPO = Path(__file__).resolve().parents[1]
POSE_TYPE = "geometry_msgs/msg/PoseStamped"
STATE_TYPE = "vlm3r_ros/msg/SpatialState"
START_TIMEOUT_S = 180.0
QUESTION = "How many chairs are in the room?"


# ------------------------------------------------------------------ helpers
def pct(values, q):
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def fmt_ms(values) -> str:
    if not values:
        return "n/a"
    return (f"median {pct(values, 50) * 1e3:7.1f} ms, p90 {pct(values, 90) * 1e3:7.1f} ms, "
            f"p99 {pct(values, 99) * 1e3:7.1f} ms (n={len(values)})")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ------------------------------------------------------------------ engine step alone
def engine_step_alone(params: dict, frames, n: int) -> list[float]:
    """SpatialEngine.ingest in this process, as the node builds it from the same parameters."""
    from vlm3r_ros.ros.node_settings import PARAMETERS, NodeSettings, build_engine

    values = {p.name: p.default for p in PARAMETERS}
    values.update({k: v for k, v in params.items() if k in values})
    settings = NodeSettings(**{k: values[k] for k in NodeSettings.__dataclass_fields__})
    engine = build_engine(settings)
    times = []
    for i in range(n + 3):
        start = time.perf_counter()
        engine.ingest(frames[i % len(frames)], i * 100_000_000)
        if i >= 3:  # warm-up
            times.append(time.perf_counter() - start)
    del engine
    return times


# ------------------------------------------------------------------ the ROS side of the bench
class Probe:
    """Subscribes to the node's ~/pose and ~/state; calls spatial_query. Spins in a thread."""

    def __init__(self):
        from vlm3r_ros.ros.client_node import ClientNode
        from vlm3r_ros.srv import SpatialQuery

        self.ros = ClientNode("vlm3r_bench")
        self.node = self.ros.node
        self.query_client = self.node.create_client(SpatialQuery, "spatial_query")
        self.lock = threading.Lock()
        self.pose_arrivals = {}  # stamp_ns -> arrival time.time_ns()
        self.steps = {}  # stamp_ns -> node step seconds (from ~/state)
        self.state_arrivals = {}  # stamp_ns -> arrival time.time_ns() of the first ~/state with it
        self.last_state = None

    def discover(self, node: Child, timeout: float) -> tuple[str, str]:
        from geometry_msgs.msg import PoseStamped
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from vlm3r_ros.msg import SpatialState

        deadline = time.monotonic() + timeout
        pose_topic = state_topic = None
        while not (self.query_client.service_is_ready() and pose_topic and state_topic):
            if not node.running():
                raise RuntimeError(f"the node exited:\n{node.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node did not come up in {timeout:g} s:\n{node.tail()}")
            self.ros.executor.spin_once(timeout_sec=0.1)
            topics = dict(self.node.get_topic_names_and_types())
            pose_topic = next((t for t, ty in topics.items() if POSE_TYPE in ty and t.endswith("/pose")), None)
            state_topic = next((t for t, ty in topics.items() if STATE_TYPE in ty), None)
        # Best effort readers: they never slow the node down, and match its reliable writers.
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)
        self.node.create_subscription(PoseStamped, pose_topic, self._on_pose, qos)
        self.node.create_subscription(SpatialState, state_topic, self._on_state, qos)
        self.ros.spin_in_background("vlm3r-bench-probe")
        return pose_topic, state_topic

    def _on_pose(self, msg):
        now = time.time_ns()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.pose_arrivals.setdefault(stamp, now)

    def _on_state(self, msg):
        now = time.time_ns()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.last_state = msg
            if stamp and msg.last_step_latency_s > 0:
                self.steps.setdefault(stamp, msg.last_step_latency_s)
                self.state_arrivals.setdefault(stamp, now)

    def state(self, wait_s=0.0):
        time.sleep(wait_s)
        with self.lock:
            return self.last_state

    def wait_state(self, predicate, timeout, node: Child):
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            if state is not None and predicate(state):
                return state
            if not node.running():
                raise RuntimeError(f"the node exited:\n{node.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError("timed out waiting for the node's state")
            time.sleep(0.1)

    def ask(self, question: str, timeout=120.0):
        from vlm3r_ros.srv import SpatialQuery

        start = time.monotonic()
        future = self.query_client.call_async(SpatialQuery.Request(question=question))
        done = threading.Event()
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout):
            raise RuntimeError("spatial_query did not answer")
        return future.result(), time.monotonic() - start

    def take_frames(self, since_ns: int):
        """Per processed frame with stamp >= since_ns, in stamp order: dict with e2e_pose,
        e2e_state, step (seconds) and wait (estimated seconds in the node's latest-frame slot:
        max(0, arrival of the previous frame's ~/state - this stamp); the previous frame's
        outputs are published when the worker becomes free)."""
        with self.lock:
            stamps = sorted(s for s in self.state_arrivals if s >= since_ns)
            rows, previous_end = [], None
            for stamp in stamps:
                state_at = self.state_arrivals[stamp]
                pose_at = self.pose_arrivals.get(stamp)
                wait = max(0.0, (previous_end - stamp) / 1e9) if previous_end is not None else None
                rows.append(dict(e2e_pose=(pose_at - stamp) / 1e9 if pose_at else None,
                                 e2e_state=(state_at - stamp) / 1e9, step=self.steps.get(stamp), wait=wait))
                previous_end = state_at
        return rows

    def close(self):
        self.ros.close(timeout_s=5.0)


# ------------------------------------------------------------------ phases
def counters(state):
    return dict(received=state.frames_received, processed=state.frames_processed,
                dropped=state.frames_dropped, rejected=state.frames_rejected)


def delta(a, b):
    return {k: b[k] - a[k] for k in a}


def play(args, env, frames_dir, rate, count, log_dir, image_topic, name, loop_forever=False):
    argv = console_script("vlm3r-play", "vlm3r_ros.tools.play") + [
        "--input", str(frames_dir), "--rate", f"{rate:g}", "--loop", "--topic", image_topic,
        "--wait-for-subscribers", "1", "--quiet"]
    if not loop_forever:
        argv += ["--max-frames", str(count)]
    return Child(name, argv, log_dir / f"{name}.log", env)


def published_count(player: Child) -> int | None:
    """From the player's summary line ``vlm3r-play: done: N frames in ...``."""
    for line in reversed(player.tail(5, indent="").splitlines()):
        words = line.split()
        if len(words) > 3 and words[0] == "vlm3r-play:" and words[1] in ("done:", "stopped:") and words[3] == "frames":
            return int(words[2])
    return None


def rate_phase(args, env, probe, node, frames_dir, rate, log_dir, image_topic, results, label=None, count=None):
    label = label or f"rate_{rate:g}hz"
    count = count or args.phase_frames
    before = counters(probe.wait_state(lambda s: True, 30, node))
    since = time.time_ns()
    player = play(args, env, frames_dir, rate, count, log_dir, image_topic, f"play_{label}")
    try:
        player.proc.wait(timeout=count / rate + 60)
    except subprocess.TimeoutExpired:
        pass
    player.stop(timeout=15.0)
    time.sleep(1.5)  # the last frame's outputs
    d = delta(before, counters(probe.state()))
    published = published_count(player)
    rows = [r for r in probe.take_frames(since) if r["step"]]
    e2e_pose = [r["e2e_pose"] for r in rows if r["e2e_pose"] is not None]
    e2e_state = [r["e2e_state"] for r in rows]
    steps = [r["step"] for r in rows]
    ratio_pose = [r["e2e_pose"] / r["step"] for r in rows if r["e2e_pose"] is not None]
    no_wait = [(r["e2e_pose"] - r["wait"]) / r["step"] for r in rows if r["e2e_pose"] is not None
               and r["wait"] is not None]
    waits = [r["wait"] for r in rows if r["wait"] is not None]
    print(f"\n== camera at {rate:g} Hz{' (' + label + ')' if label != f'rate_{rate:g}hz' else ''}: "
          f"{published} frames published")
    print(f"   node: received {d['received']}, processed {d['processed']}, dropped {d['dropped']} "
          f"(latest-frame slot), rejected {d['rejected']}; not received {(published or 0) - d['received']}")
    print(f"   node's engine step (~/state):      {fmt_ms(steps)}")
    print(f"   e2e image stamp -> ~/pose here:   {fmt_ms(e2e_pose)}")
    print(f"   e2e image stamp -> ~/state here:  {fmt_ms(e2e_state)}")
    print(f"   wait in the latest-frame slot (estimated): {fmt_ms(waits)}")
    print(f"   ratio e2e(~/pose) / step, per frame: median {pct(ratio_pose, 50):.3f}, p90 {pct(ratio_pose, 90):.3f}; "
          f"without the slot wait: median {pct(no_wait, 50):.3f}, p90 {pct(no_wait, 90):.3f}")
    results[label] = dict(rate_hz=rate, published=published, **d, node_step_s=summary(steps),
                          e2e_pose_s=summary(e2e_pose), e2e_state_s=summary(e2e_state), slot_wait_s=summary(waits),
                          ratio_pose=summary(ratio_pose), ratio_pose_without_wait=summary(no_wait))


def summary(values):
    return dict(n=len(values), median=pct(values, 50), p90=pct(values, 90), p99=pct(values, 99),
                mean=statistics.fmean(values) if values else None)


def query_phase(args, env, probe, node, frames_dir, log_dir, image_topic, results):
    rate = args.rates[0]
    player = play(args, env, frames_dir, rate, 0, log_dir, image_topic, "play_queries", loop_forever=True)
    try:
        probe.wait_state(lambda s: s.window_size >= 8, 60, node)
        inside, round_trip, errors = [], [], []
        for _ in range(args.queries):
            response, rt = probe.ask(QUESTION)
            if response.success:
                inside.append(response.latency_s)
                round_trip.append(rt)
            else:
                errors.append(response.error)
    finally:
        player.stop(timeout=15.0)
    print(f"\n== {args.queries} questions while the camera runs at {rate:g} Hz "
          f"(default max_frames and max_new_tokens of the params file)")
    print(f"   in the node: {fmt_ms(inside)}")
    print(f"   round trip:  {fmt_ms(round_trip)}")
    if errors:
        print(f"   errors: {len(errors)} ({errors[0]})")
    results["queries"] = dict(node_s=summary(inside), round_trip_s=summary(round_trip), errors=len(errors))


def memory_phase(args, env, probe, node, frames_dir, log_dir, image_topic, results):
    start_processed = probe.wait_state(lambda s: True, 30, node).frames_processed
    player = play(args, env, frames_dir, args.rss_rate, 0, log_dir, image_topic, "play_memory", loop_forever=True)
    samples = []  # (frames processed in this phase, RSS MiB, seconds)
    t0 = time.monotonic()
    next_print = 0
    asked, outcomes, last_ask = 0, [], -math.inf  # questions during the soak (--rss-query-period)
    try:
        while True:
            time.sleep(1.0)
            if args.rss_query_period and time.monotonic() - last_ask >= args.rss_query_period:
                from vlm3r_ros.srv import SpatialQuery

                future = probe.query_client.call_async(SpatialQuery.Request(question="How many chairs are there?"))
                future.add_done_callback(lambda f: outcomes.append(f.result().error.split(":")[0] or "answered"))
                asked, last_ask = asked + 1, time.monotonic()
            if not node.running():
                raise RuntimeError(f"the node exited:\n{node.tail()}")
            if not player.running():
                raise RuntimeError(f"the player exited:\n{player.tail()}")
            state = probe.state()
            done = state.frames_processed - start_processed
            samples.append((done, rss_mib(node.proc.pid), time.monotonic() - t0))
            if done >= next_print:
                recent = [x for x in samples if x[2] >= samples[-1][2] - 10.0]
                hz = (recent[-1][0] - recent[0][0]) / max(recent[-1][2] - recent[0][2], 1e-9)
                print(f"   {done:6d} frames processed, RSS {samples[-1][1]:7.1f} MiB, {samples[-1][2]:5.0f} s, "
                      f"processing {hz:5.2f} frames/s, last step {state.last_step_latency_s * 1e3:5.1f} ms",
                      flush=True)
                next_print += args.rss_print_every or max(args.frames // 10, 1)
            if done >= args.frames:
                break
    finally:
        player.stop(timeout=15.0)
    rss = [r for _, r, _ in samples]
    second_half = [(f, r) for f, r, _ in samples if f >= args.frames / 2]
    slope = math.nan
    if len(second_half) >= 3:
        xs, ys = zip(*second_half)
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        den = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in second_half) / den * 1000 if den else math.nan
    first = next((r for f, r, _ in samples if f >= args.frames * 0.1), rss[0])
    print(f"   RSS: at 10% of the run {first:.1f} MiB, at the end {rss[-1]:.1f} MiB, max {max(rss):.1f} MiB; "
          f"slope over the second half {slope:+.2f} MiB per 1,000 frames "
          f"({samples[-1][0]} frames in {samples[-1][2]:.0f} s)")
    warm = next((r for f, r, _ in samples if f >= args.rss_warmup_frames), None)
    growth = (rss[-1] - warm) / warm * 100 if warm else math.nan
    after = [r for f, r, _ in samples if f >= args.rss_warmup_frames]
    if warm:
        print(f"   after the warm-up ({args.rss_warmup_frames} frames): {warm:.1f} MiB -> {rss[-1]:.1f} MiB at the end "
              f"({growth:+.2f} %), max {max(after):.1f} MiB ({(max(after) - warm) / warm * 100:+.2f} %)")
    print("   RSS series (frames: MiB): " + ", ".join(
        f"{f}: {r:.1f}" for f, r in series(samples, args.rss_print_every or max(args.frames // 10, 1))))
    if asked:
        print(f"   questions during the run: {asked} asked, outcomes {dict(collections.Counter(outcomes))}")
    state = probe.state()
    print(f"   node counters: received {state.frames_received}, processed {state.frames_processed}, dropped "
          f"{state.frames_dropped} (latest-frame slot), rejected {state.frames_rejected}")
    results["memory"] = dict(frames=samples[-1][0], seconds=samples[-1][2], rss_mib_at_10pct=first,
                             rss_mib_end=rss[-1], rss_mib_max=max(rss), slope_mib_per_1000_frames=slope,
                             warmup_frames=args.rss_warmup_frames, rss_mib_after_warmup=warm,
                             growth_after_warmup_pct=growth, node_env=args.node_env,
                             samples=samples, questions_asked=asked, question_outcomes=outcomes)


def series(samples, every: int):
    """The first sample at or past each multiple of ``every`` frames: [(frames, RSS MiB)]."""
    out, mark = [], 0
    for f, r, _ in samples:
        if f >= mark:
            out.append((f, r))
            mark = (f // every + 1) * every
    return out


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params-file", type=Path, default=REPO / "config" / "tiny.yaml")
    parser.add_argument("--rates", type=lambda t: [float(v) for v in t.split(",") if v], default=[10.0, 30.0],
                        help="camera rates of the rate phases, comma-separated (default 10,30)")
    parser.add_argument("--phase-frames", type=int, default=300, help="frames published per rate phase")
    parser.add_argument("--keepup-frames", type=int, default=60,
                        help="frames of the phase where the camera is slower than the model (default 60)")
    parser.add_argument("--queries", type=int, default=20, help="questions in the query phase (0: skip)")
    parser.add_argument("--frames", type=int, default=5000,
                        help="frames the node must process in the memory phase (default 5000; 0: skip)")
    parser.add_argument("--rss-rate", type=float, default=30.0, help="camera rate of the memory phase")
    parser.add_argument("--rss-query-period", type=float, default=0.0,
                        help="in the memory phase, ask a question every this many seconds (0: none)")
    parser.add_argument("--rss-warmup-frames", type=int, default=1000,
                        help="RSS growth is reported from this many processed frames on (default 1000: the "
                             "window and ~/path have filled)")
    parser.add_argument("--rss-print-every", type=int, default=0,
                        help="print the RSS every this many frames (default: a tenth of --frames)")
    parser.add_argument("--node-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the node (repeatable), e.g. MALLOC_ARENA_MAX=2 to test "
                             "whether RSS growth is glibc's per-thread arenas")
    parser.add_argument("--size", default="640x480", help="camera frame size WxH (default 640x480)")
    parser.add_argument("--engine-frames", type=int, default=60,
                        help="frames for the engine-alone step time (0: skip)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    env, _, transport = child_environment()
    params = read_node_params(args.params_file)
    image_topic = str(params.get("image_topic") or "image")
    width, height = (int(v) for v in args.size.lower().split("x"))
    results = dict(params_file=str(args.params_file), size=[width, height], rates=args.rates, transport=transport,
                   cpu_count=os.cpu_count())
    print(f"params {args.params_file}; camera {width}x{height} rgb8 on '{image_topic}'; "
          f"ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}; {transport}; {os.cpu_count()} CPU(s)")

    with tempfile.TemporaryDirectory(prefix="vlm3r-bench-") as tmp:
        tmp = Path(tmp)
        frames_dir = tmp / "frames"
        sample_scene.write_sequence(frames_dir, 30, (width, height), seed=0)
        frames = sample_scene.generate_sequence(30, (width, height), seed=0)

        if args.engine_frames:
            import torch

            threads_before = torch.get_num_threads()
            steps = engine_step_alone(params, frames, args.engine_frames)
            torch.set_num_threads(threads_before)
            print(f"\n== engine step alone (SpatialEngine.ingest in this process, nothing else running): "
                  f"{fmt_ms(steps)}")
            results["engine_alone_s"] = summary(steps)

        node_argv = console_script("vlm3r-node", "vlm3r_ros.ros.main") + [
            "--ros-args", "--params-file", str(args.params_file)]
        node_env = dict(env, **dict(kv.split("=", 1) for kv in args.node_env))
        node = Child("vlm3r-node", node_argv, tmp / "node.log", node_env)
        probe = None
        try:
            probe = Probe()
            t0 = time.monotonic()
            pose_topic, state_topic = probe.discover(node, START_TIMEOUT_S)
            print(f"node up in {time.monotonic() - t0:.1f} s (pid {node.proc.pid}, RSS {rss_mib(node.proc.pid):.0f} "
                  f"MiB); listening to {pose_topic} and {state_topic}")
            if "engine_alone_s" in results:
                # A camera slow enough that the worker is idle when each frame comes: the e2e
                # latency is then the step plus the node's overhead only (no wait in the slot).
                keepup = round(0.5 / results["engine_alone_s"]["median"], 2)
                rate_phase(args, env, probe, node, frames_dir, keepup, tmp, image_topic, results, label="keeps_up",
                           count=args.keepup_frames)
            for rate in args.rates:
                rate_phase(args, env, probe, node, frames_dir, rate, tmp, image_topic, results)
            if args.queries:
                query_phase(args, env, probe, node, frames_dir, tmp, image_topic, results)
            if args.frames:
                print(f"\n== memory: camera at {args.rss_rate:g} Hz until the node has processed {args.frames} "
                      f"frames")
                memory_phase(args, env, probe, node, frames_dir, tmp, image_topic, results)
        except RuntimeError as exc:
            print(f"bench: error: {exc}", file=sys.stderr)
            return 1
        finally:
            if probe is not None:
                probe.close()
            code, _ = node.stop(timeout=15.0)
            print(f"\nnode exit status {code}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
