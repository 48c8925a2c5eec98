"""Distribution at the edge: ranks, collectives, DeepSpeed and rank-0-only writing.

Everything in clipctl that knows about ranks lives in this file; ``comm.py`` holds
the one-process collectives that the trainer defaults to.
The trainer (``loop.py``) talks to a ``comm`` object; ``SingleProcess`` answers
every collective with its argument, so the single-process trainer is the
reference and reads as the plain algorithm. ``DeepSpeedRanks`` answers with
``torch.distributed`` collectives, and ``DeepSpeedTrainer`` swaps the
optimizer step for a DeepSpeed engine.

How a run on ``w`` processes relates to the single-process run with the same
config (the config's batch sizes ``P``, ``M`` and ``rollout.n`` stay global):

1. Prompts: each minibatch's ``M`` prompts are cut into ``w`` blocks of
   ``M / w`` consecutive prompts, and rank ``r`` takes block ``r`` of every
   minibatch; a prompt's ``G`` responses stay on its rank. So rank ``r``'s
   ``k``-th local minibatch is its share of global minibatch ``k``: every
   optimizer step sees the same rows as in one process.
2. Sampling: the prompt at global position ``j`` is sampled with seed
   ``base + j * G`` (``loop.py``, point 3), in one process too, so the
   responses do not depend on ``w``. Random rewards are seeded by ``j``.
3. Loss: each minibatch's ``num_seqs`` and ``num_tokens`` are all-reduced
   before its micro-batch losses, so a rank's loss is its share of the global
   minibatch loss. DeepSpeed averages gradients over ranks, so the loss is
   multiplied by ``w`` before ``engine.backward``: the averaged gradient is the
   single-process gradient.
4. Accumulation: DeepSpeed's ``gradient_accumulation_steps`` is the number of
   micro-batches per rank per minibatch; ``engine.backward`` and
   ``engine.step`` run after each micro-batch (no division by the
   accumulation steps: our normalisers already make micro-batch losses add up
   to the minibatch loss) and DeepSpeed steps the torch AdamW once per
   minibatch, clipping at ``optim.grad_clip``.
5. Metrics: clip-statistic sums (``SUM_KEYS``), losses and KL sums are
   all-reduced; per-row tensors (rewards, masks, entropies) are all-gathered
   in global order, so step metrics come from the same code as in one process.
6. Writing: rank 0 writes logs, run.json and checkpoints. Other ranks get a
   ``NullWriter``, a log that does nothing and a stdout that goes nowhere.
7. Checkpoints: ``checkpoints/step-N/`` holds the HF model (ZeRO-3 parameters
   gathered first), the tokenizer, ``deepspeed/`` (``engine.save_checkpoint``:
   every rank's optimizer partition) and ``trainer_state.pt`` (written last,
   after a barrier), assembled in a temp folder that rank 0 renames.
8. Clip probe (docs/definitions.md section 8): snapshots are engine checkpoints in a scratch folder
   (weights and optimizer partitions), restored with ``engine.load_checkpoint``.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import datetime as dt
import io
import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from clipctl.errors import ClipctlError, ConfigError
from clipctl.rollout.base import pad_to
from clipctl.runlog import NullWriter, RunWriter
from clipctl.trainer.checkpoint import (
    finish_checkpoint,
    load_trainer_state,
    new_checkpoint_folder,
    rng_states,
    set_rng_states,
)
from clipctl.trainer.comm import SingleProcessComm
from clipctl.trainer.loop import Trainer, policy_logp_entropy
from clipctl.trainer.precision import PlainWeights

BUILTIN_STAGES = {"zero1": 1, "zero2": 2, "zero3": 3}
DEEPSPEED_CHOICES = "zero1|zero2|zero3|FILE.json"
# Rank 0 may evaluate or write for a while as the others wait in a collective.
COLLECTIVE_TIMEOUT = dt.timedelta(hours=3)


def _nothing(*args, **kwargs) -> None:
    return None


def _remove_folders(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- one process


class SingleProcess(SingleProcessComm):
    """One process: every collective returns its argument (``comm.py``); this process writes."""

    def logger(self, log: Callable[[str], None]) -> Callable[[str], None]:
        return log

    def main_only(self, fn: Optional[Callable]) -> Optional[Callable]:
        return fn

    def writer(self) -> RunWriter:
        return RunWriter()

    def describe(self) -> dict:
        """What run.json records about the processes (nothing for one plain process)."""
        return {}

    def check_resume(self, meta: dict, run_dir: Path) -> None:
        stored = meta.get("parallel")
        if stored:
            raise ConfigError(
                f"run {run_dir} was trained with --deepspeed {stored['deepspeed']} on {stored['world_size']} "
                f"processes; resume it the same way (clipctl train --resume {run_dir} "
                f"--deepspeed {stored['deepspeed']} --nproc {stored['world_size']})"
            )

    def make_trainer(self, cfg, *, init_path: Optional[str] = None, log=None):
        return Trainer(cfg, init_path=init_path, log=log)


# ---------------------------------------------------------------- several processes


def _reorder(parts: list, chunk: int) -> list:
    """Per-rank lists (rank r holds chunks r, r + w, r + 2w, ... of the global list) -> global order."""
    w = len(parts)
    out = []
    for i in range(len(parts[0]) // chunk):
        for r in range(w):
            out.extend(parts[r][i * chunk : (i + 1) * chunk])
    return out


class DeepSpeedRanks(SingleProcess):
    """``torch.distributed`` collectives; the trainer is a ``DeepSpeedTrainer``."""

    def __init__(self, spec: str):
        self.spec = spec
        self.block_prompts = 0  # M / w, set by make_trainer
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.is_main = self.rank == 0
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        )

    def share(self, n: int) -> int:
        return n // self.world_size

    def positions(self, n: int, block: int) -> list[int]:
        per = block // self.world_size
        return [k + self.rank * per + i for k in range(0, n, block) for i in range(per)]

    def sum(self, x):
        t = torch.tensor(float(x), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return int(round(t.item())) if isinstance(x, int) else t.item()

    def sums(self, sums: dict) -> dict:
        keys = list(sums)
        t = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64) for k in keys]).to(self.device)
        dist.all_reduce(t)
        t = t.cpu()
        return {k: t[i] for i, k in enumerate(keys)}

    def _max(self, n: int) -> int:
        t = torch.tensor(n, dtype=torch.long, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def rows(self, t: torch.Tensor, group: int, *, left: bool = False) -> torch.Tensor:
        dtype = t.dtype
        x = t.detach().cpu()
        if dtype == torch.bool:  # gloo has no bool collectives
            x = x.to(torch.uint8)
        if x.dim() == 2:
            x = pad_to(x, self._max(x.shape[1]), 0, left)
        x = x.contiguous().to(self.device)
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x)
        stacked = torch.stack([p.cpu() for p in parts])  # [w, n_local, ...]
        chunk = group * self.block_prompts  # rows of one rank's block of a minibatch
        rest = tuple(x.shape[1:])
        out = stacked.view(self.world_size, x.shape[0] // chunk, chunk, *rest).transpose(0, 1).reshape(-1, *rest)
        return out.to(dtype)

    def objects(self, items: list, group: int) -> list:
        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, list(items))
        return _reorder(parts, group * self.block_prompts)

    def batch(self, batch, group: int):
        from clipctl.rollout import RolloutBatch

        logprobs = batch.logprobs
        return RolloutBatch(
            prompt_ids=self.rows(batch.prompt_ids, group, left=True),
            prompt_mask=self.rows(batch.prompt_mask, group, left=True),
            response_ids=self.rows(batch.response_ids, group),
            response_mask=self.rows(batch.response_mask, group),
            truncated=self.rows(batch.truncated, group),
            response_text=self.objects(batch.response_text, group),
            logprobs=None if logprobs is None else self.rows(logprobs, group),
        )

    def broadcast(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable, *args, **kwargs):
        result, error = None, None
        if self.is_main:
            try:
                result = fn(*args, **kwargs)
            except ClipctlError as e:
                error = e
            except Exception as e:  # the other ranks must not wait forever
                self.broadcast((None, RuntimeError(f"rank 0 failed: {type(e).__name__}: {e}")))
                raise
        result, error = self.broadcast((result, error))
        if error is not None:
            raise error
        return result

    def barrier(self) -> None:
        dist.barrier()

    def logger(self, log):
        return log if self.is_main else _nothing

    def main_only(self, fn):
        return fn if self.is_main or fn is None else _nothing

    def writer(self) -> RunWriter:
        return RunWriter() if self.is_main else NullWriter()

    def describe(self) -> dict:
        return {"parallel": {"deepspeed": self.spec, "world_size": self.world_size}}

    def check_resume(self, meta: dict, run_dir: Path) -> None:
        stored = meta.get("parallel")
        now = self.describe()["parallel"]
        if not stored:
            raise ConfigError(
                f"run {run_dir} was trained in one process without DeepSpeed; resume it without "
                f"--deepspeed/--nproc (its optimizer state is not in DeepSpeed's format)"
            )
        if stored != now:
            raise ConfigError(
                f"run {run_dir} was trained with --deepspeed {stored['deepspeed']} on {stored['world_size']} "
                f"processes, not --deepspeed {now['deepspeed']} on {now['world_size']}; resume it the same way "
                f"(DeepSpeed optimizer partitions are tied to the stage and the process count)"
            )

    def make_trainer(self, cfg, *, init_path: Optional[str] = None, log=None):
        self.block_prompts = cfg.train.minibatch_prompts // self.world_size
        return DeepSpeedTrainer(cfg, init_path=init_path, log=log, comm=self)


# ---------------------------------------------------------------- set-up


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


def setup(deepspeed: Optional[str] = None) -> SingleProcess:
    """The process context of ``clipctl train``: ``SingleProcess`` or ``DeepSpeedRanks``.

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
        return SingleProcess()
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
    return DeepSpeedRanks(deepspeed)


def relaunch(nproc: int, args: list[str]) -> int:
    """Run ``clipctl ARGS`` under torchrun with ``nproc`` processes on this machine; its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "clipctl", *args]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.call(cmd, env=env)


# ---------------------------------------------------------------- DeepSpeed config


def builtin_or_file(spec: str) -> dict:
    """The DeepSpeed config named by ``--deepspeed`` before clipctl's derived keys."""
    if spec in BUILTIN_STAGES:
        return {"zero_optimization": {"stage": BUILTIN_STAGES[spec]}}
    path = Path(spec)
    if path.suffix != ".json":
        raise ConfigError(f"--deepspeed {spec!r} is unknown; use {DEEPSPEED_CHOICES}")
    if not path.is_file():
        raise ConfigError(f"--deepspeed file {spec} not found; pass an existing .json file or zero1|zero2|zero3")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"--deepspeed file {spec} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--deepspeed file {spec} must hold a JSON object")
    return raw


def deepspeed_config(spec: str, cfg, world: int) -> dict:
    """The config handed to ``deepspeed.initialize`` (see the module docstring, point 4)."""
    base = builtin_or_file(spec)
    for key in ("optimizer", "scheduler"):
        if key in base:
            raise ConfigError(
                f"--deepspeed {spec} has an '{key}' section; remove it: clipctl steps torch AdamW with its own "
                f"schedule (set optim.* instead)"
            )
    if isinstance(base.get("fp16"), dict) and base["fp16"].get("enabled"):
        raise ConfigError(f"--deepspeed {spec} enables fp16, which clipctl does not support; use bf16 or float32")
    stage = base.get("zero_optimization", {}).get("stage", 0)
    if stage not in (1, 2, 3):
        raise ConfigError(f"--deepspeed {spec}: zero_optimization.stage={stage} must be 1, 2 or 3")
    rows = (cfg.train.minibatch_prompts // world) * cfg.rollout.n  # this rank's rows per minibatch
    micro = min(cfg.train.micro_batch_size, rows)
    gas = math.ceil(rows / cfg.train.micro_batch_size)
    if cfg.model.dtype == "bfloat16":
        # DeepSpeed's bf16 mode: bf16 forward/backward, float32 master weights
        # and optimizer state in ZeRO's partitions (precision.py does this in one process).
        if isinstance(base.get("bf16"), dict) and base["bf16"].get("enabled") is False:
            raise ConfigError(
                f"--deepspeed {spec} disables bf16 but model.dtype=bfloat16: AdamW would step bf16 weights and lose "
                f"small updates; remove the bf16 section or set model.dtype=float32"
            )
        base = {**base, "bf16": {**base.get("bf16", {}), "enabled": True}}
    derived = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": gas,
        "train_batch_size": micro * gas * world,
        "gradient_clipping": float(cfg.optim.grad_clip),
    }
    for key, value in derived.items():
        if key in base and base[key] != "auto" and base[key] != value:
            raise ConfigError(
                f"--deepspeed {spec} sets {key}={base[key]} but clipctl derives {value} from train.minibatch_prompts, "
                f"rollout.n, train.micro_batch_size and optim.grad_clip; remove the key or set it to \"auto\""
            )
    return {"steps_per_print": 2**31 - 1, **base, **derived, "zero_allow_untested_optimizer": True}


def check_launch(cfg, world: int, spec: str) -> None:
    """Every config check of a DeepSpeed run, before any process starts (``--nproc``)."""
    ds_config = deepspeed_config(spec, cfg, world)
    check_world(cfg, world, ds_config["zero_optimization"]["stage"])


def check_world(cfg, world: int, stage: int) -> None:
    """Config checks that depend on the process count and the ZeRO stage."""
    P, M = cfg.train.rollout_batch_prompts, cfg.train.minibatch_prompts
    if P % world or M % world:
        raise ConfigError(
            f"train.rollout_batch_prompts ({P}) and train.minibatch_prompts ({M}) must be divisible by the number "
            f"of processes ({world}); pick batch sizes that are multiples of {world} or use fewer processes"
        )
    if cfg.rollout.engine != "hf":
        raise ConfigError(f"rollout.engine={cfg.rollout.engine!r} is not supported with --deepspeed yet; use rollout.engine=hf")
    if cfg.train.on_nonfinite == "skip":
        raise ConfigError(
            "train.on_nonfinite=skip is not supported with --deepspeed (the engine applies its update before the "
            "gradient norm is known); use train.on_nonfinite=stop"
        )
    if cfg.train.micro_batch_tokens:
        raise ConfigError(
            f"train.micro_batch_tokens={cfg.train.micro_batch_tokens} is not supported with --deepspeed (its gradient "
            f"accumulation needs the same number of micro-batches on every rank); set train.micro_batch_tokens=0 "
            f"and size passes with train.micro_batch_size"
        )
    if stage == 3 and cfg.eval.every:
        raise ConfigError(
            "eval.every is not supported with --deepspeed zero3 yet; set eval.every=0 and evaluate the "
            "checkpoints afterwards with clipctl eval-passk RUN_DIR"
        )


# ---------------------------------------------------------------- the DeepSpeed trainer

class _Policy(torch.nn.Module):
    """What DeepSpeed wraps: the HF model plus the trainer's log-prob/entropy head.

    Every training forward must go through ``engine(...)``: ZeRO's parameter
    gathering and gradient bookkeeping hook into it.
    """

    def __init__(self, model: torch.nn.Module, cfg):
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(self, inputs: dict, targets: torch.Tensor, width: int, **head):
        return policy_logp_entropy(self.model, self.cfg, inputs, targets, width, **head)


class DeepSpeedTrainer(Trainer):
    """The reference trainer with a DeepSpeed engine doing backward and optimizer steps."""

    def __init__(self, cfg, *, init_path: Optional[str] = None, log=None, comm: DeepSpeedRanks):
        import deepspeed

        self.ds_config = deepspeed_config(comm.spec, cfg, comm.world_size)
        self.zero_stage = self.ds_config["zero_optimization"]["stage"]
        check_world(cfg, comm.world_size, self.zero_stage)
        super().__init__(cfg, init_path=init_path, log=log, comm=comm)
        if self.zero_stage == 3:
            from transformers.integrations import HfDeepSpeedConfig

            # While this object lives, generate() runs in lock-step across ranks
            # (synced_gpus): ZeRO-3 gathers parameters with collectives in every forward.
            self._hf_zero3 = HfDeepSpeedConfig(self.ds_config)
        self.policy = _Policy(self.model, cfg)
        self.ds_engine, *_ = deepspeed.initialize(model=self.policy, optimizer=self.optimizer, config=self.ds_config)
        if self.zero_stage == 3 and cfg.train.lm_head == "fused":
            # The fused head reads the (tied) output embedding outside its module's forward.
            deepspeed.zero.register_external_parameter(self.policy, self.model.get_output_embeddings().weight)
        self.scratch = Path(comm.on_main(tempfile.mkdtemp, prefix="clipctl-deepspeed-"))
        if comm.is_main:
            atexit.register(shutil.rmtree, self.scratch, ignore_errors=True)
        self._snapshot_tags: list[str] = []
        self._snapshots_taken = 0
        self.log(f"deepspeed: ZeRO-{self.zero_stage} on {comm.world_size} processes, "
                 f"{self.ds_config['gradient_accumulation_steps']} micro-batches per optimizer step per process")

    # ------------------------------------------------------------ mechanics

    def _keeps_master_weights(self) -> bool:
        return False  # DeepSpeed's bf16 mode keeps them in ZeRO's float32 partitions

    def _make_weights(self):
        return PlainWeights(self.model)

    def _forward(self, inputs, targets, width, **head):
        return self.ds_engine(inputs, targets, width, **head)

    def _zero_grad(self) -> None:
        pass  # the engine zeroes gradients after each optimizer step

    def _backward(self, loss: torch.Tensor) -> None:
        # The loss is this rank's share of the global minibatch loss; DeepSpeed
        # averages gradients over ranks, so undo the 1/w.
        self.ds_engine.backward(loss * self.comm.world_size, scale_wrt_gas=False)
        self.ds_engine.step()  # applies the update only at the last micro-batch

    def _grad_norm(self) -> torch.Tensor:
        # The engine has already stepped at the last micro-batch (a non-finite
        # step then stops the run before anything of it is written; skipping
        # is not possible here, so check_world rejects train.on_nonfinite=skip).
        if not self.ds_engine.was_step_applied():
            raise RuntimeError("DeepSpeed did not step at the end of the minibatch; micro-batch count != accumulation steps")
        norm = self.ds_engine.get_global_grad_norm()
        return torch.as_tensor(math.nan if norm is None else float(norm), dtype=torch.float64)

    def _apply_update(self) -> None:
        self.scheduler.step()

    def _skip_update(self) -> None:
        raise RuntimeError("train.on_nonfinite=skip is not supported with --deepspeed (check_world rejects it)")

    def _full_params(self):
        """Context in which every rank holds the full parameters (ZeRO-3 gathers them)."""
        if self.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None)
        return contextlib.nullcontext()

    # ------------------------------------------------------------ clip probe snapshots

    def _snapshot(self) -> dict:
        tag = f"snap-{self._snapshots_taken}"
        self._snapshots_taken += 1
        self.ds_engine.save_checkpoint(str(self.scratch), tag=tag, save_latest=False)
        self._snapshot_tags.append(tag)
        self.comm.barrier()
        # A probe needs at most two snapshots (start of step, real end state).
        old, self._snapshot_tags = self._snapshot_tags[:-2], self._snapshot_tags[-2:]
        self.comm.on_main(_remove_folders, [self.scratch / t for t in old])
        return {"tag": tag, "scheduler": copy.deepcopy(self.scheduler.state_dict())}

    def _restore(self, snap: dict) -> None:
        self.ds_engine.load_checkpoint(
            str(self.scratch), tag=snap["tag"], load_optimizer_states=True, load_lr_scheduler_states=False
        )
        self.scheduler.load_state_dict(copy.deepcopy(snap["scheduler"]))

    # ------------------------------------------------------------ checkpoints

    def save_checkpoint(self, run_dir: Path, step: int, keep_last: int) -> Path:
        comm = self.comm
        tmp = Path(comm.on_main(new_checkpoint_folder, run_dir, step))
        self.ds_engine.save_checkpoint(str(tmp / "deepspeed"), tag="state", save_latest=False)
        with self._full_params():
            comm.on_main(self.model.save_pretrained, tmp)
        comm.barrier()  # every rank's optimizer partition is on disk
        state = {
            "step": step,
            "scheduler": self.scheduler.state_dict(),
            "control": self.control.state_dict(),
            "rng": rng_states(),
            **self.comm.describe(),
        }
        final = comm.on_main(finish_checkpoint, run_dir, step, tmp, self.tokenizer, state, keep_last)
        return Path(final)

    def load_checkpoint(self, ckpt_dir: Path) -> None:
        state = load_trainer_state(ckpt_dir)
        if state.get("parallel") != self.comm.describe()["parallel"]:
            raise ConfigError(
                f"checkpoint {ckpt_dir} was not written by --deepspeed {self.comm.spec} on "
                f"{self.comm.world_size} processes; resume with the settings the run was trained with"
            )
        self.ds_engine.load_checkpoint(
            str(Path(ckpt_dir) / "deepspeed"), tag="state", load_optimizer_states=True, load_lr_scheduler_states=False
        )
        self.scheduler.load_state_dict(state["scheduler"])
        self.control.load_state_dict(state.get("control", {}))
        set_rng_states(state["rng"])
