"""The update engine: what turns the trainer's losses into optimizer steps.

The trainer (``loop.py``) owns the algorithm: batches, losses, statistics, the
clip probe's replays, the checkpoint folder. The engine owns the weights and
everything that steps them: the forward with gradient, backward, clipping,
AdamW, the LR schedule, snapshots for the probe and its part of a checkpoint.
``TorchEngine`` is the single-process reference; ``deepspeed.DeepSpeedEngine``
implements the same protocol with ZeRO.

One minibatch, as the trainer drives it::

    engine.zero_grad()
    for each micro-batch: engine.backward(loss of engine.forward(...))
    norm = engine.grad_norm()            # clipped; the norm before clipping
    engine.step() if finite(loss, norm) else engine.skip()
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Protocol

import torch

from clipctl.config import Config, OptimConfig
from clipctl.models import load_model
from clipctl.trainer.policy import Policy
from clipctl.trainer.precision import enable_checkpointing, make_weights


class UpdateEngine(Protocol):
    model: torch.nn.Module  # the HF model: rollouts, evaluation and checkpoints read it
    device: torch.device
    scheduler: torch.optim.lr_scheduler.LRScheduler  # stepped once per attempted optimizer step

    def forward(self, inputs: dict, targets: torch.Tensor, width: int, **head):
        """``policy_logp_entropy`` of the model, through whatever must see every forward."""

    def zero_grad(self) -> None:
        """Start a minibatch's gradient."""

    def backward(self, loss: torch.Tensor) -> None:
        """Add a micro-batch loss's gradient to the minibatch's."""

    def grad_norm(self) -> torch.Tensor:
        """Clip the minibatch's gradient at ``optim.grad_clip``; its global norm before clipping, on the device."""

    def step(self) -> None:
        """Apply the minibatch's update and step the schedule."""

    def skip(self) -> None:
        """Drop the minibatch's gradient (not finite); the schedule still steps."""

    def weights_finite(self) -> bool:
        """False when a weight is NaN/inf (a checkpoint of them could not be resumed)."""

    def snapshot(self) -> object:
        """Weights, optimizer and schedule, kept until ``restore``; taking more does not change them."""

    def restore(self, snap: object) -> None:
        """Back to ``snap`` (it stays usable for another restore)."""

    def save(self, folder: Path) -> dict:
        """Write the HF model and the engine's files into ``folder``; its entries of ``trainer_state.pt``."""

    def load(self, folder: Path, state: dict) -> None:
        """Resume from a checkpoint ``folder`` and its ``trainer_state.pt`` entries (the model was loaded from it)."""


def load_trained_model(cfg: Config, path: str, dtype: str, device: torch.device) -> torch.nn.Module:
    """The model to train, on ``device``, in eval mode throughout (no dropout: exact replays)."""
    model = load_model(path, dtype).to(device)
    if cfg.train.gradient_checkpointing:
        enable_checkpointing(model)
    model.eval()
    return model


def adamw(params, o: OptimConfig) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """Torch AdamW over ``params`` and its linear warm-up schedule."""
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    warmup = o.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: min(1.0, (k + 1) / warmup) if warmup > 0 else 1.0
    )
    return optimizer, scheduler


class TorchEngine:
    """One process: torch AdamW, its schedule and, for a bf16 model, float32 master weights (``precision.py``)."""

    def __init__(self, cfg: Config, path: str, device: torch.device, log):
        self.cfg, self.device = cfg, device
        keeps_master = cfg.model.dtype != "float32" and cfg.optim.master_weights
        # Loaded in float32 when a float32 master copy will be kept; make_weights
        # then casts the model to model.dtype.
        self.model = load_trained_model(cfg, path, "float32" if keeps_master else cfg.model.dtype, device)
        self.weights = make_weights(self.model, cfg.model.dtype, cfg.optim.master_weights, log)
        self.policy = Policy(self.model, cfg)
        self.optimizer, self.scheduler = adamw(self.weights.params(), cfg.optim)

    def forward(self, inputs: dict, targets: torch.Tensor, width: int, **head):
        return self.policy(inputs, targets, width, **head)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def grad_norm(self) -> torch.Tensor:
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        return torch.nn.utils.clip_grad_norm_(self.weights.params(), max_norm)

    def step(self) -> None:
        self.optimizer.step()
        self.weights.after_step()
        self.scheduler.step()

    def skip(self) -> None:
        # The schedule counts attempted optimizer steps, so a skip does not shift it.
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def weights_finite(self) -> bool:
        return bool(torch.stack([torch.isfinite(p).all() for p in self.weights.params()]).all())

    def snapshot(self) -> dict:
        """Host copies of weights (and master weights), optimizer and scheduler state (deep: AdamW updates in place)."""
        return {
            "model": {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()},
            "master": self.weights.state(),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": copy.deepcopy(self.scheduler.state_dict()),
        }

    def restore(self, snap: dict) -> None:
        self.model.load_state_dict(snap["model"])
        if snap["master"]:
            self.weights.load_state(snap["master"])
        # load_state_dict keeps references to the given tensors: hand it a copy so
        # the snapshot survives the replay's in-place optimizer updates.
        self.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
        self.scheduler.load_state_dict(copy.deepcopy(snap["scheduler"]))

    def save(self, folder: Path) -> dict:
        self.model.save_pretrained(folder)  # in the model's own dtype
        self.weights.save(folder)
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load(self, folder: Path, state: dict) -> None:
        self.weights.load(folder)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
