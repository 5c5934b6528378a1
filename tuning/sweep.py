"""Method-independent Ray Tune sweeps: Optuna search + ASHA early stopping over a driver-function
trainable, resumable with `Tuner.restore` (finished trials are never rerun), every trial an MLflow run
nested under the sweep's parent run.

A trainable is a plain function `fn(config)` that reports with `ray.tune.report(metrics)` (Ray 2.60:
inside Tune, use ray.tune.report / ray.tune.get_checkpoint, not ray.train.*). It may itself launch a
Ray Train run (TorchTrainer(...).fit()); its workers then ask for their own resources, so keep the
trial's own share small (`resources_per_trial`, default half a CPU) so trials run side by side.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from components.atomic import ensure_writable_dir, write_json
from components.code_version import code_fingerprint
from components.errors import InputError
from components.tracking import Tracker, TrackerStatus
from tuning.mlflow_callback import MlflowTrialCallback


@dataclass
class SweepResult:
    """Outcome of a sweep: where it lives, its MLflow parent run, the best trial and every trial."""

    path: Path
    parent_run_id: str | None
    metric: str
    mode: str
    best_config: dict | None
    best_metrics: dict | None
    trials: list[dict]
    num_errors: int
    num_unfinished: int  # trials interrupted or never started: resume_sweep() completes them
    tracking: TrackerStatus | None


def _meta_path(storage_path: Path, name: str) -> Path:
    return storage_path / f"{name}.sweep.json"


def _ensure_ray() -> None:
    if not ray.is_initialized():
        from pipelines.ray_runtime import init_ray

        init_ray()


def _scheduler(max_t: int, grace_period: int) -> ASHAScheduler:
    return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=grace_period,
                         reduction_factor=2)


def _num_unfinished(grid: tune.ResultGrid, num_samples: int) -> int:
    """Trials a resume would still run: neither TERMINATED nor ERROR, plus samples never made trials.

    An interrupted `fit()` returns normally, and its grid cannot tell: Tune saves the experiment state,
    then stops the running trials and marks them TERMINATED in memory only. The saved state (what
    `Tuner.restore` resumes from) has their true status, so count from it."""
    saved = tune.ExperimentAnalysis(grid.experiment_path, storage_filesystem=grid.filesystem).trials
    ended = sum(t.status in (Trial.TERMINATED, Trial.ERROR) for t in saved)
    return max(num_samples, len(saved)) - ended


def _summarise(grid: tune.ResultGrid, meta: dict, path: Path) -> SweepResult:
    """SweepResult of a grid; `meta` is the sweep description (metric, mode, num_samples, parent run)."""
    metric, mode = meta["metric"], meta["mode"]
    trials = []
    for r in grid:
        trials.append({"trial_id": r.metrics.get("trial_id") if r.metrics else None, "config": r.config,
                       "metrics": {k: v for k, v in (r.metrics or {}).items() if k != "config"},
                       "error": str(r.error).splitlines()[0] if r.error else None, "path": r.path})
    best = None
    try:
        best = grid.get_best_result(metric=metric, mode=mode, scope="last", filter_nan_and_inf=True)
    except RuntimeError:
        best = None  # no trial reported the metric
    # Descriptions written before num_samples was saved lack it: then only created trials count.
    unfinished = _num_unfinished(grid, meta.get("num_samples", 0))
    return SweepResult(path, meta["parent_run_id"], metric, mode, best.config if best else None,
                       ({k: v for k, v in best.metrics.items() if k != "config"} if best else None),
                       trials, grid.num_errors, unfinished, None)


def _parent_status(res: SweepResult) -> str:
    """KILLED while trials are unfinished (the sweep is to be resumed), else FAILED on errors, else
    FINISHED."""
    if res.num_unfinished:
        return "KILLED"
    return "FAILED" if res.num_errors else "FINISHED"


def _finish_parent(tracker: Tracker | None, parent: str | None, owned: bool, res: SweepResult) -> None:
    """Log the best result and trial counts on the parent run; close it if the sweep opened it."""
    if tracker is None or parent is None:
        return
    if res.best_metrics and res.metric in res.best_metrics:
        tracker.log_metrics(parent, {f"best_{res.metric}": res.best_metrics[res.metric]})
        if not res.num_unfinished:  # MLflow params cannot change: log the best config once it is final
            tracker.log_config(parent, {"best": res.best_config or {}})
    tracker.set_tags(parent, {"sweep.trials": len(res.trials), "sweep.errors": res.num_errors,
                              "sweep.unfinished": res.num_unfinished})
    if owned:
        tracker.end_run(parent, _parent_status(res))


def _conclude(grid: tune.ResultGrid, meta: dict, storage: Path, tracker: Tracker | None,
              callback: MlflowTrialCallback | None) -> SweepResult:
    """Summarise the grid, close the parent run, and save the parent's backend id in the sweep description
    (it was an offline id if MLflow was unreachable at the start) so that a resume nests under it."""
    res = _summarise(grid, meta, storage / meta["name"])
    _finish_parent(tracker, meta["parent_run_id"], bool(meta.get("owned_parent")), res)
    if callback is not None:
        res.tracking = callback.tracker.flush()
        res.parent_run_id = callback.tracker.resolve(meta["parent_run_id"])
        write_json(_meta_path(storage, meta["name"]), {**meta, "parent_run_id": res.parent_run_id})
    return res


def _trial_callback(tuner: tune.Tuner) -> MlflowTrialCallback | None:
    """The MlflowTrialCallback a (restored) tuner runs with, if any."""
    # Ray 2.60 has no public way to the restored run config (Tuner's public API is fit, get_results, restore,
    # can_restore), so read the private TunerInternal; it is absent under Ray Client or if Ray's internals change.
    internal = getattr(tuner, "_local_tuner", None)
    run_config = getattr(internal, "get_run_config", None)
    if run_config is None:
        raise InputError("resume_sweep", f"Ray {ray.__version__}'s Tuner gives no access to the restored callbacks",
                         "a local (not Ray Client) driver on a Ray whose Tuner keeps _local_tuner.get_run_config()")
    cbs = run_config().callbacks or []
    return next((c for c in cbs if isinstance(c, MlflowTrialCallback)), None)


@contextmanager
def _killed_on_interrupt(tracker: Tracker | None, parent: str | None, owned: bool) -> Iterator[None]:
    """Close an owned parent run KILLED when Ctrl-C escapes the sweep (e.g. a second one during Tune's final save)."""
    try:
        yield
    except KeyboardInterrupt:
        if tracker is not None and parent is not None and owned:
            tracker.end_run(parent, "KILLED")
        raise


def run_sweep(trainable_fn: Callable[[dict], Any], param_space: dict, metric: str, mode: str,
              num_samples: int, storage_path: str | Path, name: str, max_concurrent: int = 2,
              resources_per_trial: dict | None = None, tracker: Tracker | None = None,
              mlflow_parent: str | None = None, max_t: int = 100, grace_period: int = 1,
              seed: int | None = 0) -> SweepResult:
    """Run an Optuna + ASHA sweep of `num_samples` trials under `<storage_path>/<name>`.

    Ctrl-C (or SIGUSR1) stops the sweep with its state saved and returns a result with `num_unfinished`
    > 0 (an owned parent run is then closed KILLED); resume_sweep() continues it.
    With a `tracker`, trials are MLflow runs nested under `mlflow_parent` (a run id), or under a parent
    run this function opens (and closes) when `mlflow_parent` is None. Parent and trials share the
    tracker, so while MLflow is unreachable their records wait in one fallback file, replayed in order.
    """
    if mode not in ("min", "max"):
        raise InputError("mode", f"got {mode!r}", "'min' or 'max'")
    if num_samples < 1 or max_concurrent < 1:
        raise InputError("num_samples/max_concurrent", f"got {num_samples}/{max_concurrent}", "positive integers")
    storage = ensure_writable_dir(storage_path).resolve()
    if (storage / name / "tuner.pkl").exists():
        raise InputError(str(storage / name), "a sweep with this name already exists",
                         "a new name, or resume_sweep() to continue it")
    _ensure_ray()
    owned = tracker is not None and mlflow_parent is None
    parent = tracker.start_run(name, tags={"ray.sweep": name, "kind": "sweep"}) if owned else mlflow_parent
    with _killed_on_interrupt(tracker, parent, owned):
        callback = None
        if tracker is not None:
            if owned:
                tracker.log_config(parent, {"sweep": {"metric": metric, "mode": mode, "num_samples": num_samples,
                                                      "max_concurrent": max_concurrent}, "space": param_space})
            callback = MlflowTrialCallback(tracker, parent, sweep_name=name)
        resources = resources_per_trial or {"cpu": 0.5}
        meta = {"name": name, "metric": metric, "mode": mode, "num_samples": num_samples,
                "parent_run_id": parent, "owned_parent": owned, "resources_per_trial": resources,
                "code": code_fingerprint()}
        write_json(_meta_path(storage, name), meta)
        tuner = tune.Tuner(
            tune.with_resources(trainable_fn, resources),
            param_space=param_space,
            tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=num_samples,
                                        search_alg=OptunaSearch(seed=seed),
                                        scheduler=_scheduler(max_t, grace_period),
                                        max_concurrent_trials=max_concurrent),
            # No fail_fast: it is pickled with the run config and would stop a restored sweep at once.
            run_config=tune.RunConfig(name=name, storage_path=str(storage),
                                      callbacks=[callback] if callback else [], verbose=1),
        )
        return _conclude(tuner.fit(), meta, storage, tracker, callback)


def resume_sweep(trainable_fn: Callable[[dict], Any], storage_path: str | Path, name: str,
                 tracker: Tracker | None = None, restart_errored: bool = True,
                 resources_per_trial: dict | None = None, allow_code_change: bool = False) -> SweepResult:
    """Continue an interrupted sweep: finished trials are kept as they are, unfinished ones resume from
    their last checkpoint, errored ones restart from scratch (or stay errored with restart_errored=False).
    `trainable_fn` must be the function the sweep was started with; `tracker` should be the sweep's
    (same backend and fallback file): its buffered records are replayed before the new ones. Trials get the
    resources the sweep was started with (`resources_per_trial` only for a sweep whose record lacks them).
    A sweep started by other source code is refused (its finished trials would be compared with trials of
    this code) unless `allow_code_change`; the record then keeps every code version that ran."""
    storage = Path(storage_path).resolve()
    path = storage / name
    if not tune.Tuner.can_restore(str(path)):
        raise InputError(str(path), "is not a restorable Tune experiment", "the storage_path/name of a sweep")
    meta_file = _meta_path(storage, name)
    if not meta_file.is_file():
        raise InputError(str(meta_file), "sweep description is missing", "a sweep started by run_sweep()")
    meta = json.loads(meta_file.read_text())
    code, started = code_fingerprint(), meta.get("code")
    if started is not None and started != code:
        if not allow_code_change:
            raise InputError(str(path), f"was started by source code {started}, this checkout is {code}",
                             "the same code to resume (its finished trials are kept), a new sweep name, "
                             "or --allow-code-change to mix the two")
        meta["code_changes"] = [*meta.get("code_changes", []), code]
        write_json(meta_file, meta)
    resources = meta.get("resources_per_trial") or resources_per_trial
    if not isinstance(resources, dict):
        raise InputError(str(meta_file), "records no resources_per_trial (a sweep started by an older version)",
                         "resources_per_trial given to resume_sweep, as the sweep was started with")
    _ensure_ray()
    # Restored with the trial resources it was started with: a bare function would take Tune's default of one
    # whole CPU per trial, which on a small machine left a trial's own Ray Train and Ray Data tasks no CPU (hang).
    tuner = tune.Tuner.restore(str(path), tune.with_resources(trainable_fn, resources),
                               resume_unfinished=True, restart_errored=restart_errored)
    # The restored callback (unpickled from tuner.pkl) is the one that runs: point it at the parent's id
    # as last saved (the pickled one may be an offline id) and at the caller's tracker.
    callback = _trial_callback(tuner)
    if callback is not None:
        callback.rebind(meta["parent_run_id"], tracker)
    with _killed_on_interrupt(tracker, meta["parent_run_id"], bool(meta.get("owned_parent"))):
        return _conclude(tuner.fit(), meta, storage, tracker, callback)
