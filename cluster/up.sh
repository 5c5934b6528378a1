#!/usr/bin/env bash
# Start a local Ray cluster on this machine: a head node and optionally N extra worker nodes, with token
# authentication, a private temp dir under runs/ and every node in its own process group, whose ids are
# recorded in a state file so that cluster/down.sh stops exactly these processes (never `ray stop`).
#
# usage: cluster/up.sh [--workers N] [--num-cpus X] [--worker-cpus X] [--num-gpus G] [--port P]
#                      [--dashboard-port D] [--dir DIR] [--object-store-mb M] [--timeout S]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
RAY=${RAY:-$ROOT/.venv/bin/ray}
WORKERS=0 NUM_CPUS=2 WORKER_CPUS="" NUM_GPUS="" PORT=6379 DASH_PORT=8265 DIR=$ROOT/runs/ray OSM_MB="" TIMEOUT=180

die() { echo "cluster/up.sh: $*" >&2; exit 2; }
need() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --workers) need "$@"; WORKERS=$2; shift 2 ;;
    --num-cpus) need "$@"; NUM_CPUS=$2; shift 2 ;;
    --worker-cpus) need "$@"; WORKER_CPUS=$2; shift 2 ;;
    --num-gpus) need "$@"; NUM_GPUS=$2; shift 2 ;;
    --port) need "$@"; PORT=$2; shift 2 ;;
    --dashboard-port) need "$@"; DASH_PORT=$2; shift 2 ;;
    --dir) need "$@"; DIR=$2; shift 2 ;;
    --object-store-mb) need "$@"; OSM_MB=$2; shift 2 ;;
    --timeout) need "$@"; TIMEOUT=$2; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[[ $WORKERS =~ ^[0-9]+$ ]] || die "--workers must be a non-negative integer, got '$WORKERS'"
[[ $NUM_CPUS =~ ^[0-9]+$ && $NUM_CPUS -ge 1 ]] || die "--num-cpus must be a positive integer, got '$NUM_CPUS'"
WORKER_CPUS=${WORKER_CPUS:-$NUM_CPUS}
[[ -x $RAY ]] || die "$RAY not found: run 'make setup' first (needs ray[default])"

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
STATE=$DIR/cluster.state
if [[ -f $STATE ]]; then
  die "a cluster started from $DIR is recorded in $STATE; stop it first with cluster/down.sh --dir $DIR"
fi
TMPD=$DIR/tmp LOGS=$DIR/logs
mkdir -p "$TMPD" "$LOGS"

# Free ports: GCS and dashboard must be free; agents of each node get their own (default 52365 clashes).
"$PY" - "$PORT" "$DASH_PORT" <<'PYEOF' || die "port $PORT or $DASH_PORT is in use on 127.0.0.1 (pick others with --port/--dashboard-port)"
import socket, sys
for p in sys.argv[1:]:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Ray binds: TIME-WAIT leftovers of a stopped cluster are not "in use"
        s.bind(("0.0.0.0", int(p)))
PYEOF
read -r -a FREE <<<"$("$PY" -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("0.0.0.0", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' $((2 + WORKERS)))"

# Token authentication (Ray 2.60): RAY_AUTH_MODE=token, token read from RAY_AUTH_TOKEN, else the file
# RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token. We keep a private token file beside the cluster state.
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-$DIR/auth_token}
if [[ -z ${RAY_AUTH_TOKEN:-} && ! -s $RAY_AUTH_TOKEN_PATH ]]; then
  (umask 077; "$PY" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$RAY_AUTH_TOKEN_PATH")
fi
export RAY_USAGE_STATS_ENABLED=0
export PATH=$ROOT/.venv/bin:$PATH  # job entrypoints' `python` is the project's interpreter
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}  # ... and they import the project from its root
cd "$ROOT"
CLUSTER_ID=$("$PY" -c 'import uuid; print(uuid.uuid4().hex)')
export HMLDIFF_RAY_CLUSTER=$CLUSTER_ID  # inherited by every process of this cluster: down.sh checks it
{
  echo "cluster_id $CLUSTER_ID"
  echo "temp_dir $TMPD"
  echo "dashboard http://127.0.0.1:$DASH_PORT"
  echo "gcs 127.0.0.1:$PORT"
} >"$STATE"

start_node() {  # start_node NAME ARGS...: a node in its own session/process group, recorded in STATE
  local name=$1; shift
  setsid "$RAY" start --block --disable-usage-stats --node-ip-address 127.0.0.1 "$@" \
    >"$LOGS/$name.log" 2>&1 </dev/null &
  local pid=$!
  echo "node $name $pid $pid" >>"$STATE"
}

HEAD_ARGS=(--head --port "$PORT" --dashboard-host 127.0.0.1 --dashboard-port "$DASH_PORT" --include-dashboard true
           --num-cpus "$NUM_CPUS" --temp-dir "$TMPD" --ray-client-server-port "${FREE[0]}"
           --dashboard-agent-listen-port "${FREE[1]}")
[[ -n $NUM_GPUS ]] && HEAD_ARGS+=(--num-gpus "$NUM_GPUS")
[[ -n $OSM_MB ]] && HEAD_ARGS+=(--object-store-memory $((OSM_MB * 1024 * 1024)))
start_node head "${HEAD_ARGS[@]}"

# Wait until the head's dashboard answers (with the token) before adding worker nodes.
wait_nodes() {  # wait_nodes N: N alive nodes whose dashboard agents accept connections
  "$PY" - "$DASH_PORT" "$1" "$TIMEOUT" "$RAY_AUTH_TOKEN_PATH" <<'PYEOF'
import json, os, socket, sys, time, urllib.request
port, want, timeout, token_path = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
token = os.environ.get("RAY_AUTH_TOKEN") or open(token_path).read().strip()
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v0/nodes?limit=1000",
                                     headers={"Authorization": f"Bearer {token}"})
        nodes = json.load(urllib.request.urlopen(req, timeout=5))["data"]["result"]["result"]
        alive = [n for n in nodes if n["state"] == "ALIVE"]
        if len(alive) >= want:
            sys.exit(0)
    except (OSError, ValueError, KeyError):
        pass
    time.sleep(1)
sys.exit(f"timed out after {timeout:.0f} s waiting for {want} alive Ray node(s)")
PYEOF
}
wait_agent() {  # wait_agent PORT: the node's dashboard agent listens (job submission needs it)
  "$PY" - "$1" "$TIMEOUT" <<'PYEOF'
import socket, sys, time
port, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
hosts = ["127.0.0.1"]
try:  # Ray may bind the agent to the machine's address; a hostname that does not resolve leaves 127.0.0.1
    hosts.append(socket.gethostbyname(socket.gethostname()))
except (OSError, UnicodeError):
    pass
while time.monotonic() < deadline:
    for host in hosts:
        try:
            socket.create_connection((host, port), timeout=1).close()
            sys.exit(0)
        except OSError:
            pass
    time.sleep(0.5)
sys.exit(f"timed out waiting for the dashboard agent on port {port}")
PYEOF
}
fail() { echo "cluster/up.sh: $* (logs: $LOGS); stopping what was started" >&2; bash "$ROOT/cluster/down.sh" --dir "$DIR" >&2 || true; exit 1; }
wait_nodes 1 || fail "the head node did not come up"
wait_agent "${FREE[1]}" || fail "the head's dashboard agent did not come up"

for ((i = 1; i <= WORKERS; i++)); do
  # Each node its own temp dir: nodes sharing one unpack a job's working_dir package into the same directory,
  # and the second unpacking removed files under a driver already running from it (FileNotFoundError).
  mkdir -p "$TMPD/w$i"
  start_node "worker$i" --address "127.0.0.1:$PORT" --num-cpus "$WORKER_CPUS" --temp-dir "$TMPD/w$i" \
    --dashboard-agent-listen-port "${FREE[$((1 + i))]}" ${NUM_GPUS:+--num-gpus "$NUM_GPUS"} \
    ${OSM_MB:+--object-store-memory $((OSM_MB * 1024 * 1024))}
done
if ((WORKERS > 0)); then
  wait_nodes $((1 + WORKERS)) || fail "worker nodes did not join"
fi

cat >"$DIR/cluster.env" <<ENVEOF
# source this file to talk to the cluster started by cluster/up.sh
export RAY_ADDRESS=http://127.0.0.1:$DASH_PORT
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH
# pipelines/ray_runtime.py reads the GCS address behind RAY_ADDRESS (the dashboard) from this file
export HMLDIFF_RAY_STATE=$STATE
ENVEOF
cat <<MSG
Ray cluster up: 1 head + $WORKERS worker node(s), dashboard http://127.0.0.1:$DASH_PORT, GCS 127.0.0.1:$PORT
  processes recorded in $STATE (stop with: bash cluster/down.sh --dir $DIR)
  token auth: RAY_AUTH_MODE=token, token file $RAY_AUTH_TOKEN_PATH
Submit a job (from $ROOT; the job runs from a copy of --working-dir, so give run_dir as an absolute path):
  source $DIR/cluster.env
  ray job submit --working-dir . -- python pipelines/full.py run_dir=$ROOT/runs ...
MSG
