"""Model and tokenizer loading, and the built-in tiny model.

``builtin:tiny`` is a 2-layer Qwen2 (hidden 128, head_dim 32, vocab 1024) with a
byte-level BPE tokenizer trained on the shipped GSM8K train text, briefly
pre-trained as a causal LM on "Question: ... Answer: ..." text so that its
next-token distributions are peaked. It is built on first use (about a minute
on one core), deterministic from its seed, and cached under
``$CLIPCTL_CACHE`` (default ``~/.cache/clipctl``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from clipctl.errors import ModelError

BUILTIN_PREFIX = "builtin:"
EOS = "<|endoftext|>"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class TinySpec:
    """Everything that determines the built-in tiny model (its cache key)."""

    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 2
    num_attention_heads: int = 4  # head_dim 32: vLLM's CPU attention rejects 16
    num_key_value_heads: int = 2
    seq_len: int = 128
    batch_size: int = 16
    pretrain_steps: int = 600
    lr: float = 3e-3
    seed: int = 1234
    version: int = 1

    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"tiny-{digest}"


def cache_dir() -> Path:
    return Path(os.environ.get("CLIPCTL_CACHE", Path.home() / ".cache" / "clipctl"))


def _gsm8k_texts() -> list[str]:
    from clipctl.data import read_jsonl, resource_path

    rows = read_jsonl(resource_path("gsm8k", "train.jsonl"))
    # Calculator annotations <<a*b=c>> are noise for a 1M-parameter model.
    return [f"Question: {r['question']}\nAnswer: {re.sub(r'<<.*?>>', '', r['answer'])}" for r in rows]


def _train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with Qwen2's exact normalizer and pre-tokenizer.

    transformers reloads a ``qwen2`` folder as ``Qwen2Tokenizer``, which rebuilds
    that pipeline; training with another one would encode differently after a
    reload, silently. So the trained vocab/merges are handed to Qwen2Tokenizer.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return Qwen2Tokenizer(vocab=model["vocab"], merges=merges, eos_token=EOS, pad_token=EOS, unk_token=EOS)


def build_tiny(spec: TinySpec, out_dir: Path, log: Optional[Callable[[str], None]] = None) -> Path:
    """Build the tiny model into ``out_dir`` (atomically: temp folder, then rename)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    log = log or (lambda msg: None)
    start = time.time()
    threads = torch.get_num_threads()
    rng_state = torch.get_rng_state()
    torch.set_num_threads(1)  # determinism and speed: small matmuls lose on 2 shared cores
    try:
        texts = _gsm8k_texts()
        tokenizer = _train_tokenizer(texts, spec.vocab_size)
        log(f"tokenizer trained ({len(tokenizer)} tokens) in {time.time() - start:.0f}s")
        eos_id = tokenizer.convert_tokens_to_ids(EOS)
        ids: list[int] = []
        for batch_start in range(0, len(texts), 512):
            for row in tokenizer(texts[batch_start : batch_start + 512])["input_ids"]:
                ids.extend(row + [eos_id])
        stream = torch.tensor(ids, dtype=torch.long)
        n_seq = len(stream) // spec.seq_len
        sequences = stream[: n_seq * spec.seq_len].view(n_seq, spec.seq_len)

        torch.manual_seed(spec.seed)
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.num_hidden_layers,
            num_attention_heads=spec.num_attention_heads,
            num_key_value_heads=spec.num_key_value_heads,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
        )
        model = Qwen2ForCausalLM(config)
        optim = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)
        gen = torch.Generator().manual_seed(spec.seed)
        warmup = 30
        model.train()
        for step in range(spec.pretrain_steps):
            lr_scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / spec.pretrain_steps))
            for group in optim.param_groups:
                group["lr"] = spec.lr * max(lr_scale, 0.05)
            idx = torch.randint(0, n_seq, (spec.batch_size,), generator=gen)
            batch = sequences[idx]
            loss = model(input_ids=batch, labels=batch).loss
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            if step % 100 == 0 or step == spec.pretrain_steps - 1:
                log(f"pre-training step {step + 1}/{spec.pretrain_steps}: loss {loss.item():.3f}")
        model.eval()
        model.generation_config.pad_token_id = eos_id
        model.generation_config.eos_token_id = eos_id

        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "clipctl_tiny.json").write_text(
            json.dumps({"spec": asdict(spec), "final_loss": loss.item(), "build_seconds": time.time() - start}, indent=2)
        )
        if out_dir.exists():  # another process finished first; theirs is identical
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out_dir)
        log(f"tiny model built in {time.time() - start:.0f}s -> {out_dir}")
        return out_dir
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng_state)


def resolve_model_path(path: str, log: Optional[Callable[[str], None]] = None) -> str:
    """Local folder for ``builtin:*`` (built on first use); other paths unchanged."""
    if not path.startswith(BUILTIN_PREFIX):
        return path
    name = path[len(BUILTIN_PREFIX) :]
    if name != "tiny":
        raise ModelError(f"unknown built-in model '{path}'; valid: builtin:tiny")
    spec = TinySpec()
    folder = cache_dir() / spec.key()
    if not (folder / "config.json").is_file():
        (log or (lambda m: None))("building builtin:tiny (first use; about a minute on one core)")
        build_tiny(spec, folder, log)
    return str(folder)


def _quiet_transformers() -> None:
    """No per-file progress bars or advisory warnings in clipctl's own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    _quiet_transformers()

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # transformers raises many types for a bad path
        raise ModelError(f"cannot load tokenizer from '{path}': {_first_line(e)}; pass a local model folder or an HF id") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(path: str, dtype: str = "float32"):
    from transformers import AutoModelForCausalLM

    _quiet_transformers()

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    except Exception as e:
        raise ModelError(f"cannot load model from '{path}': {_first_line(e)}; pass a local model folder or an HF id") from None
    return model


def resolve_device(setting: str) -> torch.device:
    """``auto`` -> the current CUDA device when there is one, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"model.device={setting!r} but no CUDA device is visible; use model.device=cpu or auto")
    return torch.device(setting)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
