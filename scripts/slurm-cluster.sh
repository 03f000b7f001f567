#!/usr/bin/env bash
# A real Slurm cluster on this one machine, for tests: one slurmctld and N slurmd daemons, each
# slurmd a separate node (Debian's Slurm is built with multiple-slurmd support).
#
#   scripts/slurm-cluster.sh up DIR [NODES]   start from a clean state; prints SLURM_CONF=...
#   scripts/slurm-cluster.sh down DIR         stop the daemons started by `up` (by their pid files)
#
# Everything lives in DIR: configuration, state, spool, logs, pid files. Nothing else is touched.
set -euo pipefail
cmd=${1:?usage: slurm-cluster.sh up|down DIR [NODES]}
dir=$(realpath -m "${2:?usage: slurm-cluster.sh up|down DIR [NODES]}")
nodes=${3:-4}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

down() {
    [[ -d "$dir" ]] || return 0
    # Cancel every job of this cluster first, so that no job step outlives its slurmd.
    if [[ -e "$dir/slurm.conf" ]] && [[ -e "$dir/run/slurmctld.pgid" ]]; then
        SLURM_CONF="$dir/slurm.conf" timeout 10 scancel --quiet --partition=debug 2>/dev/null || true
        for _ in $(seq 1 50); do
            [[ -z "$(SLURM_CONF="$dir/slurm.conf" timeout 5 squeue -h 2>/dev/null)" ]] && break
            sleep 0.1
        done
    fi
    # Every daemon was started by `up` in a session of its own (setsid), its pid recorded:
    # signal each one's process group, which holds the daemon and whatever it forked.
    for pidfile in "$dir"/run/*.pgid; do
        [[ -e "$pidfile" ]] || continue
        pid=$(cat "$pidfile" 2>/dev/null || true)
        [[ -n "$pid" ]] && kill -TERM -- "-$pid" 2>/dev/null || true
    done
    for pidfile in "$dir"/run/*.pgid; do
        [[ -e "$pidfile" ]] || continue
        pid=$(cat "$pidfile" 2>/dev/null || true)
        for _ in $(seq 1 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

case "$cmd" in
down)
    down
    ;;
up)
    down
    rm -rf "$dir"
    mkdir -p "$dir"/{state,run,log,spool,tmp}
    ctl_port=$(free_port)
    cpus=4
    {
        echo "ClusterName=fxrtest"
        echo "SlurmctldHost=localhost"
        echo "SlurmctldPort=$ctl_port"
        echo "AuthType=auth/none"
        echo "CredType=cred/none"
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        echo "ProctrackType=proctrack/linuxproc"
        echo "TaskPlugin=task/none"
        echo "MpiDefault=none"
        echo "SchedulerType=sched/backfill"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_Core"
        echo "ReturnToService=2"
        echo "SlurmdParameters=config_overrides"
        echo "StateSaveLocation=$dir/state"
        echo "SlurmdSpoolDir=$dir/spool/%n"
        echo "TmpFS=$dir/tmp"
        echo "SlurmctldPidFile=$dir/run/slurmctld.pid"
        echo "SlurmdPidFile=$dir/run/slurmd-%n.pid"
        echo "SlurmctldLogFile=$dir/log/slurmctld.log"
        echo "SlurmdLogFile=$dir/log/slurmd-%n.log"
        echo "JobCompType=jobcomp/none"
        echo "AccountingStorageType=accounting_storage/none"
        echo "InactiveLimit=0"
        echo "KillWait=5"
        echo "MinJobAge=300"
        echo "SlurmctldTimeout=30"
        echo "SlurmdTimeout=30"
        echo "Waittime=0"
        echo "PropagateResourceLimits=NONE"
        for i in $(seq 1 "$nodes"); do
            echo "NodeName=node$i NodeHostname=localhost NodeAddr=127.0.0.1 Port=$(free_port) CPUs=$cpus RealMemory=2000 State=UNKNOWN"
        done
        echo "PartitionName=debug Nodes=node[1-$nodes] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
    } >"$dir/slurm.conf"
    for i in $(seq 1 "$nodes"); do mkdir -p "$dir/spool/node$i"; done
    export SLURM_CONF="$dir/slurm.conf"
    # In the foreground (-D) of a session of their own, so that `down` knows exactly which
    # processes are ours.
    setsid slurmctld -D -i -f "$SLURM_CONF" </dev/null >>"$dir/log/slurmctld.out" 2>&1 &
    echo $! >"$dir/run/slurmctld.pgid"
    for i in $(seq 1 "$nodes"); do
        setsid slurmd -D -f "$SLURM_CONF" -N "node$i" </dev/null >>"$dir/log/slurmd-node$i.out" 2>&1 &
        echo $! >"$dir/run/slurmd-node$i.pgid"
    done
    for _ in $(seq 1 100); do
        idle=$(sinfo -h -t idle -o '%D' 2>/dev/null | head -1)
        [[ "${idle:-0}" == "$nodes" ]] && break
        sleep 0.2
    done
    if [[ "${idle:-0}" != "$nodes" ]]; then
        echo "slurm cluster did not come up: $(sinfo 2>&1 | tail -3)" >&2
        tail -20 "$dir"/log/*.log >&2 || true
        down
        exit 1
    fi
    echo "SLURM_CONF=$SLURM_CONF"
    ;;
*)
    echo "usage: slurm-cluster.sh up|down DIR [NODES]" >&2
    exit 2
    ;;
esac
