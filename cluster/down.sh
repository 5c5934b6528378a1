#!/usr/bin/env bash
# Stop the local Ray cluster started by cluster/up.sh: signal exactly the process groups recorded in its
# state file (SIGTERM, then SIGKILL after a grace period), then verify that no process of this cluster
# is left (every one carries the cluster's id in its environment). Never runs `ray stop`.
#
# usage: cluster/down.sh [--dir DIR] [--grace SECONDS]
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=$ROOT/runs/ray GRACE=10
die() { echo "cluster/down.sh: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --dir) [[ -n ${2:-} ]] || die "--dir needs a value"; DIR=$2; shift 2 ;;
    --grace) [[ ${2:-} =~ ^[0-9]+$ ]] || die "--grace needs whole seconds"; GRACE=$2; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
STATE=$DIR/cluster.state
[[ -f $STATE ]] || { echo "cluster/down.sh: no cluster recorded in $STATE; nothing to stop"; exit 0; }

CLUSTER_ID=$(awk '$1 == "cluster_id" {print $2}' "$STATE")
mapfile -t GROUPS_ < <(awk '$1 == "node" {print $4}' "$STATE" | tac)  # workers first, head last
[[ -n $CLUSTER_ID ]] || die "$STATE has no cluster_id line"

group_alive() {  # live (non-zombie) members of process group $1
  ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/' | grep -q .
}
ours() {  # pids of live processes carrying this cluster's id in their environment
  local f p
  for f in $(grep -lsxzF "HMLDIFF_RAY_CLUSTER=$CLUSTER_ID" /proc/[0-9]*/environ); do
    p=${f#/proc/}; p=${p%/environ}
    [[ $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) == Z ]] || echo "$p"
  done
}

wait_groups() {  # wait_groups SECONDS: until no recorded group has a live member (0) or time is up (1)
  local deadline=$((SECONDS + $1)) g alive
  while :; do
    alive=0
    for g in "${GROUPS_[@]}"; do group_alive "$g" && alive=1; done
    ((alive)) || return 0
    ((SECONDS < deadline)) || return 1
    sleep 0.25
  done
}

for g in "${GROUPS_[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
wait_groups "$GRACE"
for g in "${GROUPS_[@]}"; do
  if group_alive "$g"; then
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
