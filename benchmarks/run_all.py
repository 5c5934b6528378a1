"""Run every benchmark side by side and write `benchmarks/results.json` and `benchmarks/results.md`.

Each benchmark module exposes `run(quick: bool) -> dict` of ratios measured in one run (ours vs a
plain baseline, or vs this machine's measured ceiling). `--quick` uses small sizes. The results (with their
provenance: commit, dirty tree, time, versions, `--quick`) replace results.json/.md only when every required
key is present; otherwise they go to results.partial.json/.md and the exit status is 1. Each module's
`<module>_other_cpu_cores` is the CPU that processes outside this process tree used meanwhile (Linux).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import platform
import subprocess
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Self

import psutil

from benchmarks.machine import facts
from components.atomic import write_json, write_text

HERE = Path(__file__).resolve().parent
MODULES = ("bench_stream", "bench_hml_step", "bench_sampling", "bench_eval", "bench_classifier")
REQUIRED = ("stream_ratio", "hml_step_ratio", "sampling_pool_ratio", "sampling_flops_fraction", "eval_memory_growth")
POLL_SECONDS = 0.5  # how often this process's descendants' CPU times are read
OTHER_CPU_WARN = 0.1  # cores used by other processes during a module above which a warning is printed


def _git(*args: str) -> str | None:
    """Stdout of `git args` in this repository, or None (no git, not a repository)."""
    try:
        return subprocess.run(["git", *args], cwd=HERE.parent, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def provenance(quick: bool) -> dict:
    """Commit, whether the tree was dirty, UTC time, python/torch/ray/numpy versions and `--quick` of this run."""
    import numpy
    import ray
    import torch

    head, status = _git("rev-parse", "HEAD"), _git("status", "--porcelain")
    return {"commit": head.strip() if head else None, "dirty": None if status is None else bool(status.strip()),
            "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray.__version__, "numpy": numpy.__version__, "quick": quick}


def busy_seconds() -> float:
    """CPU seconds the machine's processes have used since boot: /proc/stat's busy jiffies (all but idle and
    iowait; guest time is already inside user and nice) over the clock tick."""
    with open("/proc/stat") as fh:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fh.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _cpu(proc: psutil.Process) -> float:
    """User + system CPU seconds of `proc` itself (all its threads; not its children)."""
    t = proc.cpu_times()
    return t.user + t.system


class OtherCpu:
    """Cores of CPU used by processes outside this process tree during the `with` block (`cores` after it):
    the machine's busy time minus this tree's CPU seconds (`own_seconds`: this process's and its descendants'
    (Ray's raylet and workers, subprocesses), read every POLL_SECONDS; a descendant's CPU after its last read
    counts as other)."""

    def __enter__(self) -> Self:
        self._me, self._stop, self._seen = psutil.Process(), threading.Event(), {}
        self._poll()
        self._base = dict(self._seen)
        self._t0, self._busy0, self._own0 = time.perf_counter(), busy_seconds(), _cpu(self._me)
        self._thread = threading.Thread(target=self._loop, name="other-cpu", daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        """Record every live descendant's CPU seconds, keyed by (pid, start time)."""
        for p in self._me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                self._seen[(p.pid, p.create_time())] = _cpu(p)

    def _loop(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self._poll()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()
        busy, own, wall = busy_seconds() - self._busy0, _cpu(self._me) - self._own0, time.perf_counter() - self._t0
        self.own_seconds = own + sum(s - self._base.get(k, 0.0) for k, s in self._seen.items())
        self.cores = max(0.0, (busy - self.own_seconds) / wall)  # jiffy rounding can make it slightly negative


def _provenance_line(p: dict) -> str:
    """results.md's first line: where and how the numbers were made."""
    return (f"Provenance: commit {p['commit']}{' (dirty tree)' if p['dirty'] else ''}, {p['utc']}, python "
            f"{p['python']}, torch {p['torch']}, ray {p['ray']}, numpy {p['numpy']}{', --quick' if p['quick'] else ''}")


def _row(key: str, value: object) -> str:
    """One markdown table row (floats to 4 significant digits)."""
    return f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"


def _table(results: dict) -> list[str]:
    """results.md: the provenance line, then one row per key (nested dicts flattened as key.subkey)."""
    lines = [_provenance_line(results["provenance"]), "", "| key | value |", "|---|---|"]
    for k, v in results.items():
        if k != "provenance":
            lines += [_row(f"{k}.{kk}", vv) for kk, vv in v.items()] if isinstance(v, dict) else [_row(k, v)]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes (minutes, not tens of minutes)")
    ap.add_argument("--only", nargs="*", default=None, help="benchmark modules to run (writes the partial files)")
    ap.add_argument("--out", type=Path, default=HERE, help="directory of the results files")
    args = ap.parse_args(argv)
    results: dict = {"provenance": provenance(args.quick), "machine": facts()}
    failed = []
    for name in args.only or MODULES:
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        with OtherCpu() as other:
            try:
                res = importlib.import_module(f"benchmarks.{name}").run(quick=args.quick)
            except Exception:  # noqa: BLE001 (report every benchmark, even if one fails)
                traceback.print_exc()
                failed.append(name)
                res = {}
        results.update(res)
        results[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
        results[f"{name}_other_cpu_cores"] = other.cores
        if other.cores > OTHER_CPU_WARN:
            print(f"warning: other processes used {other.cores:.2f} cores during {name}", file=sys.stderr, flush=True)
    missing = [k for k in REQUIRED if k not in results]
    stem = "results" if not (failed or missing) else "results.partial"
    write_json(args.out / f"{stem}.json", results)
    lines = _table(results)
    write_text(args.out / f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    if failed or missing:
        print(f"failed benchmarks: {failed}; missing keys: {missing}; wrote {args.out / stem}.json, "
              f"not results.json", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
