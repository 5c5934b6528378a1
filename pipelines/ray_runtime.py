"""Connect to Ray the way the user launched us: inside `ray job submit` (RAY_ADDRESS set) join that
cluster; with `--ray-address` join the given one; otherwise start a local instance with `num_cpus`."""
from __future__ import annotations

import os

import ray


def init_ray(address: str | None = None, num_cpus: float | None = None) -> dict:
    """Initialise Ray once (idempotent); returns the cluster's resources."""
    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS")
        kwargs = {"log_to_driver": True, "configure_logging": False}
        if target:
            # An http:// address is the job-submission endpoint, not the GCS: join the running cluster.
            ray.init(address="auto" if target.startswith("http") else target, **kwargs)
        else:
            ray.init(address="local", num_cpus=int(num_cpus) if num_cpus else None,
                     include_dashboard=False, **kwargs)
    return dict(ray.cluster_resources())
