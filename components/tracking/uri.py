"""Where tracking data lives: the tracking URI of a run directory and experiments with an explicit
artifact location (so artifacts never land in the current directory or Ray's temp dir)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from mlflow import MlflowClient

from components.atomic import ensure_writable_dir
from components.errors import InputError
from components.tracking.params import REDACTED, is_secret_key

DB_NAME = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@?#]+@")
_QUERY_ITEM = re.compile(r"([?&;])([^=&;\s#]+)=([^&;\s#]*)")


def tracking_uri(run_dir: str | Path) -> str:
    """MLFLOW_TRACKING_URI if set, else a sqlite database `<run_dir>/mlflow.db` (absolute path)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = ensure_writable_dir(run_dir).resolve()
    return f"sqlite:///{root / DB_NAME}"


def redact_uri(text: str) -> str:
    """`text` with the credentials of every URI in it (user:password@, secret query values such as token=)
    replaced by ***, so tracking URIs can be written to summaries and logs."""
    text = _USERINFO.sub(rf"\1{REDACTED}@", text)
    return _QUERY_ITEM.sub(lambda m: f"{m[1]}{m[2]}={REDACTED}" if is_secret_key(m[2]) else m[0], text)


def is_local_uri(uri: str) -> bool:
    """True for backends whose artifacts we place ourselves (sqlite or plain file stores)."""
    return uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri


def default_artifact_root(uri: str) -> Path | None:
    """Artifact directory beside a sqlite database; None for servers (they choose their own store)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent / ARTIFACT_DIR
    return None


def get_or_create_experiment(name: str, artifact_root: str | Path | None, uri: str | None = None) -> str:
    """Id of experiment `name`, created with artifact location `<artifact_root>/<name>` when missing."""
    if not name or not name.strip():
        raise InputError("experiment name", "is empty", "a non-empty MLflow experiment name")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = None
    if artifact_root is not None:
        location = ensure_writable_dir(Path(artifact_root) / name).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)
