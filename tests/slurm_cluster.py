"""A one-node Slurm cluster on localhost for tests: munged, slurmctld and slurmd in a temp folder.

Everything lives under one folder (config, spool, logs, the munge key and
socket); nothing in /etc is touched. Client commands find the cluster through
``SLURM_CONF`` (``env``). The daemons run in the foreground as children of
the test process, so ``stop`` ends exactly the processes ``start`` made.
Needs root (slurmd starts jobs) and Debian's ``slurm-wlm`` and ``munge``
(the recipe follows the build machines' notes, "A real Slurm on one machine").
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")


def missing() -> str:
    """Why no cluster can start here ("" when one can)."""
    if os.geteuid() != 0:
        return "a local Slurm needs root (slurmd starts the jobs)"
    absent = [d for d in (*DAEMONS, "/usr/bin/sbatch") if not Path(d).exists()]
    if absent:
        return f"{', '.join(absent)} not installed (apt-get install slurm-wlm munge)"
    return ""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


class SlurmCluster:
    def __init__(self, root: Path, cpus: int | None = None):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf")}

    def _write_config(self) -> None:
        r = self.root
        for sub in ("spool/ctld", "spool/d", "log", "munge"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (r / "munge").chmod(0o700)
        ctld_port, d_port = _free_ports(2)
        (r / "slurm.conf").write_text("\n".join([
            "ClusterName=clipctl-test",
            f"SlurmctldHost={self.host}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            f"AuthInfo=socket={r / 'munge' / 'munge.socket'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={d_port}",
            f"StateSaveLocation={r / 'spool' / 'ctld'}",
            f"SlurmdSpoolDir={r / 'spool' / 'd'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "ReturnToService=2",
            "MpiDefault=none",
            "KillWait=30",
            "SchedulerType=sched/builtin",
            "MinJobAge=300",
            f"NodeName={self.host} CPUs={self.cpus} RealMemory={max(512, _memory_mib() - 2048)} State=UNKNOWN",
            f"PartitionName=test Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def start(self, timeout: float = 60) -> "SlurmCluster":
        self._write_config()
        r = self.root
        munge = r / "munge"
        self._spawn([DAEMONS[0], "--foreground", "--force", f"--key-file={munge / 'munge.key'}",
                     f"--socket={munge / 'munge.socket'}", f"--pid-file={munge / 'munged.pid'}",
                     f"--log-file={r / 'log' / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}"], "munged")
        self._wait(lambda: (munge / "munge.socket").exists(), timeout, "munged")
        self._spawn([DAEMONS[1], "-D", "-i"], "slurmctld")  # -i: ignore state left by an earlier cluster
        self._wait(lambda: self.run("scontrol", "ping").returncode == 0, timeout, "slurmctld")
        self._spawn([DAEMONS[2], "-D"], "slurmd")
        self._wait(lambda: "idle" in self.run("sinfo", "--noheader", "--format=%T").stdout, timeout, "slurmd (node idle)")
        return self

    def _spawn(self, cmd: list[str], name: str) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f.read_text()[-1500:] for f in sorted((self.root / "log").glob("*")))
                self.stop()
                raise RuntimeError(f"{what} did not start ({'exited: ' + ', '.join(dead) if dead else 'timeout'}):\n{logs}")
            time.sleep(0.2)

    def run(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True)

    def stop(self) -> None:
        """Cancel every job, then stop the daemons this object started (slurmd, slurmctld, munged)."""
        if any(p.poll() is None for p in self.procs[1:2]):
            self.run("scancel", "--full", "--user", "root")
            deadline = time.monotonic() + 40
            while self.run("squeue", "--noheader").stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.5)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs = []

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def tools_on_path() -> bool:
    return all(shutil.which(t) for t in ("sbatch", "squeue", "scontrol"))
