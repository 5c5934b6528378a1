"""The driver of `pipelines/full.py` killed (SIGKILL) in the middle of HML training: nothing incomplete is
marked complete, and a rerun resumes at the first incomplete stage without redoing the data stage."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import subprocess_env

from pipelines.train_faults import registered_checkpoint_steps

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--preset", "tiny", "phases=[hml]", "hml.methods=[hml]", "hml.steps_per_stage=96", "hml.stage1_share=0.5", "hml.checkpoint_every=8",
        "hml.eval_images=20", "sgg.scale=0.04", "num_cpus=2"]


def full(run_dir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "pipelines" / "full.py"), *ARGS, f"run_dir={run_dir}", "run_name=r"]


def registered_checkpoints(cache: Path) -> int:
    """Checkpoints Ray Train has registered for the HML stages (only those are restored: the kill waits)."""
    return sum(len(registered_checkpoint_steps(d)) for d in cache.glob("hml-*/ray/*"))


@pytest.mark.ray
@pytest.mark.slow
def test_killed_driver_resumes_at_first_incomplete_stage(tmp_path):
    run_dir = tmp_path / "runs"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(full(run_dir), stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(),
                                start_new_session=True)
        deadline = time.time() + 900
        while time.time() < deadline and proc.poll() is None and not registered_checkpoints(run_dir / ".cache"):
            time.sleep(0.05)
        assert registered_checkpoints(run_dir / ".cache"), (tmp_path / "first.log").read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
        proc.wait()

    cache = run_dir / ".cache"
    (data_dir,) = cache.glob("data-sgg-*")
    (hml_dir,) = cache.glob("hml-*")
    assert (data_dir / "_DONE.json").is_file() and not (hml_dir / "_DONE.json").exists()
    assert not (run_dir / "r" / "summary.json").exists()
    assert not list(run_dir.rglob("*.tmp")), "a temp file was left visible"
    assert not list(hml_dir.glob("stages/hml-stage1-*/final.pt")), "stage 1 finished before the kill: no test"

    # progress bars on (the tiny preset turns them off; not part of the cache key)
    second = subprocess.run(full(run_dir) + ["hml.progress=true"], capture_output=True, text=True, env=subprocess_env(), timeout=1200,
                            check=False)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    assert "[full] data-sgg: cached" in out and "[full] hml: done" in out
    assert "- ListFiles:" not in out, "Ray Data operator progress bars are on (they stay open until the driver exits)"
    rows = [json.loads(line) for f in hml_dir.glob("stages/hml-stage1-*/metrics.jsonl")
            for line in f.read_text().splitlines() if line]
    assert rows and max(r["resumed_from"] for r in rows) > 0, "stage 1 restarted from scratch"
    assert rows[-1]["step"] == 96
    summary = json.loads((run_dir / "r" / "summary.json").read_text())
    assert 0.0 <= summary["sgg"]["hml"]["R@100"] <= 100.0
    assert (hml_dir / "_DONE.json").is_file()
