"""Ray Tune callback that records every trial as an MLflow run nested under the sweep's parent run.

Ray's own `MLflowLoggerCallback` (ray.air.integrations.mlflow) nests runs only through tags and, after
`Tuner.restore`, opens fresh runs for trials it already logged; it also stalls on a dead server. This
callback runs on the driver with the sweep's own resilient Tracker (buffer + replay): one fallback file
holds the parent's and the trials' records in order, so trials started while MLflow is unreachable
still nest under the parent (its offline id is resolved on replay). It keeps the trial -> run map in
Tune's experiment state (so a restored sweep continues it), and gives each attempt of a restarted
trial its own run (tagged `attempt`), closing an interrupted attempt as KILLED.
"""
from __future__ import annotations

from typing import Any

from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

from components.tracking import Tracker

_SKIP = (set(AUTO_RESULT_KEYS) - {"time_total_s"}) | {"done", "trial_id", "experiment_tag", "should_checkpoint"}


class MlflowTrialCallback(Callback):
    """Logs each trial's config (params) and reported metrics (per training_iteration) to MLflow."""

    def __init__(self, tracker: Tracker, parent_run_id: str, sweep_name: str = "") -> None:
        # Where to rebuild a Tracker when unpickled without one (resume_sweep() without a tracker).
        self.uri, self.experiment = tracker.uri, tracker.experiment
        self.fallback_path, self.artifact_root = str(tracker.fallback_path), tracker.artifact_root
        self.parent_run_id, self.sweep_name = parent_run_id, sweep_name
        self._tracker: Tracker | None = tracker
        self._runs: dict[str, str] = {}      # trial id -> MLflow run id of its current attempt
        self._open: set[str] = set()         # trial ids whose current attempt is not ended
        self._attempts: dict[str, int] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_tracker"] = None  # Tune pickles callbacks into tuner.pkl; the client is rebuilt in setup()
        return state

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.uri, self.experiment, self.fallback_path, self.artifact_root)
        return self._tracker

    def rebind(self, parent_run_id: str, tracker: Tracker | None) -> None:
        """Before a restored sweep runs: nest new runs under `parent_run_id` and, given one, log through
        `tracker` (the resuming process's, whose fallback file may hold this sweep's buffered records)."""
        self.parent_run_id = parent_run_id
        if tracker is not None:
            self._tracker = tracker

    def setup(self, **info: Any) -> None:
        self.tracker  # noqa: B018 - create the client on the driver

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = trial.trial_id
        if tid in self._open:  # an attempt interrupted with the driver: close it honestly
            self.tracker.end_run(self._runs[tid], "KILLED")
        self._attempts[tid] = self._attempts.get(tid, 0) + 1
        run_id = self.tracker.start_run(str(trial), self.parent_run_id, tags={
            "ray.trial_id": tid, "ray.sweep": self.sweep_name, "attempt": self._attempts[tid]})
        self.tracker.log_config(run_id, trial.config)
        self._runs[tid] = run_id
        self._open.add(tid)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run_id = self._runs.get(trial.trial_id)
        if run_id is not None:
            metrics = {k: v for k, v in result.items() if k not in _SKIP and not k.startswith("config/")}
            self.tracker.log_metrics(run_id, metrics, step=int(result.get("training_iteration", 0)))

    def _end(self, trial: Any, status: str, ray_status: str) -> None:
        tid = trial.trial_id
        if tid in self._open:
            self.tracker.set_tags(self._runs[tid], {"ray.status": ray_status})
            self.tracker.end_run(self._runs[tid], status)
            self._open.discard(tid)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "FINISHED", "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "FAILED", "ERROR")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.tracker.flush()

    def get_state(self) -> dict:
        # Backend ids where known: the offline -> backend id map lives only in this process's Tracker.
        return {"runs": {tid: self.tracker.resolve(r) for tid, r in self._runs.items()},
                "open": sorted(self._open), "attempts": dict(self._attempts)}

    def set_state(self, state: dict) -> None:
        self._runs = dict(state.get("runs", {}))
        self._open = set(state.get("open", []))
        self._attempts = dict(state.get("attempts", {}))
