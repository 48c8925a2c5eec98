"""Checkpoints: HF-format model and tokenizer plus the trainer state, written atomically.

``checkpoints/step-N/`` holds ``config.json``/``model.safetensors`` (and the
tokenizer files), loadable by any HF tool, in the model's dtype, and
``trainer_state.pt`` with the update engine's entries (optimizer, LR
scheduler), the entropy control and RNG states. The engine writes the model
and its own files (``UpdateEngine.save``): a low-precision model's float32
master weights are in ``master_weights.safetensors`` (``precision.py``), so a
resumed bf16 run is exact; under DeepSpeed the optimizer state lives in
``step-N/deepspeed/`` (``deepspeed.py``). The folder is assembled under a
hidden temp name and renamed, and ``trainer_state.pt`` is written last, so a
folder named ``step-N`` with that file is complete.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
import numpy as np
import torch

from clipctl.runlog import checkpoints


def rng_states() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])


def new_checkpoint_folder(run_dir: Path, step: int) -> Path:
    """A hidden temp folder next to the final ``checkpoints/step-N`` (same file system)."""
    folder = Path(run_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".step-{step}-", dir=folder))


def discard_partial(run_dir: Path) -> None:
    """Remove the temp folders of saves that did not finish (killed, or a full disk); only the run's writer calls it."""
    for leftover in (Path(run_dir) / "checkpoints").glob(".step-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def finish_checkpoint(run_dir: Path, step: int, tmp: Path, tokenizer, state: dict, keep_last: int) -> Path:
    """Add tokenizer and ``trainer_state.pt`` (last) to ``tmp``, rename it to ``step-N``, prune old ones."""
    folder = Path(run_dir) / "checkpoints"
    final = folder / f"step-{step}"
    tokenizer.save_pretrained(tmp)
    with open(tmp / "trainer_state.pt", "wb") as f:  # a full disk raises OSError(ENOSPC), not a torch message
        torch.save(state, f)
    if final.exists():  # a stale copy of this step from an interrupted attempt
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    discard_partial(run_dir)
    return final


def load_trainer_state(ckpt_dir: Path) -> dict:
    return torch.load(Path(ckpt_dir) / "trainer_state.pt", weights_only=False)
