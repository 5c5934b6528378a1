"""HML sweep wiring: the trial config (swept values, HML only, content-addressed outputs), the search
space bounds, the CLI's error on a missing store, and its exit codes: an interrupted sweep exits non-zero
with the command that resumes it, a complete one exits 0."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from components.config import to_dict
from components.errors import InputError
from pipelines.hml import HMLConfig
from tuning import sweep
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


def sweep_result(path: Path, num_unfinished: int) -> sweep.SweepResult:
    """What run_sweep/resume_sweep return for a 4-trial sweep with `num_unfinished` trials left."""
    done = 4 - num_unfinished
    return sweep.SweepResult(path, "parent-id", "mR@50", "max", {"lam": 0.5}, {"mR@50": 0.1},
                             [{"trial_id": str(i)} for i in range(done)], 0, num_unfinished, None)


def fake_sweep(calls: list[str], name: str, result: sweep.SweepResult):
    """Stand-in for run_sweep/resume_sweep (no Ray): records `name` in `calls`, returns `result`."""
    def fn(*args, **kwargs) -> sweep.SweepResult:
        calls.append(name)
        return result
    return fn


def test_cli_interrupted_sweep_exits_nonzero_with_resume_command(tmp_path, capsys, monkeypatch):
    """Tune returns normally after Ctrl-C: the CLI must still fail and tell how to resume; the printed
    command resumes the sweep and exits 0 once every trial finished."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    calls: list[str] = []
    monkeypatch.setattr(sweep, "run_sweep", fake_sweep(calls, "run", sweep_result(tmp_path, 2)))
    monkeypatch.setattr(sweep, "resume_sweep", fake_sweep(calls, "resume", sweep_result(tmp_path, 0)))
    (tmp_path / "store").mkdir()
    argv = ["--store", str(tmp_path / "store"), "--run-dir", str(tmp_path / "runs"), "--name", "my sweep",
            "steps_per_stage=5"]
    assert main(argv) == 130
    notes = [line for line in capsys.readouterr().err.splitlines() if "interrupted" in line]  # not MLflow's
    assert len(notes) == 1 and "2 trials unfinished" in notes[0]
    command = shlex.split(notes[0].split("continue it with: ")[1])
    assert command[:2] == ["python", "tuning/hml_sweep.py"] and command[2:] == [*argv, "--resume"]
    assert main(command[2:]) == 0 and calls == ["run", "resume"]
    assert "interrupted" not in capsys.readouterr().err
