"""Tracker against a real sqlite backend and a real `mlflow server` that is stopped mid-run and restarted."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.code_version import PROJECT_ROOT, code_fingerprint
from components.tracking import (
    Tracker,
    config_params,
    get_or_create_experiment,
    is_secret_key,
    mlflow_name,
    replay,
    tracking_uri,
)

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


# What Tracker sets on an http URI (unless the user did) so that a dead server fails fast.
HTTP_SETTINGS = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT")


def free_port() -> int:
    """A free port for a real server to listen on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, artifacts: Path, port: int) -> subprocess.Popen:
    """A real MLflow tracking server on 127.0.0.1:port (own process group, so we stop exactly it)."""
    proc = subprocess.Popen([MLFLOW, "server", "--backend-store-uri", f"sqlite:///{db}",
                             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 150  # a loaded CI machine can be slow to start it
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError("mlflow server did not come up within 150 s")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class Opt:
    lr: float = 0.1
    api_key: str = "abc"


@dataclass
class Cfg:
    name: str = "x"
    opt: Opt = field(default_factory=Opt)
    hf_token: str = "hf_123"
    layers: tuple[int, ...] = (2, 3)


def test_secret_keys_are_recognised_by_word():
    assert is_secret_key("opt.api_key") and is_secret_key("hf_token") and is_secret_key("db.password")
    assert is_secret_key("awsSecretAccessKey") and is_secret_key("key")
    assert not is_secret_key("monkey") and not is_secret_key("tokenizer.name") and not is_secret_key("opt.lr")


def test_names_are_made_valid_for_mlflow():
    assert mlflow_name("mR@50") == "mR_at_50" and mlflow_name("loss/val") == "loss/val"
    assert mlflow_name("overrides.sitting on") == "overrides.sitting on" and mlflow_name("a{b}") == "a_b_"


def test_config_params_flatten_and_redact():
    p = config_params(Cfg())
    assert p == {"name": "x", "opt.lr": "0.1", "opt.api_key": "***", "hf_token": "***", "layers": "[2, 3]"}


def test_tracking_uri_default_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path / "r") == f"sqlite:///{(tmp_path / 'r').resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking_uri(tmp_path / "r") == "http://127.0.0.1:1"


def test_sqlite_runs_params_metrics_artifacts(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # artifacts must not land in cwd
    run_dir = tmp_path / "run"
    tr = Tracker.for_run_dir(run_dir, "exp")
    plot = run_dir / "plot.png"
    plot.write_bytes(b"\x89PNG fake")
    with tr.run("parent") as parent:
        tr.log_config(parent, Cfg())
        with tr.run("child", parent_run_id=parent) as child, tr.run("grandchild", parent_run_id=child) as grand:
            for step in range(3):
                tr.log_metrics(grand, {"loss": 1.0 / (step + 1), "note": "skip-me", "R@50": 0.5}, step=step)
            tr.log_artifact(grand, plot, "plots")
    st = tr.close()
    assert not st.fallback_used and st.pending == 0 and "all records delivered" in st.summary()
    c = MlflowClient(tracking_uri(run_dir))
    assert c.get_run(child).data.tags["mlflow.parentRunId"] == parent
    # every run names the code it was computed by: the cache keys' source fingerprint and the git commit
    head = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=False)
    for run_id in (parent, child, grand):
        tags = c.get_run(run_id).data.tags
        assert tags["hmldiff.code"] == code_fingerprint()
        if head.returncode == 0:  # a git checkout (CI's clean clone is one)
            assert tags["mlflow.source.git.commit"].removesuffix("-dirty") == head.stdout.strip() != ""
        else:
            assert "mlflow.source.git.commit" not in tags
    assert c.get_run(grand).data.tags["mlflow.parentRunId"] == child
    assert c.get_run(parent).data.params["opt.api_key"] == "***"
    hist = sorted((m.step, m.value) for m in c.get_metric_history(grand, "loss"))
    assert hist == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert "note" not in c.get_run(grand).data.metrics and c.get_run(grand).data.metrics["R_at_50"] == 0.5
    assert c.get_run(grand).info.status == "FINISHED"
    art = Path(c.get_run(grand).info.artifact_uri.removeprefix("file://")) / "plots" / "plot.png"
    assert art.read_bytes() == plot.read_bytes()
    assert art.is_relative_to((run_dir / "mlartifacts").resolve())
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()
    # the experiment keeps its explicit artifact location when fetched again
    assert get_or_create_experiment("exp", None, tracking_uri(run_dir)) == \
        c.get_experiment_by_name("exp").experiment_id


def test_failed_block_marks_run_failed(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tr = Tracker.for_run_dir(tmp_path, "exp")
    with pytest.raises(ZeroDivisionError), tr.run("boom") as rid:
        raise ZeroDivisionError("in the training loop")
    assert MlflowClient(tracking_uri(tmp_path)).get_run(rid).info.status == "FAILED"


def test_server_down_mid_run_buffers_once_and_replays(tmp_path, caplog, monkeypatch):
    """A server stopped mid-run costs one warning; the records wait in the fallback file and are replayed
    once it is back. On an http URI the Tracker makes MLflow fail fast instead of retrying for minutes."""
    for name in HTTP_SETTINGS:  # unset for the test; each comes back as it was afterwards
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    port = free_port()
    db, arts = tmp_path / "srv.db", tmp_path / "srv-artifacts"
    uri = f"http://127.0.0.1:{port}"
    server = start_server(db, arts, port)
    try:
        tr = Tracker(uri, "resilient", tmp_path / "run" / "fallback.jsonl", retry_seconds=0.0)
        assert {k: os.environ.get(k) for k in HTTP_SETTINGS} == {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                                                                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                                                                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
        parent = tr.start_run("sweep")
        tr.log_params(parent, {"lam": 0.5})
        for step in range(3):
            tr.log_metrics(parent, {"loss": float(step)}, step=step)
        stop_server(server)
        caplog.set_level(logging.WARNING, logger="components.tracking.tracker")
        for step in range(3, 6):
            tr.log_metrics(parent, {"loss": float(step)}, step=step)
        child = tr.start_run("trial-offline", parent_run_id=parent)  # created while the server is down
        tr.log_metrics(child, {"acc": 0.75}, step=0)
        tr.end_run(child)
        warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 1
        st = tr.status()
        assert st.fallback_used and not st.online and st.pending == 6 and child.startswith("offline-")
        assert len(Path(st.fallback_path).read_text().splitlines()) == 6
        server = start_server(db, arts, port)
        st = tr.flush()
        assert st.pending == 0 and st.replayed == 6 and st.online and st.fallback_used
        assert not Path(st.fallback_path).exists()
        assert "6 buffered records replayed" in st.summary()
        tr.end_run(parent)
        c = MlflowClient(uri)
        assert sorted((m.step, m.value) for m in c.get_metric_history(parent, "loss")) == \
            [(s, float(s)) for s in range(6)]
        real_child = tr.resolve(child)
        assert c.get_run(real_child).data.tags["mlflow.parentRunId"] == parent
        assert c.get_run(real_child).data.metrics["acc"] == 0.75
        assert c.get_run(real_child).info.status == "FINISHED"
        assert c.get_run(parent).data.params["lam"] == "0.5"
    finally:
        stop_server(server)


def test_left_over_fallback_is_delivered_by_replay_cli(tmp_path, capsys, dead_server_url):
    tr = Tracker(dead_server_url, "later", tmp_path / "fb.jsonl", retry_seconds=3600)
    rid = tr.start_run("offline-run")
    tr.log_metrics(rid, {"m": 2.0}, step=4)
    tr.end_run(rid)
    st = tr.close()
    assert st.pending == 3 and "still in" in st.summary()
    target = f"sqlite:///{tmp_path / 'late.db'}"
    assert replay.main([str(tmp_path / "fb.jsonl"), "--tracking-uri", target]) == 0
    assert "3 buffered records replayed" in capsys.readouterr().out
    c = MlflowClient(target)
    runs = c.search_runs([c.get_experiment_by_name("later").experiment_id])
    assert len(runs) == 1 and runs[0].data.metrics["m"] == 2.0 and runs[0].info.status == "FINISHED"
    assert replay.main([str(tmp_path / "fb.jsonl"), "--tracking-uri", target]) == 2


def test_replay_stopped_half_way_resumes_in_another_process(tmp_path, dead_server_url):
    """A replay that stops after creating a run (here: the artifact store is unusable) leaves the rest
    pending; a later Tracker on the same fallback file logs it into that same run instead of rejecting
    it as an orphan of a run "never created"; the offline id still resolves afterwards."""
    arts = tmp_path / "arts"
    fb = tmp_path / "fb.jsonl"
    dead = Tracker(dead_server_url, "partial", fb, artifact_root=arts, retry_seconds=3600)
    rid = dead.start_run("offline")
    dead.log_metrics(rid, {"m": 1.0}, step=0)
    (tmp_path / "plot.txt").write_text("x")
    dead.log_artifact(rid, tmp_path / "plot.txt")
    dead.log_metrics(rid, {"m": 2.0}, step=1)
    dead.end_run(rid)
    assert dead.close().pending == 5
    target = f"sqlite:///{tmp_path / 'back.db'}"
    get_or_create_experiment("partial", str(arts), target)
    shutil.rmtree(arts, ignore_errors=True)
    arts.write_text("a file where the artifact directory should be")  # a real, non-rejection failure
    first = Tracker(target, "partial", fb, artifact_root=arts, retry_seconds=0.0)
    st = first.flush()
    assert st.replayed == 2 and st.pending == 3 and Path(f"{fb}.ids.json").is_file()
    del first  # the process ends; only the files remain
    arts.unlink()
    second = Tracker(target, "partial", fb, artifact_root=arts, retry_seconds=0.0)
    st = second.flush()
    assert st.pending == 0 and st.rejected == 0 and st.replayed == 3
    assert Tracker(target, "partial", fb).resolve(rid) == second.resolve(rid) != rid
    assert not fb.exists()
    c = MlflowClient(target)
    runs = c.search_runs([c.get_experiment_by_name("partial").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert sorted((m.step, m.value) for m in c.get_metric_history(run.info.run_id, "m")) == [(0, 1.0), (1, 2.0)]
    assert [a.path for a in c.list_artifacts(run.info.run_id)] == ["plot.txt"]
