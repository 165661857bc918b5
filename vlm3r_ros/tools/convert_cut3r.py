"""Convert a published CUT3R ``.pth`` checkpoint to ``.safetensors`` (+ its ``.json`` config).

    vlm3r-convert-cut3r cut3r_512_dpt_4_64.pth cut3r_512_dpt_4_64.safetensors

The ``.pth`` is read without executing its pickle; its architecture comes from the
constructor string stored in it (``ckpt['args'].model``), or from ``--config`` for a file
without one. The output loads with ``vlm3r-cut3r --weights DST`` and
:func:`vlm3r_ros.engine.checkpoint.load_cut3r`; the ``.json`` config is written beside it.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

from vlm3r_ros.engine.checkpoint import CheckpointError, convert_pth_to_safetensors
from vlm3r_ros.models.cut3r.config import PUBLIC_CONFIGS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vlm3r-convert-cut3r", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="published checkpoint (.pth)")
    parser.add_argument("dst", type=Path, help="output .safetensors (its .json config is written beside it)")
    parser.add_argument("--config", choices=sorted(PUBLIC_CONFIGS),
                        help="architecture, needed only for a .pth without a constructor string")
    parser.add_argument("--force", action="store_true", help="overwrite an existing DST")
    args = parser.parse_args(argv)

    def fail(message: str) -> int:
        print(f"vlm3r-convert-cut3r: error: {message}", file=sys.stderr)
        return 2

    if not args.src.is_file():
        return fail(f"checkpoint not found: {args.src} (the published CUT3R checkpoints are linked from "
                    f"https://github.com/CUT3R/CUT3R; pass the local path)")
    if args.dst.suffix != ".safetensors":
        return fail(f"DST must end in .safetensors, got {args.dst}")
    if args.dst.resolve() == args.src.resolve():
        return fail("DST is the same file as SRC")
    if args.dst.exists() and not args.force:
        return fail(f"{args.dst} exists; pass --force to overwrite it")
    config = PUBLIC_CONFIGS[args.config] if args.config else None
    try:
        dst = convert_pth_to_safetensors(args.src, args.dst, config=config)
    except CheckpointError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return fail(" ".join(lines[:4]) + (" ..." if len(lines) > 4 else ""))
    except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:
        # checkpoint.py lets the legacy (non-zip) fallback's unpickling errors through
        return fail(f"{args.src}: not a readable torch checkpoint ({exc})")
    except OSError as exc:
        return fail(f"cannot convert {args.src} -> {args.dst}: {exc.strerror or exc}")

    from safetensors import safe_open

    with safe_open(str(dst), framework="pt") as f:
        n_keys = len(list(f.keys()))
    sidecar = dst.with_suffix(".json")
    n_bytes = dst.stat().st_size
    print(f"wrote {n_keys} tensors, {n_bytes:,} bytes to {dst} (config: {sidecar}, {sidecar.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
