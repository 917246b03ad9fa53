#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for kiln's Slurm test (tests/all/slurm.rs) and for
# trying `kiln slurm` locally: installs Debian's slurm-wlm and munge when missing (needs root and
# apt), writes a minimal slurm.conf for this host (no cgroups, no accounting database), and
# starts munged, slurmctld and slurmd unless they are running. Idempotent; prints `sinfo` last.
set -euo pipefail

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "slurm-local: $1 needs root (run as root, or start Slurm yourself)" >&2
        exit 1
    fi
}

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    need_root "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
fi

if sinfo -h -o '%T' 2>/dev/null | grep -qE 'idle|mixed|allocated'; then
    sinfo
    exit 0
fi
need_root "starting munged, slurmctld and slurmd"

# Is a process of this exact name running? (/proc alone: no procps needed.)
running() {
    local f
    for f in /proc/[0-9]*/comm; do
        [ "$(cat "$f" 2>/dev/null)" = "$1" ] && return 0
    done
    return 1
}

host="$(hostname -s 2>/dev/null || cut -d. -f1 /proc/sys/kernel/hostname)"
cpus="$(nproc)"
mem_mb="$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)"
conf_dir=/etc/slurm
mkdir -p "$conf_dir" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
cat >"$conf_dir/slurm.conf" <<CONF
# Written by kiln's scripts/slurm-local.sh: one node, this host.
ClusterName=kiln-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=10
Waittime=0
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF

if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
running munged || su -s /bin/sh munge -c munged 2>/dev/null || munged --force
running slurmctld || slurmctld
running slurmd || slurmd

for _ in $(seq 1 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE 'idle|mixed|allocated'; then
        sinfo
        exit 0
    fi
    sleep 1
done
echo "slurm-local: the node did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
