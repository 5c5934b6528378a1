"""pipelines/ray_runtime.init_ray with the dashboard address that `source runs/ray/cluster.env` exports as
RAY_ADDRESS: Ray's own ray.init rejects http:// addresses, so init_ray must join the GCS recorded by
cluster/up.sh, or say in one ConfigError what is wrong. One test starts a real head with cluster/up.sh."""
from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import ray

from components.errors import ConfigError
from pipelines import ray_runtime

ROOT = Path(__file__).resolve().parents[2]
UP, DOWN = ROOT / "cluster" / "up.sh", ROOT / "cluster" / "down.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "HMLDIFF_RAY"))}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


@pytest.fixture
def fake_ray(monkeypatch, tmp_path):
    """ray.init recorded instead of run (nothing initialised yet); no state file but the test's own."""
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray_runtime, "DEFAULT_STATE", tmp_path / "no-such" / "cluster.state")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(ray_runtime.STATE_ENV, raising=False)
    return calls


@pytest.fixture
def gcs():
    """host:port of a listening socket standing in for a running cluster's GCS."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield f"127.0.0.1:{server.getsockname()[1]}"


def write_state(path: Path, dashboard_port: int, gcs: str) -> Path:
    """A state file as cluster/up.sh writes it."""
    path.write_text(f"cluster_id 0123abcd\ntemp_dir /tmp/x\ndashboard http://127.0.0.1:{dashboard_port}\n"
                    f"gcs {gcs}\nnode head 4242 4242\n")
    return path


def test_dashboard_address_joins_the_recorded_gcs(fake_ray, monkeypatch, tmp_path, gcs):
    """RAY_ADDRESS as cluster.env exports it (here spelled localhost, trailing slash): ray.init gets the GCS."""
    state = write_state(tmp_path / "cluster.state", 18265, gcs)
    monkeypatch.setenv(ray_runtime.STATE_ENV, str(state))
    monkeypatch.setenv("RAY_ADDRESS", "http://localhost:18265/")
    assert ray_runtime.init_ray() == {"CPU": 2.0}
    assert [call["address"] for call in fake_ray] == [gcs]


def test_the_default_state_file_is_used_without_the_variable(fake_ray, monkeypatch, tmp_path, gcs):
    monkeypatch.setattr(ray_runtime, "DEFAULT_STATE", write_state(tmp_path / "cluster.state", 18265, gcs))
    ray_runtime.init_ray("http://127.0.0.1:18265")
    assert [call["address"] for call in fake_ray] == [gcs]


def test_a_stale_state_file_is_one_config_error(fake_ray, monkeypatch, tmp_path):
    """A state file left by a cluster that is gone (crash, reboot): ray.init would wait minutes for its
    GCS."""
    state = write_state(tmp_path / "cluster.state", 18265, f"127.0.0.1:{free_port()}")
    monkeypatch.setenv(ray_runtime.STATE_ENV, str(state))
    with pytest.raises(ConfigError, match="is not running") as err:
        ray_runtime.init_ray("http://127.0.0.1:18265")
    assert f"cluster/down.sh --dir {tmp_path}" in err.value.expected
    assert fake_ray == []


@pytest.mark.parametrize("source", ["RAY_ADDRESS", "ray_address"])
def test_unknown_dashboard_address_is_one_config_error(fake_ray, monkeypatch, tmp_path, source):
    """Another cluster's dashboard (or no state file) cannot be joined: a ConfigError naming the address and
    the remedy, before Ray is touched (its ValueError would end the CLIs with a traceback)."""
    state = write_state(tmp_path / "cluster.state", 18265, "127.0.0.1:16379")
    monkeypatch.setenv(ray_runtime.STATE_ENV, str(state))
    if source == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:18266")
    with pytest.raises(ConfigError) as err:
        ray_runtime.init_ray("http://127.0.0.1:18266" if source == "ray_address" else None)
    assert err.value.where == f"{source}=http://127.0.0.1:18266"
    assert "dashboard" in err.value.problem and "GCS address" in err.value.expected
    assert fake_ray == []


def test_a_gcs_address_is_passed_through(fake_ray, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:16379")
    ray_runtime.init_ray()
    assert [call["address"] for call in fake_ray] == ["127.0.0.1:16379"]


JOIN = ("import ray; from pipelines.ray_runtime import init_ray; "
        "print('RESULT', init_ray()['CPU'], ray.get_runtime_context().gcs_address)")


@pytest.mark.ray
@pytest.mark.slow
def test_a_driver_joins_the_cluster_after_sourcing_cluster_env():
    """The README's local-cluster steps: cluster/up.sh, `source runs/ray/cluster.env`, then a driver run
    directly (make run, full.py, hml_sweep.py) joins exactly that cluster (not another Ray on the machine)."""
    d = Path(tempfile.mkdtemp(prefix="hr", dir="/tmp"))  # Ray's unix sockets need a short path
    port = free_port()
    try:
        up = subprocess.run(["bash", str(UP), "--dir", str(d), "--num-cpus", "1", "--port", str(port),
                             "--dashboard-port", str(free_port()), "--object-store-mb", "100",
                             "--timeout", "120"],
                            capture_output=True, text=True, env=clean_env(), timeout=200, check=False)
        assert up.returncode == 0, up.stderr + up.stdout
        source_and_join = f'source "{d}/cluster.env" && exec "{sys.executable}" -c "{JOIN}"'
        driver = subprocess.run(["bash", "-c", source_and_join],
                                capture_output=True, text=True, env={**clean_env(), "PYTHONPATH": str(ROOT)},
                                cwd=ROOT, timeout=120, check=False)
        assert driver.returncode == 0, driver.stderr[-3000:]
        cpus, gcs = next(ln for ln in driver.stdout.splitlines() if ln.startswith("RESULT")).split()[1:]
        assert float(cpus) == 1.0 and gcs.rsplit(":", 1)[1] == str(port)
    finally:
        subprocess.run(["bash", str(DOWN), "--dir", str(d), "--grace", "2"], env=clean_env(), check=False,
                       timeout=120)
        shutil.rmtree(d, ignore_errors=True)


TRAIN = """
import os, tempfile, time
import ray.train
from ray.train.torch import TorchTrainer
from pipelines.ray_runtime import init_ray, quiet_checkpoint_reports

init_ray(num_cpus=2)
def loop(config):
    def checkpoint(i):
        d = tempfile.mkdtemp()
        open(os.path.join(d, "state"), "w").write(str(i))
        ray.train.report({"i": i}, checkpoint=ray.train.Checkpoint.from_directory(d))
    checkpoint(1)  # Ray's INFO lines about it show
    quiet_checkpoint_reports()
    checkpoint(2)  # these do not
    time.sleep(6)  # the cleaner checks once a second while this runs
result = TorchTrainer(loop, scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
                      run_config=ray.train.RunConfig(storage_path=%r, name="quiet")).fit()
print("RESULT", result.error is None)
"""


@pytest.mark.ray
@pytest.mark.slow
def test_a_local_instance_drops_the_placement_group_cleaners_state_api_warning(tmp_path):
    """Without a dashboard Ray Train's PlacementGroupCleaner warned once a second that the State API was
    unavailable (54 lines in a 2-minute HML run); a local init_ray's workers drop that warning only. And
    quiet_checkpoint_reports drops a train worker's two INFO lines per checkpoint."""
    proc = subprocess.run([sys.executable, "-c", TRAIN % str(tmp_path)], capture_output=True, text=True,
                          env={**clean_env(), "PYTHONPATH": str(ROOT)}, cwd=tmp_path, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "RESULT True" in out, out[-3000:]
    assert ray_runtime._CLEANER_NOISE not in out
    # A Ray Train worker after quiet_checkpoint_reports() (as every HML stage's loop calls it): no more
    # per-checkpoint INFO lines, two per checkpoint before it
    assert "Reporting training result 1" in out and "Reporting training result 2" not in out
    assert out.count("Checkpoint successfully created at") == 1


def test_the_cleaner_filter_drops_only_the_state_api_warning():
    keep = ray_runtime._not_cleaner_noise
    record = lambda msg: logging.LogRecord(ray_runtime._CLEANER_LOGGER, logging.WARNING, __file__, 1, msg, None, None)
    assert not keep(record(ray_runtime._CLEANER_NOISE + ". State API may be temporarily unavailable."))
    assert keep(record("Detected that the Ray Train controller actor (x) is dead."))


def test_requests_beyond_a_local_ray_fail_naming_keys_and_warn_on_a_joined_cluster(capsys):
    """A request that does not fit the cluster would queue forever: on a local Ray (which cannot grow) one
    ConfigError naming the config keys, what asks how much and what there is; on a joined cluster a warning."""
    local = {"CPU": 2.0}
    ray_runtime.check_requests("k", {"workers": {"CPU": 2.0}}, local, fixed=True)  # exactly full fits
    with pytest.raises(ConfigError, match=r"^k: workers asks 2 GPUs; the local Ray has 0 \(expected requests that "
                                          r"fit it \(use_gpu=false, or a cluster with GPUs"):
        ray_runtime.check_requests("k", {"workers": {"CPU": 1.0, "GPU": 2.0}}, local, fixed=True)
    with pytest.raises(ConfigError, match=r"workers asks 2.5 CPUs; the local Ray has 2 .*or num_cpus="):
        ray_runtime.check_requests("k", {"workers": {"CPU": 2.5}}, local, fixed=True)
    assert capsys.readouterr().err == ""
    ray_runtime.check_requests("k", {"workers": {"GPU": 1.0}}, local, fixed=False)
    assert capsys.readouterr().err.startswith("warning: workers asks 1 GPU; the Ray cluster has 0 now")


def test_joins_cluster_follows_the_address_or_the_variable(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray_runtime.joins_cluster(None) and ray_runtime.joins_cluster("10.0.0.1:6379")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert ray_runtime.joins_cluster(None)
