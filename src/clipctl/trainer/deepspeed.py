"""The DeepSpeed update engine: ZeRO stages 1-3, its JSON config, gathered checkpoints, bf16 masters.

``DeepSpeedEngine`` implements ``engine.UpdateEngine`` with a DeepSpeed engine;
the trainer, its comm (``comm.DistributedComm``) and the step are the
single-process ones. How a run on ``w`` processes equals the single-process
run with the same config (batch sizes stay global; docs/distributed.md):

1. Loss: the trainer all-reduces each minibatch's ``num_seqs`` and
   ``num_tokens``, so a rank's loss is its share of the global minibatch loss.
   DeepSpeed averages gradients over ranks, so the loss is multiplied by ``w``
   before ``engine.backward``: the averaged gradient is the single-process one.
2. Accumulation: DeepSpeed's ``gradient_accumulation_steps`` is the number of
   micro-batches per rank per minibatch; ``engine.backward`` and
   ``engine.step`` run after each micro-batch (no division by the
   accumulation steps: the normalisers already make micro-batch losses add up
   to the minibatch loss) and DeepSpeed steps the torch AdamW once per
   minibatch, clipping at ``optim.grad_clip``.
3. Precision: with ``model.dtype = bfloat16`` DeepSpeed's bf16 mode keeps the
   float32 master weights and optimizer state in ZeRO's partitions (what
   ``precision.py`` does in one process).
4. Checkpoints: ``checkpoints/step-N/`` holds the HF model (ZeRO-3 parameters
   gathered first), ``deepspeed/`` (``engine.save_checkpoint``: every rank's
   optimizer partition) and the trainer's ``trainer_state.pt`` (written by
   rank 0 after a barrier).
5. Clip probe (docs/definitions.md section 8): snapshots are engine
   checkpoints in a scratch folder (weights and optimizer partitions),
   restored with ``engine.load_checkpoint``.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import json
import math
import shutil
import tempfile
from pathlib import Path

import torch

from clipctl.config import Config
from clipctl.errors import ConfigError
from clipctl.trainer.comm import DistributedComm
from clipctl.trainer.engine import adamw, load_trained_model
from clipctl.trainer.policy import Policy

BUILTIN_STAGES = {"zero1": 1, "zero2": 2, "zero3": 3}
DEEPSPEED_CHOICES = "zero1|zero2|zero3|FILE.json"


def _remove_folders(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


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
    """The config handed to ``deepspeed.initialize`` (see the module docstring, point 2)."""
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


def check_launch(cfg, world: int, spec: str) -> dict:
    """Every config check of a DeepSpeed run (before any process starts, with ``--nproc``); the engine's config."""
    ds_config = deepspeed_config(spec, cfg, world)
    check_world(cfg, world, ds_config["zero_optimization"]["stage"])
    return ds_config


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


class DeepSpeedEngine:
    """The update engine of ``--deepspeed``: a DeepSpeed engine steps torch AdamW over ZeRO partitions."""

    def __init__(
        self, cfg: Config, path: str, device: torch.device, comm: DistributedComm, spec: str, ds_config: dict, log
    ):
        """``ds_config``: ``check_launch(cfg, comm.world_size, spec)``, checked before anything loads."""
        import deepspeed

        self.cfg, self.device, self.comm, self.spec = cfg, device, comm, spec
        self.ds_config = ds_config
        self.zero_stage = self.ds_config["zero_optimization"]["stage"]
        # Loaded in model.dtype: DeepSpeed's bf16 mode keeps the float32 masters (point 3).
        self.model = load_trained_model(cfg, path, cfg.model.dtype, device)
        optimizer, self.scheduler = adamw(list(self.model.parameters()), cfg.optim)
        if self.zero_stage == 3:
            from transformers.integrations import HfDeepSpeedConfig

            # While this object lives, generate() runs in lock-step across ranks
            # (synced_gpus): ZeRO-3 gathers parameters with collectives in every forward.
            self._hf_zero3 = HfDeepSpeedConfig(self.ds_config)
        self.policy = Policy(self.model, cfg)
        self.ds_engine, *_ = deepspeed.initialize(model=self.policy, optimizer=optimizer, config=self.ds_config)
        if self.zero_stage == 3 and cfg.train.lm_head == "fused":
            # The fused head reads the (tied) output embedding outside its module's forward.
            deepspeed.zero.register_external_parameter(self.policy, self.model.get_output_embeddings().weight)
        self.scratch = Path(comm.on_main(tempfile.mkdtemp, prefix="clipctl-deepspeed-"))
        if comm.is_main:
            atexit.register(shutil.rmtree, self.scratch, ignore_errors=True)
        self._snapshot_tags: list[str] = []
        self._snapshots_taken = 0
        log(f"deepspeed: ZeRO-{self.zero_stage} on {comm.world_size} processes, "
            f"{self.ds_config['gradient_accumulation_steps']} micro-batches per optimizer step per process")

    def layout(self) -> dict:
        """What ``trainer_state.pt`` and run.json record about the processes (resume needs the same)."""
        return {"deepspeed": self.spec, "world_size": self.comm.world_size}

    # ------------------------------------------------------------ one minibatch

    def forward(self, inputs: dict, targets: torch.Tensor, width: int, **head):
        # Every forward goes through the engine: ZeRO gathers parameters and tracks gradients in its hooks.
        return self.ds_engine(inputs, targets, width, **head)

    def zero_grad(self) -> None:
        pass  # the engine zeroes gradients after each optimizer step

    def backward(self, loss: torch.Tensor) -> None:
        # The loss is this rank's share of the global minibatch loss; DeepSpeed
        # averages gradients over ranks, so undo the 1/w (point 1).
        self.ds_engine.backward(loss * self.comm.world_size, scale_wrt_gas=False)
        self.ds_engine.step()  # applies the update only at the last micro-batch (point 2)

    def grad_norm(self) -> torch.Tensor:
        # The engine has already stepped at the last micro-batch (a non-finite
        # step then stops the run before anything of it is written; skipping
        # is not possible here, so check_world rejects train.on_nonfinite=skip).
        if not self.ds_engine.was_step_applied():
            raise RuntimeError("DeepSpeed did not step at the end of the minibatch; micro-batch count != accumulation steps")
        norm = self.ds_engine.get_global_grad_norm()
        return torch.as_tensor(math.nan if norm is None else float(norm), dtype=torch.float64)

    def step(self) -> None:
        self.scheduler.step()  # the update itself was applied in the last backward

    def skip(self) -> None:
        raise RuntimeError("train.on_nonfinite=skip is not supported with --deepspeed (check_world rejects it)")

    def weights_finite(self) -> bool:
        # A non-finite update stops the run before its checkpoint (on_nonfinite=skip
        # is rejected), and ZeRO's float32 partitions are spread over the ranks.
        return True

    # ------------------------------------------------------------ clip probe snapshots (point 5)

    def snapshot(self) -> dict:
        tag = f"snap-{self._snapshots_taken}"
        self._snapshots_taken += 1
        self.ds_engine.save_checkpoint(str(self.scratch), tag=tag, save_latest=False)
        self._snapshot_tags.append(tag)
        self.comm.barrier()
        # A probe needs at most two snapshots (after the shared first update, real end state).
        old, self._snapshot_tags = self._snapshot_tags[:-2], self._snapshot_tags[-2:]
        self.comm.on_main(_remove_folders, [self.scratch / t for t in old])
        return {"tag": tag, "scheduler": copy.deepcopy(self.scheduler.state_dict())}

    def restore(self, snap: dict) -> None:
        self.ds_engine.load_checkpoint(
            str(self.scratch), tag=snap["tag"], load_optimizer_states=True, load_lr_scheduler_states=False
        )
        self.scheduler.load_state_dict(copy.deepcopy(snap["scheduler"]))

    # ------------------------------------------------------------ checkpoints (point 4)

    def _full_params(self):
        """Context in which every rank holds the full parameters (ZeRO-3 gathers them)."""
        if self.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None)
        return contextlib.nullcontext()

    def save(self, folder: Path) -> dict:
        self.ds_engine.save_checkpoint(str(folder / "deepspeed"), tag="state", save_latest=False)
        with self._full_params():
            self.comm.on_main(self.model.save_pretrained, folder)
        self.comm.barrier()  # every rank's optimizer partition is on disk
        return {"scheduler": self.scheduler.state_dict(), "parallel": self.layout()}

    def load(self, folder: Path, state: dict) -> None:
        if state.get("parallel") != self.layout():
            raise ConfigError(
                f"checkpoint {folder} was not written by --deepspeed {self.spec} on "
                f"{self.comm.world_size} processes; resume with the settings the run was trained with"
            )
        self.ds_engine.load_checkpoint(
            str(Path(folder) / "deepspeed"), tag="state", load_optimizer_states=True, load_lr_scheduler_states=False
        )
        self.scheduler.load_state_dict(state["scheduler"])
