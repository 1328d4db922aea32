#!/usr/bin/env bash
# Start a throwaway single-node SLURM (slurmctld + slurmd + munged, all as root) for tests.
#
# Usage: tests/slurm/start_slurm.sh [STATE_DIR]
#   STATE_DIR defaults to /tmp/w2v2ser-slurm. Everything SLURM writes (state, spool, logs, pid
#   files, slurm.conf) lives there, so nothing under /etc/slurm is touched. On success the last
#   line printed is `export SLURM_CONF=STATE_DIR/slurm.conf`: eval it (or set SLURM_CONF) before
#   calling sbatch/squeue/sinfo. Stop everything with tests/slurm/stop_slurm.sh STATE_DIR.
#
# Needs root (daemons run as root, no cgroups, no accounting: use squeue/scontrol, not sacct).
# Installs slurm-wlm and munge with apt-get when they are missing (about a minute).
# Environment: SLURM_PARTITION (default "debug"), SLURM_GPU_PARTITION (default "gpu": a second
# partition on the same node, so job scripts written for a GPU partition run here unchanged).
set -euo pipefail

STATE_DIR=${1:-/tmp/w2v2ser-slurm}
PARTITION=${SLURM_PARTITION:-debug}
GPU_PARTITION=${SLURM_GPU_PARTITION:-gpu}

if [[ $(id -u) -ne 0 ]]; then
    echo "start_slurm.sh: must run as root (slurmd runs jobs as root here); got uid $(id -u)" >&2
    exit 2
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "start_slurm.sh: installing slurm-wlm and munge ..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq slurm-wlm munge >&2
fi

mkdir -p "$STATE_DIR"/{state,spool,log,run}
STATE_DIR=$(cd "$STATE_DIR" && pwd)
CONF="$STATE_DIR/slurm.conf"

# A running controller from an earlier start with the same folder is reused (idempotent start).
if [[ -f "$STATE_DIR/run/slurmctld.pid" ]] && kill -0 "$(cat "$STATE_DIR/run/slurmctld.pid")" 2>/dev/null \
   && SLURM_CONF="$CONF" sinfo -h >/dev/null 2>&1; then
    echo "start_slurm.sh: already running in $STATE_DIR" >&2
    echo "export SLURM_CONF=$CONF"
    exit 0
fi

# --- MUNGE: a key once, then the daemon (as root, hence --force) ---
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
if id munge >/dev/null 2>&1; then
    chown munge:munge /etc/munge/munge.key /etc/munge /var/lib/munge /var/log/munge /run/munge || true
fi
chmod 400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    munged --force
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# --- slurm.conf for this one host ---
HOST=$(hostname -s)
CPUS=$(nproc)
FREE_MB=$(free -m | awk '/^Mem:/ {print $2}')
MEM_MB=$(( FREE_MB * 9 / 10 ))   # RealMemory must not exceed what slurmd detects
cat > "$CONF" <<CONF
ClusterName=w2v2ser-test
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
PartitionName=$GPU_PARTITION Nodes=$HOST Default=NO MaxTime=INFINITE State=UP OverSubscribe=NO
CONF

export SLURM_CONF="$CONF"
slurmctld -f "$CONF"
slurmd -f "$CONF"

# --- wait until the node is idle (schedulable) ---
for i in $(seq 120); do
    state=$(sinfo -h -N -o "%t" -p "$PARTITION" 2>/dev/null | head -n1 || true)
    if [[ "$state" == idle* || "$state" == mix* ]]; then
        echo "start_slurm.sh: node $HOST $state after ~$((i / 4)) s (partitions: $PARTITION, $GPU_PARTITION)" >&2
        echo "export SLURM_CONF=$CONF"
        exit 0
    fi
    sleep 0.25
done
echo "start_slurm.sh: node did not become idle within 30 s; see $STATE_DIR/log/" >&2
sinfo -N -l >&2 || true
tail -n 20 "$STATE_DIR/log/slurmctld.log" "$STATE_DIR/log/slurmd.log" >&2 || true
exit 1
