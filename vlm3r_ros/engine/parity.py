"""Numerical parity of our models with the official implementations, on fixture files.

A CUT3R fixture is ``FILE.safetensors`` (``param/*`` weights, ``input/*`` frames and
resets, ``expect/*`` official outputs) with ``FILE.json`` (its config) beside it. We build
the model from the JSON, load ``param/*`` strictly, stream ``input/frames`` and compare
every ``expect/*`` tensor. Per output name (pooled over frames) :func:`compare` gives the
worst normalised error |got-exp| / (atol + rtol*|exp|) and the fraction of elements above 1.

Rules (from the fixtures' README):
  strict: every element has normalised error <= 1 (atol = rtol = 1e-4);
  robust: per name at most 0.5% of elements above 1, and every element within
          1e-2 + 1e-2*|exp|.

A VLM-3R fixture is compared by worst absolute error (:func:`compare_max_abs`, tolerance
``VLM3R_TOLERANCE``). The command is ``vlm3r-parity`` (:mod:`vlm3r_ros.tools.parity`); the
tests and benchmarks call these functions directly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from vlm3r_ros.engine import checkpoint  # build_cut3r looked up at call time (the parity tests patch it)
from vlm3r_ros.models.vlm.fusion import Vlm3rFusionBlock, select_spatial_tokens
from vlm3r_ros.models.vlm.modeling_vlm3r import splice_embeddings
from vlm3r_ros.models.vlm.projector import add_newlines, build_projector, pool_2d

ATOL = RTOL = 1e-4
ROBUST_FRACTION = 0.005
ROBUST_ATOL = ROBUST_RTOL = 1e-2


@dataclass
class NameReport:
    name: str
    elements: int
    worst_norm_err: float
    frac_over_tol: float
    worst_robust_ratio: float  # max |got-exp| / (1e-2 + 1e-2*|exp|)

    @property
    def strict_ok(self) -> bool:
        return self.worst_norm_err <= 1.0

    @property
    def robust_ok(self) -> bool:
        return self.frac_over_tol <= ROBUST_FRACTION and self.worst_robust_ratio <= 1.0


def compare(produced: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[NameReport]:
    """Compare tensors named ``expect/...``, pooled per output name (the part after the frame)."""
    missing = sorted(set(expected) - set(produced))
    if missing:
        raise KeyError(f"no produced tensor for: {missing[:10]}")
    pooled: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for key, exp in expected.items():
        got = produced[key]
        if tuple(got.shape) != tuple(exp.shape):
            raise ValueError(f"{key}: produced shape {tuple(got.shape)} != expected {tuple(exp.shape)}")
        name = re.sub(r"^expect/\d+/", "", key).replace("expect/", "")
        pooled.setdefault(name, []).append((got.double(), exp.double()))
    reports = []
    for name, pairs in sorted(pooled.items()):
        got = torch.cat([g.flatten() for g, _ in pairs])
        exp = torch.cat([e.flatten() for _, e in pairs])
        diff = (got - exp).abs()
        norm = diff / (ATOL + RTOL * exp.abs())
        robust = diff / (ROBUST_ATOL + ROBUST_RTOL * exp.abs())
        norm = torch.nan_to_num(norm, nan=float("inf"))
        robust = torch.nan_to_num(robust, nan=float("inf"))
        reports.append(NameReport(name, exp.numel(), float(norm.max()), float((norm > 1).double().mean()),
                                  float(robust.max())))
    return reports


def format_reports(reports: list[NameReport]) -> str:
    lines = [f"{'output':<22} {'elements':>9} {'worst norm err':>15} {'frac > tol':>11} {'robust':>7} {'strict':>7}"]
    for r in reports:
        lines.append(f"{r.name:<22} {r.elements:>9} {r.worst_norm_err:>15.4g} {r.frac_over_tol:>11.3%} "
                     f"{'ok' if r.robust_ok else 'FAIL':>7} {'ok' if r.strict_ok else 'miss':>7}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- CUT3R
def run_cut3r_fixture(path: str | Path, device: str | torch.device = "cpu"
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """Run our CUT3R on a fixture (on ``device``, float32). Returns (produced on the CPU, expected,
    fixture json)."""
    path = Path(path)
    doc = json.loads(path.with_suffix(".json").read_text())
    tensors = load_file(str(path))
    config = checkpoint.config_from_json(doc, source=str(path.with_suffix(".json")))
    params = {k[len("param/"):]: v for k, v in tensors.items() if k.startswith("param/")}
    model = checkpoint.build_cut3r(config, params, device=device)
    frames = tensors["input/frames"].float().to(device)
    if frames.ndim == 4:  # (T, 3, H, W): one stream
        frames = frames[:, None]
    steps, batch = frames.shape[:2]  # (T, B, 3, H, W)

    def per_step(name: str, default: bool) -> torch.Tensor:
        flags = tensors.get(name, torch.full((steps,), int(default), dtype=torch.uint8)).bool()
        return flags[:, None].expand(steps, batch) if flags.ndim == 1 else flags

    resets, updates = per_step("input/reset", False), per_step("input/update", True)
    rows, cols = tensors.get("meta/dense_rows"), tensors.get("meta/dense_cols")

    def dense(t: torch.Tensor) -> torch.Tensor:
        t = t.cpu()
        return t[:, rows][:, :, cols] if rows is not None else t

    produced: dict[str, torch.Tensor] = {}
    state = model.init_state(batch)
    produced["expect/init/state_feat"] = state.state_feat.cpu()
    produced["expect/init/mem"] = state.mem.cpu()
    produced["expect/init/state_pos"] = model.state_positions(batch).cpu()
    for t in range(steps):
        out, state = model.step(state, frames[t], update=updates[t], reset=resets[t], with_heads=True)
        h = out.heads
        values = {
            "camera_token": out.camera_token, "patch_tokens": out.patch_tokens, "state_feat": state.state_feat,
            "mem": state.mem, "pose_token_in": out.pose_token_in, "enc_feat": out.enc_feat,
            "camera_pose": h.camera_pose, "camera_c2w": h.camera_c2w,
            "pts3d_in_self_view": dense(h.pts3d_in_self_view), "conf_self": dense(h.conf_self),
            "pts3d_in_other_view": dense(h.pts3d_in_other_view), "conf": dense(h.conf),
        }
        if h.rgb is not None:
            values["rgb"] = dense(h.rgb)
        for name, value in values.items():
            produced[f"expect/{t}/{name}"] = value.detach().cpu().clone()
    expected = {k: v for k, v in tensors.items() if k.startswith("expect/")}
    return produced, expected, doc


# ---------------------------------------------------------------------- VLM-3R
VLM3R_TOLERANCE = 1e-5  # max abs error per tensor, float32


def run_vlm3r_fixture(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """Run our VLM-3R token path (fusion, projector, pooling, newlines, splice) on a fixture."""
    path = Path(path)
    doc = json.loads(path.with_suffix(".json").read_text())
    cfg = doc["config"]
    t = load_file(str(path))
    params = {k[len("param/model."):]: v for k, v in t.items() if k.startswith("param/model.")}
    dv = params["fusion_block.clip_norm.weight"].shape[0]
    ds = params["fusion_block.spatial_encoder_norm.weight"].shape[0]
    hidden = params["mm_projector.0.weight"].shape[0]
    fusion = Vlm3rFusionBlock(dv, ds, int(cfg["num_heads"])).eval()
    fusion.load_state_dict({k[len("fusion_block."):]: v for k, v in params.items()
                            if k.startswith("fusion_block.")}, strict=True)
    projector = build_projector(dv, hidden).eval()
    projector.load_state_dict({k[len("mm_projector."):]: v for k, v in params.items()
                               if k.startswith("mm_projector.")}, strict=True)
    embed = torch.nn.Embedding.from_pretrained(params["embed_tokens.weight"])
    newline = params["image_newline"]
    grid = int(cfg["grid"][0])
    stride = int(cfg.get("pool_stride", 2))

    produced: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        vision = t["input/siglip_features"]
        kv = select_spatial_tokens(t["input/cut3r_camera_tokens"], t["input/cut3r_patch_tokens"],
                                   cfg["spatial_tower_select_feature"])
        produced["expect/kv_tokens"] = kv
        debug: dict[str, torch.Tensor] = {}
        hooks = [getattr(fusion, name).register_forward_hook(
            lambda _m, _i, out, name=name: debug.__setitem__(name, out[0] if isinstance(out, tuple) else out))
            for name in ("clip_norm", "spatial_encoder_norm", "clip_query_proj", "spatial_encoder_key_proj",
                         "spatial_encoder_value_proj", "cross_attention", "out_proj", "out_norm")]
        fused, weights = fusion(vision, kv)
        for h in hooks:
            h.remove()
        produced["expect/fused"] = fused
        produced["expect/attn_weights_head_mean_first8"] = weights[:, :8]
        for name, value in debug.items():
            produced[f"expect/fusion_debug_frame0/{name}"] = value[0]
        projected = projector(fused)
        produced["expect/projected"] = projected
        pooled = {mode: pool_2d(projected, grid, mode, stride) for mode in ("bilinear", "average", "max")}
        for mode, value in pooled.items():
            produced[f"expect/pooled/{mode}"] = value
        for newline_mode in ("grid", "frame", "one_token", "no_token"):
            for mode in ("bilinear", "average", "max"):
                produced[f"expect/visual_tokens/{newline_mode}_{mode}"] = add_newlines(pooled[mode], newline,
                                                                                      newline_mode)
        for newline_mode in ("grid", "frame", "one_token", "no_token"):
            for mode in ("bilinear", "average", "max"):
                visual = produced[f"expect/visual_tokens/{newline_mode}_{mode}"]
                produced[f"expect/inputs_embeds/{newline_mode}_{mode}"] = splice_embeddings(
                    t["input/input_ids"], visual, embed)
    expected = {k: v for k, v in t.items() if k.startswith("expect/")}
    return produced, expected, doc


def compare_max_abs(produced: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[tuple[str, float]]:
    """Worst absolute error per expected tensor (shapes must match exactly)."""
    rows = []
    for key, exp in sorted(expected.items()):
        if key not in produced:
            raise KeyError(f"no produced tensor for {key}")
        got = produced[key]
        if tuple(got.shape) != tuple(exp.shape):
            raise ValueError(f"{key}: produced shape {tuple(got.shape)} != expected {tuple(exp.shape)}")
        err = (got.double() - exp.double()).abs().max().item() if exp.numel() else 0.0
        rows.append((key, err if err == err else float("inf")))
    return rows
