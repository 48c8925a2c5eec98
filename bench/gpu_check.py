"""One prepared GPU check: Qwen2.5-shaped policies with random weights, no hub.

Parts (each prints JSON lines as it goes and runs under its own time limit
when started from scripts/gpu_check.sh):

1. ``train``: a Qwen2.5-1.5B-shaped policy (hidden 1,536, 28 layers, vocab
   151,936, tied embeddings), bf16 with float32 master weights, trained for a
   few real clipctl steps (hf engine, fused LM head, token-budget micro-batches)
   at 32 prompts x 8 x 256 new tokens. Each step prints as it ends: rollout and
   update tokens/s, update MFU, peak GPU memory.
2. ``7b``: a Qwen2.5-7B-shaped policy (hidden 3,584, 28 layers, vocab 152,064,
   untied) with gradient checkpointing, one small step: does it fit one GPU,
   and at what peak memory.
3. ``lm-head``: the LM-head benchmark (bench/lm_head_memory.py) on the GPU.

Update MFU = 6 x parameters x ``update_tokens`` / ``update_seconds`` / peak,
with peak = 790 TFLOP/s (measured dense bf16 on one H200); parameters count the
tied embedding once (as the LM head's matmul) and attention's own FLOPs are
left out, so MFU is slightly understated for long sequences.

    python bench/gpu_check.py                          # part 1 on the GPU (scripts/gpu_check.sh runs all)
    python bench/gpu_check.py --part 7b
    python bench/gpu_check.py --small --device cpu      # the same code path, tiny sizes, on a CPU
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QWEN_1_5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151_936, max_position_embeddings=4096, tie_word_embeddings=True)
QWEN_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152_064, max_position_embeddings=4096, tie_word_embeddings=False)
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, vocab_size=4096, max_position_embeddings=512, tie_word_embeddings=True)
H200_PEAK_FLOPS = 790e12


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def build_model(shape: dict, folder: Path) -> tuple[Path, int]:
    """A random-weight Qwen2 of ``shape`` saved in bf16 with the builtin:tiny tokenizer; its parameter count."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from clipctl.models import load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path("builtin:tiny"))
    eos = tokenizer.eos_token_id
    config = Qwen2Config(**shape, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return folder, n_params


def train_part(args, shape: dict, overrides: list[str], label: str) -> None:
    import torch

    from clipctl.config import load_config
    from clipctl.trainer import train

    on_gpu = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        folder, n_params = build_model(shape, Path(tmp) / "model")
        emit(event="model_built", part=label, seconds=round(time.perf_counter() - t0, 1), params=n_params, shape=shape)
        cfg = load_config("tiny-cpu", [
            f"model.path={folder}", f"model.dtype={'bfloat16' if on_gpu else 'float32'}", f"model.device={args.device}",
            f"train.steps={args.steps}", f"train.rollout_batch_prompts={args.prompts}",
            f"train.minibatch_prompts={max(1, args.prompts // 2)}", f"rollout.n={args.n}",
            f"rollout.max_new_tokens={args.max_new_tokens}", "log.clip_probe_every=0", "log.samples_every=0",
            "optim.lr=5e-7", f"train.save_every={10**6}", "data.max_prompt_tokens=256", *overrides,
        ])
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()

        def on_step(m: dict) -> None:
            flops = 6.0 * n_params * m["update_tokens"]
            row = {
                "event": "step", "part": label, "step": int(m["step"]), "response_tokens": int(m["n_tokens"]),
                "update_tokens": int(m["update_tokens"]),
                "rollout_seconds": round(m["rollout_seconds"], 2), "update_seconds": round(m["update_seconds"], 2),
                "step_seconds": round(m["step_seconds"], 2),
                "rollout_tokens_per_s": round(m["n_tokens"] / m["rollout_seconds"], 1),
                "update_tokens_per_s": round(m["update_tokens"] / m["update_seconds"], 1),
                "update_mfu": round(flops / m["update_seconds"] / H200_PEAK_FLOPS, 4) if on_gpu else None,
                "entropy": round(m["entropy"], 4), "grad_norm": round(m["grad_norm"], 4),
            }
            if on_gpu:
                row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            emit(**row)

        # train.save_every is huge, but the last step always saves: a checkpoint of the
        # bf16 export + float32 master weights, measured as part of the run.
        train(cfg, out=Path(tmp) / "runs", name=label, on_step=on_step)
        summary = {"event": "summary", "part": label, "device": args.device}
        if on_gpu:
            summary["gpu"] = torch.cuda.get_device_name()
            summary["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        emit(**summary)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["train", "7b", "lm-head"], default="train")
    ap.add_argument("--small", action="store_true", help="tiny shapes (checks the script, not the GPU)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--micro-batch-tokens", type=int, default=16384, help="token budget per pass (0 = 16 rows)")
    args = ap.parse_args()

    if args.part == "lm-head":
        on_gpu = args.device.startswith("cuda")
        bench = Path(__file__).with_name("lm_head_memory.py")
        tokens = "1024,4096" if args.small else "8192,32768"
        hidden = "128" if args.small else "1536,3584"
        subprocess.run([sys.executable, str(bench), "--device", args.device, "--tokens", tokens, "--hidden", hidden,
                        "--methods", "plain,fused,trl", "--max-plain-tokens", "32768" if on_gpu else "1024",
                        *(["--vocab", "20000"] if args.small else [])], check=False)
        return
    micro = [f"train.micro_batch_tokens={args.micro_batch_tokens}"] if args.micro_batch_tokens else []
    if args.part == "train":
        train_part(args, SMALL if args.small else QWEN_1_5B, micro, "qwen2.5-1.5b-shape")
    else:
        # One step of 8 prompts x 4 x 128 tokens: the question is memory, not speed.
        args.steps, args.prompts, args.n = 1, 8, 4
        args.max_new_tokens = min(args.max_new_tokens, 128)
        train_part(args, SMALL if args.small else QWEN_7B, [*micro, "train.gradient_checkpointing=true"],
                   "qwen2.5-7b-shape")


if __name__ == "__main__":
    main()
