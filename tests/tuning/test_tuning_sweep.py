"""A real 4-trial Optuna/ASHA sweep of a tiny numpy fit: interrupted by a trial (reported unfinished, its
MLflow parent run KILLED), restored, and finished trials are not rerun (counted with marker files); every
trial is an MLflow child run, and secrets in the search space are redacted. A sweep run while MLflow is
unreachable buffers parent and trials in one file: replaying it, or resuming the sweep once MLflow is back,
nests the trials under the parent. A second Ctrl-C that escapes a sweep or a resume closes the parent KILLED."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import ray
from mlflow import MlflowClient
from ray import cloudpickle, tune

from components.code_version import code_fingerprint
from components.errors import InputError
from components.tracking import Tracker, replay
from pipelines import compare
from tuning.sweep import _trial_callback, resume_sweep, run_sweep

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules

STEPS = 3


def ridge_fit(config: dict) -> None:
    """Gradient descent on a fixed least-squares problem; reports the training loss per step."""
    tid = tune.get_context().get_trial_id()
    markers = Path(config["marker_dir"])
    (markers / f"start-{tid}-{uuid.uuid4().hex}").touch()
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    (markers / f"cpus-{cpus}-{uuid.uuid4().hex}").touch()  # the share this execution was given
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


def quadratic(config: dict) -> None:
    """One report of (x - 1)^2: the cheapest trainable, for sweeps whose tracking is under test."""
    tune.report({"loss": (config["x"] - 1.0) ** 2})


def held(config: dict) -> None:
    """Fails while the `fail` file exists; else marks itself started and runs until `release` exists."""
    if Path(config["fail"]).exists():
        raise RuntimeError("failing on purpose")
    Path(config["started"]).touch()
    deadline = time.monotonic() + 60
    while not Path(config["release"]).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    tune.report({"loss": 0.0})


def fresh(fn: Callable) -> Callable:
    """A new function object of `fn`, as a resuming process imports it (tune.with_resources marks the function
    object it wraps, so resuming with the very same object would hide a lost resource request)."""
    return types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def count(markers: Path, kind: str, tid: str) -> int:
    return len(list(markers.glob(f"{kind}-{tid}-*")))


@pytest.mark.ray
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_local, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    markers = tmp_path / "markers"
    markers.mkdir()
    flag = tmp_path / "fail-once"
    flag.touch()
    space = {"lr": tune.loguniform(1e-3, 0.3), "l2": tune.uniform(0.0, 0.1), "api_token": "s3cret",
             "marker_dir": str(markers), "fail_flag": str(flag), "driver_pid": os.getpid()}
    tracker = Tracker.for_run_dir(tmp_path / "run", "sweeps")
    t0 = time.monotonic()
    first = run_sweep(ridge_fit, space, metric="loss", mode="min", num_samples=4,
                      storage_path=tmp_path / "tune", name="toy", max_concurrent=2, tracker=tracker,
                      max_t=STEPS, grace_period=STEPS)
    assert not flag.exists() and first.num_errors == 0
    finished = [t["trial_id"] for t in first.trials if t["metrics"].get("done")]
    assert 1 <= len(finished) < 4
    # Tune returns normally after the signal: the interruption shows as unfinished trials (running or never
    # started), and the parent run is KILLED, not FINISHED.
    assert first.num_unfinished == 4 - len(finished)
    client = MlflowClient(tracker.uri)
    assert client.get_run(first.parent_run_id).info.status == "KILLED"
    with pytest.raises(InputError, match="already exists"):
        run_sweep(ridge_fit, space, "loss", "min", 4, tmp_path / "tune", "toy")

    # A sweep started by other source code is refused (nothing run), unless the user accepts mixing the two;
    # the record then keeps every code version that ran.
    meta_file = tmp_path / "tune" / "toy.sweep.json"
    meta = json.loads(meta_file.read_text())
    assert meta["code"] == code_fingerprint()
    meta_file.write_text(json.dumps({**meta, "code": "0123456789ab"}))
    starts = len(list(markers.glob("start-*")))
    with pytest.raises(InputError, match="started by source code 0123456789ab.*allow-code-change"):
        resume_sweep(fresh(ridge_fit), tmp_path / "tune", "toy", tracker=tracker)
    assert len(list(markers.glob("start-*"))) == starts  # refused before any trial ran
    t1 = time.monotonic()
    second = resume_sweep(fresh(ridge_fit), tmp_path / "tune", "toy", tracker=tracker, allow_code_change=True)
    assert json.loads(meta_file.read_text())["code_changes"] == [code_fingerprint()]
    print(f"first sweep {t1 - t0:.1f} s, resumed sweep {time.monotonic() - t1:.1f} s")
    assert second.num_errors == 0 and second.num_unfinished == 0 and len(second.trials) == 4
    assert all(t["metrics"]["training_iteration"] == STEPS for t in second.trials)
    for tid in finished:  # finished before the interruption: executed exactly once
        assert count(markers, "start", tid) == 1 and count(markers, "done", tid) == 1
    # resumed trials keep the sweep's share (0.5 CPU by default), not Tune's default of a whole CPU
    shares = {p.name.split("-")[1] for p in markers.glob("cpus-*")}
    assert shares == {"0.5"} and len(list(markers.glob("cpus-*"))) == len(list(markers.glob("start-*")))
    all_ids = {t["trial_id"] for t in second.trials}
    assert all(count(markers, "done", tid) == 1 for tid in all_ids)
    losses = [t["metrics"]["loss"] for t in second.trials]
    assert second.best_metrics["loss"] == min(losses)
    assert second.parent_run_id == first.parent_run_id

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
    params = parent.data.params  # the search space and best config go through the secret redaction
    assert params["space.api_token"] == params["best.api_token"] == "***"
    assert params["sweep.num_samples"] == "4"
    assert float(params["best.lr"]) == second.best_config["lr"]
    assert not tracker.status().fallback_used

    out = tmp_path / "cmp"
    assert compare.main(["--tracking-uri", tracker.uri, "--experiment", "sweeps", "--sweep",
                         first.parent_run_id, "--metric", "loss", "--param", "lr", "--out", str(out)]) == 0
    rows = (out / "compare.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4 and (out / "loss_vs_lr.png").stat().st_size > 0


def nested_runs(uri: str) -> tuple[list, list]:
    """The sweep parent runs and the trial runs of experiment 'sweeps' at `uri`."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("sweeps").experiment_id])
    return ([r for r in runs if r.data.tags.get("kind") == "sweep"],
            [r for r in runs if "ray.trial_id" in r.data.tags])


def assert_trials_nested(uri: str, num_trials: int) -> str:
    """One FINISHED sweep run at `uri` with `num_trials` FINISHED trial runs nested under it; its id."""
    parents, trials = nested_runs(uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == num_trials and all(r.info.status == "FINISHED" for r in trials)
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parents[0].info.run_id}
    return parents[0].info.run_id


@pytest.mark.ray
def test_sweep_while_mlflow_is_down_nests_trials_under_parent_when_back(ray_local, tmp_path, monkeypatch,
                                                                        dead_server_url):
    """MLflow unreachable for the whole sweep: the parent's and the trials' records wait in the sweep's one
    fallback file, so replaying it (CLI) or resuming the sweep once MLflow is back creates the parent first
    and nests the trials under its real id, which the sweep description then keeps."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a refused connection fails at once
    fallback = tmp_path / "run" / "mlflow_fallback.jsonl"
    tracker = Tracker(dead_server_url, "sweeps", fallback, retry_seconds=3600)
    res = run_sweep(quadratic, {"x": tune.uniform(0.0, 2.0)}, metric="loss", mode="min", num_samples=2,
                    storage_path=tmp_path / "tune", name="offline", tracker=tracker, max_t=1)
    assert res.num_unfinished == 0 and res.parent_run_id.startswith("offline-")
    assert res.tracking.pending > 0 and [p.name for p in fallback.parent.iterdir()] == [fallback.name]

    copy = shutil.copy(fallback, tmp_path / "copy.jsonl")
    replayed = f"sqlite:///{tmp_path / 'replayed.db'}"
    assert replay.main([str(copy), "--tracking-uri", replayed]) == 0
    assert_trials_nested(replayed, 2)

    back = Tracker(f"sqlite:///{tmp_path / 'back.db'}", "sweeps", fallback)
    resumed = resume_sweep(quadratic, tmp_path / "tune", "offline", tracker=back)
    parent = assert_trials_nested(back.uri, 2)
    assert resumed.parent_run_id == parent and resumed.tracking.pending == 0 and not fallback.exists()
    assert json.loads((tmp_path / "tune" / "offline.sweep.json").read_text())["parent_run_id"] == parent


def ctrl_c_twice(started: Path, presses: list) -> threading.Thread:
    """From Python's own SIGINT handler (a fresh CLI's), a thread pressing Ctrl-C once a trial runs, and again
    once Tune's handler has taken the first press and put Python's back: the second raises KeyboardInterrupt.
    Appends to `presses` the SIGINT handler installed at each press."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # not a handler an earlier sweep left installed

    def press() -> None:
        deadline = time.monotonic() + 120
        while not started.exists():
            if time.monotonic() > deadline:
                return  # no trial ran: the sweep failed otherwise, and nothing is pressed
            time.sleep(0.01)
        presses.append(signal.getsignal(signal.SIGINT))
        os.kill(os.getpid(), signal.SIGINT)
        while signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            if time.monotonic() > deadline:
                return  # Tune never took the first press: the test fails on its missing KeyboardInterrupt
            time.sleep(0.001)
        presses.append(signal.getsignal(signal.SIGINT))
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=press, daemon=True)
    thread.start()
    return thread


def assert_pressed_twice(presser: threading.Thread, presses: list) -> None:
    """The presser finished after two presses: the first taken by Tune's handler, the second by Python's."""
    presser.join(timeout=10)
    assert not presser.is_alive() and len(presses) == 2
    tune_handler, python_handler = presses
    assert callable(tune_handler) and tune_handler is not signal.default_int_handler
    assert tune_handler.__module__.startswith("ray.tune.")
    assert python_handler is signal.default_int_handler


@pytest.mark.ray
def test_second_ctrl_c_escaping_the_sweep_closes_its_parent_killed(ray_local, tmp_path, monkeypatch):
    """A second Ctrl-C (after the first stopped the sweep) escapes run_sweep / resume_sweep as KeyboardInterrupt:
    the sweep's own parent run is closed KILLED (resumable), not left RUNNING or FAILED."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker.for_run_dir(tmp_path / "run", "sweeps")
    client = MlflowClient(tracker.uri)
    fail, release = tmp_path / "fail", tmp_path / "release"
    space = {"x": tune.uniform(0.0, 1.0), "fail": str(fail), "started": str(tmp_path / "started"),
             "release": str(release)}

    def parent_status(name: str) -> str:
        meta = json.loads((tmp_path / "tune" / f"{name}.sweep.json").read_text())
        return client.get_run(meta["parent_run_id"]).info.status

    handler = signal.getsignal(signal.SIGINT)
    presses: list = []
    presser = ctrl_c_twice(tmp_path / "started", presses)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_sweep(held, space, "loss", "min", 1, tmp_path / "tune", "twice", tracker=tracker, max_t=1)
    finally:
        release.touch()
        signal.signal(signal.SIGINT, handler)
    assert_pressed_twice(presser, presses)
    assert parent_status("twice") == "KILLED"

    fail.touch()  # a sweep whose trial errored: its parent is FAILED until a resume restarts the trial
    failed = run_sweep(held, space | {"started": str(tmp_path / "started2")}, "loss", "min", 1, tmp_path / "tune",
                       "errored", tracker=tracker, max_t=1)
    assert failed.num_errors == 1 and parent_status("errored") == "FAILED"
    fail.unlink()
    release.unlink()
    presses = []
    presser = ctrl_c_twice(tmp_path / "started2", presses)
    try:
        with pytest.raises(KeyboardInterrupt):
            resume_sweep(held, tmp_path / "tune", "errored", tracker=tracker)
    finally:
        release.touch()
        signal.signal(signal.SIGINT, handler)
    assert_pressed_twice(presser, presses)
    assert parent_status("errored") == "KILLED"


def test_tuner_without_the_private_run_config_is_one_input_error():
    """Ray gives no public access to a restored Tuner's callbacks; if its internals change, one clear error."""
    with pytest.raises(InputError, match="resume_sweep.*restored callbacks"):
        _trial_callback(tune.Tuner.__new__(tune.Tuner))
