"""Rollout tokens/s of the hf engine: HF ``generate`` (before) vs the static-cache decoder (after), issue 14.

A Qwen2.5-1.5B-shaped policy (hidden 1,536, 28 layers, vocab 151,936) with
random weights in bf16 (no hub, no tokenizer: random prompt ids), 32 prompts
x 8 samples x 256 new tokens, temperature 1. Decoders, in this process one
after the other, each with a warm-up call (compilation) and the median of
``--repeats`` timed calls:

  generate        HF generate + RowSeededSampler (the engine before issue 14)
  static-eager    static KV cache, device-side row-seeded sampling, eager forward
  static-compile  the same, one-token forward under torch.compile (the CUDA default)
  static-graphs   the same with torch.compile mode="reduce-overhead" (CUDA graphs)

All decoders must sample the same tokens: the script checks that the
responses of every decoder equal generate's and says so.

    python bench/rollout_hf_decoders.py                                  # GPU: the issue's shape
    OMP_NUM_THREADS=1 .venv/bin/python bench/rollout_hf_decoders.py --small --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

QWEN_1_5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151_936, max_position_embeddings=4096)
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, vocab_size=4096, max_position_embeddings=512)
DECODERS = {"generate": ("generate", None), "static-eager": ("static", "0"),
            "static-compile": ("static", "default"), "static-graphs": ("static", "reduce-overhead")}


class IdTokenizer:
    """Just what HFEngine needs: eos/pad ids and a decode that does not need a vocabulary."""

    eos_token_id = pad_token_id = 0

    def batch_decode(self, seqs, skip_special_tokens=True):
        return [" ".join(map(str, s)) for s in seqs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="a 2-layer model and a few short rows (CPU check)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decoders", default=",".join(DECODERS))
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from clipctl.rollout import SamplingParams
    from clipctl.rollout.hf import HFEngine

    if args.small:
        args.prompts, args.n, args.prompt_len, args.max_new_tokens = 4, 2, 12, 16
    shape = SMALL if args.small else QWEN_1_5B
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(0)
    config = Qwen2Config(**shape, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = Qwen2ForCausalLM(config).to(dev, dtype).eval()
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, shape["vocab_size"], (args.prompt_len - (i % 5),), generator=gen).tolist()
               for i in range(args.prompts)]
    params = SamplingParams(args.n, 1.0, 1.0, args.max_new_tokens, seed=1234)
    rows, reference = [], None
    for name in args.decoders.split(","):
        decode, compile_mode = DECODERS[name]
        if decode == "static" and compile_mode != "0" and dev.type != "cuda":
            print(f"{name}: skipped (compiles on cuda only)")
            continue
        if compile_mode is not None:
            os.environ["CLIPCTL_HF_COMPILE"] = compile_mode
        engine = HFEngine(model, IdTokenizer(), decode=decode)
        start = time.perf_counter()
        batch = engine.generate(prompts, params)  # warm-up (compilation)
        warm = time.perf_counter() - start
        runs = []
        for _ in range(args.repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            batch = engine.generate(prompts, params)
            runs.append((int(batch.response_mask.sum()), time.perf_counter() - start))
        if reference is None:
            reference = batch
        same = bool(torch.equal(batch.response_ids, reference.response_ids))
        row = {"decoder": name, "tokens_per_s": statistics.median(t / s for t, s in runs),
               "tokens": runs[0][0], "warmup_s": warm, "same_tokens_as_first": same,
               "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{args.prompts} prompts x {args.n} samples x {args.max_new_tokens} new tokens, "
          f"{'small' if args.small else 'Qwen2.5-1.5B'} shape, {dtype}, {rows[0]['device'] if rows else args.device}")
    base = rows[0]["tokens_per_s"] if rows else None
    print(f"{'decoder':>15} {'tokens/s':>10} {'x first':>8} {'warm-up s':>9} {'same':>5}")
    for r in rows:
        print(f"{r['decoder']:>15} {r['tokens_per_s']:>10.0f} {r['tokens_per_s'] / base:>8.2f} "
              f"{r['warmup_s']:>9.1f} {str(r['same_tokens_as_first']):>5}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
