"""Mixed precision: float32 master weights for a low-precision policy.

A bfloat16 model stepped by a plain AdamW loses every update smaller than
bf16's resolution (a relative ~4e-3): at the paper's lr 5e-7 almost nothing
moves. Real trainers (Megatron, DeepSpeed's bf16 mode) keep a float32 copy:

1. The model's parameters stay in ``model.dtype``; forward, backward and
   generation run on them (one copy of the weights in bf16, fast rollouts).
2. ``MasterWeights`` holds a float32 copy of every parameter. A hook after each
   parameter's gradient accumulation adds the bf16 gradient into the float32
   master gradient and frees the bf16 one, so micro-batch gradients are summed
   in float32 and at most one bf16 gradient is alive at a time. Memory per
   parameter: 2 (bf16) + 4 (master) + 4 (master grad) + 8 (AdamW) bytes.
3. AdamW, gradient clipping and the scheduler act on the master copy; after
   each optimizer step the master weights are rounded into the model.
4. Checkpoints store the master weights (``master_weights.safetensors``) next
   to the HF export in ``model.dtype``, so a resumed run is exact.

With ``model.dtype = float32`` (or ``optim.master_weights = false``) the model's
own parameters are what the optimizer steps: ``PlainWeights``.
"""

from __future__ import annotations

from pathlib import Path

import torch

MASTER_FILE = "master_weights.safetensors"


class PlainWeights:
    """The optimizer steps the model's own parameters (float32 training, or an explicit pure-bf16 choice)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def params(self) -> list[torch.Tensor]:
        return list(self.model.parameters())

    def after_step(self) -> None:
        pass

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def save(self, folder: Path) -> None:
        pass

    def load(self, folder: Path) -> None:
        pass


class MasterWeights(PlainWeights):
    """Float32 master copy of a low-precision model's parameters (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype):
        """``model`` as loaded (float32 for the best master copy); it is cast to ``dtype`` here."""
        super().__init__(model)
        self.master = [p.detach().to(torch.float32, copy=True) for p in model.parameters()]
        model.to(dtype)
        self.names, self.model_params = zip(*model.named_parameters())  # unique: tied weights appear once
        for p, m in zip(self.model_params, self.master):
            p.register_post_accumulate_grad_hook(self._hook(m))
        self.after_step()

    @staticmethod
    def _hook(master: torch.Tensor):
        def accumulate(p: torch.Tensor) -> None:
            # float32 accumulation of micro-batch gradients; the bf16 gradient is freed at once.
            if master.grad is None:
                master.grad = p.grad.to(torch.float32)
            else:
                master.grad.add_(p.grad)
            p.grad = None

        return accumulate

    def params(self) -> list[torch.Tensor]:
        return self.master

    @torch.no_grad()
    def after_step(self) -> None:
        torch._foreach_copy_(list(self.model_params), self.master)

    def state(self) -> dict[str, torch.Tensor]:
        return {n: m.detach().to("cpu", copy=True) for n, m in zip(self.names, self.master)}

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for n, m in zip(self.names, self.master):
            m.copy_(state[n])
        self.after_step()

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file({n: t.contiguous() for n, t in self.state().items()}, str(Path(folder) / MASTER_FILE))

    def load(self, folder: Path) -> None:
        from safetensors.torch import load_file

        path = Path(folder) / MASTER_FILE
        if not path.is_file():
            from clipctl.errors import RunDirError

            raise RunDirError(
                f"checkpoint {folder} has no {MASTER_FILE}: it was not written with float32 master weights; "
                f"resume it with the clipctl version and optim.master_weights setting that wrote it"
            )
        self.load_state(load_file(str(path)))


def make_weights(model: torch.nn.Module, dtype: str, master_weights: bool, log) -> PlainWeights:
    """The weights AdamW steps for ``model`` (loaded in float32), which ends up in ``dtype``.

    A low-precision model gets float32 master weights unless they are turned
    off, which warns: that is never a silent default.
    """
    from clipctl.models import DTYPES

    if dtype == "float32":
        return PlainWeights(model)
    if master_weights:
        return MasterWeights(model, DTYPES[dtype])
    log(
        f"warning: optim.master_weights=false with model.dtype={dtype}: AdamW steps the {dtype} weights "
        f"directly and updates below their resolution (relative ~4e-3 for bfloat16) are lost"
    )
    model.to(DTYPES[dtype])
    return PlainWeights(model)


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Turn on transformers' per-layer activation checkpointing (non-reentrant)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class checkpointed_layers:
    """During a forward with gradient, let HF decoder layers recompute activations in backward.

    transformers checkpoints a ``GradientCheckpointingLayer`` only while that
    module is in training mode; the trainer keeps the model in eval mode (no
    dropout, exact replays). So only the layer objects themselves, not their
    submodules, are flagged as training for the duration of the forward.
    """

    def __init__(self, model: torch.nn.Module, enabled: bool):
        self.layers = []
        if enabled:
            from transformers.modeling_layers import GradientCheckpointingLayer

            self.layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]

    def __enter__(self):
        for m in self.layers:
            m.training = True
        return self

    def __exit__(self, *exc):
        for m in self.layers:
            m.training = False
        return False
