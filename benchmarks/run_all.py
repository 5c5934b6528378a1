"""Run every benchmark side by side and write `benchmarks/results.json` and `benchmarks/results.md`.

Each benchmark module exposes `run(quick: bool) -> dict` of ratios measured in one run (ours vs a
plain baseline, or vs this machine's measured ceiling). `--quick` uses small sizes.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

from benchmarks.machine import facts
from components.atomic import write_json, write_text

HERE = Path(__file__).resolve().parent
MODULES = ("bench_stream", "bench_hml_step", "bench_sampling", "bench_eval")
REQUIRED = ("stream_ratio", "hml_step_ratio", "sampling_pool_ratio", "sampling_flops_fraction", "eval_memory_growth")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes (minutes, not tens of minutes)")
    ap.add_argument("--only", nargs="*", default=None, help="benchmark modules to run")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    results: dict = {"machine": facts()}
    failed = []
    for name in args.only or MODULES:
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            res = importlib.import_module(f"benchmarks.{name}").run(quick=args.quick)
        except Exception:  # noqa: BLE001 (report every benchmark, even if one fails)
            traceback.print_exc()
            failed.append(name)
            continue
        res[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
        results.update(res)
    write_json(args.out / "results.json", results)
    lines = ["| key | value |", "|---|---|"]
    for k, v in results.items():
        if isinstance(v, dict):
            lines += [f"| {k}.{kk} | {vv:.4g} |" if isinstance(vv, float) else f"| {k}.{kk} | {vv} |"
                      for kk, vv in v.items()]
        else:
            lines.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    write_text(args.out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    missing = [k for k in REQUIRED if k not in results]
    if failed or missing:
        print(f"failed benchmarks: {failed}; missing keys: {missing}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
