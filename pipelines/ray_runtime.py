"""Connect to Ray the way the user launched us: inside `ray job submit` (RAY_ADDRESS set) join that
cluster; with `--ray-address` join the given one; otherwise start a local instance with `num_cpus`.
A dashboard (job-submission) address http://host:port, as `source runs/ray/cluster.env` exports, is
resolved to the GCS address of the cluster/up.sh cluster it belongs to: ray.init only accepts the GCS.
A local instance runs without the dashboard; its workers drop Ray Train's once-a-second warning that the
State API (served by the dashboard) is unavailable (`quiet_placement_group_cleaner`)."""
from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import ray

from components.errors import ConfigError

# The state file cluster/up.sh writes (its "dashboard" and "gcs" lines); cluster.env exports its path.
STATE_ENV = "HMLDIFF_RAY_STATE"
DEFAULT_STATE = Path(__file__).resolve().parents[1] / "runs" / "ray" / "cluster.state"


def _endpoint(url: str) -> tuple[str, int | None]:
    """(host, port) of an http(s) URL, localhost spelled 127.0.0.1 (up.sh records 127.0.0.1)."""
    parts = urlsplit(url.strip().rstrip("/"))
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or ""
    return ("127.0.0.1" if host == "localhost" else host), port


def _state_lines(path: Path) -> dict[str, str]:
    """The `key value` lines of a cluster state file ({} if it cannot be read)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeError):
        return {}
    pairs = (line.split(None, 1) for line in lines)
    return {pair[0]: pair[1].strip() for pair in pairs if len(pair) == 2}


def _recorded(dashboard: str) -> tuple[list[Path], Path | None, str]:
    """(state files searched, the one recording `dashboard` or None, its GCS address or "")."""
    candidates = list(dict.fromkeys(Path(p).resolve() for p in (os.environ.get(STATE_ENV), DEFAULT_STATE) if p))
    for path in candidates:
        state = _state_lines(path)
        recorded = state.get("dashboard")
        if recorded and state.get("gcs") and _endpoint(recorded) == _endpoint(dashboard):
            return candidates, path, state["gcs"]
    return candidates, None, ""


def _listening(address: str) -> bool:
    """Something accepts TCP connections at host:port within 2 s."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except (OSError, ValueError):
        return False
    return True


def gcs_address_for(dashboard: str, where: str) -> str:
    """The GCS address of the running cluster/up.sh cluster whose dashboard is `dashboard`, read from its
    state file ($HMLDIFF_RAY_STATE, else runs/ray/cluster.state). Ray rejects http:// addresses (also
    behind address="auto", which reads RAY_ADDRESS), and ray.init waits minutes for a GCS that is gone, so
    an unknown dashboard or a stale state file is a ConfigError naming `where`."""
    candidates, path, gcs = _recorded(dashboard)
    if path is None:
        raise ConfigError(
            f"{where}={dashboard}",
            "is a dashboard (job-submission) address, which ray.init cannot join, and no cluster started by "
            f"cluster/up.sh with that dashboard is recorded in {' or '.join(map(str, candidates))}",
            "a GCS address host:port such as 127.0.0.1:6379, the cluster.env of a running cluster/up.sh "
            "cluster, or a run through `ray job submit`")
    if not _listening(gcs):
        raise ConfigError(
            f"{where}={dashboard}",
            f"the cluster recorded in {path} is not running (nothing listens at its GCS address {gcs})",
            f"a running cluster: cluster/down.sh --dir {path.parent}, then cluster/up.sh")
    return gcs


# Ray Train's detached PlacementGroupCleaner asks the State API every second whether its run's controller
# lives, and logs a warning each time the ask fails, as it always does without a dashboard.
_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
_CLEANER_NOISE = "Failed to query Ray Train Controller actor state"


def _not_cleaner_noise(record: logging.LogRecord) -> bool:
    """Logging filter: False (drop) for the cleaner's State API warning only."""
    return not record.getMessage().startswith(_CLEANER_NOISE)


def quiet_placement_group_cleaner() -> None:
    """Worker setup hook of a local instance: silence the cleaner's per-second State API warning (without
    a dashboard it cannot tell whether a controller died; the run's placement groups still go with the job)."""
    logging.getLogger(_CLEANER_LOGGER).addFilter(_not_cleaner_noise)


def quiet_checkpoint_reports() -> None:
    """In a Ray Train worker: drop Ray's two INFO lines per checkpoint ("Checkpoint successfully created at ...",
    "Reporting training result N: TrainingReport(... every metric ...)"), hundreds of long lines in a long stage;
    the stage's metrics are in its metrics.jsonl and MLflow, its checkpoints in its run directory. Warnings
    and errors of those loggers still show. (Ray 2.60's module loggers; a Ray without them changes nothing.)"""
    try:
        from ray.train.v2._internal.execution import context, storage
    except ImportError:
        return
    for module in (context, storage):
        log = getattr(module, "logger", None)
        if isinstance(log, logging.Logger):
            log.setLevel(logging.WARNING)


def check_requests(keys: str, asks: Mapping[str, Mapping[str, float]], resources: Mapping[str, float],
                   fixed: bool) -> None:
    """Each request of `asks` ({what: {resource: amount}}) must fit the Ray cluster's `resources`, or Ray queues
    it forever. `fixed` (a local Ray this process started, which cannot grow): ConfigError naming the config
    `keys`. A joined cluster may have an autoscaler, so there only a warning on stderr."""
    for what, need in asks.items():
        for res, amount in need.items():
            have = float(resources.get(res, 0.0))
            if amount <= have + 1e-9:
                continue
            unit = (res + ("" if amount == 1 else "s")) if res in ("CPU", "GPU") else f"of resource {res!r}"
            if fixed:
                hint = "use_gpu=false, or a cluster with GPUs: ray_address=" if res == "GPU" else \
                    "or num_cpus=, or a cluster: ray_address="
                raise ConfigError(keys, f"{what} asks {amount:g} {unit}; the local Ray has {have:g}",
                                  f"requests that fit it ({hint})")
            print(f"warning: {what} asks {amount:g} {unit}; the Ray cluster has {have:g} now "
                  "(it waits until an autoscaler adds nodes)", file=sys.stderr)


def actor_threads(cpus: float) -> int:
    """Torch threads of an actor or task given `cpus` CPUs: its share, rounded (at least 1)."""
    return max(1, round(cpus))


def actor_device(gpus: float) -> str:
    """Where an actor given `gpus` GPUs computes: its (first) GPU, or the CPU."""
    return "cuda" if gpus > 0 else "cpu"


def joins_cluster(address: str | None) -> bool:
    """True when Ray is (or will be) joined at an address rather than started locally by this process."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


def init_ray(address: str | None = None, num_cpus: float | None = None) -> dict:
    """Initialise Ray once (idempotent); returns the cluster's resources."""
    if not ray.is_initialized():
        where = "ray_address" if address else "RAY_ADDRESS"
        target = address or os.environ.get("RAY_ADDRESS")
        kwargs = {"log_to_driver": True, "configure_logging": False}
        if target:
            if target.startswith(("http://", "https://")):
                target = gcs_address_for(target, where)
            ray.init(address=target, **kwargs)
        else:
            ray.init(address="local", num_cpus=int(num_cpus) if num_cpus else None, include_dashboard=False,
                     runtime_env={"worker_process_setup_hook": quiet_placement_group_cleaner}, **kwargs)
    return dict(ray.cluster_resources())
