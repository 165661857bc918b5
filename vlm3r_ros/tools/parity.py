"""Numerical parity of our models with the official implementations, on fixture files.

    python -m vlm3r_ros.tools.parity cut3r FILE.safetensors [--dump OUT.safetensors]

A CUT3R fixture is ``FILE.safetensors`` (``param/*`` weights, ``input/*`` frames and
resets, ``expect/*`` official outputs) with ``FILE.json`` (its config) beside it. We build
the model from the JSON, load ``param/*`` strictly, stream ``input/frames`` and compare
every ``expect/*`` tensor. Per output name (pooled over frames) we print the worst
normalised error |got-exp| / (atol + rtol*|exp|) and the fraction of elements above 1.

Rules (from the fixtures' README):
  strict: every element has normalised error <= 1 (atol = rtol = 1e-4);
  robust: per name at most 0.5% of elements above 1, and every element within
          1e-2 + 1e-2*|exp|.
The exit status is non-zero when the robust rule fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from vlm3r_ros.engine.parity import (VLM3R_TOLERANCE, compare, compare_max_abs, format_reports, run_cut3r_fixture,
                                     run_vlm3r_fixture)


def _main_vlm3r(args) -> int:
    produced, expected, doc = run_vlm3r_fixture(args.fixture)
    rows = compare_max_abs(produced, expected)
    print(f"fixture {args.fixture.name} ({doc.get('case', '?')}): {len(expected)} expected tensors, "
          f"tolerance {VLM3R_TOLERANCE:g} max abs")
    width = max(len(k) for k, _ in rows)
    for key, err in rows:
        print(f"{key:<{width}}  {err:10.3g}  {'ok' if err <= VLM3R_TOLERANCE else 'FAIL'}")
    if args.dump:
        from safetensors.torch import save_file

        save_file({k: v.clone().contiguous() for k, v in produced.items()}, str(args.dump))
        print(f"wrote {len(produced)} tensors to {args.dump}")
    ok = all(err <= VLM3R_TOLERANCE for _, err in rows)
    print(f"worst {max(e for _, e in rows):.3g}: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlm3r_ros.tools.parity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=["cut3r", "vlm3r"], help="which model the fixture is for")
    parser.add_argument("fixture", type=Path, help="fixture .safetensors (its .json beside it)")
    parser.add_argument("--dump", type=Path, help="write every compared tensor we produced, under its expect/* name")
    args = parser.parse_args(argv)
    if not args.fixture.is_file() or not args.fixture.with_suffix(".json").is_file():
        parser.error(f"need {args.fixture} and {args.fixture.with_suffix('.json')}")
    torch.set_grad_enabled(False)
    if args.model == "vlm3r":
        return _main_vlm3r(args)
    produced, expected, doc = run_cut3r_fixture(args.fixture)
    reports = compare(produced, expected)
    print(f"fixture {args.fixture.name} ({doc.get('case', '?')}): {len(expected)} expected tensors")
    print(format_reports(reports))
    if args.dump:
        from safetensors.torch import save_file

        save_file({k: produced[k].contiguous() for k in expected}, str(args.dump))
        print(f"wrote {len(expected)} tensors to {args.dump}")
    strict = all(r.strict_ok for r in reports)
    robust = all(r.robust_ok for r in reports)
    print(f"strict rule: {'PASS' if strict else 'MISS'}; robust rule: {'PASS' if robust else 'FAIL'}")
    return 0 if robust else 1


if __name__ == "__main__":
    sys.exit(main())
