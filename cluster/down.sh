#!/usr/bin/env bash
# Stop the local Ray cluster started by cluster/up.sh: signal exactly the process groups recorded in its
# state file (SIGTERM, then SIGKILL after a grace period), then verify that no process of this cluster
# is left (every one carries the cluster's id in its environment). Never runs `ray stop`. A recorded group
# none of whose members carries the cluster's id (a stale state file: the id may now be someone else's)
# is left alone.
#
# usage: cluster/down.sh [--dir DIR] [--grace SECONDS]
set -uo pipefail

# Run without the cluster's id in our own environment (up.sh's clean-up after a failed start calls us
# with it): otherwise this script and its subshells would count as leftovers of the cluster and be killed.
if [[ -n ${HMLDIFF_RAY_CLUSTER+set} ]]; then
  exec env -u HMLDIFF_RAY_CLUSTER bash "${BASH_SOURCE[0]}" "$@"
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=$ROOT/runs/ray GRACE=10
die() { echo "cluster/down.sh: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --dir) [[ -n ${2:-} ]] || die "--dir needs a value"; DIR=$2; shift 2 ;;
    --grace) [[ ${2:-} =~ ^[0-9]+$ ]] || die "--grace needs whole seconds"; GRACE=$2; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
STATE=$DIR/cluster.state
[[ -f $STATE ]] || { echo "cluster/down.sh: no cluster recorded in $STATE; nothing to stop"; exit 0; }

CLUSTER_ID=$(awk '$1 == "cluster_id" {print $2}' "$STATE")
# the recorded process group ids, workers first, head last
mapfile -t RECORDED < <(awk '$1 == "node" && $4 ~ /^[1-9][0-9]*$/ {print $4}' "$STATE" | tac)
[[ -n $CLUSTER_ID ]] || die "$STATE has no cluster_id line"

group_alive() {  # live (non-zombie) members of process group $1
  ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/' | grep -q .
}
group_ours() {  # some member of process group $1 carries this cluster's id (the group id was not reused)
  local p
  for p in $(ps -eo pid=,pgid= | awk -v g="$1" '$2 == g {print $1}'); do
    grep -qsxzF "HMLDIFF_RAY_CLUSTER=$CLUSTER_ID" "/proc/$p/environ" && return 0
  done
  return 1
}
ours() {  # pids of live processes carrying this cluster's id in their environment
  local f p
  for f in $(grep -lsxzF "HMLDIFF_RAY_CLUSTER=$CLUSTER_ID" /proc/[0-9]*/environ); do
    p=${f#/proc/}; p=${p%/environ}
    [[ $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) == Z ]] || echo "$p"
  done
}

wait_groups() {  # wait_groups SECONDS: until none of GROUPS_ has a live member (0) or time is up (1)
  local deadline=$((SECONDS + $1)) g alive
  while :; do
    alive=0
    for g in "${GROUPS_[@]}"; do group_alive "$g" && alive=1; done
    ((alive)) || return 0
    ((SECONDS < deadline)) || return 1
    sleep 0.25
  done
}

GROUPS_=()  # the recorded groups that are still this cluster's: the only ones we signal
for g in "${RECORDED[@]}"; do
  if group_ours "$g"; then
    GROUPS_+=("$g")
  elif group_alive "$g"; then
    echo "cluster/down.sh: process group $g has no process of this cluster (stale $STATE?); not signalling it"
  fi
done

for g in "${GROUPS_[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
wait_groups "$GRACE"
for g in "${GROUPS_[@]}"; do
  if group_ours "$g"; then
    echo "cluster/down.sh: process group $g still running after ${GRACE}s; sending SIGKILL"
    kill -KILL -- "-$g" 2>/dev/null || true
  fi
done
# A killed process can take a moment to exit (and its environment reads empty meanwhile, so the check
# below would miss it): wait for the groups to empty.
if ! wait_groups 10; then
  echo "cluster/down.sh: process groups still running after SIGKILL: ${GROUPS_[*]}" >&2
  exit 1
fi

# Verify: processes that left our groups (Ray workers get their own groups, job drivers their own
# sessions) still carry HMLDIFF_RAY_CLUSTER=<id>; give them a moment to follow the raylet, then stop them.
left=""
for _ in $(seq 1 20); do
  left=$(ours | tr '\n' ' ')
  [[ -z ${left// /} ]] && break
  sleep 0.5
done
if [[ -n ${left// /} ]]; then
  echo "cluster/down.sh: stopping leftover processes of this cluster: $left"
  for p in $left; do kill -KILL "$p" 2>/dev/null || true; done
  sleep 1
  left=$(ours | tr '\n' ' ')
fi
if [[ -n ${left// /} ]]; then
  echo "cluster/down.sh: processes of this cluster are still running: $left" >&2
  exit 1
fi
rm -f "$STATE" "$DIR/cluster.env"
echo "Ray cluster from $DIR stopped; no process of it is left."
