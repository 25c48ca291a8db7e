#!/usr/bin/env bash
# A cluster of N real nodes on this machine, as Linux namespaces (root; Debian's Slurm and munge).
#
#   cluster/local_cluster.sh up [N]         create nodes node1..nodeN and start Slurm on them
#                                           (idempotent; N defaults to 2)
#   cluster/local_cluster.sh down           stop the daemons, remove the nodes
#   cluster/local_cluster.sh status         sinfo of this cluster
#   cluster/local_cluster.sh on NODE CMD..  run a command on a node (its network, hostname,
#                                           /dev/shm and /tmp)
#   cluster/local_cluster.sh kill NODE      kill every process of a node, as a node dies
#   cluster/local_cluster.sh env            the environment that talks to this cluster
#
# Each node is a network namespace on the bridge mmbr0 (10.77.0.0/24; node i is 10.77.0.(10+i),
# this machine 10.77.0.1), with its own hostname (UTS namespace) and its own /dev/shm and /tmp
# (tmpfs in a mount namespace); every other path is shared, as a cluster's shared file system
# is. A keeper process holds each node's namespaces; `on` enters them. Slurm: a controller of
# its own on this machine (port 6917, config /etc/slurm-mm/slurm.conf, beside the one-node
# cluster of local_slurm.sh, which it leaves alone), one slurmd per node inside the node, munge
# shared. Clients reach it with SLURM_CONF=/etc/slurm-mm/slurm.conf (`env` prints it).
# Traffic stays on loopback and on the bridge's private subnet, between namespaces made here.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
NET=10.77.0
BRIDGE=mmbr0
CONF_DIR=/etc/slurm-mm
CONF=$CONF_DIR/slurm.conf
RUN=/run/maskmill-cluster
LOG_DIR=/var/log/slurm
HOSTS_TAG="# maskmill local cluster"
CTLD_PORT=6917

log() { printf 'local_cluster: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (it makes namespaces and starts daemons)"; }

node_count() { cat "$RUN/nodes" 2>/dev/null || echo 0; }
keeper_pid() {
  local pid
  pid=$(cat "$RUN/$1.pid" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# A namespace the kernel (or a sandbox) refuses: one line, exit 3, so tests skip saying why.
probe_namespaces() {
  if ! ip netns add mm-probe 2>/dev/null; then
    log "network namespaces are refused here (ip netns add failed); cannot make nodes"
    exit 3
  fi
  if ! ip netns exec mm-probe unshare --uts --mount true 2>/dev/null; then
    ip netns del mm-probe
    log "UTS or mount namespaces are refused here (unshare failed); cannot make nodes"
    exit 3
  fi
  ip netns del mm-probe
}

make_bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.1/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
}

# The paths every node must see that lie under /tmp (where each node has its own tmpfs): this
# checkout and its interpreter, and whatever MASKMILL_CLUSTER_SHARE adds (colon-separated).
shared_under_tmp() {
  local share=${MASKMILL_CLUSTER_SHARE:-}
  local paths=("$(cd "$HERE/.." && pwd)" ${share//:/ })
  for p in "${paths[@]}"; do
    [[ -n "$p" && "$p" == /tmp/* ]] && echo "$p"
  done
}

make_node() {
  local i=$1 name="node$1" ns="mm-node$1"
  if keeper_pid "$name" >/dev/null; then return 0; fi
  ip netns del "$ns" 2>/dev/null || true
  ip link del "mmh$i" 2>/dev/null || true
  ip netns add "$ns"
  ip link add "mmh$i" type veth peer name "mmn$i"
  ip link set "mmn$i" netns "$ns"
  ip link set "mmh$i" master "$BRIDGE"
  ip link set "mmh$i" up
  ip netns exec "$ns" ip link set lo up
  ip netns exec "$ns" ip addr add "$NET.$((10 + i))/24" dev "mmn$i"
  ip netns exec "$ns" ip link set "mmn$i" up
  # The keeper: its own hostname, /dev/shm and /tmp (paths under /tmp that every node shares
  # are bound back in), then it sleeps, holding the namespaces for `on`.
  local keep=""
  while read -r p; do
    [[ -n "$p" ]] && keep+="mkdir -p $RUN/keep$i$p && mount --bind $p $RUN/keep$i$p; "
  done < <(shared_under_tmp)
  local back=""
  while read -r p; do
    [[ -n "$p" ]] && back+="mkdir -p $p && mount --bind $RUN/keep$i$p $p; "
  done < <(shared_under_tmp)
  # nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup tree slurmd reads.
  setsid nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation private bash -c "
    hostname $name
    $keep
    mount -t tmpfs -o size=2g,mode=1777 tmpfs /dev/shm
    mount -t tmpfs -o mode=1777 tmpfs /tmp
    $back
    echo \$\$ > $RUN/$name.pid
    exec sleep infinity" </dev/null >/dev/null 2>&1 &
  for _ in $(seq 50); do keeper_pid "$name" >/dev/null && return 0; sleep 0.1; done
  die "node $name did not start"
}

write_hosts() {
  local n=$1 tmp
  tmp=$(mktemp)
  grep -v "$HOSTS_TAG" /etc/hosts >"$tmp" || true
  echo "$NET.1 mmctl $HOSTS_TAG" >>"$tmp"
  for i in $(seq "$n"); do echo "$NET.$((10 + i)) node$i $HOSTS_TAG" >>"$tmp"; done
  cat "$tmp" >/etc/hosts  # in place: /etc/hosts may be a bind mount
  rm -f "$tmp"
}

write_conf() {
  local n=$1 cpus mem
  cpus=$(nproc)
  mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / n / 2))
  mkdir -p "$CONF_DIR" /var/spool/slurmctld-mm /var/spool/slurmd-mm "$LOG_DIR"
  {
    echo "# written by maskmill cluster/local_cluster.sh: $n nodes as namespaces of this machine"
    echo "ClusterName=mmcluster"
    echo "SlurmctldHost=$(hostname -s)($NET.1)"
    echo "SlurmctldPort=$CTLD_PORT"
    echo "SlurmUser=root"
    echo "AuthType=auth/munge"
    echo "AuthInfo=cred_expire=15"
    echo "StateSaveLocation=/var/spool/slurmctld-mm"
    echo "SlurmdSpoolDir=/var/spool/slurmd-mm/%n"
    echo "SlurmctldPidFile=/run/slurmctld-mm.pid"
    echo "SlurmdPidFile=/run/slurmd-mm-%n.pid"
    echo "SlurmctldLogFile=$LOG_DIR/slurmctld-mm.log"
    echo "SlurmdLogFile=$LOG_DIR/slurmd-mm-%n.log"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/affinity"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "AccountingStorageType=accounting_storage/none"
    echo "JobCompType=jobcomp/none"
    echo "MpiDefault=none"
    echo "SchedulerType=sched/backfill"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_CPU"
    echo "ReturnToService=2"
    echo "JobRequeue=1"
    echo "KillWait=10"
    echo "MinJobAge=600"
    echo "SlurmctldTimeout=30"
    echo "SlurmdTimeout=30"
    for i in $(seq "$n"); do
      echo "NodeName=node$i NodeAddr=$NET.$((10 + i)) CPUs=$cpus RealMemory=$mem State=UNKNOWN"
    done
    echo "PartitionName=nodes Nodes=node[1-$n] Default=YES MaxTime=INFINITE State=UP"
  } >"$CONF.new"
  if cmp -s "$CONF.new" "$CONF"; then rm "$CONF.new"; echo 0; else mv "$CONF.new" "$CONF"; echo 1; fi
}

pid_of() { local pid; pid=$(cat "$1" 2>/dev/null) && kill -0 "$pid" 2>/dev/null && echo "$pid"; }

stop_daemons() {
  local pid
  for f in /run/slurmd-mm-node*.pid /run/slurmctld-mm.pid; do
    if pid=$(pid_of "$f"); then
      kill "$pid" || true
      for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
    rm -f "$f"
  done
}

start_daemons() {
  local n=$1 changed=$2
  ((changed)) && stop_daemons
  "$HERE/local_slurm.sh" munge
  if ! pid_of /run/slurmctld-mm.pid >/dev/null; then
    log "starting the controller ($NET.1:$CTLD_PORT)"
    # -c: a cluster made for trying and testing starts empty, not with an earlier one's jobs
    SLURM_CONF=$CONF slurmctld -c -f "$CONF"
  fi
  for i in $(seq "$n"); do
    if ! pid_of "/run/slurmd-mm-node$i.pid" >/dev/null; then
      log "starting slurmd on node$i"
      on "node$i" env SLURM_CONF="$CONF" slurmd -f "$CONF" -N "node$i"
    fi
  done
  for _ in $(seq 120); do
    local idle
    idle=$(SLURM_CONF=$CONF sinfo -h -p nodes -t idle,mixed,allocated -o '%D' 2>/dev/null || echo 0)
    if [[ "${idle:-0}" -ge "$n" ]]; then
      log "$n nodes up: $(SLURM_CONF=$CONF sinfo -h -p nodes -o '%N %T')"
      return 0
    fi
    SLURM_CONF=$CONF scontrol update nodename="node[1-$n]" state=resume >/dev/null 2>&1 || true
    sleep 0.5
  done
  die "the nodes did not come up; see $LOG_DIR/slurmctld-mm.log and $LOG_DIR/slurmd-mm-node*.log"
}

on() {
  local name=$1 pid
  shift
  pid=$(keeper_pid "$name") || die "no node $name (cluster/local_cluster.sh up)"
  nsenter -t "$pid" -n -u -m -- "$@"
}

up() {
  local n=${1:-2}
  [[ "$n" =~ ^[1-9][0-9]?$ ]] || die "up takes a node count from 1 to 99, got '$n'"
  need_root
  mkdir -p "$RUN"
  if [[ $(node_count) -gt 0 && $(node_count) -ne $n ]]; then down; mkdir -p "$RUN"; fi
  probe_namespaces
  make_bridge
  for i in $(seq "$n"); do make_node "$i"; done
  echo "$n" >"$RUN/nodes"
  write_hosts "$n"
  start_daemons "$n" "$(write_conf "$n")"
}

down() {
  need_root
  stop_daemons
  local n pid
  n=$(node_count)
  for i in $(seq "$n"); do
    if pid=$(keeper_pid "node$i"); then
      kill_node "node$i"
      kill "$pid" 2>/dev/null || true
    fi
    ip netns del "mm-node$i" 2>/dev/null || true
    ip link del "mmh$i" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  local tmp
  tmp=$(mktemp)
  grep -v "$HOSTS_TAG" /etc/hosts >"$tmp" || true
  cat "$tmp" >/etc/hosts
  rm -f "$tmp"
  rm -rf "$RUN"
  log "cluster down"
}

# Every process in the node's network namespace, SIGKILLed at once: what a node loss looks like.
kill_node() {
  local name=$1 pids
  pids=$(ip netns pids "mm-$name" 2>/dev/null | grep -vx "$(keeper_pid "$name" || echo none)" || true)
  [[ -n "$pids" ]] && kill -9 $pids 2>/dev/null || true
}

main() {
  case "${1:-}" in
    up) up "${2:-2}" ;;
    down) down ;;
    status) SLURM_CONF=$CONF sinfo -p nodes ;;
    on) shift; [[ $# -ge 2 ]] || die "usage: $0 on NODE CMD..."; on "$@" ;;
    kill) [[ -n "${2:-}" ]] || die "usage: $0 kill NODE"; kill_node "$2" ;;
    env) echo "SLURM_CONF=$CONF" ;;
    *) die "usage: $0 up [N] | down | status | on NODE CMD.. | kill NODE | env" ;;
  esac
}

main "$@"
