"""Checkpoints: HF-format model and tokenizer plus the trainer state, written atomically and checked on resume.

``checkpoints/step-N/`` holds ``config.json``/``model.safetensors`` (and the
tokenizer files), loadable by any HF tool, in the model's dtype, and
``trainer_state.pt`` with the update engine's entries (optimizer, LR
scheduler), the entropy control and RNG states. The engine writes the model
and its own files (``UpdateEngine.save``): a low-precision model's float32
master weights are in ``master_weights.safetensors`` (``precision.py``), so a
resumed bf16 run is exact; under DeepSpeed the optimizer state lives in
``step-N/deepspeed/`` (``deepspeed.py``).

The folder is assembled under a hidden temp name (removed at once if the save
fails or is interrupted) and renamed. Its last file is ``manifest.json``: the
size and SHA-256 of every other file, and the run's config with its
fingerprint. A folder whose files do not match its manifest is not a
checkpoint (``valid_checkpoints``): a resume skips it, and refuses a run.json
whose config differs from the checkpoint's (``config_drift``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from clipctl.runlog import CKPT_RE, atomic_write_json, checkpoints

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# What a resume may change (docs/run-directory.md); the fingerprint leaves them out.
RESUMABLE_KEYS = ("train.steps",)


def rng_states() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])


def flat_config(config: dict) -> dict:
    """``{"section.key": value}`` of a ``config_to_dict`` tree, without the keys a resume may change."""
    flat = {f"{section}.{key}": value for section, values in config.items() for key, value in values.items()}
    return {k: v for k, v in flat.items() if k not in RESUMABLE_KEYS}


def config_fingerprint(config: dict) -> str:
    """SHA-256 of the canonical JSON of ``flat_config(config)``."""
    text = json.dumps(flat_config(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _show(value) -> str:
    """A value as run.json spells it; comparing these spellings makes a tuple equal its JSON list."""
    return json.dumps(value, default=str)


def config_drift(stored: dict, checkpoint: dict) -> list[str]:
    """``key old -> new`` for each key (outside ``RESUMABLE_KEYS``) where ``stored`` differs from ``checkpoint``."""
    a, b = flat_config(checkpoint), flat_config(stored)
    keys = sorted(set(a) | set(b))
    return [f"{k} {_show(a.get(k))} -> {_show(b.get(k))}" for k in keys if _show(a.get(k)) != _show(b.get(k))]


def new_checkpoint_folder(run_dir: Path, step: int) -> Path:
    """A hidden temp folder next to the final ``checkpoints/step-N`` (same file system)."""
    folder = Path(run_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".step-{step}-", dir=folder))


def discard_partial(run_dir: Path) -> None:
    """Remove the temp folders of saves that did not finish (killed, or a full disk); only the run's writer calls it."""
    for leftover in (Path(run_dir) / "checkpoints").glob(".step-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, step: int, config: dict) -> None:
    """``manifest.json`` (written last, atomically): every file's size and hash, the config and its fingerprint."""
    files = {name: {"bytes": (folder / name).stat().st_size, "sha256": _sha256(folder / name)} for name in _files(folder)}
    atomic_write_json(folder / MANIFEST, {
        "format": MANIFEST_FORMAT, "step": step, "config_sha256": config_fingerprint(config), "config": config,
        "files": files,
    })


def finish_checkpoint(run_dir: Path, step: int, tmp: Path, tokenizer, state: dict, config: dict, keep_last: int) -> Path:
    """Add tokenizer, ``trainer_state.pt`` and the manifest (last) to ``tmp``, rename it to ``step-N``, prune old ones."""
    folder = Path(run_dir) / "checkpoints"
    final = folder / f"step-{step}"
    tokenizer.save_pretrained(tmp)
    with open(tmp / "trainer_state.pt", "wb") as f:  # a full disk raises OSError(ENOSPC), not a torch message
        torch.save(state, f)
    write_manifest(tmp, step, config)
    if final.exists():  # a stale copy of this step from an interrupted attempt
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    discard_partial(run_dir)
    return final


def checkpoint_problem(ckpt_dir: Path) -> Optional[str]:
    """Why ``ckpt_dir`` is not a usable checkpoint (``model.safetensors is 0 bytes, manifest says 1234``), or None."""
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / MANIFEST
    if not path.is_file():
        return None if _legacy_loads(ckpt_dir) else "trainer_state.pt cannot be read and there is no manifest.json"
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} cannot be read ({type(e).__name__})"
    for name, want in files.items():
        p = ckpt_dir / name
        if not p.is_file():
            return f"{name} is missing, manifest says {want['bytes']} bytes"
        size = p.stat().st_size
        if size != want["bytes"]:
            return f"{name} is {size} bytes, manifest says {want['bytes']}"
        digest = _sha256(p)
        if digest != want["sha256"]:
            return f"{name} has SHA-256 {digest[:12]}..., manifest says {want['sha256'][:12]}..."
    return None


def _legacy_loads(ckpt_dir: Path) -> bool:
    """A checkpoint from before manifests counts if its ``trainer_state.pt`` loads (nothing else can be checked)."""
    try:
        load_trainer_state(ckpt_dir)
    except Exception:  # torch.load raises EOFError, RuntimeError, UnpicklingError... on a damaged file
        return False
    return True


def valid_checkpoints(run_dir: Path) -> tuple[list[tuple[int, Path]], list[tuple[int, str]]]:
    """``(valid, skipped)``: the ``step-N`` folders that match their manifest, oldest first, and ``(N, why)`` of the rest.

    Unlike ``runlog.checkpoints`` (a cheap listing for readers) this reads and
    hashes every file, so a resume never loads a damaged model or tokenizer.
    """
    folder = Path(run_dir) / "checkpoints"
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := CKPT_RE.match(p.name))) if folder.is_dir() else []
    valid, skipped = [], []
    for step, path in found:
        why = checkpoint_problem(path)
        if why is None:
            valid.append((step, path))
        else:
            skipped.append((step, why))
    return valid, skipped


def checkpoint_config(ckpt_dir: Path) -> Optional[dict]:
    """The config recorded in a checkpoint's manifest (None for one written before manifests)."""
    path = Path(ckpt_dir) / MANIFEST
    return json.loads(path.read_text())["config"] if path.is_file() else None


def load_trainer_state(ckpt_dir: Path) -> dict:
    return torch.load(Path(ckpt_dir) / "trainer_state.pt", weights_only=False)
