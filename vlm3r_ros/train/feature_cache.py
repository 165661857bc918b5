"""Features of the frozen encoders, computed once per video and read by training.

The official run precomputes CUT3R features per video (``spatial_features/<video>.pt``). We
store what the trainable half needs, per video, as one safetensors shard:

* ``vision`` (F, 729, Dv): SigLIP's layer -2 output (the 26th layer, before ``post_layernorm``);
* ``camera`` (F, 1, Ds) and ``patch`` (F, N, Ds): CUT3R's camera and patch tokens, from one fresh
  stream over the F sampled frames in order (the official training sampling, 32 frames:
  :func:`~vlm3r_ros.train.data.training_frame_indices`; a shorter clip repeats frames, as the
  official ``extract_spatial_features.py`` does with ``force_sample``).

The shard's metadata keys it: the video (media key, and each file's size and modification
time), the number of frames asked for, the frame indices used, and a hash of the encoders'
weights. A reader refuses an entry whose video changed, whose frame count differs, or whose
encoder hash is not the current one (stale), and says how to rebuild it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vlm3r_ros.eval.benchmark import SceneMedia

from .data import TrainSample, read_clip
from .model import encode_clip

FORMAT = "vlm3r-features-2"  # 2: short clips sampled as the official training (repeats)


class StaleCacheError(RuntimeError):
    """A cache entry that is missing or does not match the video, the frame count or the encoders."""


def encoder_hash(vlm, cut3r) -> str:
    """sha256 over the names, shapes, dtypes and bytes of SigLIP's and CUT3R's weights."""
    h = hashlib.sha256()
    for prefix, module in (("siglip", vlm.vision_tower), ("cut3r", cut3r)):
        for name, t in sorted(module.state_dict().items()):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{prefix}.{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def media_signature(media: SceneMedia) -> list:
    files = list(media.frames) if media.kind == "frames" else \
        sorted(p for p in media.path.iterdir() if p.is_file()) if media.kind == "folder" else [media.path]
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


class FeatureCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def shard(self, media: SceneMedia) -> Path:
        return self.root / (hashlib.sha256(media.key.encode()).hexdigest()[:24] + ".safetensors")

    # ------------------------------------------------------------- writing
    def build(self, samples: Iterable[TrainSample], vlm, cut3r, num_frames: int, *, progress=None,
              force: bool = False) -> dict:
        """Compute and store every video's features; entries that are current are kept."""
        self.root.mkdir(parents=True, exist_ok=True)
        ehash = encoder_hash(vlm, cut3r)
        seen, written, kept = set(), 0, 0
        videos = []
        for s in samples:
            if s.media.key not in seen:
                seen.add(s.media.key)
                videos.append(s.media)
        for i, media in enumerate(videos):
            if not force:
                try:
                    self._check(media, num_frames, ehash)
                    kept += 1
                    continue
                except StaleCacheError:
                    pass
            pixels, indices = read_clip(media, num_frames)
            device = vlm.device
            vision, camera, patch = encode_clip(vlm, cut3r, pixels.to(device))
            meta = {"format": FORMAT, "video": media.key, "files": json.dumps(media_signature(media)),
                    "num_frames": str(num_frames), "frame_indices": json.dumps(indices), "encoder_hash": ehash}
            tensors = {"vision": vision, "camera": camera, "patch": patch}
            save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(self.shard(media)),
                      metadata=meta)
            written += 1
            if progress is not None:
                progress(i + 1, len(videos))
        (self.root / "index.json").write_text(json.dumps(
            {"format": FORMAT, "encoder_hash": ehash, "num_frames": num_frames,
             "videos": {m.key: self.shard(m).name for m in videos}}, indent=1))
        return {"videos": len(videos), "written": written, "kept": kept, "encoder_hash": ehash}

    # ------------------------------------------------------------- reading
    def _check(self, media: SceneMedia, num_frames: int, ehash: str) -> dict:
        path = self.shard(media)
        if not path.is_file():
            raise StaleCacheError(f"no cached features for {media.describe()} in {self.root}; run "
                                  f"vlm3r-cache-features over the same data first")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        rebuild = "; rebuild it with vlm3r-cache-features (it recomputes stale entries)"
        if meta.get("format") != FORMAT:
            raise StaleCacheError(f"{path}: written in cache format {meta.get('format')!r}, this version reads "
                                  f"{FORMAT!r}{rebuild}")
        if meta.get("video") != media.key:
            raise StaleCacheError(f"{path} is not the feature shard of {media.describe()}{rebuild}")
        if meta.get("encoder_hash") != ehash:
            raise StaleCacheError(f"{path}: stale, computed with other SigLIP/CUT3R weights (hash "
                                  f"{meta.get('encoder_hash', '?')[:12]}, now {ehash[:12]}){rebuild}")
        if meta.get("num_frames") != str(num_frames):
            raise StaleCacheError(f"{path}: stale, {meta.get('num_frames')} frames sampled, training asks for "
                                  f"{num_frames}{rebuild}")
        if json.loads(meta.get("files", "[]")) != media_signature(media):
            raise StaleCacheError(f"{path}: stale, {media.describe()} changed since it was cached{rebuild}")
        return meta

    def load(self, media: SceneMedia, num_frames: int, ehash: str) -> dict[str, torch.Tensor]:
        meta = self._check(media, num_frames, ehash)
        out = {}
        with safe_open(str(self.shard(media)), "pt") as f:
            for name in ("vision", "camera", "patch"):
                out[name] = f.get_tensor(name)
        out["frame_indices"] = json.loads(meta["frame_indices"])
        return out

    def reader(self, base, num_frames: int):
        """A ``features`` function for :class:`~vlm3r_ros.train.data.Vlm3rTrainDataset` (checks every entry
        first, so a stale cache fails before training starts)."""
        ehash = encoder_hash(base.vlm, base.cut3r)
        return CachedFeatures(self, num_frames, ehash)


class CachedFeatures:
    def __init__(self, cache: FeatureCache, num_frames: int, ehash: str):
        self.cache, self.num_frames, self.ehash = cache, num_frames, ehash

    def check_all(self, samples: Iterable[TrainSample]) -> None:
        for media in {s.media.key: s.media for s in samples}.values():
            self.cache._check(media, self.num_frames, self.ehash)

    def __call__(self, sample: TrainSample) -> dict:
        f = self.cache.load(sample.media, self.num_frames, self.ehash)
        return {"vision": f["vision"], "camera": f["camera"], "patch": f["patch"]}
