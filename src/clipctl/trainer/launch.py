"""How ``clipctl train`` was started: one plain process, or DeepSpeed ranks under a launcher.

``setup(--deepspeed)`` joins the process group that torchrun or the deepspeed
launcher started (or makes a group of one) and returns a ``Launch``: the
``--deepspeed`` spec and the run-level comm. ``relaunch`` is ``--nproc``:
the same command under torchrun, on this machine or, with ``Nodes``, as one
of several machines meeting at a rendezvous (``--nnodes``, ``--rdzv-endpoint``). ``run.py`` builds the trainer's parts from a
``Launch``; nothing else in clipctl asks which processes exist.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from clipctl.errors import ConfigError
from clipctl.trainer.comm import DistributedComm, SingleProcessComm
from clipctl.trainer.deepspeed import DEEPSPEED_CHOICES, builtin_or_file
from clipctl.trainer.signals import REQUEUE_EXIT, STOP_SIGNALS

# Rank 0 may evaluate or write for a while as the others wait in a collective.
COLLECTIVE_TIMEOUT = dt.timedelta(hours=3)


@dataclass(frozen=True)
class Launch:
    """The ``--deepspeed`` spec (None: one plain process) and the comm of the processes it runs on."""

    deepspeed: Optional[str] = None
    comm: SingleProcessComm = field(default_factory=SingleProcessComm)

    def describe(self) -> dict:
        """What run.json records about the processes (nothing for one plain process)."""
        if self.deepspeed is None:
            return {}
        return {"parallel": {"deepspeed": self.deepspeed, "world_size": self.comm.world_size}}

    def check_resume(self, meta: dict, run_dir: Path) -> None:
        """A run resumes with the process settings it was trained with (DeepSpeed partitions are tied to them)."""
        stored, now = meta.get("parallel"), self.describe().get("parallel")
        if stored == now:
            return
        if now is None:
            raise ConfigError(
                f"run {run_dir} was trained with --deepspeed {stored['deepspeed']} on {stored['world_size']} "
                f"processes; resume it the same way (clipctl train --resume {run_dir} "
                f"--deepspeed {stored['deepspeed']} --nproc {stored['world_size']})"
            )
        if stored is None:
            raise ConfigError(
                f"run {run_dir} was trained in one process without DeepSpeed; resume it without "
                f"--deepspeed/--nproc (its optimizer state is not in DeepSpeed's format)"
            )
        raise ConfigError(
            f"run {run_dir} was trained with --deepspeed {stored['deepspeed']} on {stored['world_size']} "
            f"processes, not --deepspeed {now['deepspeed']} on {now['world_size']}; resume it the same way "
            f"(DeepSpeed optimizer partitions are tied to the stage and the process count)"
        )


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launched_world_size() -> int:
    """Processes started by torchrun / the deepspeed launcher (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(deepspeed: Optional[str] = None) -> Launch:
    """The processes of ``clipctl train``: one plain process, or this rank of a DeepSpeed group.

    Under a launcher (``WORLD_SIZE`` > 1) ``--deepspeed`` is required. With
    ``--deepspeed`` and no launcher, a one-process group is created, so a
    DeepSpeed run can also be started by plain ``clipctl train``.
    """
    world = launched_world_size()
    if deepspeed is None:
        if world > 1:
            raise ConfigError(
                f"clipctl train was started with {world} processes (WORLD_SIZE={world}) but without --deepspeed; "
                f"add --deepspeed {DEEPSPEED_CHOICES}"
            )
        return Launch()
    builtin_or_file(deepspeed)
    if int(os.environ.get("RANK", "0")) != 0:
        # Progress bars, summaries and DeepSpeed's banners come from rank 0;
        # errors still reach stderr.
        sys.stdout = open(os.devnull, "w")
    # DeepSpeed's ZeRO code calls collectives that torch deprecates (all_gather_into_tensor, ...).
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed as ds
    except ImportError:
        raise ConfigError("--deepspeed needs the deepspeed package; install it with pip install 'clipctl[deepspeed]'") from None
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    if not dist.is_initialized():
        if "RANK" not in os.environ:  # no launcher: a group of one
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
        atexit.register(_destroy_group)
        with contextlib.redirect_stdout(io.StringIO()):  # "...op built successfully"
            ds.init_distributed(dist_backend=backend, timeout=COLLECTIVE_TIMEOUT)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    return Launch(deepspeed, DistributedComm(dist.get_rank(), dist.get_world_size(), device))


@dataclass(frozen=True)
class Nodes:
    """Where ``--nproc`` starts its processes: this machine alone, or one of ``count`` machines that meet at
    ``endpoint`` (torchrun's c10d rendezvous; the same ``job`` id on every machine)."""

    count: int = 1
    endpoint: Optional[str] = None  # HOST:PORT of the rendezvous (any one of the machines)
    job: str = "clipctl"

    def check(self) -> None:
        if self.count == 1:
            if self.endpoint is not None:
                raise ConfigError(f"--rdzv-endpoint {self.endpoint} needs --nnodes N (N > 1); drop it to train on this machine")
            return
        host, _, port = (self.endpoint or "").rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(
                f"--nnodes {self.count} needs --rdzv-endpoint HOST:PORT (one of the machines, a free port), "
                f"got {self.endpoint!r}; e.g. --rdzv-endpoint node01:29500"
            )

    def torchrun_args(self) -> list[str]:
        if self.count == 1:
            return ["--standalone"]
        return [f"--nnodes={self.count}", "--rdzv-backend=c10d", f"--rdzv-endpoint={self.endpoint}", f"--rdzv-id={self.job}"]


def relaunch(nproc: int, args: list[str], nodes: Nodes = Nodes()) -> int:
    """Run ``clipctl ARGS`` under torchrun with ``nproc`` processes per machine; its exit code.

    A stop signal reaches the workers as SIGTERM through torchrun (which would
    die of SIGUSR1); a Ctrl-C already reached them with the terminal's process
    group. torchrun reports a worker's ``REQUEUE_EXIT`` as a failure, so after
    a stop signal any non-zero exit is reported as ``REQUEUE_EXIT``.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", *nodes.torchrun_args(), f"--nproc_per_node={nproc}",
           "-m", "clipctl", *args]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.Popen(cmd, env=env)
    asked: list[int] = []

    def forward(signum, frame) -> None:
        asked.append(signum)
        if signum != signal.SIGINT:
            proc.send_signal(signal.SIGTERM)

    in_main = threading.current_thread() is threading.main_thread()
    old = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS} if in_main else {}
    try:
        code = proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if asked.count(signal.SIGINT) > 1:
        return 130
    return REQUEUE_EXIT if asked and code != 0 else code
