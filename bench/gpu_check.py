"""One prepared GPU check: a Qwen2.5-1.5B-shaped policy with random weights, no hub.

Builds the model from its config (hidden 1,536, 28 layers, 12 heads, 2 KV
heads, intermediate 8,960, vocab 151,936, tied embeddings) with random
weights, saves it with the builtin:tiny tokenizer (GSM8K prompts tokenized by
it stand in for random token prompts; the random policy samples ids over the
whole 151,936 vocabulary), and runs a few clipctl training steps in this
process with the real trainer (hf engine, fused LM head). Prints rollout
tokens/s, update tokens/s, peak GPU memory and the step-time breakdown as
JSON lines, then the LM-head memory benchmark on the same device.

    python bench/gpu_check.py                      # on the GPU machine (scripts/gpu_check.sh)
    python bench/gpu_check.py --small --device cpu  # the same code path, tiny sizes, on a CPU
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
                 num_key_value_heads=2, vocab_size=151_936, max_position_embeddings=4096)
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, vocab_size=4096, max_position_embeddings=512)


def build_model(shape: dict, dtype, folder: Path) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from clipctl.models import load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path("builtin:tiny"))
    eos = tokenizer.eos_token_id
    config = Qwen2Config(**shape, tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny shapes (checks the script, not the GPU)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--skip-lm-head", action="store_true")
    args = ap.parse_args()

    import torch

    from clipctl.config import load_config
    from clipctl.runlog import read_run
    from clipctl.trainer import train

    on_gpu = args.device.startswith("cuda")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    shape = SMALL if args.small else QWEN_1_5B
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        folder = build_model(shape, dtype, Path(tmp) / "model")
        print(json.dumps({"event": "model_built", "seconds": round(time.perf_counter() - t0, 1),
                          "shape": shape, "dtype": str(dtype)}), flush=True)
        cfg = load_config("tiny-cpu", [
            f"model.path={folder}", f"model.dtype={'bfloat16' if on_gpu else 'float32'}", f"model.device={args.device}",
            f"train.steps={args.steps}", f"train.rollout_batch_prompts={args.prompts}",
            f"train.minibatch_prompts={args.prompts // 2}", f"rollout.n={args.n}",
            f"rollout.max_new_tokens={args.max_new_tokens}", "train.micro_batch_size=16",
            "log.clip_probe_every=0", "log.samples_every=0", "optim.lr=1e-6", f"train.save_every={args.steps}",
            "data.max_prompt_tokens=256",
        ])
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        result = train(cfg, out=Path(tmp) / "runs", name="gpu-check")
        steps = read_run(result.run_dir).steps
        for _, row in steps.iterrows():
            update_tokens = row["n_tokens"] * cfg.train.ppo_epochs
            print(json.dumps({
                "event": "step", "step": int(row["step"]), "response_tokens": int(row["n_tokens"]),
                "rollout_seconds": round(row["rollout_seconds"], 3),
                "update_seconds": round(row["update_seconds"], 3),
                "step_seconds": round(row["step_seconds"], 3),
                "other_seconds": round(row["step_seconds"] - row["rollout_seconds"] - row["update_seconds"], 3),
                "rollout_tokens_per_s": round(row["n_tokens"] / row["rollout_seconds"], 1),
                "update_tokens_per_s": round(update_tokens / row["update_seconds"], 1),
                "entropy": round(row["entropy"], 4),
            }), flush=True)
        summary = {"event": "summary", "device": args.device}
        if on_gpu:
            summary["gpu"] = torch.cuda.get_device_name()
            summary["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        print(json.dumps(summary), flush=True)
    if not args.skip_lm_head:
        tokens = "1024,4096" if args.small else "1024,4096,8192"
        bench = Path(__file__).with_name("lm_head_memory.py")
        subprocess.run([sys.executable, str(bench), "--device", args.device, "--tokens", tokens,
                        "--hidden", "128,1536", "--methods", "plain,fused,trl",
                        "--max-plain-tokens", "8192" if on_gpu else "1024",
                        *(["--vocab", "20000"] if args.small else [])], check=False)


if __name__ == "__main__":
    main()
