"""The whole pipeline as users run it: a real local Ray head started by cluster/up.sh, the tiny preset
submitted with `ray job submit` (token auth), success awaited, then summary.json, MLflow runs and
artifacts checked; a second submission resumes from the content-addressed stages instead of retraining."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UP, DOWN = ROOT / "cluster" / "up.sh", ROOT / "cluster" / "down.sh"
RAY = str(Path(sys.executable).with_name("ray"))
# Smaller than --preset tiny where it only costs time: two HML methods, three DiffAugment variants.
OVERRIDES = ["hml.methods=[hml,ce]", "hml.steps_per_stage=10", "hml.checkpoint_every=10", "hml.eval_images=30",
             "sgg.scale=0.05", "vrr.scale=0.06", "diffaug.diffusion.steps=40", "diffaug.n_generated=200"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "MLFLOW_"))}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


@pytest.fixture(scope="module")
def head():
    """A real head node (2 CPUs) started and stopped by our own scripts; yields (env, dashboard address)."""
    d = Path(tempfile.mkdtemp(prefix="hf", dir="/tmp"))  # Ray's unix sockets need a short path
    dash = free_port()
    up = subprocess.run(["bash", str(UP), "--dir", str(d), "--num-cpus", "2", "--port", str(free_port()),
                         "--dashboard-port", str(dash), "--object-store-mb", "300", "--timeout", "240"],
                        capture_output=True, text=True, env=clean_env(), check=False)
    assert up.returncode == 0, up.stderr + up.stdout
    env = clean_env()
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(d / "auth_token"))
    try:
        yield env, f"http://127.0.0.1:{dash}"
    finally:
        subprocess.run(["bash", str(DOWN), "--dir", str(d), "--grace", "2"], env=clean_env(), check=False)
        shutil.rmtree(d, ignore_errors=True)


def submit(env: dict, address: str, run_dir: Path) -> subprocess.CompletedProcess:
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT),
           "--", "python", "pipelines/full.py", "--preset", "tiny", f"run_dir={run_dir}", "run_name=job",
           *OVERRIDES]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1500, check=False)


@pytest.mark.ray
@pytest.mark.slow
def test_full_pipeline_by_ray_job_submit(head, tmp_path):
    env, address = head
    run_dir = tmp_path / "runs"
    first = submit(env, address, run_dir)
    assert first.returncode == 0 and "succeeded" in first.stdout, first.stdout[-4000:] + first.stderr[-2000:]
    summary = json.loads((run_dir / "job" / "summary.json").read_text())
    assert set(summary["sgg"]) == {"hml", "ce"}
    for metrics in summary["sgg"].values():
        assert all(0.0 <= metrics[f"{m}@{k}"] <= 100.0 for m in ("R", "mR", "Mean") for k in (20, 50, 100))
    assert {"baseline_ce", "real_balanced_ft", "diffaug_so"} <= set(summary["ltvrr"])
    for res in summary["ltvrr"].values():
        assert res["rel"].keys() >= {"many", "medium", "few", "all"} and "combined" in res
    assert set(summary["timings_s"]) == {"data-sgg", "hml", "data-vrr", "diffaug"}

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("hmldiff")
    runs = client.search_runs([exp.experiment_id])
    names = {r.info.run_name for r in runs}
    assert "full-job" in names and {"hml", "ce"} <= names
    full = next(r for r in runs if r.info.run_name == "full-job")
    assert full.data.params["hml.lam"] == "0.5" and "ltvrr.diffaug_so.combined" in full.data.metrics
    assert list((run_dir / ".cache" / "diffaug-artifacts").glob("diffusion-*/bundle.safetensors"))  # shared by phases
    diffaug = next(r for r in runs if r.info.run_name.startswith("diffaug-"))  # the phase's steps, timed
    assert diffaug.data.metrics["seconds_diffusion_training"] > 0 and "[diffaug] sampling diffaug_so:" in first.stdout
    artifacts = [a.path for a in client.list_artifacts(full.info.run_id)]
    assert "summary.json" in artifacts

    second = submit(env, address, run_dir)
    assert second.returncode == 0, second.stdout[-4000:]
    assert "[full] hml: cached" in second.stdout and "[full] diffaug: cached" in second.stdout
    again = json.loads((run_dir / "job" / "summary.json").read_text())
    assert again["sgg"]["hml"]["mR@100"] == summary["sgg"]["hml"]["mR@100"]
