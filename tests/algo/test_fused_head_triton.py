"""The Triton fused LM head (algo/fused_head_triton.py) against a float64 reference, on the CPU.

Triton's interpreter runs the kernels on CPU tensors, but only in a process
that set ``TRITON_INTERPRET=1`` before triton was imported, so every case runs
in one subprocess (this file run as a script) and the tests check its report.
Shapes are small and ragged (tokens and vocab not multiples of the tiles,
several vocab splits in the forward, several vocab slices in the backward):
the interpreter is slow. Skipped, with the reason, only when triton does not
import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.abspath(__file__)

# name: (dtype, lead shape, vocab, hidden, tau, bias, entropy_grad, with_eq, blocks, n_split, budget_bytes)
CASES = {
    "fp32_ragged_bias_tau": ("float32", (37,), 301, 24, 0.7, True, False, True, (16, 32, 16), 3, 37 * 4 * 64),
    "fp32_entropy_grad": ("float32", (3, 9), 150, 20, 1.3, False, True, True, (16, 32, 16), 2, 27 * 4 * 32),
    "fp32_empty_splits": ("float32", (19,), 97, 16, 1.0, True, False, False, (16, 32, 16), 7, 1 << 20),
    "bf16_ragged_bias_tau": ("bfloat16", (37,), 301, 24, 0.7, True, False, True, (16, 32, 16), 3, 37 * 2 * 64),
    "bf16_entropy_grad": ("bfloat16", (2, 11), 203, 40, 0.6, True, True, True, (16, 32, 16), 2, 22 * 2 * 96),
    "fp16_no_bias": ("float16", (21,), 77, 16, 1.0, False, False, False, (16, 32, 16), 1, 1 << 20),
    "fp32_default_tiles": ("float32", (40,), 520, 32, 0.9, True, True, True, None, None, 1),
}

# Tolerances against float64 on the same (rounded) inputs: values relative to
# their max, gradients as relative norms. bf16/fp16 gradients are returned in
# the input dtype (as autograd would), hence the looser bound.
TOL = {"float32": (2e-6, 2e-6), "bfloat16": (2e-6, 1.5e-2), "float16": (2e-6, 4e-3)}


def reference(h, w, b, y, tau):
    """float64 full-logits log-prob, entropy and E_pi[Q] (docs/definitions.md section 5, Theorem 1 centre)."""
    logits = h @ w.T
    if b is not None:
        logits = logits + b
    lsm = torch.log_softmax(logits / tau, -1)
    p = lsm.exp()
    logp = lsm.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    ent = -(p * lsm).sum(-1)
    eq = (p * p * (lsm + ent.unsqueeze(-1))).sum(-1)
    return logp, ent, eq


def run_case(name: str) -> dict:
    """Runs in the interpreter subprocess: errors of the kernel against the float64 reference."""
    from clipctl.algo import fused_head_triton, fused_logprobs_entropy
    from clipctl.algo.fused_head import resolve_impl

    dt, lead, vocab, hid, tau, use_bias, ent_grad, with_eq, blocks, n_split, budget = CASES[name]
    dtype = getattr(torch, dt)
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    h = (torch.randn(*lead, hid, generator=g) * 1.5).to(dtype).requires_grad_(True)
    w = (torch.randn(vocab, hid, generator=g) * 0.4).to(dtype).requires_grad_(True)
    b = (torch.randn(vocab, generator=g)).to(dtype).requires_grad_(True) if use_bias else None
    y = torch.randint(0, vocab, lead, generator=g)
    coef = torch.randn(lead, generator=g, dtype=torch.float64)
    coef_e = torch.randn(lead, generator=g, dtype=torch.float64)
    kw = dict(bias=b, temperature=tau, budget_bytes=budget, entropy_grad=ent_grad, impl="triton")
    fused_head_triton.TEST_TILING = (blocks, n_split) if blocks else None
    logp, ent, eq = fused_logprobs_entropy(h, w, y, with_expected_q=True, **kw)
    params = [t for t in (h, w, b) if t is not None]
    refs = [t.detach().double().requires_grad_(True) for t in params]
    rb = refs[2] if use_bias else None
    r_logp, r_ent, r_eq = reference(refs[0], refs[1], rb, y, tau)

    def rel(a, r):
        return ((a.double() - r).abs().max() / r.abs().max().clamp(min=1e-12)).item()

    loss = (logp.double() * coef).sum() + ((ent.double() * coef_e).sum() if ent_grad else 0.0)
    r_loss = (r_logp * coef).sum() + ((r_ent * coef_e).sum() if ent_grad else 0.0)
    got = torch.autograd.grad(loss, params)
    plain = fused_logprobs_entropy(h, w, y, **kw)
    want = torch.autograd.grad(r_loss, refs)
    return {
        "dtypes": [str(t.dtype) for t in (logp, ent, eq)],
        "grad_dtypes": [str(a.dtype) for a in got],
        "shapes": [list(t.shape) for t in (logp, ent, eq)],
        "ent_requires_grad": ent.requires_grad,
        "logp": rel(logp, r_logp),
        "entropy": rel(ent, r_ent),
        "expected_q": rel(eq, r_eq),
        "grads": {nm: ((a.double() - r).norm() / r.norm().clamp(min=1e-12)).item()
                  for nm, a, r in zip(("hidden", "weight", "bias"), got, want)},
        "cpu_auto_impl": resolve_impl(h, w, b),
        "with_eq_changes_nothing": bool(torch.equal(logp, plain[0]) and torch.equal(ent, plain[1])),
    }


@pytest.fixture(scope="module")
def report() -> dict:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        msg = f"triton not importable ({exc}); pip install triton to run the kernel's exactness tests"
        print(msg)
        pytest.skip(msg)
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "CLIPCTL_FUSED_HEAD": ""}
    proc = subprocess.run([sys.executable, HERE, *CASES], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_float64_reference(report, name):
    r = report[name]
    assert "error" not in r, r.get("error")
    dt = CASES[name][0]
    val_tol, grad_tol = TOL[dt]
    assert r["dtypes"] == ["torch.float32"] * 3
    assert r["grad_dtypes"] == [f"torch.{dt}"] * len(r["grad_dtypes"])
    assert r["shapes"] == [list(CASES[name][1])] * 3
    assert r["ent_requires_grad"] == CASES[name][6]
    for key in ("logp", "entropy", "expected_q"):
        assert r[key] < val_tol, (key, r[key])
    for key, err in r["grads"].items():
        assert err < grad_tol, (key, err)
    assert r["with_eq_changes_nothing"]


def test_cpu_tensors_take_the_tiled_path_by_default(report):
    # On CPU, impl="auto" never picks the kernels (train.lm_head = "fused" stays tiled there).
    assert {r["cpu_auto_impl"] for r in report.values()} == {"tiled"}


def test_no_triton_import_for_cpu_use():
    code = (
        "import sys, torch; from clipctl.algo import fused_logprobs_entropy as f; "
        "h = torch.randn(3, 4); w = torch.randn(5, 4); f(h, w, torch.tensor([0, 1, 4])); "
        "print('triton' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CLIPCTL_FUSED_HEAD": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_impl_names_are_checked():
    from clipctl.algo import fused_logprobs_entropy

    with pytest.raises(ValueError, match="impl"):
        fused_logprobs_entropy(torch.randn(2, 3), torch.randn(4, 3), torch.tensor([0, 1]), impl="cuda")


if __name__ == "__main__":
    results = {}
    for case in sys.argv[1:]:
        try:
            results[case] = run_case(case)
        except Exception as exc:  # reported per case, so one failure does not hide the others
            import traceback

            results[case] = {"error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-2000:]}"}
    print(json.dumps(results))
