"""HML sweep wiring: the trial config (swept values, HML only, content-addressed outputs), the search
space bounds, and the CLI's error on a missing store."""
from __future__ import annotations

from pathlib import Path

import pytest

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
