#!/bin/bash
# A real two-node SLURM cluster on this one machine, for distrain's tests and CI.
#
#   bash tests/slurm/cluster.sh up       install (once), configure, start, wait until both nodes are idle
#   bash tests/slurm/cluster.sh status   one line per node, plus the queue
#   bash tests/slurm/cluster.sh down     stop slurmctld, both slurmd, slurmdbd, MariaDB, munged
#
# Idempotent, run as root, Debian (bookworm: slurm-wlm 22.05.8, munge 0.5.15, MariaDB 10.11). No systemd
# here, so the daemons are started directly and tracked by their pid files.
#
# Settings this needs, and why:
#   - two slurmd on one host: `NodeName=n1,n2 NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=17001/17002`,
#     `slurmd -N n1|n2`, and per-node spool/pid/log paths via %n; `127.0.0.1 n1 n2` in /etc/hosts so that
#     `scontrol show hostnames` names (MASTER_ADDR=n1) resolve.
#   - no cgroups (containers/VMs without a delegated cgroup tree): ProctrackType=proctrack/linuxproc,
#     TaskPlugin=task/none, JobAcctGatherType=jobacct_gather/none.
#   - accounting, so that `sacct` answers for jobs squeue has forgotten: slurmdbd on port 6819, storing in a
#     MariaDB server started here on its unix socket only (no TCP port), which slurmdbd reaches as root
#     (unix_socket authentication: no password). Jobs need no association (AccountingStorageEnforce unset); root
#     has one in account `vision`, which the tests submit with.
#   - SlurmUser=root so slurmctld needs no extra user; munged runs as the munge user.
#   - ReturnToService=2 and `scontrol update state=resume` so nodes left DOWN by a previous run come back.
#   - JobRequeue=1; a requeued job waits on BeginTime (~2 min); tests release it with
#     `scontrol update jobid=J StartTime=now`.
#   - MinJobAge=600: finished jobs stay visible to squeue for 10 minutes (tests read their final state).
#   - MaxArraySize=4: array indices must stay below 4, so a sweep of more points than that has to become
#     several arrays (test_sweep.py submits one of 6 points); the 2x2 sweeps' highest index, 3, still fits.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
LOG=/var/log/slurm
HOST=$(hostname)
NODES=(n1 n2)
PORTS=(17001 17002)
SLURM_PIDS=(/run/slurmctld.pid /run/slurmd-n1.pid /run/slurmd-n2.pid)

log() { echo "cluster: $*" >&2; }

running() {  # running PIDFILE -> 0 if the process in PIDFILE is alive
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
  local packages=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
  if dpkg -s "${packages[@]}" >/dev/null 2>&1; then return; fi
  log "installing ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # no init system here: keep the packages' scripts from starting daemons (this script starts them)
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  if ! apt-get install -y -q "${packages[@]}" >/dev/null; then
    apt-get update -q >/dev/null
    apt-get install -y -q "${packages[@]}" >/dev/null
  fi
  rm -f /usr/sbin/policy-rc.d
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 0700 /etc/munge
  chmod 0400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 0755 /run/munge
  if running /run/munge/munged.pid && munge -n </dev/null | unmunge >/dev/null 2>&1; then return; fi
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
  log "munged did not start; see /var/log/munge/munged.log"; exit 1
}

start_mariadb() {
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  if [ ! -d /var/lib/mysql/mysql ]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  fi
  if running /run/mysqld/mysqld.pid && mariadb-admin ping >/dev/null 2>&1; then return; fi
  setsid /usr/sbin/mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock \
    --pid-file=/run/mysqld/mysqld.pid >>"$LOG/mariadb.log" 2>&1 </dev/null &
  for _ in $(seq 100); do mariadb-admin ping >/dev/null 2>&1 && return; sleep 0.1; done
  log "MariaDB did not start; see $LOG/mariadb.log"; exit 1
}

write_dbd_conf() {  # prints "changed" when the file was (re)written
  local tmp
  tmp=$(mktemp)
  cat >"$tmp" <<EOF
# Written by distrain tests/slurm/cluster.sh: accounting for the two-node test cluster.
AuthType=auth/munge
DbdHost=$HOST
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
LogFile=$LOG/slurmdbd.log
PidFile=/run/slurmdbd.pid
EOF
  if cmp -s "$tmp" "$DBD_CONF"; then rm -f "$tmp"; return; fi
  mv "$tmp" "$DBD_CONF"
  chmod 0600 "$DBD_CONF"  # slurmdbd refuses a config others can read
  echo changed
}

start_slurmdbd() {  # slurmdbd, and this cluster in its database before slurmctld registers with it
  running /run/slurmdbd.pid || slurmdbd
  for _ in $(seq 100); do sacctmgr -n -P list cluster >/dev/null 2>&1 && break; sleep 0.1; done
  if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx distrain; then
    sacctmgr -i add cluster distrain >/dev/null || { log "slurmdbd not answering; see $LOG/slurmdbd.log"; exit 1; }
  fi
  # the account test_slurm.py submits with (--account vision): without an association of root's in it,
  # slurmctld would run the job under root's default account instead
  if ! sacctmgr -n -P list assoc user=root account=vision format=account 2>/dev/null | grep -qx vision; then
    sacctmgr -i add account vision >/dev/null
    sacctmgr -i add user root account=vision >/dev/null
  fi
}

write_conf() {  # prints "changed" when the file was (re)written
  local tmp
  tmp=$(mktemp)
  cat >"$tmp" <<EOF
# Written by distrain tests/slurm/cluster.sh: two slurmd (n1, n2) on one host.
ClusterName=distrain
SlurmctldHost=$HOST
SlurmUser=root
SlurmctldPort=6817
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
MaxArraySize=4
SlurmctldParameters=preempt_send_user_signal
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$HOST
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmdDebug=info
SlurmctldDebug=info
NodeName=n1 NodeAddr=127.0.0.1 NodeHostname=$HOST Port=${PORTS[0]} CPUs=2 RealMemory=2048 State=UNKNOWN
NodeName=n2 NodeAddr=127.0.0.1 NodeHostname=$HOST Port=${PORTS[1]} CPUs=2 RealMemory=2048 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
  mkdir -p /etc/slurm
  if cmp -s "$tmp" "$CONF"; then rm -f "$tmp"; return; fi
  mv "$tmp" "$CONF"
  chmod 0644 "$CONF"
  echo changed
}

stop_daemons() {  # stop_daemons PIDFILE...
  local pidfile pid
  for pidfile in "$@"; do
    running "$pidfile" || continue
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$pidfile"
  done
}

start_daemons() {
  mkdir -p "$LOG" /var/spool/slurmctld /var/spool/slurmd/n1 /var/spool/slurmd/n2
  if ! running /run/slurmctld.pid; then
    slurmctld
  fi
  local i
  for i in 0 1; do
    running "/run/slurmd-${NODES[$i]}.pid" || slurmd -N "${NODES[$i]}"
  done
}

wait_idle() {
  local states deadline=$((SECONDS + 60))
  while ((SECONDS < deadline)); do
    states=$(sinfo -h -N -p debug -o '%N %t' 2>/dev/null | sort -u || true)
    if [ "$(grep -cE ' (idle|mix|alloc)$' <<<"$states")" = 2 ]; then return; fi
    if grep -qE ' (down|drain|drng|fail)' <<<"$states"; then
      scontrol update nodename=n1,n2 state=resume >/dev/null 2>&1 || true
    fi
    sleep 0.5
  done
  log "nodes not idle after 60 s:"; echo "$states" >&2
  log "see $LOG/slurmctld.log and $LOG/slurmd-n1.log"; exit 1
}

up() {
  [ "$(id -u)" = 0 ] || { log "run as root"; exit 1; }
  install_packages
  grep -qE '^127\.0\.0\.1[[:space:]]+n1[[:space:]]+n2' /etc/hosts || echo '127.0.0.1 n1 n2' >>/etc/hosts
  start_munge
  mkdir -p "$LOG" /etc/slurm
  start_mariadb
  if [ -n "$(write_dbd_conf)" ]; then stop_daemons /run/slurmdbd.pid; fi
  if [ -n "$(write_conf)" ]; then stop_daemons "${SLURM_PIDS[@]}"; fi
  start_slurmdbd
  start_daemons
  wait_idle
  status
}

down() {
  stop_daemons "${SLURM_PIDS[@]}" /run/slurmdbd.pid /run/mysqld/mysqld.pid
  if running /run/munge/munged.pid; then
    kill "$(cat /run/munge/munged.pid)"
  fi
  log "stopped"
}

status() {
  if ! command -v sinfo >/dev/null; then log "not installed (run: $0 up)"; return 1; fi
  if ! running /run/slurmctld.pid; then log "slurmctld not running (run: $0 up)"; return 1; fi
  sinfo -N -o '%N %P %t %c' 2>/dev/null || { log "slurmctld not responding"; return 1; }
  squeue -o '%i %j %T %r %D %N' 2>/dev/null || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
