"""CUT3R per-frame step: time per stage, what each head costs, same-run A/B against older code.

    python benchmarks/bench_cut3r.py [--size 432x432] [--configs full,tiny] [--modes tokens,pose,points,all]
                                     [--ref main] [--full-frames 2] [--frames 10] [--threads N]
                                     [--device cpu] [--dtype float32] [--steady-frames 50]

Configurations (``--configs``), both at ``--size`` (default 432x432, what VLM-3R feeds CUT3R):
  full  the released cut3r_512_dpt_4_64 architecture (793 M parameters), seeded random weights;
  tiny  the tiny dpt test config.
Modes (``--modes``), what a step computes besides the tokens (``Cut3rModel.step(heads=...)``):
  tokens  nothing: the step VLM-3R needs (encoder, decoders, pose memory, state update);
  pose    + the camera-token pose head;
  points  + pose + the world points (camera-modulated blocks + one DPT head): the node default;
  all     every head (self-view points, rgb, pose, world points): the official step.
``--ref REF`` adds the model code of git revision REF (e.g. ``main``), loaded from git into a
temporary package and run on the SAME weight tensors, in modes tokens and all (with_heads).

Each configuration runs in its own child process (this script with ``--child``), which
builds the model(s), steps one warm-up frame, then runs ``--full-frames`` / ``--frames``
ROUNDS; a round steps every (code, mode) variant once, in turn, from the same state on the
same frame, so slow and quiet moments of a shared machine hit all variants alike. Reported:
the median wall and CPU time per step, and a per-stage split measured with module hooks
(encoder, decoder, pose memory, each head, and RoPE, which runs inside the encoder, decoder
and modulation blocks and is shown separately, not added), and same-run ratios (per round,
then the median). Outputs are compared across variants: with no dtype or kernel change they
must be bit-identical (printed).

Contention check: CPU time / wall time per step is about the thread count on an idle
machine. When other processes take the cores, torch's threads wait and both times balloon;
rows below ``0.7 x threads`` are marked ``!`` and a warning is printed: compare such numbers
only as same-run ratios.

A last child (``--steady-frames``) streams tiny frames to show that the step time does not
grow with the frames seen. Numbers go into notes; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vlm3r_ros.engine.loading import random_cut3r_model  # noqa: E402
from vlm3r_ros.ros.launching import run_for_result  # noqa: E402

ARCHS = {"full": "cut3r_512_dpt_4_64", "tiny": "tiny_dpt"}
MODES = {  # mode -> heads argument of Cut3rModel.step (None: with_heads=True)
    "tokens": (),
    "pose": ("pose",),
    "points": ("pose", "world_points"),
    "all": None,
}
REF_MODES = ("tokens", "all")  # older code has no head selection: with_heads False / True
N_SOURCE_FRAMES = 4  # rendered once by the parent and cycled by the children
RESULT_PREFIX = "BENCH_RESULT "
CONTENTION_FRACTION = 0.7  # CPU/wall below this x threads: the machine is shared, absolute times inflated
STAGES = ("encoder", "decoder", "pose_memory", "pose_head", "modulation", "dpt_world", "dpt_self", "dpt_rgb")
CUT3R_FILES = ("__init__.py", "config.py", "heads.py", "layers.py", "modeling_cut3r.py", "processing.py", "tiny.py")


def parse_size(text: str) -> tuple[int, int]:
    """'432x432' -> (width, height), multiples of 16."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be WIDTHxHEIGHT, e.g. 432x432; got {text!r}") from None
    if w <= 0 or h <= 0 or w % 16 or h % 16:
        raise argparse.ArgumentTypeError(f"--size {text}: width and height must be positive multiples of 16")
    return w, h


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------ models
def load_ref_package(ref: str):
    """The CUT3R model package as it is at git revision ``ref``, imported under its own name."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref], capture_output=True, text=True,
                         check=True).stdout.strip()
    name = f"cut3r_at_{sha}"
    if name in sys.modules:
        return sys.modules[name]
    folder = Path(tempfile.mkdtemp(prefix="cut3r_ref_")) / name
    folder.mkdir()
    for file in CUT3R_FILES:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:vlm3r_ros/models/cut3r/{file}"],
                              capture_output=True, text=True, check=True).stdout
        (folder / file).write_text(text)
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def ref_model_sharing_weights(package, model):
    """The model class of ``package`` (older code) holding the SAME parameter tensors as ``model``."""
    import dataclasses

    import torch

    config = package.Cut3rConfig(**{f.name: getattr(model.config, f.name)
                                    for f in dataclasses.fields(package.Cut3rConfig)})
    with torch.device("meta"):
        ref = package.Cut3rModel(config)
    ref.load_state_dict(model.state_dict(), strict=True, assign=True)  # shares storage: no extra memory
    return ref.eval().requires_grad_(False)


# ------------------------------------------------------------------ timing
class StageTimer:
    """Wall and CPU seconds spent in named parts of a CUT3R model, via hooks and wrappers.

    Works on any version of the model whose attribute names match (encode, _decode,
    pose_retriever, downstream_head.{dpt_self, dpt_cross, dpt_rgb, pose_head, final_transform})."""

    def __init__(self, model, sync=None):
        self.sync = sync or (lambda: None)
        self.totals: dict[str, list[float]] = {}
        self._open: dict[str, list] = {}
        self._handles = []
        self._wrap(model, "encode", "encoder")
        self._wrap(model, "_decode", "decoder")
        self._wrap(model.pose_retriever, "inquire", "pose_memory")
        self._wrap(model.pose_retriever, "update_mem", "pose_memory")
        head = model.downstream_head
        for attr, stage in (("dpt_self", "dpt_self"), ("dpt_cross", "dpt_world"), ("dpt_rgb", "dpt_rgb"),
                            ("pose_head", "pose_head")):
            if hasattr(head, attr):
                self._hook(getattr(head, attr), stage)
        for blk in head.final_transform:
            self._hook(blk, "modulation")
        rope = model.enc_blocks[0].attn.rope
        if rope is not None:
            self._hook(rope, "rope")

    def _start(self, stage):
        self.sync()
        self._open.setdefault(stage, []).append((time.perf_counter(), time.process_time()))

    def _stop(self, stage):
        self.sync()
        wall0, cpu0 = self._open[stage].pop()
        total = self.totals.setdefault(stage, [0.0, 0.0])
        total[0] += time.perf_counter() - wall0
        total[1] += time.process_time() - cpu0

    def _wrap(self, obj, name, stage):
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            self._start(stage)
            try:
                return fn(*args, **kwargs)
            finally:
                self._stop(stage)

        setattr(obj, name, timed)

    def _hook(self, module, stage):
        self._handles.append(module.register_forward_pre_hook(lambda *_: self._start(stage)))
        self._handles.append(module.register_forward_hook(lambda *_: self._stop(stage)))

    def take(self) -> dict[str, list[float]]:
        """[wall, CPU] seconds per stage since the last take."""
        out, self.totals = self.totals, {}
        return out


def _outputs(out, heads) -> dict:
    """Tensors to compare across variants (bit-identity)."""
    values = {"camera_token": out.camera_token, "patch_tokens": out.patch_tokens}
    if heads is not None:
        for name in ("camera_pose", "pts3d_in_other_view", "conf"):
            value = getattr(heads, name, None)
            if value is not None:
                values[name] = value
    return values


# ---------------------------------------------------------------------- child
def run_child(args) -> int:
    import numpy as np
    import torch
    import torch.nn.functional as F

    config_key = args.child
    arch = ARCHS[config_key]
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    rss_start = _rss_mib()
    t0 = time.perf_counter()
    model = random_cut3r_model(arch, seed=0, device=device, dtype=dtype)
    build_seconds = time.perf_counter() - t0
    variants = [(f"new/{kernel}" if kernel != "onednn" else "new", mode, model)
                for kernel in args.new_kernels for mode in args.modes]
    if args.ref:
        ref = ref_model_sharing_weights(load_ref_package(args.ref), model)
        variants = [(args.ref, mode, ref) for mode in REF_MODES] + variants
    timers = {id(m): StageTimer(m, sync) for m in {id(v[2]): v[2] for v in variants}.values()}
    rss_loaded = _rss_mib()

    w, h = args.size
    images = np.load(args.frames_file)  # (F, H0, W0, 3) uint8
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    pixels = F.interpolate(pixels, size=(h, w), mode="bilinear", align_corners=False).to(device)

    state = model.init_state(1)  # one warm-up frame, so that later steps read the pose memory
    with torch.inference_mode():
        _, state = model.step(state, pixels[:1], heads=())
        for _, mode, m in variants:  # warm every code path once
            m.step(state, pixels[:1], **_step_kwargs(m, mode))
    for t in timers.values():
        t.take()

    rows = {f"{code}:{mode}": {"wall": [], "cpu": [], "stages": []} for code, mode, _ in variants}
    identical, max_rel = {}, {}
    for r in range(args.rounds):
        frame = pixels[(r + 1) % len(pixels)][None]
        first = {}  # output name -> the first variant's value this round
        for code, mode, m in variants:
            if sync:
                sync()
            if code.startswith("new"):
                m.set_linear_kernel(code.split("/")[1] if "/" in code else "onednn")
            wall0, cpu0 = time.perf_counter(), time.process_time()
            out, _ = m.step(state, frame, **_step_kwargs(m, mode))
            if sync:
                sync()
            row = rows[f"{code}:{mode}"]
            row["wall"].append(time.perf_counter() - wall0)
            row["cpu"].append(time.process_time() - cpu0)
            row["stages"].append(timers[id(m)].take())
            # bit-identity within one arithmetic (same linear kernel); the largest difference across
            group = "onednn" if code == "new" else "default"
            for name, value in _outputs(out, out.heads).items():
                key = f"{group}/{name}"
                if key in first:
                    identical[key] = identical.get(key, True) and bool(torch.equal(value, first[key]))
                else:
                    first[key] = value
                other = first.get(f"{'default' if group == 'onednn' else 'onednn'}/{name}")
                if other is not None:
                    rel = float(((value - other).abs() / (1e-2 + 1e-2 * other.abs())).max())
                    max_rel[name] = max(max_rel.get(name, 0.0), rel)
    result = {
        "config": config_key, "arch": arch, "size": list(args.size), "rounds": args.rounds,
        "threads": torch.get_num_threads(), "device": str(device), "dtype": args.dtype, "rows": rows,
        "identical": identical, "max_robust_ratio_onednn_vs_default": max_rel, "build_s": build_seconds,
        "n_params": sum(p.numel() for p in model.parameters()),
        "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "rss_start_mib": rss_start, "rss_loaded_mib": rss_loaded,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tokens": [1 + (h // 16) * (w // 16)],
    }
    if device.type == "cuda":
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def _step_kwargs(model, mode) -> dict:
    heads = MODES[mode]
    if heads is None or not hasattr(model, "head_outputs"):  # older code: with_heads only
        return {"with_heads": heads is None}
    return {"heads": heads}


def run_steady_child(args) -> int:
    import numpy as np
    import torch

    from vlm3r_ros.engine.cut3r_stream import Cut3rStream

    if args.threads:
        torch.set_num_threads(args.threads)
    model = random_cut3r_model(ARCHS["tiny"], device=torch.device(args.device), dtype=getattr(torch, args.dtype))
    stream = Cut3rStream(model, preprocessing="vlm3r")
    pixels = [stream.prepare(img) for img in np.load(args.frames_file)]
    times = [stream.step(pixels[i % len(pixels)], heads=MODES["points"]).step_seconds
             for i in range(1 + args.rounds)][1:]
    print(RESULT_PREFIX + json.dumps({"times": times}), flush=True)
    return 0


# --------------------------------------------------------------------- parent
def spawn(args, child: list[str], rounds: int, frames_file: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *child, "--rounds", str(rounds),
           "--frames-file", frames_file, "--device", args.device, "--dtype", args.dtype,
           "--size", f"{args.size[0]}x{args.size[1]}", "--modes", ",".join(args.modes)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.ref:
        cmd += ["--ref", args.ref]
    cmd += ["--new-kernels", ",".join(args.new_kernels)]
    result = run_for_result(cmd, RESULT_PREFIX, ' '.join(child))
    return result


def summarise(result: dict, clock: str = "wall") -> list[dict]:
    """One dict per variant: medians, contention, stages, same-run ratios."""
    rows = result["rows"]
    threads = result["threads"]
    baselines = [k for k in (f"{k.split(':')[0]}:all" for k in rows) if k in rows]
    baseline = next((k for k in baselines if not k.startswith("new")), baselines[0] if baselines else None)
    tokens_base = next((k for k in rows if k.endswith(":tokens") and not k.startswith("new")), None)
    out = []
    for key, row in rows.items():
        wall, cpu = statistics.median(row["wall"]), statistics.median(row["cpu"])
        col = 0 if clock == "wall" else 1
        stages = {s: statistics.median(st.get(s, [0.0, 0.0])[col] for st in row["stages"]) for s in (*STAGES, "rope")}
        load = cpu / wall / threads if wall > 0 else float("nan")
        summary = {"variant": key, "wall": wall, "cpu": cpu, "cpu_per_wall": cpu / wall, "busy": load,
                   "contended": load < CONTENTION_FRACTION, "stages": stages,
                   "other": (wall if clock == "wall" else cpu) - sum(stages[s] for s in STAGES)}
        for name, base in (("vs_all", baseline), ("vs_tokens", tokens_base)):
            if base:
                summary[name] = statistics.median(a / b for a, b in zip(row[clock], rows[base][clock]))
                summary[name + "_cpu"] = statistics.median(a / b for a, b in zip(row["cpu"], rows[base]["cpu"]))
        out.append(summary)
    if "new:pose" in rows and "new:points" in rows and baseline:
        # pose every frame, points every 4th frame (points_period 1 s at 4 Hz input)
        mix = [(3 * p + q) / 4 / b for p, q, b in zip(rows["new:pose"][clock], rows["new:points"][clock],
                                                     rows[baseline][clock])]
        out.append({"variant": "new:pose+points/4", "vs_all": statistics.median(mix)})
    return out


def print_result(result: dict, clock: str = "wall") -> None:
    w, h = result["size"]
    print(f"\n{result['arch']} at {w}x{h} ({result['tokens'][0]} decoder tokens), {result['device']} "
          f"{result['dtype']}, {result['threads']} threads, {result['rounds']} rounds; "
          f"{result['n_params'] / 1e6:,.0f} M params ({result['param_bytes'] / 2**20:,.0f} MiB), "
          f"peak RSS {result['peak_rss_mib']:,.0f} MiB, build {result['build_s']:.0f} s")
    summaries = summarise(result, clock)
    names = ("encoder", "decoder", "pose_memory", "pose_head", "modulation", "dpt_world", "dpt_self", "dpt_rgb")
    header = (f"{'variant':<20} {'wall s':>8} {'CPU s':>8} {'CPU/wall':>9}  "
              + " ".join(f"{n:>11}" for n in names) + f" {'other':>7} {'RoPE(in)':>9} {'x all':>7} {'x tokens':>8}")
    print(header)
    print("-" * len(header))
    warned = False
    for s in summaries:
        if "wall" not in s:
            print(f"{s['variant']:<20} {'':>8} {'':>8} {'':>9}  " + " ".join(f"{'':>11}" for _ in names)
                  + f" {'':>7} {'':>9} {s['vs_all']:>7.3f}")
            continue
        mark = "!" if s["contended"] else " "
        warned |= s["contended"]
        print(f"{s['variant']:<20} {s['wall']:>8.3f} {s['cpu']:>8.3f} {s['cpu_per_wall']:>8.2f}{mark}  "
              + " ".join(f"{s['stages'][n]:>11.3f}" for n in names)
              + f" {s['other']:>7.3f} {s['stages']['rope']:>9.3f} {s.get('vs_all', float('nan')):>7.3f} "
                f"{s.get('vs_tokens', float('nan')):>8.3f}")
    print(f"(stage columns: median {clock} seconds per step; RoPE runs inside encoder/decoder/modulation; "
          f"x all / x tokens: median per-round {clock}-time ratio against the baseline code's all-heads / "
          f"tokens step)")
    cpu_ratios = ", ".join(f"{s['variant']} {s['vs_all_cpu']:.3f}" for s in summaries if "vs_all_cpu" in s)
    if cpu_ratios:
        print(f"CPU-time ratios vs the all-heads baseline: {cpu_ratios}")
    same = result["identical"]
    if same:
        print("outputs bit-identical across the variants of one linear kernel: "
              + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()))
    rel = result.get("max_robust_ratio_onednn_vs_default")
    if rel:
        print("oneDNN vs default kernel, max |diff| / (1e-2 + 1e-2 |default|) (the fixtures' robust bound is 1): "
              + ", ".join(f"{k} {v:.3g}" for k, v in rel.items()))
    if warned:
        print(f"WARNING: rows marked ! used less than {CONTENTION_FRACTION:.0%} of {result['threads']} threads "
              f"(CPU/wall): other processes share the cores; use the same-run ratios, not the times")


def run_parent(args) -> int:
    import numpy as np
    import torch

    from vlm3r_ros.media.sample_scene import generate_sequence

    print(f"torch {torch.__version__}, {args.device}, {args.dtype}, threads {args.threads or torch.get_num_threads()} "
          f"(of {os.cpu_count()} CPUs), load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="bench_cut3r_") as tmp:
        frames_file = str(Path(tmp) / "frames.npy")
        np.save(frames_file, np.stack(generate_sequence(N_SOURCE_FRAMES)))
        for config_key in args.configs:
            rounds = args.full_frames if config_key == "full" else args.frames
            result = spawn(args, ["--child", config_key], rounds, frames_file)
            if args.save:
                Path(args.save).write_text(json.dumps(result))
            print_result(result, args.clock)
        if args.steady_frames >= 2:
            t = spawn(args, ["--steady-child"], args.steady_frames, frames_file)["times"]
            k = min(5, len(t) // 2)
            print(f"\nsteady state, tiny with pose + points at 432x432 over {len(t)} frames after warm-up: "
                  f"mean of first {k} {statistics.fmean(t[:k]):.4f} s, "
                  f"mean of last {k} {statistics.fmean(t[-k:]):.4f} s")
            blocks = [t[i:i + 10] for i in range(0, len(t), 10)]
            print("  median per block of 10 frames: " + ", ".join(f"{statistics.median(b):.4f}" for b in blocks))
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=(432, 432), help="input WIDTHxHEIGHT (default 432x432)")
    parser.add_argument("--configs", default="full,tiny", help="comma list of full, tiny (default both)")
    parser.add_argument("--modes", default="tokens,pose,points,all", help="comma list of " + ", ".join(MODES))
    parser.add_argument("--ref", help="also run the model code of this git revision (e.g. main) on the same weights")
    parser.add_argument("--frames", type=int, default=10, help="timed rounds of the tiny model (default 10)")
    parser.add_argument("--full-frames", type=int, default=2, help="timed rounds of the full model (default 2)")
    parser.add_argument("--steady-frames", type=int, default=50,
                        help="timed frames of the steady-state run (default 50; < 2 skips it)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--new-kernels", default="onednn",
                        help="linear kernels of the new code to run, comma list of onednn (the default, shown "
                             "as 'new') and default (torch's MKL GEMM, shown as 'new/default')")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="per-stage columns in wall (default) or CPU seconds (steadier on a shared machine)")
    parser.add_argument("--save", help="also write the last configuration's raw result (JSON) here")
    parser.add_argument("--load", help="print the table of a result saved with --save, and exit")
    parser.add_argument("--child", choices=list(ARCHS), help=argparse.SUPPRESS)
    parser.add_argument("--steady-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--frames-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.configs = [c for c in args.configs.split(",") if c]
    args.modes = [m for m in args.modes.split(",") if m]
    args.new_kernels = [k for k in args.new_kernels.split(",") if k]
    if set(args.new_kernels) - {"onednn", "default"}:
        parser.error(f"--new-kernels takes onednn and/or default, got {args.new_kernels}")
    bad = [c for c in args.configs if c not in ARCHS] + [m for m in args.modes if m not in MODES]
    if bad:
        parser.error(f"unknown configuration or mode {bad}; configurations: {list(ARCHS)}, modes: {list(MODES)}")
    if min(args.frames, args.full_frames) < 1:
        parser.error("--frames and --full-frames must be >= 1")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available to this torch ({torch.__version__})")
    if args.load:
        print_result(json.loads(Path(args.load).read_text()), args.clock)
        return 0
    if args.steady_child:
        return run_steady_child(args)
    return run_child(args) if args.child else run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
