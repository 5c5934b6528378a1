"""Shared test set-up: few threads (2-core CI), offline assets, no Ray cluster or MLflow server of the
caller's environment, one local Ray per module on demand, an MLflow address where nothing listens, a tiny
vrr-planted store."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("NLTK_DATA", str(ROOT / ".nltk_data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vrr_store(tmp_path_factory) -> Path:
    """A tiny vrr-planted relation-sample store (3% of the default train split, 2,000 test samples)."""
    from components.config import from_dict
    from pipelines.prepare_data import PrepareDataConfig, write_store

    root = tmp_path_factory.mktemp("vrr") / "store"
    write_store(from_dict(PrepareDataConfig, {"dataset": "vrr-planted", "out": str(root),
                                              "vrr": {"scale": 0.03, "n_test": 2000}}))
    return root


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray instance shared by one test module (fractional CPUs for actors and workers)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _outside_setting(name: str) -> bool:
    """An environment variable that would point a test at the caller's Ray cluster or MLflow server
    (RAY_AUTH_MODE stays: `make test` sets it and local Ray follows it)."""
    return (name in ("RAY_ADDRESS", "HMLDIFF_RAY_STATE") or name.startswith("MLFLOW_")
            or (name.startswith("RAY_AUTH_") and name != "RAY_AUTH_MODE"))


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a CLI run in a subprocess: this process's, without the caller's Ray cluster or MLflow
    settings, with the repository importable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not _outside_setting(k)}
    env.update(PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


@pytest.fixture(scope="session", autouse=True)
def _no_outside_ray_or_mlflow():
    """The session runs without the caller's Ray cluster or MLflow settings; they are put back at its end."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if _outside_setting(k)]:
            mp.delenv(name)
        yield


@pytest.fixture(scope="module")
def dead_server_url():
    """http://127.0.0.1:PORT of an MLflow server that is down. The port stays bound (not listening) for the
    module, so connections are refused and nothing else (a Ray gRPC server, say) can take it meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
