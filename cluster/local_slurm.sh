#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for tests and CI (Debian; needs root).
#
#   cluster/local_slurm.sh          install (if missing), configure, start; idempotent
#   cluster/local_slurm.sh stop     stop the daemons
#   cluster/local_slurm.sh munge    install the packages and start munged only
#
# Installs Debian's munge, slurmctld, slurmd, slurm-client, slurmdbd and MariaDB; writes a
# one-node slurm.conf from what `slurmd -C` reads off this machine (CPUs, memory); starts munged,
# MariaDB, slurmdbd (so `sacct` works), slurmctld and slurmd; waits until the node is idle.
# Processes are tracked without cgroups (proctrack/linuxproc), which is what a container allows;
# CPUs are bound with sched_setaffinity (task/affinity), which works without cgroups.
set -euo pipefail

CLUSTER=maskmill
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
LOG_DIR=/var/log/slurm
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

log() { printf 'local_slurm: %s\n' "$*" >&2; }

need_root() {
  if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (it installs packages and starts daemons)"
    exit 1
  fi
}

install_packages() {
  local missing=()
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
      || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
}

running() { pgrep -x "$1" >/dev/null; }

# This cluster's own daemons, by their pid files: the namespaced cluster of local_cluster.sh runs
# daemons of the same names beside them.
PIDFILE_slurmctld=/run/slurmctld.pid
PIDFILE_slurmd=/run/slurmd.pid
PIDFILE_slurmdbd=/run/slurmdbd.pid
daemon_pid() {
  local var="PIDFILE_$1" pid
  pid=$(cat "${!var}" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}
daemon_running() { daemon_pid "$1" >/dev/null; }

start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile /etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  mkdir -p /run/munge
  chown munge:munge /run/munge
  if ! running munged; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
  fi
  munge -n | unmunge >/dev/null
}

start_mariadb() {
  if ! running mariadbd && ! running mysqld; then
    log "starting MariaDB"
    mkdir -p /run/mysqld
    chown mysql:mysql /run/mysqld
    (mysqld_safe --skip-networking=0 --bind-address=127.0.0.1 >/dev/null 2>&1 &)
    for _ in $(seq 60); do
      mysqladmin ping >/dev/null 2>&1 && break
      sleep 0.5
    done
  fi
  mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

write_configs() {
  local host node_line
  host=$(hostname -s)
  node_line=$(slurmd -C | head -n1)
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR"
  cat >"$DBD_CONF.new" <<EOF
# written by maskmill cluster/local_slurm.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
LogFile=$LOG_DIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
EOF
  cat >"$CONF.new" <<EOF
# written by maskmill cluster/local_slurm.sh: one node, this machine
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
# A requeued job may start again only after its old credential expires (default 120 s); a
# short lifetime keeps the preemption tests quick on this one-node cluster.
AuthInfo=cred_expire=15
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
# CPU binding as on a real cluster: a test sees each rank's (and its loader workers') affinity.
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=60
$node_line State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  # slurmdbd refuses a config that others can read (it holds the database password).
  chmod 600 "$DBD_CONF.new"
  local changed=0
  for f in "$CONF" "$DBD_CONF"; do
    if ! cmp -s "$f.new" "$f"; then
      mv "$f.new" "$f"
      changed=1
    else
      rm "$f.new"
    fi
  done
  echo "$changed"
}

start_slurm() {
  local changed=$1
  if ((changed)); then
    stop_slurm
  fi
  if ! daemon_running slurmdbd; then
    log "starting slurmdbd"
    slurmdbd
    for _ in $(seq 60); do
      sacctmgr -n show cluster >/dev/null 2>&1 && break
      sleep 0.5
    done
  fi
  if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
  if ! daemon_running slurmctld; then
    log "starting slurmctld"
    slurmctld
  fi
  if ! daemon_running slurmd; then
    log "starting slurmd"
    slurmd
  fi
  local host
  host=$(hostname -s)
  for _ in $(seq 120); do
    local state
    state=$(sinfo -h -n "$host" -o '%T' 2>/dev/null || true)
    case "$state" in
      idle* | mixed* | allocated*) log "node $host is $state"; return 0 ;;
      down* | drain*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.5
  done
  log "node $host did not come up; see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log"
  return 1
}

stop_slurm() {
  local pid
  for daemon in slurmd slurmctld slurmdbd; do
    if pid=$(daemon_pid "$daemon"); then
      kill "$pid" || true
      for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
  done
}

main() {
  need_root
  case "${1:-start}" in
    start)
      install_packages
      start_munge
      start_mariadb
      start_slurm "$(write_configs)"
      ;;
    stop) stop_slurm ;;
    munge) install_packages; start_munge ;;  # what the namespaced cluster shares
    *) log "usage: $0 [start|stop|munge]"; exit 2 ;;
  esac
}

main "$@"
