"""Do other CPU dtypes or kernels make a full-size CUT3R step faster, and do they keep parity?

    python benchmarks/cut3r_kernels.py [--threads 1] [--repeats 5] [--variants ...] [--skip-parity]

Same-run A/B on the parts of the released cut3r_512_dpt_4_64 architecture at 432x432 (27x27
patches), random weights: one encoder block (1024 wide, 16 heads, 729 tokens), one decoder
layer (the image block over 730 tokens and the state block over 768, each with self- and
cross-attention), and the world-points DPT head (the modulated tokens -> 432x432 map).
A full step is 24 encoder blocks + 12 decoder layers (+ a DPT head per dense output), so
the per-part ratios carry over. Variants, each alternated with the float32 eager baseline
in every repeat (CPU seconds per call; 1 thread keeps the CPU time honest on a shared
machine):
  bf16           weights and activations in bfloat16 (oneDNN uses AVX-512 BF16 / AMX where the CPU
                 has them: see lscpu flags avx512_bf16, amx_bf16);
  compile        torch.compile (inductor, C++ codegen) of the part, float32;
  sdpa_math      scaled_dot_product_attention forced to the MATH backend (the default on CPU
                 is the flash-attention CPU kernel);
  onednn_linear  every nn.Linear through oneDNN's packed fp32 GEMM instead of MKL's;
  channels_last  the DPT convolutions in channels-last memory format (DPT head only).
Parity (unless --skip-parity): the variant applied to the whole model on every public CUT3R
fixture, under the fixtures' robust rule (the same rule engine/parity.py and the tests use).
Numbers go into notes; a variant is worth adopting only if it is faster here AND passes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

VARIANTS = ("bf16", "compile", "sdpa_math", "onednn_linear", "channels_last")


def use_onednn_linear(module):
    """Every Cut3rLinear of ``module`` on oneDNN's fp32 GEMM (the model's set_linear_kernel('onednn'))."""
    from vlm3r_ros.models.cut3r.layers import Cut3rLinear

    for sub in module.modules():
        if isinstance(sub, Cut3rLinear):
            sub.onednn = True
    return module


def transform(variant: str, module, *, is_model: bool = False):
    """A copy of ``module`` with ``variant`` applied, and the input dtype it wants."""
    import torch

    m = copy.deepcopy(module)
    if variant == "bf16":
        if is_model:  # as build_cut3r(dtype=bfloat16): the heads stay float32
            m.to(torch.bfloat16)
            m.downstream_head.float()
        else:
            m.to(torch.bfloat16)
        return m, torch.bfloat16
    if variant == "compile":
        if is_model:
            for blocks in (m.enc_blocks, m.dec_blocks, m.dec_blocks_state):
                for i in range(len(blocks)):
                    blocks[i] = torch.compile(blocks[i], dynamic=False)
            return m, torch.float32
        return torch.compile(m, dynamic=False), torch.float32
    if variant == "onednn_linear":
        return use_onednn_linear(m), torch.float32
    if variant == "channels_last":
        return m.to(memory_format=torch.channels_last), torch.float32
    return m, torch.float32  # sdpa_math and the baseline change no weights


def context(variant: str):
    if variant == "sdpa_math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def parts(seed: int = 0):
    """The full-size parts with random weights and their inputs (callables taking a dtype)."""
    import torch

    from vlm3r_ros.models.cut3r import PUBLIC_CONFIGS
    from vlm3r_ros.models.cut3r.heads import Cut3rDPTAdapter, _modulate
    from vlm3r_ros.models.cut3r.layers import Cut3rDecoderBlock, Cut3rEncoderBlock, Cut3rRoPE2D

    cfg = PUBLIC_CONFIGS["cut3r_512_dpt_4_64"]
    gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def init_random_(module):  # the tiny.py recipe, for parts that are not a whole model
        for sub in module.modules():
            if isinstance(sub, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                sub.weight.copy_(torch.randn(sub.weight.shape, generator=gen) * sub.weight[0].numel() ** -0.5)
                if sub.bias is not None:
                    sub.bias.copy_(torch.randn(sub.bias.shape, generator=gen) * 0.05)
            elif isinstance(sub, torch.nn.LayerNorm):
                sub.weight.copy_(1 + 0.1 * torch.randn(sub.weight.shape, generator=gen))
        return module
    rope = Cut3rRoPE2D(cfg.rope_base)
    g = 27
    rows = torch.arange(g).repeat_interleave(g)
    pos = torch.stack([rows, torch.arange(g).repeat(g)], -1)[None]  # (1, 729, 2)
    xpos = torch.cat([torch.full((1, 1, 2), -1), pos], 1)
    w = cfg.state_width
    idx = torch.arange(cfg.state_size)
    spos = torch.stack([idx // w, idx % w], -1)[None]

    enc = init_random_(Cut3rEncoderBlock(cfg.enc_embed_dim, cfg.enc_num_heads, 4.0, rope, round_qk_fp16=True))
    enc_x = torch.randn(1, g * g, cfg.enc_embed_dim, generator=gen)

    class DecoderLayer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blk_s = Cut3rDecoderBlock(cfg.dec_embed_dim, cfg.state_dec_num_heads, 4.0, rope)
            self.blk_x = Cut3rDecoderBlock(cfg.dec_embed_dim, cfg.dec_num_heads, 4.0, rope)

        def forward(self, s, x):
            return self.blk_s(s, x, spos, xpos), self.blk_x(x, s, xpos, spos)

    dec = init_random_(DecoderLayer())
    dec_s = torch.randn(1, cfg.state_size, cfg.dec_embed_dim, generator=gen)
    dec_x = torch.randn(1, 1 + g * g, cfg.dec_embed_dim, generator=gen)

    class WorldPoints(torch.nn.Module):
        def __init__(self):
            super().__init__()
            from vlm3r_ros.models.cut3r.heads import _final_transform
            self.final_transform = _final_transform(cfg, rope)
            self.dpt_cross = Cut3rDPTAdapter((cfg.enc_embed_dim,) + (cfg.dec_embed_dim,) * 3, cfg.dpt_layer_dims,
                                             cfg.dpt_feature_dim, cfg.dpt_last_dim, 4)

        def forward(self, h0, h1, h2, last):
            cross = _modulate(last[:, 0], last[:, 1:], self.final_transform, pos)
            return self.dpt_cross([h0, h1, h2, cross], (g, g))

    head = init_random_(WorldPoints())
    hooks = [torch.randn(1, g * g, cfg.enc_embed_dim, generator=gen)] + [
        torch.randn(1, g * g, cfg.dec_embed_dim, generator=gen) for _ in range(2)] + [
        torch.randn(1, 1 + g * g, cfg.dec_embed_dim, generator=gen)]
    return {
        "encoder block": (enc, lambda m, dt: m(enc_x.to(dt), pos)),
        "decoder layer": (dec, lambda m, dt: m(dec_s.to(dt), dec_x.to(dt))),
        "world DPT head": (head, lambda m, dt: m(*(h.to(dt) for h in hooks))),
    }


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def time_parts(variants, repeats: int) -> list[dict]:
    import torch

    rows = []
    for name, (module, call) in parts().items():
        module.eval().requires_grad_(False)
        todo = [v for v in variants if v != "channels_last" or name == "world DPT head"]
        built = {"fp32": (module, torch.float32)}
        compile_s = {}
        with torch.inference_mode():
            for v in todo:
                start = time.process_time()
                built[v] = transform(v, module)
                with context(v):
                    ref = _first(call(*built[v]))  # first call: compiles where needed
                compile_s[v] = time.process_time() - start
            base = _first(call(*built["fp32"]))
            cpu = {v: [] for v in built}
            for _ in range(repeats):
                for v, (m, dt) in built.items():
                    with context(v):
                        start = time.process_time()
                        out = _first(call(m, dt))
                        cpu[v].append(time.process_time() - start)
                    if v != "fp32":
                        ref = out
                        err = float(((ref.float() - base).abs() / (1e-2 + 1e-2 * base.abs())).max())
                        cpu.setdefault(v + "/err", []).append(err)
        b = statistics.median(cpu["fp32"])
        for v in todo:
            t = statistics.median(cpu[v])
            rows.append({"part": name, "variant": v, "fp32_s": b, "variant_s": t, "ratio": statistics.median(
                a / c for a, c in zip(cpu[v], cpu["fp32"])), "first_call_s": compile_s[v],
                "robust_ratio_vs_fp32": max(cpu[v + "/err"])})
            print(f"  {name:<15} {v:<14} fp32 {b:7.3f} s  variant {t:7.3f} s  ratio {rows[-1]['ratio']:.3f}  "
                  f"(first call {compile_s[v]:.1f} s; max |diff| / (1e-2 + 1e-2 |fp32|) = "
                  f"{rows[-1]['robust_ratio_vs_fp32']:.3g})", flush=True)
    return rows


def parity(variant: str) -> dict[str, bool]:
    """The robust rule on every public fixture with ``variant`` applied to the whole model."""
    import vlm3r_ros.engine.checkpoint as checkpoint
    from gpu_check import FIXTURES
    from vlm3r_ros.engine.parity import compare, run_cut3r_fixture

    real_build = checkpoint.build_cut3r

    def build(*args, **kwargs):
        model, _ = transform(variant, real_build(*args, **kwargs), is_model=True)
        return model

    out = {}
    checkpoint.build_cut3r = build  # run_cut3r_fixture imports it at call time
    try:
        for path in sorted(FIXTURES.glob("cut3r_*.safetensors")):
            with context(variant):
                produced, expected, _ = run_cut3r_fixture(path)
            reports = compare(produced, expected)
            failing = [r.name for r in reports if not r.robust_ok]
            out[path.stem] = not failing
            print(f"  parity {variant:<14} {path.stem:<30} {'pass' if not failing else 'FAIL ' + ', '.join(failing)}",
                  flush=True)
    finally:
        checkpoint.build_cut3r = real_build
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="alternations per part (default 5)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
    parser.add_argument("--skip-parity", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args(argv)
    import torch

    variants = [v for v in args.variants.split(",") if v]
    bad = set(variants) - set(VARIANTS)
    if bad:
        parser.error(f"unknown variants {sorted(bad)}")
    torch.set_num_threads(args.threads)
    flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0] if Path("/proc/cpuinfo").exists() else ""
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; avx512_bf16 {'avx512_bf16' in flags}, "
          f"amx_bf16 {'amx_bf16' in flags}", flush=True)
    if not args.skip_timing:
        time_parts(variants, args.repeats)
    if not args.skip_parity:
        for v in variants:
            if v != "channels_last":  # a memory layout: same arithmetic, checked by the part diff above
                parity(v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
