"""HML sweep: the trial config (swept values, HML only, content-addressed outputs), the search space
bounds, the CLI's error on a missing store, and a real sweep through the CLI (Ray Tune trials that each run
HML's Ray Train stages, logged to a real MLflow sqlite store): Ctrl-C after the first trial exits non-zero
with the command that resumes it; that command finishes the sweep without rerunning the finished trial."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
from conftest import ROOT, subprocess_env
from sgg_stores import write_tiny_store

from components.config import to_dict
from components.errors import InputError
from pipelines.hml import HMLConfig
from tuning.hml_sweep import main, search_space, trial_config


def test_trial_config_applies_swept_values_and_is_content_addressed(tmp_path):
    base = to_dict(HMLConfig(store="/data/store", output_dir="ignored", steps_per_stage=7))
    a = trial_config(base, {"lam": 0.25, "threshold": 0.7, "stages": 3, "other": 1}, tmp_path)
    assert (a.lam, a.threshold, a.stages, a.steps_per_stage) == (0.25, 0.7, 3, 7)
    assert a.methods == ["hml"] and a.track is False and a.store == "/data/store"
    assert Path(a.output_dir).parent == tmp_path
    same = trial_config({**base, "output_dir": "elsewhere"}, {"lam": 0.25, "threshold": 0.7, "stages": 3}, tmp_path)
    other = trial_config(base, {"lam": 0.5, "threshold": 0.7, "stages": 3}, tmp_path)
    assert same.output_dir == a.output_dir and other.output_dir != a.output_dir


def test_search_space_bounds():
    space = search_space()
    assert (space["lam"].lower, space["lam"].upper) == (0.05, 2.0)
    assert (space["threshold"].lower, space["threshold"].upper) == (0.6, 0.8)
    assert sorted(space["stages"].categories) == [2, 3]
    samples = [space["lam"].sample() for _ in range(200)]
    assert all(0.05 <= s <= 2.0 for s in samples)


def test_search_space_names_and_trial_config_of_extra_fields(tmp_path):
    space = search_space(["stage_init", "cr_span", "stage1_share"])
    assert set(space) == {"stage_init", "cr_span", "stage1_share"}
    assert sorted(space["stage_init"].categories) == ["fresh", "previous"]
    assert all(0.05 <= space["stage1_share"].sample() <= 0.5 for _ in range(100))
    cfg = trial_config(to_dict(HMLConfig(store="/s")), {"stage_init": "previous", "cr_span": "old",
                                                         "stage1_share": 0.3}, tmp_path)
    assert (cfg.stage_init, cfg.cr_span, cfg.stage1_share, cfg.lam) == ("previous", "old", 0.3, HMLConfig().lam)
    with pytest.raises(InputError, match="lamda"):
        search_space(["lamda"])


def test_cli_reports_missing_store(tmp_path, capsys):
    assert main(["--store", str(tmp_path / "none"), "--run-dir", str(tmp_path)]) == 2
    assert "feature store directory not found" in capsys.readouterr().err


def _start_cli(argv: list[str], log: Path) -> subprocess.Popen:
    """`python tuning/hml_sweep.py argv` in its own session, SIGINT handled as Python's Ctrl-C even when this
    test runs in the background (SIGINT ignored there, which a child would inherit)."""
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with open(log, "w") as out:
            return subprocess.Popen([sys.executable, str(ROOT / "tuning" / "hml_sweep.py"), *argv], stdout=out,
                                    stderr=subprocess.STDOUT, env=subprocess_env(), cwd=ROOT,
                                    start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, ignored)


def _run_cli(argv: list[str], log: Path, interrupt_when: Callable[[], bool] | None = None) -> tuple[int, str]:
    """Run the sweep CLI to its end (exit code, output); with `interrupt_when`, press Ctrl-C once it holds."""
    proc = _start_cli(argv, log)
    try:
        if interrupt_when is not None:
            deadline = time.monotonic() + 600
            while not interrupt_when() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
            assert proc.poll() is None, log.read_text()[-3000:]
            os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, log.read_text()


def _reported(experiment: Path) -> bool:
    """A trial's result reached Tune's driver (its logger wrote the trial's result.json): the trial is done,
    not merely past writing its HML results.json (Ctrl-C in that gap would leave it running, to be rerun)."""
    return any(p.stat().st_size > 0 for p in experiment.glob("hml_trial_*/result.json"))


def _finished_trials(trials_dir: Path) -> list[Path]:
    """Trial output directories whose HML run wrote its results.json (written last, atomically)."""
    return sorted(p.parent for p in trials_dir.glob("*/results.json"))


@pytest.mark.ray
@pytest.mark.slow
def test_real_sweep_interrupted_after_one_trial_resumes_without_rerunning_it(tmp_path):
    store = write_tiny_store(tmp_path / "store", shard_size=24)
    runs = tmp_path / "runs"
    argv = ["--store", str(store), "--run-dir", str(runs), "--name", "tiny sweep", "--num-samples", "2",
            "--max-concurrent", "1", "--metric", "mR@20", "--cpus-per-trial", "0.25", "hidden_dim=8",
            "steps_per_stage=2", "checkpoint_every=2", "batch_size=4", "max_bg_per_image=16", "ks=[20]",
            "stage1_share=null"]
    trials_dir = runs / "sweeps" / "tiny sweep-trials"
    code, log = _run_cli(argv, tmp_path / "first.log", interrupt_when=lambda: _reported(runs / "sweeps" / "tiny sweep"))
    assert code == 130, log[-3000:]  # Ctrl-C once the first trial was done (the second queued or running)
    (note,) = [ln for ln in log.splitlines() if "unfinished; continue it with: " in ln]
    assert "1 trials unfinished" in note
    command = shlex.split(note.split("continue it with: ")[1])
    assert command[:2] == ["python", "tuning/hml_sweep.py"] and command[2:] == [*argv, "--resume"]
    (first,) = _finished_trials(trials_dir)
    stamp = (first / "results.json").stat().st_mtime_ns

    code, log = _run_cli(command[2:], tmp_path / "resume.log")
    assert code == 0, log[-3000:]
    assert "2 trials (0 errors, 0 unfinished)" in log
    done = _finished_trials(trials_dir)
    assert len(done) == 2 and first in done
    assert (first / "results.json").stat().st_mtime_ns == stamp  # the finished trial was not run again
    # every trial is a real HML run of its swept values: a tree at its threshold, every stage of it trained
    swept = []
    for d in done:
        tree = json.loads((d / "tree.json").read_text())
        assert 0.6 <= tree["threshold"] <= 0.8 and tree["num_stages"] >= 1
        assert len(list((d / "stages").glob("hml-stage*/_DONE.json"))) == tree["num_stages"]
        assert (d / "hml" / "model.safetensors").is_file()
        swept.append(tree["threshold"])
    # MLflow: one sweep run with both trials nested under it, each with its swept params and the metric
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    exp = client.get_experiment_by_name("hml-sweep")
    all_runs = client.search_runs([exp.experiment_id])
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
                and r.info.status == "FINISHED"]  # an attempt cut by Ctrl-C is its own KILLED run
    assert len(children) == 2 and all("mR_at_20" in r.data.metrics for r in children)  # MLflow-safe name of mR@20
    params = [r.data.params for r in children]
    assert all(0.05 <= float(p["lam"]) <= 2.0 and p["stages"] in ("2", "3") for p in params)
    assert sorted(float(p["threshold"]) for p in params) == pytest.approx(sorted(swept))
