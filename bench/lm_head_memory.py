"""Peak memory and time of token log-probs (with gradient) + entropy through the LM head.

Methods, each in a fresh subprocess so peak RSS is its own:
  plain    full logits, log_softmax, gather, entropy from the softmax (the usual code)
  chunked  clipctl's previous path: full logits, then row-chunked log-prob/entropy
  fused    clipctl.algo.fused_logprobs_entropy: tiles of tokens x vocab, never [N x V]
  trl      TRL's ChunkedLogProbFunction (when trl is installed)

Prints one table per (hidden) with time and peak memory per method, and the
ratios against TRL (or against plain when TRL is absent). Usage:

    OMP_NUM_THREADS=1 .venv/bin/python bench/lm_head_memory.py --tokens 1024,4096,8192 --hidden 128
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

VOCAB = 151_936
METHODS = ("plain", "chunked", "fused", "trl")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one(method: str, n_tokens: int, hidden: int, vocab: int, device: str) -> dict:
    import torch

    torch.manual_seed(0)
    dev = torch.device(device)
    h = (torch.randn(n_tokens, hidden, device=dev) / hidden**0.5).requires_grad_(True)
    w = (torch.randn(vocab, hidden, device=dev) * 0.02).requires_grad_(True)
    y = torch.randint(0, vocab, (n_tokens,), device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = rss_mb()
    t0 = time.perf_counter()
    if method == "plain":
        logits = h @ w.T
        logp_all = torch.log_softmax(logits.float(), -1)
        logp = logp_all.gather(-1, y[:, None]).squeeze(-1)
        with torch.no_grad():
            ent = -(logp_all.exp() * logp_all).sum(-1)
    elif method == "chunked":
        from clipctl.algo import token_logprobs_and_entropy

        logits = h @ w.T
        logp, ent = token_logprobs_and_entropy(logits, y, chunk_rows=1024)
    elif method == "fused":
        from clipctl.algo import fused_logprobs_entropy

        logp, ent = fused_logprobs_entropy(h, w, y)
    elif method == "trl":
        from trl.kernels import ChunkedLogProbFunction

        logp, ent, *_ = ChunkedLogProbFunction.apply(h, w, None, y, 1.0, 32768, None, 1.0, ("entropy",))
        ent = ent.detach()
    else:
        raise ValueError(method)
    logp.sum().backward()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"method": method, "tokens": n_tokens, "hidden": hidden, "seconds": seconds,
           "peak_rss_mb": peak, "peak_over_inputs_mb": peak - base,
           "checksum": float(logp.detach().sum() + ent.sum())}
    if dev.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_child(method, n, hidden, vocab, device, timeout):
    cmd = [sys.executable, __file__, "--one", method, "--tokens", str(n), "--hidden", str(hidden),
           "--vocab", str(vocab), "--device", device]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    except subprocess.TimeoutExpired:
        return {"method": method, "tokens": n, "hidden": hidden, "error": f"timeout {timeout}s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"method": method, "tokens": n, "hidden": hidden, "error": last[:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="1024,4096,8192")
    ap.add_argument("--hidden", default="128,1536")
    ap.add_argument("--vocab", type=int, default=VOCAB)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--max-plain-tokens", type=int, default=4096,
                    help="skip plain/chunked above this many tokens (they need ~2.5 GB per 1k tokens)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--json", help="also write all rows to this file")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, int(args.tokens), int(args.hidden), args.vocab, args.device)))
        return
    methods = args.methods.split(",")
    if "trl" in methods:
        try:
            import trl  # noqa: F401
        except ImportError:
            methods.remove("trl")
            print("trl not installed: skipping it (pip install trl)")
    rows = []
    for hidden in map(int, args.hidden.split(",")):
        for n in map(int, args.tokens.split(",")):
            for m in methods:
                if m in ("plain", "chunked") and n > args.max_plain_tokens:
                    rows.append({"method": m, "tokens": n, "hidden": hidden, "error": "skipped (--max-plain-tokens)"})
                    continue
                row = run_child(m, n, hidden, args.vocab, args.device, args.timeout)
                rows.append(row)
                print(json.dumps(row), flush=True)
    ref_name = "trl" if "trl" in methods else "plain"
    print(f"\nvocab {args.vocab}, device {args.device}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; "
          f"ratios are method / {ref_name} at the same size")
    peak_key = "cuda_peak_mb" if args.device.startswith("cuda") else "peak_rss_mb"
    print(f"peak = {'torch.cuda.max_memory_allocated' if peak_key == 'cuda_peak_mb' else 'whole-process peak RSS'}")
    print(f"{'hidden':>6} {'tokens':>6} {'method':>8} {'seconds':>9} {'peak MB':>9} {'time x':>7} {'peak x':>7}")
    for r in rows:
        ref = next((q for q in rows if q["method"] == ref_name and q["tokens"] == r["tokens"]
                    and q["hidden"] == r["hidden"] and "error" not in q), None)
        if "error" in r:
            print(f"{r['hidden']:>6} {r['tokens']:>6} {r['method']:>8}  {r['error']}")
            continue
        tx = f"{r['seconds'] / ref['seconds']:.2f}" if ref else "-"
        px = f"{r[peak_key] / ref[peak_key]:.2f}" if ref else "-"
        print(f"{r['hidden']:>6} {r['tokens']:>6} {r['method']:>8} {r['seconds']:>9.2f} {r[peak_key]:>9.0f} {tx:>7} {px:>7}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
