#!/usr/bin/env bash
# Install Debian's slurm-wlm and munge for the real-Slurm suite (make test-slurm) when
# they are missing. Needs root and apt-get; does nothing when the daemons are already
# there. The suite itself starts its own cluster in a temp folder (tests/slurm_cluster.py).
set -euo pipefail
if [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ] && [ -x /usr/bin/sbatch ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "Error: the real-Slurm suite needs slurm-wlm and munge; install them as root (apt-get install slurm-wlm munge)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq slurm-wlm munge >/dev/null
