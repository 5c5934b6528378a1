"""Resilient MLflow tracking: runs (parent, child, nested), config params, per-step metrics and
artifacts. When the tracking backend is unreachable, training goes on: the failure is reported once,
every record is appended to a local JSONL fallback file and replayed, in order, when the backend is
reachable again (or left in the file, which `python -m components.tracking.replay` can deliver later).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from components.atomic import ensure_writable_dir, write_json, write_text
from components.code_version import version_tags
from components.tracking.params import config_params, mlflow_name
from components.tracking.uri import default_artifact_root, get_or_create_experiment, redact_uri

log = logging.getLogger(__name__)

OFFLINE_PREFIX = "offline-"
# MLflow error codes that mean "this request is wrong", not "the backend is away": never retried.
_REJECT_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
                 "BAD_REQUEST", "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED"}


class RejectedRecord(Exception):
    """A record the backend refuses (bad value, missing file): kept aside, never retried."""


def _is_rejection(err: Exception) -> bool:
    if isinstance(err, RejectedRecord):
        return True
    return isinstance(err, MlflowException) and err.error_code in _REJECT_CODES


def _number(value: Any) -> float | None:
    """float(value) for numbers (python, numpy, 0-d tensors); None for anything else."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__float__"):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass
class TrackerStatus:
    """Whether tracking fell back to the local file, and what is still waiting there (the URI and the error
    with credentials redacted: this goes to logs and summaries)."""

    uri: str
    online: bool
    fallback_used: bool
    pending: int
    replayed: int
    rejected: int
    fallback_path: str
    first_error: str | None

    def summary(self) -> str:
        """One line for a run's final summary."""
        if not self.fallback_used and not self.rejected:
            return f"MLflow: all records delivered to {self.uri}"
        msg = (f"MLflow: backend {self.uri} was unreachable during the run (first error: {self.first_error}); "
               f"{self.replayed} buffered records replayed")
        if self.pending:
            msg += (f", {self.pending} still in {self.fallback_path} "
                    f"(deliver later: python -m components.tracking.replay {self.fallback_path} "
                    f"--tracking-uri {self.uri})")
        if self.rejected:
            msg += f", {self.rejected} rejected by the backend (see {self.fallback_path}.rejected)"
        return msg


class Tracker:
    """Small MLflow wrapper for one experiment that never stops training when tracking fails."""

    def __init__(self, uri: str, experiment: str, fallback_path: str | Path,
                 artifact_root: str | Path | None = None, retry_seconds: float = 30.0) -> None:
        self.uri = uri
        self.experiment = experiment
        self.artifact_root = str(artifact_root) if artifact_root is not None else (
            str(default_artifact_root(uri)) if default_artifact_root(uri) else None)
        self.fallback_path = Path(fallback_path)
        ensure_writable_dir(self.fallback_path.parent)
        self.retry_seconds = retry_seconds
        if uri.startswith("http"):
            # Fail fast on a dead server (the defaults retry for minutes); the fallback covers the gap.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self._client = MlflowClient(uri)
        self._lock = threading.RLock()
        self._experiment_ids: dict[tuple[str, str | None], str] = {}
        self._ids_path = Path(f"{self.fallback_path}.ids.json")
        self._ids: dict[str, str] = self._load_ids()
        self._pending: list[dict] = self._load_pending()
        self._online = not self._pending
        self._last_try = 0.0
        self._fallback_used = bool(self._pending)
        self._first_error: str | None = "left over from an earlier process" if self._pending else None
        self._replayed = 0
        self._rejected = 0

    @classmethod
    def for_run_dir(cls, run_dir: str | Path, experiment: str, uri: str | None = None,
                    retry_seconds: float = 30.0) -> Tracker:
        """Tracker for a run directory: sqlite db, artifacts and fallback file all inside it."""
        from components.tracking.uri import tracking_uri

        run_dir = ensure_writable_dir(run_dir)
        uri = uri or tracking_uri(run_dir)
        return cls(uri, experiment, run_dir / "mlflow_fallback.jsonl", retry_seconds=retry_seconds)

    # ---- public API -------------------------------------------------------------------------
    def start_run(self, name: str, parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> str:
        """Start a run (nested under `parent_run_id` if given); returns its id (an offline id if buffered).
        Every run is tagged with the code that computes it (`version_tags`: source fingerprint, git commit)."""
        rec = {"op": "start_run", "local": OFFLINE_PREFIX + uuid.uuid4().hex, "name": name,
               "parent": parent_run_id, "tags": {**version_tags(), **{k: str(v) for k, v in (tags or {}).items()}},
               "experiment": self.experiment, "artifact_root": self.artifact_root,
               "start_ms": int(time.time() * 1000)}
        delivered = self._submit(rec)
        return self._ids.get(rec["local"], rec["local"]) if delivered else rec["local"]

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Mark a run FINISHED, FAILED or KILLED."""
        self._submit({"op": "end_run", "run": run_id, "status": status, "end_ms": int(time.time() * 1000)})

    @contextmanager
    def run(self, name: str, parent_run_id: str | None = None,
            tags: dict[str, str] | None = None) -> Iterator[str]:
        """Context manager around start_run/end_run; an exception marks the run FAILED (KILLED on Ctrl-C)."""
        run_id = self.start_run(name, parent_run_id, tags)
        try:
            yield run_id
        except KeyboardInterrupt:
            self.end_run(run_id, "KILLED")
            raise
        except BaseException:
            self.end_run(run_id, "FAILED")
            raise
        self.end_run(run_id, "FINISHED")

    def log_config(self, run_id: str, cfg: Any) -> None:
        """Log a whole config (dataclass or mapping) as flattened params, secrets redacted."""
        self.log_params(run_id, config_params(cfg))

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Log params (values stringified)."""
        if params:
            self._submit({"op": "params", "run": run_id,
                          "params": {mlflow_name(k): str(v) for k, v in params.items()}})

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log the numeric entries of `metrics` at `step` (non-numeric values are skipped; names are made
        valid for MLflow: R@50 is logged as R_at_50)."""
        values = {mlflow_name(k): x for k, x in ((k, _number(v)) for k, v in metrics.items()) if x is not None}
        if values:
            self._submit({"op": "metrics", "run": run_id, "metrics": values, "step": int(step or 0),
                          "ts": int(time.time() * 1000)})

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file or a directory (plots, JSON, checkpoints); the path must still exist at replay."""
        self._submit({"op": "artifact", "run": run_id, "path": str(Path(path).resolve()),
                      "artifact_path": artifact_path})

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        """Set run tags."""
        self._submit({"op": "tags", "run": run_id, "tags": {k: str(v) for k, v in tags.items()}})

    def find_run(self, tags: dict[str, str]) -> str | None:
        """Id of an existing run of this experiment carrying all `tags` (None if none or offline)."""
        with self._lock:
            if not self._online:
                return None
            try:
                exp_id = self._experiment_id(self.experiment, self.artifact_root)
                query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
                runs = self._client.search_runs([exp_id], filter_string=query, max_results=1)
            except Exception as err:  # noqa: BLE001 - tracking must never stop training
                self._go_offline(err)
                return None
            return runs[0].info.run_id if runs else None

    def resolve(self, run_id: str) -> str:
        """Backend id of a run (offline ids map to real ones once replayed)."""
        return self._ids.get(run_id, run_id)

    def flush(self) -> TrackerStatus:
        """Try to replay buffered records now (ignores the retry interval)."""
        with self._lock:
            if self._pending:
                self._drain()
        return self.status()

    def close(self) -> TrackerStatus:
        """Final replay attempt; warns if records stay in the fallback file."""
        st = self.flush()
        if st.pending:
            log.warning(st.summary())
        return st

    def status(self) -> TrackerStatus:
        """Whether a fallback was used, and how many records are replayed / pending / rejected."""
        return TrackerStatus(redact_uri(self.uri), self._online, self._fallback_used, len(self._pending), self._replayed,
                             self._rejected, str(self.fallback_path), self._first_error)

    # ---- internals --------------------------------------------------------------------------
    def _load_pending(self) -> list[dict]:
        if not self.fallback_path.is_file():
            return []
        out = []
        for line in self.fallback_path.read_text().splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    log.warning("skipping a truncated line in %s", self.fallback_path)
        return out

    def _load_ids(self) -> dict[str, str]:
        """Offline -> backend ids of the runs that earlier replays of this fallback file created."""
        if not self._ids_path.is_file():
            return {}
        try:
            ids = json.loads(self._ids_path.read_text())
        except json.JSONDecodeError:
            log.warning("ignoring the unreadable id map %s", self._ids_path)
            return {}
        return {str(k): str(v) for k, v in ids.items()} if isinstance(ids, dict) else {}

    def _save_ids(self, replayed: dict[str, str]) -> None:
        """Add the ids of runs a replay created to the map file, so that a later process still holding an
        offline id (a pending record, a sweep description) reaches the run instead of an orphan."""
        if replayed:
            write_json(self._ids_path, {**self._load_ids(), **replayed})

    def _submit(self, rec: dict) -> bool:
        """Deliver `rec` now if possible, else buffer it; True when delivered."""
        with self._lock:
            if not self._online and time.monotonic() - self._last_try >= self.retry_seconds:
                self._drain()
            if self._online:
                try:
                    self._apply(rec)
                    return True
                except Exception as err:  # noqa: BLE001 - tracking must never stop training
                    if _is_rejection(err):
                        self._reject(rec, err)
                        return False
                    self._go_offline(err)
            self._buffer(rec)
            return False

    def _go_offline(self, err: Exception) -> None:
        self._last_try = time.monotonic()
        if self._online:
            self._online = False
            if self._first_error is None:
                self._first_error = redact_uri(str(err).splitlines()[0])[:300]  # errors quote the URL
                log.warning("MLflow tracking at %s is unreachable (%s); training continues, records are "
                            "buffered in %s and replayed when it is back", redact_uri(self.uri), self._first_error,
                            self.fallback_path)

    def _buffer(self, rec: dict) -> None:
        self._fallback_used = True
        self._pending.append(rec)
        with open(self.fallback_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _reject(self, rec: dict, err: Exception) -> None:
        self._rejected += 1
        log.warning("MLflow rejected a %s record: %s", rec.get("op"), str(err).splitlines()[0][:300])
        with open(f"{self.fallback_path}.rejected", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"error": str(err)[:1000], "record": rec}) + "\n")

    def _drain(self) -> None:
        """Replay buffered records in order; stop at the first transport failure."""
        self._last_try = time.monotonic()
        known = set(self._ids)
        done = 0
        for rec in self._pending:
            try:
                self._apply(rec)
            except Exception as err:  # noqa: BLE001
                if not _is_rejection(err):
                    break
                self._reject(rec, err)
            done += 1
        if done:
            self._save_ids({k: v for k, v in self._ids.items() if k not in known})  # first: see _apply
            self._replayed += done
            self._pending = self._pending[done:]
            if self._pending:
                write_text(self.fallback_path, "".join(json.dumps(r) + "\n" for r in self._pending))
            else:
                self.fallback_path.unlink(missing_ok=True)
        self._online = not self._pending

    def _experiment_id(self, name: str, artifact_root: str | None) -> str:
        key = (name, artifact_root)
        if key not in self._experiment_ids:
            self._experiment_ids[key] = get_or_create_experiment(name, artifact_root, self.uri)
        return self._experiment_ids[key]

    def _apply(self, rec: dict) -> None:
        op = rec["op"]
        if op == "start_run":
            if rec["local"] in self._ids:  # created by a replay killed after saving ids, before the buffer
                return
            exp_id = self._experiment_id(rec["experiment"], rec["artifact_root"])
            tags = dict(rec["tags"])
            if rec["parent"]:
                tags["mlflow.parentRunId"] = self.resolve(rec["parent"])
            run = self._client.create_run(exp_id, start_time=rec["start_ms"], tags=tags, run_name=rec["name"])
            self._ids[rec["local"]] = run.info.run_id
            return
        run_id = self.resolve(rec["run"])
        if run_id.startswith(OFFLINE_PREFIX):
            raise RejectedRecord(f"run {run_id} was never created (its start record was lost)")
        if op == "params":
            items = [Param(k, v) for k, v in rec["params"].items()]
            for i in range(0, len(items), 100):
                self._client.log_batch(run_id, params=items[i:i + 100])
        elif op == "metrics":
            items = [Metric(k, v, rec["ts"], rec["step"]) for k, v in rec["metrics"].items()]
            for i in range(0, len(items), 1000):
                self._client.log_batch(run_id, metrics=items[i:i + 1000])
        elif op == "tags":
            for k, v in rec["tags"].items():
                self._client.set_tag(run_id, k, v)
        elif op == "artifact":
            path = Path(rec["path"])
            if path.is_dir():
                self._client.log_artifacts(run_id, str(path), rec["artifact_path"])
            elif path.is_file():
                self._client.log_artifact(run_id, str(path), rec["artifact_path"])
            else:
                raise RejectedRecord(f"artifact {path} no longer exists")
        elif op == "end_run":
            self._client.set_terminated(run_id, rec["status"], rec["end_ms"])
        else:
            raise RejectedRecord(f"unknown record op {op!r}")
