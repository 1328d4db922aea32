#!/usr/bin/env bash
# Stop the SLURM started by tests/slurm/start_slurm.sh: slurmd and slurmctld by the pids in their
# pid files (never by name). Jobs still running are cancelled first. MUNGE is left running (it is
# shared, cheap, and other SLURM instances may use it); pass --munge to stop it too (by pid file).
#
# Usage: tests/slurm/stop_slurm.sh [STATE_DIR] [--munge]
set -uo pipefail

STATE_DIR=${1:-/tmp/w2v2ser-slurm}
CONF="$STATE_DIR/slurm.conf"

if [[ -f "$CONF" ]]; then
    SLURM_CONF="$CONF" scancel --user=root >/dev/null 2>&1 || true
fi

stop_pidfile() {
    local pidfile=$1 pid
    [[ -f "$pidfile" ]] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$pidfile"
}

stop_pidfile "$STATE_DIR/run/slurmd.pid"
stop_pidfile "$STATE_DIR/run/slurmctld.pid"
if [[ "${2:-}" == "--munge" ]]; then
    stop_pidfile /run/munge/munged.pid
fi
echo "stop_slurm.sh: stopped SLURM in $STATE_DIR" >&2
