"""Peak memory and time of token log-probs (with gradient) + entropy through the LM head.

Methods, each in a fresh subprocess so peak memory is its own:
  plain    full logits, log_softmax, gather, entropy from the softmax (the usual code)
  chunked  clipctl's previous path: full logits, then row-chunked log-prob/entropy
  fused    clipctl.algo.fused_logprobs_entropy, tiled torch path (impl="tiled"): never [N x V]
  triton   the same function's Triton kernels (impl="triton"; CUDA, or CPU under TRITON_INTERPRET=1)
  trl      TRL's ChunkedLogProbFunction (when trl is installed)
  liger    Liger-Kernel's fused linear cross-entropy (when liger-kernel is installed; CE loss
           only, no entropy: a lower bound on what a log-prob + entropy kernel can cost)

Prints time and peak memory per method and the ratios against TRL (or
against plain when TRL is absent). On CPU: one cold call, peak RSS. On CUDA
(`--device cuda`): inputs in `--dtype` (bf16 by default), warm-up calls
first, then the median of `--repeats` calls timed with CUDA events, peak from
torch.cuda.max_memory_allocated (inputs included). Usage:

    OMP_NUM_THREADS=1 .venv/bin/python bench/lm_head_memory.py --tokens 1024,4096,8192 --hidden 128
    python bench/lm_head_memory.py --device cuda --tokens 8192,16384,32768 --hidden 1536,3584 \
        --methods plain,fused,triton,trl,liger --max-plain-tokens 32768
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
METHODS = ("plain", "chunked", "fused", "triton", "trl", "liger")
OPTIONAL = {"trl": "trl", "liger": "liger_kernel"}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def head_call(method: str, h, w, y, budget_mb: int):
    """One forward + backward of ``method``: (logp, entropy or None); gradients land in h.grad, w.grad."""
    import torch

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
    elif method in ("fused", "triton"):
        from clipctl.algo import fused_logprobs_entropy

        impl = "tiled" if method == "fused" else "triton"
        logp, ent = fused_logprobs_entropy(h, w, y, budget_bytes=budget_mb * 2**20, impl=impl)
    elif method == "trl":
        from trl.kernels import ChunkedLogProbFunction

        logp, ent, *_ = ChunkedLogProbFunction.apply(h, w, None, y, 1.0, 32768, None, 1.0, ("entropy",))
        ent = ent.detach()
    elif method == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        loss = LigerFusedLinearCrossEntropyLoss(reduction="sum")(w, h, y)
        loss.backward()
        return -loss.detach(), None
    else:
        raise ValueError(method)
    logp.sum().backward()
    return logp, ent


def one(method: str, n_tokens: int, hidden: int, vocab: int, device: str, dtype: str = "float32",
        repeats: int = 5, budget_mb: int = 64) -> dict:
    import torch

    torch.manual_seed(0)
    dev = torch.device(device)
    dt = getattr(torch, dtype)
    h = (torch.randn(n_tokens, hidden, device=dev) / hidden**0.5).to(dt).requires_grad_(True)
    w = (torch.randn(vocab, hidden, device=dev) * 0.02).to(dt).requires_grad_(True)
    y = torch.randint(0, vocab, (n_tokens,), device=dev)
    out = {"method": method, "tokens": n_tokens, "hidden": hidden, "dtype": dtype}
    if dev.type == "cuda":
        for _ in range(2):  # warm-up: cuBLAS handles, Triton compilation and autotuning
            head_call(method, h, w, y, budget_mb)
            h.grad = w.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            logp, ent = head_call(method, h, w, y, budget_mb)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
            h.grad = w.grad = None
        out["seconds"] = sorted(times)[len(times) // 2]
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["device_name"] = torch.cuda.get_device_name(dev)
    else:
        base = rss_mb()
        t0 = time.perf_counter()
        logp, ent = head_call(method, h, w, y, budget_mb)
        out["seconds"] = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out.update(peak_rss_mb=peak, peak_over_inputs_mb=peak - base)
    out["checksum"] = float(logp.detach().float().sum() + (ent.float().sum() if ent is not None else 0.0))
    return out


def run_child(method, n, hidden, vocab, device, timeout, dtype="float32", repeats=5, budget_mb=64):
    cmd = [sys.executable, __file__, "--one", method, "--tokens", str(n), "--hidden", str(hidden),
           "--vocab", str(vocab), "--device", device, "--dtype", dtype, "--repeats", str(repeats),
           "--budget-mb", str(budget_mb)]
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
    ap.add_argument("--dtype", default=None, help="input dtype (default: bfloat16 on cuda, float32 on cpu)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls on cuda (median)")
    ap.add_argument("--budget-mb", type=int, default=64, help="fused/triton work budget (train.lm_head_budget_mb)")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--json", help="also write all rows to this file")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.one:
        print(json.dumps(one(args.one, int(args.tokens), int(args.hidden), args.vocab, args.device, dtype,
                             args.repeats, args.budget_mb)))
        return
    methods = args.methods.split(",")
    for name, module in OPTIONAL.items():
        if name in methods:
            try:
                __import__(module)
            except ImportError:
                methods.remove(name)
                print(f"{module} not importable: skipping {name}")
    if "triton" in methods and not args.device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
        methods.remove("triton")
        print("triton on cpu needs TRITON_INTERPRET=1 (interpreter: exactness only, far too slow to time)")
    rows = []
    for hidden in map(int, args.hidden.split(",")):
        for n in map(int, args.tokens.split(",")):
            for m in methods:
                if m in ("plain", "chunked") and n > args.max_plain_tokens:
                    rows.append({"method": m, "tokens": n, "hidden": hidden, "error": "skipped (--max-plain-tokens)"})
                    continue
                row = run_child(m, n, hidden, args.vocab, args.device, args.timeout, dtype, args.repeats,
                                args.budget_mb)
                rows.append(row)
                print(json.dumps(row), flush=True)
    ref_name = "trl" if "trl" in methods else "plain"
    where = next((r["device_name"] for r in rows if "device_name" in r), args.device)
    print(f"\nvocab {args.vocab}, {dtype}, device {where}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; "
          f"ratios are method / {ref_name} at the same size; also time and peak / plain")
    peak_key = "cuda_peak_mb" if args.device.startswith("cuda") else "peak_rss_mb"
    print(f"peak = {'torch.cuda.max_memory_allocated' if peak_key == 'cuda_peak_mb' else 'whole-process peak RSS'}")
    print(f"{'hidden':>6} {'tokens':>6} {'method':>8} {'seconds':>9} {'peak MB':>9} {'time x':>7} {'peak x':>7}"
          f" {'t/plain':>7} {'p/plain':>7}")

    def same(name, r):
        return next((q for q in rows if q["method"] == name and q["tokens"] == r["tokens"]
                     and q["hidden"] == r["hidden"] and "error" not in q), None)

    def ratio(r, q, key):
        return f"{r[key] / q[key]:.2f}" if q else "-"

    for r in rows:
        if "error" in r:
            print(f"{r['hidden']:>6} {r['tokens']:>6} {r['method']:>8}  {r['error']}")
            continue
        ref, plain = same(ref_name, r), same("plain", r)
        print(f"{r['hidden']:>6} {r['tokens']:>6} {r['method']:>8} {r['seconds']:>9.4f} {r[peak_key]:>9.0f}"
              f" {ratio(r, ref, 'seconds'):>7} {ratio(r, ref, peak_key):>7}"
              f" {ratio(r, plain, 'seconds'):>7} {ratio(r, plain, peak_key):>7}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
