"""cluster/up.sh + down.sh with real Ray nodes: a head and one worker node on this machine, token auth,
a job submitted through the dashboard, and nothing of ours left after down.sh."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UP, DOWN = ROOT / "cluster" / "up.sh", ROOT / "cluster" / "down.sh"
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def processes_with(marker: str) -> list[int]:
    """Live processes whose environment holds `marker` (every process of one up.sh cluster does)."""
    out = []
    for env_file in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in env_file.read_bytes().split(b"\0"):
                stat = (env_file.parent / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(int(env_file.parent.name))
        except OSError:
            continue
    return out


def group_members(pgids: list[int]) -> set[tuple[int, str]]:
    """(pid, start time) of the live, non-zombie processes in the process groups `pgids`. The start time tells
    a process that outlived down.sh from a new one that got a recycled pid (pid_max can be 32768)."""
    out = subprocess.run(check=False, args=["ps", "-eo", "pid=,pgid=,stat=,lstart="], capture_output=True,
                         text=True).stdout
    rows = (ln.split(None, 3) for ln in out.splitlines() if ln.strip())
    return {(int(pid), start) for pid, pgid, stat, start in rows if int(pgid) in pgids and not stat.startswith("Z")}


SAMPLE_JOB = """
import numpy as np, ray
from components.diffaug.diffusion import DiffusionConfig
from pipelines.diffusion import sample_on_ray, train_diffusion_on_ray
ray.init()
rng = np.random.default_rng(0)
cfg = DiffusionConfig(steps=4, batch_size=8, hidden=16, layers=1, heads=2, tokens=2, num_inference_steps=40,
                      dtype="float32")
res = train_diffusion_on_ray(rng.normal(size=(16, 8)).astype(np.float32), rng.normal(size=(16, 4)).astype(np.float32),
                             None, None, cfg, "{out}-bundle", cpus=1.0, checkpoint_every=4)
n = 24
req = dict(sample_id=np.arange(n), subject=np.zeros(n, int), object=np.zeros(n, int), predicate=np.zeros(n, int),
           text=rng.normal(size=(n, 4)).astype(np.float32))
sample_on_ray(res["bundle"], req, "{out}", num_actors=2, shard_size=2, cpus_per_actor=1.0, batch_size=2,
              progress=False)
# Where each node runs the job's working_dir copy from (a task pinned to each node): one directory per node,
# or the second node's unpacking would replace files under the running driver.
import json, os
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
@ray.remote(num_cpus=1)
def cwd():
    return os.getcwd()
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
print("CWDS", json.dumps({{"driver": os.getcwd(), "nodes": ray.get([
    cwd.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote() for n in nodes])}}))
"""


@pytest.fixture
def short_dir():
    """Ray's unix sockets need a short path: a private dir directly under /tmp."""
    d = Path(tempfile.mkdtemp(prefix="hc", dir="/tmp"))
    yield d
    if (d / "cluster.state").exists():
        subprocess.run(check=False, args=["bash", str(DOWN), "--dir", str(d), "--grace", "2"], env=clean_env())
    shutil.rmtree(d, ignore_errors=True)


FAKE_RAY = '''#!{python}
"""Stands in for `ray start --block` so that up.sh's start-up paths run in a second: it records its pid in
its --temp-dir; with FAKE_RAY=serve it answers up.sh's readiness checks (one ALIVE node on the dashboard
port, a listener on the agent port), otherwise it never becomes ready."""
import http.server, json, os, socket, sys, time
args = sys.argv[1:]
opt = lambda name: args[args.index(name) + 1]
with open(os.path.join(opt("--temp-dir"), "fake_ray.pid"), "w") as f:
    f.write(str(os.getpid()))
if os.environ.get("FAKE_RAY") != "serve":
    time.sleep(300)
class Nodes(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"data": {{"result": {{"result": [{{"state": "ALIVE"}}]}}}}}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
agent = socket.create_server(("127.0.0.1", int(opt("--dashboard-agent-listen-port"))))
http.server.HTTPServer(("127.0.0.1", int(opt("--dashboard-port"))), Nodes).serve_forever()
'''

# Makes this machine's hostname unresolvable for every Python process that gets it on PYTHONPATH.
UNRESOLVABLE_HOSTNAME = """
import socket
_resolve = socket.gethostbyname
def gethostbyname(host):
    if host == socket.gethostname():
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return _resolve(host)
socket.gethostbyname = gethostbyname
"""


def fake_ray_env(directory: Path, mode: str) -> dict:
    """clean_env() whose `ray` (up.sh's $RAY) is FAKE_RAY in `mode` ("serve" or "hang")."""
    fake = directory / "fake_ray"
    fake.write_text(FAKE_RAY.format(python=sys.executable))
    fake.chmod(0o755)
    return {**clean_env(), "RAY": str(fake), "FAKE_RAY": mode}


def run_up(directory: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    """up.sh into `directory` on free ports, with `args`."""
    ports = ["--port", str(free_port()), "--dashboard-port", str(free_port())]
    return subprocess.run(check=False, args=["bash", str(UP), "--dir", str(directory), *ports, *args],
                          capture_output=True, text=True, env=env, timeout=120)


def alive(pid: int) -> bool:
    """`pid` runs and is no zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_failed_up_stops_its_node_and_leaves_no_state(short_dir):
    """up.sh's clean-up after a failed start runs down.sh with the cluster id in its environment; down.sh
    must not take itself for a leftover of the cluster (it SIGKILLed itself, left cluster.state behind, and
    the next up.sh refused to start)."""
    r = run_up(short_dir, fake_ray_env(short_dir, "hang"), "--timeout", "2")
    assert r.returncode == 1 and "the head node did not come up" in r.stderr, r.stderr
    assert "leftover" not in r.stderr
    assert not (short_dir / "cluster.state").exists()
    assert not alive(int((short_dir / "tmp" / "fake_ray.pid").read_text()))


def test_up_starts_with_an_unresolvable_hostname(short_dir):
    """The agent check also tries the hostname's address; a hostname that does not resolve must fall back to
    127.0.0.1 instead of aborting the start."""
    site = short_dir / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(UNRESOLVABLE_HOSTNAME)
    env = {**fake_ray_env(short_dir, "serve"), "PYTHONPATH": str(site)}
    r = run_up(short_dir, env, "--timeout", "20")
    assert r.returncode == 0, r.stderr
    pid = int((short_dir / "tmp" / "fake_ray.pid").read_text())
    r = subprocess.run(check=False, args=["bash", str(DOWN), "--dir", str(short_dir), "--grace", "2"],
                       capture_output=True, text=True, env=clean_env(), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not alive(pid) and not (short_dir / "cluster.state").exists()


def sleeper(env: dict) -> subprocess.Popen:
    """A process leading its own process group (as up.sh's nodes do)."""
    return subprocess.Popen(["sleep", "120"], env=env, start_new_session=True)


def test_down_signals_only_groups_that_carry_the_cluster_id(short_dir):
    """A stale cluster.state (after a crash or reboot) may name process groups whose ids now belong to
    unrelated processes: down.sh signals a group only if a member still carries the cluster's id."""
    cluster_id = "0123456789abcdef0123456789abcdef"
    ours = sleeper({**clean_env(), "HMLDIFF_RAY_CLUSTER": cluster_id})
    stranger = sleeper(clean_env())
    try:
        (short_dir / "cluster.state").write_text(
            f"cluster_id {cluster_id}\ntemp_dir {short_dir}/tmp\n"
            f"node head {ours.pid} {ours.pid}\nnode worker1 {stranger.pid} {stranger.pid}\n")
        r = subprocess.run(check=False, args=["bash", str(DOWN), "--dir", str(short_dir), "--grace", "1"],
                           capture_output=True, text=True, env=clean_env(), timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert ours.wait(timeout=10) == -15  # SIGTERM
        assert stranger.poll() is None and alive(stranger.pid)
        assert f"process group {stranger.pid}" in r.stdout and "not signalling" in r.stdout
        assert not (short_dir / "cluster.state").exists()
    finally:
        for proc in (ours, stranger):
            proc.kill()
            proc.wait()


def test_down_without_cluster_is_a_no_op(short_dir):
    r = subprocess.run(check=False, args=["bash", str(DOWN), "--dir", str(short_dir)], capture_output=True, text=True)
    assert r.returncode == 0 and "nothing to stop" in r.stdout


def test_up_refuses_a_busy_port(short_dir):
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        busy = s.getsockname()[1]
        r = subprocess.run(check=False, args=["bash", str(UP), "--dir", str(short_dir), "--port", str(busy)],
                           capture_output=True, text=True, env=clean_env())
    assert r.returncode == 2 and f"port {busy}" in r.stderr
    assert not (short_dir / "cluster.state").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_two_node_cluster_runs_an_authenticated_job_and_stops_cleanly(short_dir):
    port, dash = free_port(), free_port()
    r = subprocess.run(check=False, args=["bash", str(UP), "--dir", str(short_dir), "--workers", "1", "--num-cpus", "1",
                        "--worker-cpus", "1", "--port", str(port), "--dashboard-port", str(dash),
                        "--object-store-mb", "100", "--timeout", "150"],
                       capture_output=True, text=True, env=clean_env(), timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    state = (short_dir / "cluster.state").read_text().split("\n")
    cluster_id = next(line.split()[1] for line in state if line.startswith("cluster_id"))
    pgids = [int(line.split()[3]) for line in state if line.startswith("node")]
    assert len(pgids) == 2
    env_file = dict(line.removeprefix("export ").split("=", 1)
                    for line in (short_dir / "cluster.env").read_text().splitlines() if line.startswith("export"))
    assert env_file["RAY_ADDRESS"] == f"http://127.0.0.1:{dash}" and env_file["RAY_AUTH_MODE"] == "token"
    token = Path(env_file["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    assert len(token) == 64 and Path(env_file["RAY_AUTH_TOKEN_PATH"]).stat().st_mode & 0o077 == 0

    with pytest.raises(urllib.error.HTTPError) as no_token:  # the dashboard refuses requests without it
        urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/jobs/", timeout=10)
    assert no_token.value.code == 401

    job = ("import json, ray; ray.init(); print('RESULT', json.dumps({'cpu': ray.cluster_resources()['CPU'], "
           "'alive': sum(n['Alive'] for n in ray.nodes())}))")
    env = {**clean_env(), **env_file}
    r = subprocess.run(check=False, args=[RAY, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--", "python", "-c", job],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    result = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT")).split(" ", 1)[1])
    assert result == {"cpu": 2.0, "alive": 2}
    assert processes_with(f"HMLDIFF_RAY_CLUSTER={cluster_id}")

    # Diffusion sampling scales out: two 1-CPU actors land on the two nodes, each writing shards.
    # The job runs from a --working-dir copy, as the README submits full.py.
    (short_dir / "job").mkdir()
    (short_dir / "job" / "sample_job.py").write_text(SAMPLE_JOB.format(out=str(short_dir / "samples")))
    r = subprocess.run(check=False, args=[RAY, "job", "submit", "--address", f"http://127.0.0.1:{dash}",
                                          "--working-dir", str(short_dir / "job"), "--", "python", "sample_job.py"],
                       capture_output=True, text=True, env=env, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    cwds = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("CWDS")).split(" ", 1)[1])
    assert len(cwds["nodes"]) == 2 and cwds["driver"] in cwds["nodes"]
    assert len(set(cwds["nodes"])) == 2  # each node its own unpacked copy (up.sh: a temp dir per node)
    assert len({Path(c).name for c in cwds["nodes"]}) == 1  # of the same package
    manifest = json.loads((short_dir / "samples" / "manifest.json").read_text())
    nodes = {s["node"] for s in manifest["shards"]}
    assert len(nodes) == 2 and None not in nodes, manifest["shards"]
    assert sum(s["rows"] for s in manifest["shards"]) == 24

    before = group_members(pgids)
    assert before  # the nodes' process groups are alive until down.sh
    r = subprocess.run(check=False, args=["bash", str(DOWN), "--dir", str(short_dir), "--grace", "5"],
                       capture_output=True, text=True, env=clean_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert processes_with(f"HMLDIFF_RAY_CLUSTER={cluster_id}") == []
    assert not group_members(pgids) & before
    assert not (short_dir / "cluster.state").exists()
