"""A real 4-trial Optuna/ASHA sweep of a tiny numpy fit: interrupted by a failing trial, restored, and
finished trials are not rerun (counted with marker files); every trial is an MLflow child run."""
from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from ray import cloudpickle, tune

from components.errors import InputError
from components.tracking import Tracker
from pipelines import compare
from tuning.sweep import resume_sweep, run_sweep

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules

STEPS = 3


def ridge_fit(config: dict) -> None:
    """Gradient descent on a fixed least-squares problem; reports the training loss per step."""
    tid = tune.get_context().get_trial_id()
    markers = Path(config["marker_dir"])
    (markers / f"start-{tid}-{uuid.uuid4().hex}").touch()
    flag = Path(config["fail_flag"])
    # The 3rd trial to start (two run at a time: at least one has finished) interrupts the driver like
    # Ctrl-C does (Tune treats SIGUSR1 the same), once; it and any trial not yet started stay unfinished.
    if len(list(markers.glob("start-*"))) >= 3 and flag.exists():
        try:
            os.remove(flag)
        except FileNotFoundError:
            pass
        else:
            os.kill(config["driver_pid"], signal.SIGUSR1)
            time.sleep(30)  # stopped by Tune before this ends
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.1 * rng.normal(size=64)
    w = np.zeros(4)
    for step in range(STEPS):
        grad = x.T @ (x @ w - y) / len(y) + config["l2"] * w
        w -= config["lr"] * grad
        if step == STEPS - 1:  # ASHA stops the trial at max_t, inside the last report
            (markers / f"done-{tid}-{uuid.uuid4().hex}").touch()
        tune.report({"loss": float(np.mean((x @ w - y) ** 2))})


def count(markers: Path, kind: str, tid: str) -> int:
    return len(list(markers.glob(f"{kind}-{tid}-*")))


@pytest.mark.ray
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_local, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    markers = tmp_path / "markers"
    markers.mkdir()
    flag = tmp_path / "fail-once"
    flag.touch()
    space = {"lr": tune.loguniform(1e-3, 0.3), "l2": tune.uniform(0.0, 0.1),
             "marker_dir": str(markers), "fail_flag": str(flag), "driver_pid": os.getpid()}
    tracker = Tracker.for_run_dir(tmp_path / "run", "sweeps")
    t0 = time.monotonic()
    first = run_sweep(ridge_fit, space, metric="loss", mode="min", num_samples=4,
                      storage_path=tmp_path / "tune", name="toy", max_concurrent=2, tracker=tracker,
                      max_t=STEPS, grace_period=STEPS)
    assert not flag.exists() and first.num_errors == 0
    finished = [t["trial_id"] for t in first.trials if t["metrics"].get("done")]
    assert 1 <= len(finished) < 4
    with pytest.raises(InputError):
        run_sweep(ridge_fit, space, "loss", "min", 4, tmp_path / "tune", "toy")

    t1 = time.monotonic()
    second = resume_sweep(ridge_fit, tmp_path / "tune", "toy", tracker=tracker)
    print(f"first sweep {t1 - t0:.1f} s, resumed sweep {time.monotonic() - t1:.1f} s")
    assert second.num_errors == 0 and len(second.trials) == 4
    assert all(t["metrics"]["training_iteration"] == STEPS for t in second.trials)
    for tid in finished:  # finished before the interruption: executed exactly once
        assert count(markers, "start", tid) == 1 and count(markers, "done", tid) == 1
    all_ids = {t["trial_id"] for t in second.trials}
    assert all(count(markers, "done", tid) == 1 for tid in all_ids)
    losses = [t["metrics"]["loss"] for t in second.trials]
    assert second.best_metrics["loss"] == min(losses)
    assert second.parent_run_id == first.parent_run_id

    client = MlflowClient(tracker.uri)
    exp = client.get_experiment_by_name("sweeps").experiment_id
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{first.parent_run_id}'")
    finished_runs = {r.data.tags["ray.trial_id"]: r for r in children if r.info.status == "FINISHED"}
    assert set(finished_runs) == all_ids and len(finished_runs) == 4
    for tid in all_ids:  # one MLflow run per execution; an interrupted attempt is closed as KILLED
        attempts = sorted((int(r.data.tags["attempt"]), r.info.status) for r in children
                          if r.data.tags["ray.trial_id"] == tid)
        assert len(attempts) == count(markers, "start", tid)
        assert attempts[-1][1] == "FINISHED" and all(s == "KILLED" for _, s in attempts[:-1])
    for tid, r in finished_runs.items():
        hist = client.get_metric_history(r.info.run_id, "loss")
        assert sorted(m.step for m in hist) == list(range(1, STEPS + 1))
        assert float(r.data.params["lr"]) > 0
    parent = client.get_run(first.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_loss"] == pytest.approx(min(losses))
    assert not tracker.status().fallback_used

    out = tmp_path / "cmp"
    assert compare.main(["--tracking-uri", tracker.uri, "--experiment", "sweeps", "--sweep",
                         first.parent_run_id, "--metric", "loss", "--param", "lr", "--out", str(out)]) == 0
    rows = (out / "compare.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4 and (out / "loss_vs_lr.png").stat().st_size > 0
