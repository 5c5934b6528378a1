"""cluster/cluster.yaml against the JSON schema shipped with Ray (and Ray's own config checks), and
cluster/rayjob.yaml against the KubeRay RayJob fields the operator requires. No network."""
from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from pipelines import full

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())

# Required fields of KubeRay's v1 API (ray-project/kuberay, ray-operator/apis/ray/v1/raycluster_types.go:
# fields whose json tag lacks `omitempty`; rayStartParams became optional in KubeRay 1.2, kept here so the
# manifest also works with 1.1), plus Kubernetes core/v1 Container.name. entrypoint is optional for
# KubeRay (interactive mode) but required for this project's job.
RAYJOB_SPEC_REQUIRED = ("entrypoint", "rayClusterSpec")
CLUSTER_SPEC_REQUIRED = ("headGroupSpec",)
HEAD_GROUP_REQUIRED = ("rayStartParams", "template")
WORKER_GROUP_REQUIRED = ("groupName", "minReplicas", "maxReplicas", "rayStartParams", "template")
CONTAINER_REQUIRED = ("name", "image")


@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load((ROOT / "cluster" / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def rayjob() -> tuple[dict, list[dict]]:
    docs = list(yaml.safe_load_all((ROOT / "cluster" / "rayjob.yaml").read_text()))
    job = [d for d in docs if d.get("kind") == "RayJob"]
    assert len(job) == 1
    return job[0], [d for d in docs if d.get("kind") == "PersistentVolumeClaim"]


def test_cluster_yaml_matches_rays_schema_and_checks(launcher):
    jsonschema.validate(launcher, SCHEMA)
    validate_config(prepare_config(copy.deepcopy(launcher)))  # Ray's semantic checks after its defaults


def test_schema_validation_is_not_vacuous(launcher):
    bad = copy.deepcopy(launcher)
    bad["available_node_types"]["gpu_worker"]["resources"]["GPU"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)
    del bad["provider"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)


def test_cluster_yaml_has_gpu_workers_and_never_runs_ray_stop(launcher):
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and all(t.get("max_workers", 0) >= 1 for t in gpu)
    assert sum(t.get("min_workers", 0) for t in types.values()) <= launcher["max_workers"]
    commands = " ".join(launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"])
    assert "ray stop" not in commands and "--dashboard-host=127.0.0.1" in commands
    assert ".venv" in launcher["rsync_exclude"] and "runs" in launcher["rsync_exclude"]


def test_rayjob_has_the_fields_kuberay_requires(rayjob):
    job, _ = rayjob
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert all(k in spec for k in RAYJOB_SPEC_REQUIRED)
    cluster = spec["rayClusterSpec"]
    assert all(k in cluster for k in CLUSTER_SPEC_REQUIRED)
    head = cluster["headGroupSpec"]
    assert all(k in head for k in HEAD_GROUP_REQUIRED)
    groups = cluster["workerGroupSpecs"]
    for g in groups:
        assert all(k in g for k in WORKER_GROUP_REQUIRED)
        assert g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
    for part in [head] + groups:
        assert all(isinstance(v, str) for v in part["rayStartParams"].values())  # map[string]string
        containers = part["template"]["spec"]["containers"]
        assert containers and all(all(k in c for k in CONTAINER_REQUIRED) for c in containers)
    assert len({g["groupName"] for g in groups}) == len(groups)


def test_rayjob_gpu_workers_and_shared_runs_volume(rayjob):
    job, pvcs = rayjob
    cluster = job["spec"]["rayClusterSpec"]
    groups = cluster["workerGroupSpecs"]
    assert any(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
               for g in groups for c in g["template"]["spec"]["containers"])
    claims = set()
    for part in [cluster["headGroupSpec"]] + groups:
        pod = part["template"]["spec"]
        volumes = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert "/app/runs" in mounts
        claims.add(volumes[mounts["/app/runs"]])
    assert len(claims) == 1  # head and every worker see the same runs/
    pvc = next(p for p in pvcs if p["metadata"]["name"] in claims)
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


def test_rayjob_entrypoint_is_a_valid_full_pipeline_command(rayjob):
    argv = shlex.split(rayjob[0]["spec"]["entrypoint"])
    assert argv[:2] == ["python", "pipelines/full.py"]
    preset = argv[argv.index("--preset") + 1]
    overrides = [a for a in argv[2:] if "=" in a]
    cfg = full.load(preset, None, overrides)  # raises ConfigError on an unknown key or bad value
    assert cfg.run_dir == "/app/runs"
