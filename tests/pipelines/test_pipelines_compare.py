"""compare CLI on a real sqlite tracking store: differing params, metrics, sweep attempts, plots, errors."""
from __future__ import annotations

import csv
import time

import pytest

from components.code_version import code_fingerprint
from components.tracking import Tracker
from pipelines import compare


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three runs (lr differs, seed equal) and a sweep whose trial t1 was attempted twice (one database
    for the module: creating an MLflow sqlite schema takes seconds)."""
    tmp_path = tmp_path_factory.mktemp("compare")
    tr = Tracker(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}",
                 "exp", tmp_path / "runs" / "fallback.jsonl")
    ids = {}
    for lr, acc in [(0.1, 0.5), (0.01, 0.9), (1.0, 0.2)]:
        with tr.run(f"lr{lr}") as rid:
            tr.log_params(rid, {"lr": lr, "seed": 0})
            tr.log_metrics(rid, {"acc": 0.0}, step=0)
            tr.log_metrics(rid, {"acc": acc}, step=1)  # latest value is what is compared
        ids[lr] = rid
    with tr.run("sweep") as parent:
        for tid, attempt, lam, mr in [("t1", 1, 0.5, 0.1), ("t2", 1, 0.25, 0.3), ("t1", 2, 0.5, 0.4)]:
            time.sleep(0.01)  # distinct start times order the attempts
            with tr.run(tid, parent, tags={"ray.trial_id": tid, "attempt": attempt}) as rid:
                tr.log_params(rid, {"lam": lam})
                tr.log_metrics(rid, {"mR@50": mr})
    return tmp_path, tr.uri, ids, parent


def test_experiment_table_csv_markdown_and_plot(store, capsys):
    tmp, uri, ids, _ = store
    out = tmp / "cmp"
    assert compare.main(["--tracking-uri", uri, "--runs", ",".join(ids.values()), "--metric", "acc",
                         "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [float(r["acc"]) for r in rows] == [0.2, 0.5, 0.9]  # sorted by the metric
    assert [float(r["lr"]) for r in rows] == [1.0, 0.1, 0.01]
    assert "seed" not in rows[0]  # equal everywhere: not shown
    md = (out / "compare.md").read_text()
    assert md.startswith("| run_id | run_name | status | lr | acc |") and md.count("\n") == 2 + 3
    assert md in capsys.readouterr().out
    png = (out / "acc_vs_lr.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_of_other_code_show_their_code_version(store):
    """Equal code everywhere: no column (as for an equal param). A run tagged with other code: a `code` column."""
    tmp, uri, ids, _ = store
    tr = Tracker(uri, "exp_code", tmp / "fb2.jsonl")  # its own experiment: the module's "exp" keeps its runs
    with tr.run("old", tags={"hmldiff.code": "0123456789ab"}) as old:
        tr.log_params(old, {"lr": 0.1, "seed": 0})
        tr.log_metrics(old, {"acc": 0.4})
    tr.close()
    out = tmp / "cmp_code"
    assert compare.main(["--tracking-uri", uri, "--runs", f"{ids[0.1]},{old}", "--metric", "acc",
                         "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [(r["run_name"], r["code"]) for r in rows] == [("old", "0123456789ab"), ("lr0.1", code_fingerprint())]


def test_forced_param_is_shown(store, capsys):
    """A --param is a column even where it does not differ; without --metric nothing is plotted, and it says so."""
    tmp, uri, ids, _ = store
    out = tmp / "cmp2"
    assert compare.main(["--tracking-uri", uri, "--runs", ids[0.1], "--param", "seed", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert len(rows) == 1 and rows[0]["seed"] == "0.0"
    assert not list(out.glob("*.png")) and "give --metric" in capsys.readouterr().err


def test_sweep_keeps_latest_attempt_per_trial(store):
    tmp, uri, _, parent = store
    out = tmp / "cmp3"
    assert compare.main(["--tracking-uri", uri, "--sweep", parent, "--metric", "mR@50", "--param", "lam",
                         "--out", str(out)]) == 0  # '@' names are stored as '_at_' by the Tracker
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert sorted((r["run_name"], float(r["mR_at_50"])) for r in rows) == [("t1", 0.4), ("t2", 0.3)]
    assert (out / "mR_at_50_vs_lam.png").is_file()


def test_experiment_selects_all_its_runs(store):
    tmp, uri, _, _ = store
    out = tmp / "cmp4"
    assert compare.main(["--tracking-uri", uri, "--experiment", "exp", "--out", str(out)]) == 0
    assert len(list(csv.DictReader((out / "compare.csv").open()))) == 3 + 1 + 3


@pytest.mark.parametrize("args, needle", [
    (["--experiment", "nope"], "no such experiment"),
    (["--experiment", "exp", "--metric", "nope"], "not logged"),
    (["--experiment", "exp", "--param", "nope"], "not a param"),
    (["--runs", "0123abcd"], "not found"),
    ([], "nothing to compare"),
])
def test_bad_input_exits_nonzero_with_message(store, capsys, args, needle):
    tmp, uri, _, _ = store
    assert compare.main(["--tracking-uri", uri, "--out", str(tmp / "x"), *args]) == 2
    assert needle in capsys.readouterr().err


def test_missing_database_is_reported(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    assert compare.main(["--tracking-uri", uri, "--experiment", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
