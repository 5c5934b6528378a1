"""pipelines/full.py and its MLflow parent run, through the real CLI: a failing phase closes the run FAILED,
Ctrl-C closes it KILLED (never left RUNNING); tracking credentials never reach summary.json or stdout; the
absolute output directory is printed at start (a relative run_dir under `ray job submit` is Ray's copy)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import subprocess_env
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
PASSWORD, TOKEN = "s3cret-pw", "tok-abc123"


def env(tracking_uri: str) -> dict:
    """This process's environment without Ray or MLflow settings, with the given tracking backend."""
    return subprocess_env(MLFLOW_TRACKING_URI=tracking_uri)


def full(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "pipelines" / "full.py"), "num_cpus=1", "run_name=r", *args]


def parent_status(uri: str) -> str:
    """Status of the one `full-r` run in the sqlite backend at `uri`."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("hmldiff")
    (run,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'full-r'")
    return run.info.status


@pytest.mark.ray
def test_failed_phase_closes_parent_run_failed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    not_a_store = tmp_path / "empty"
    not_a_store.mkdir()
    p = subprocess.run(full("phases=[hml]", f"sgg_store={not_a_store}", f"run_dir={tmp_path / 'runs'}"),
                       capture_output=True, text=True, env=env(uri), cwd=tmp_path, timeout=300, check=False)
    assert p.returncode == 2, p.stderr[-3000:]
    expected = (f"error: {not_a_store / 'manifest.json'}: manifest missing: the store is incomplete or not a "
                "feature store (expected manifest.json written by StoreWriter.close())")
    assert [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")] == [expected]
    assert "Traceback" not in p.stderr
    assert parent_status(uri) == "FAILED"


@pytest.mark.ray
def test_interrupted_run_closes_parent_run_killed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # sgg.scale=20: the planted data stage takes minutes, so Ctrl-C lands while it is written
    cmd = full("phases=[hml]", "sgg.scale=20", f"run_dir={tmp_path / 'runs'}")
    with open(tmp_path / "stderr.log", "w") as err:
        # A test run started in the background (`cmd &` in a script) has SIGINT ignored, which a child inherits
        # (Python then installs no KeyboardInterrupt handler); a handled SIGINT is reset to default by exec.
        ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env(uri), cwd=tmp_path,
                                    start_new_session=True)
        finally:
            signal.signal(signal.SIGINT, ignored)
        try:
            for line in proc.stdout:
                if line.startswith("[full] Ray resources"):
                    break
            time.sleep(2.0)
            assert proc.poll() is None, (tmp_path / "stderr.log").read_text()[-3000:]
            os.kill(proc.pid, signal.SIGINT)
            proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in (tmp_path / "stderr.log").read_text()
    assert not (tmp_path / "runs" / "r" / "summary.json").exists()
    assert parent_status(uri) == "KILLED"


@pytest.fixture(scope="module")
def secret_uri_run(tmp_path_factory, dead_server_url) -> tuple[Path, subprocess.CompletedProcess]:
    """A run with no phases, a relative run_dir and a tracking URI holding a password and a token (an MLflow
    server that is down, so the tracking summary names the URI and the first error)."""
    d = tmp_path_factory.mktemp("secret")
    uri = f"http://alice:{PASSWORD}@{urlsplit(dead_server_url).netloc}/?token={TOKEN}"
    p = subprocess.run(full("phases=[]", "run_dir=runs"), capture_output=True, text=True, env=env(uri), cwd=d,
                       timeout=300, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    return d, p


@pytest.mark.ray
def test_tracking_credentials_never_reach_summary_or_output(secret_uri_run):
    d, p = secret_uri_run
    text = (d / "runs" / "r" / "summary.json").read_text()
    tracking = json.loads(text)["tracking"]
    assert "unreachable" in tracking and "http://***@127.0.0.1:" in tracking and "token=***" in tracking
    for secret in (PASSWORD, TOKEN):
        assert secret not in text and secret not in p.stdout and secret not in p.stderr


@pytest.mark.ray
def test_absolute_output_directory_is_printed_at_start(secret_uri_run):
    d, p = secret_uri_run
    assert p.stdout.splitlines()[0] == f"[full] outputs: {d.resolve() / 'runs' / 'r'}"


def test_phase_records_buffered_while_mlflow_was_down_are_replayed_by_a_later_run(tmp_path, monkeypatch,
                                                                                   dead_server_url):
    """A phase's own tracker buffers in its stage directory; a cached phase never runs again, so full.py
    replays that buffer on every run and reports per phase what was delivered."""
    from components.tracking import Tracker
    from pipelines.full import replay_phase_tracking

    stage = tmp_path / ".cache" / "hml-abc"
    dead = Tracker(dead_server_url, "hmldiff", stage / "mlflow_fallback.jsonl",
                   retry_seconds=3600)
    with dead.run("hml-abc") as rid:
        dead.log_metrics(rid, {"mR@100": 12.5})
    assert dead.close().pending == 3
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    report = replay_phase_tracking({"hml": str(stage), "diffaug": str(tmp_path / "nothing-buffered")}, "hmldiff")
    assert list(report) == ["hml"] and "3 buffered records replayed" in report["hml"]
    assert not (stage / "mlflow_fallback.jsonl").exists()
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("hmldiff").experiment_id])
    assert run.info.run_name == "hml-abc" and run.data.metrics["mR_at_100"] == 12.5 and run.info.status == "FINISHED"
    assert replay_phase_tracking({"hml": str(stage)}, "hmldiff") == {}
