"""The fused LM head as Triton kernels: the GPU path of ``fused_logprobs_entropy``.

Same quantities, arguments and returns as :mod:`clipctl.algo.fused_head` (see
its docstring for the formulas); only the work is laid out for a GPU:

- **Forward**, one kernel: program ``(i, j)`` takes token block ``i`` and the
  ``j``-th slice of the vocabulary, computes each ``[BLOCK_N x BLOCK_V]``
  logit tile with ``tl.dot`` (float32 accumulation, also for bf16/fp16 inputs)
  and folds it into running per-token sums without writing it anywhere:
  online log-sum-exp ``(m, s)``, the entropy sum ``u = sum e (x - m)``, the
  target logit, and for ``with_expected_q`` the same two sums with weights
  ``e^2``. A few ``[splits x tokens]`` partials are then merged in torch
  (the vocabulary is split so that short inputs still fill the GPU).
- **Backward**, per slice of ``vocab_chunk`` columns: a kernel recomputes the
  logit tiles in float32 and writes ``d loss / d logits`` for the slice (input
  dtype, ``[tokens x vocab_chunk]``, the only large buffer; its size follows
  ``budget_bytes``) and per-block bias-gradient partials; two matmuls
  (cuBLAS on the GPU) then give that slice's rows of the weight gradient (all
  tokens in one product, so no cross-slice accumulation in bf16) and add its
  share of the hidden-state gradient into a float32 accumulator.

Triton is optional: this module is imported only when the Triton path is
used. Kernels are compiled for CUDA tensors; CPU tensors run in Triton's
interpreter (exactness tests; slow, small shapes only), which needs
``TRITON_INTERPRET=1`` in the environment before triton is first imported.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

import torch

import triton
import triton.language as tl

DEFAULT_BUDGET_BYTES = 64 * 2**20
# Backward slices are multiples of this many vocabulary columns (>= every BLOCK_V used).
CHUNK_ALIGN = 256


@triton.jit
def _logit_tile(
    H, W, rows, cols, row_ok, col_ok, D, stride_hn, stride_hd, stride_wv, stride_wd,
    DOT_F32: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``h[rows] @ W[cols]^T`` as a float32 ``[BLOCK_N x BLOCK_V]`` tile (masked entries 0)."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < D
        a = tl.load(H + rows[:, None] * stride_hn + ks[None, :] * stride_hd,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(W + cols[:, None] * stride_wv + ks[None, :] * stride_wd,
                    mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        if DOT_F32:  # the interpreter's tl.dot mis-multiplies bf16 operands (triton 3.9)
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if IEEE:
            acc = tl.dot(a, tl.trans(b), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, tl.trans(b), acc)
    return acc


def _fwd_kernel(
    H, W, B, Y, PART,
    N, V, D,
    stride_hn, stride_hd, stride_wv, stride_wd,
    tau,
    HAS_BIAS: tl.constexpr, WITH_EQ: tl.constexpr, DOT_F32: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    n_split = tl.num_programs(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    y = tl.load(Y + rows, mask=row_ok, other=-1)
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    u = tl.zeros((BLOCK_N,), tl.float32)
    s2 = tl.zeros((BLOCK_N,), tl.float32)
    u2 = tl.zeros((BLOCK_N,), tl.float32)
    xy = tl.zeros((BLOCK_N,), tl.float32)
    n_tiles = tl.cdiv(V, BLOCK_V)
    per_split = tl.cdiv(n_tiles, n_split)
    t_begin = pid_s * per_split
    t_end = tl.minimum(t_begin + per_split, n_tiles)
    for t in range(t_begin, t_end):
        cols = t * BLOCK_V + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        acc = _logit_tile(H, W, rows, cols, row_ok, col_ok, D, stride_hn, stride_hd, stride_wv, stride_wd,
                          DOT_F32, IEEE, BLOCK_N, BLOCK_V, BLOCK_K)
        if HAS_BIAS:
            acc += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        x = tl.where(col_ok[None, :], acc / tau, float("-inf"))
        new_m = tl.maximum(m, tl.max(x, 1))
        scale = tl.exp(m - new_m)  # 0 before the first tile (m = -inf)
        dm = tl.where(s > 0, m - new_m, 0.0)  # s == 0: nothing to carry (avoids 0 * -inf)
        shifted = tl.where(col_ok[None, :], x - new_m[:, None], 0.0)
        e = tl.where(col_ok[None, :], tl.exp(shifted), 0.0)
        es = e * shifted
        u = scale * (u + s * dm) + tl.sum(es, 1)
        s = s * scale + tl.sum(e, 1)
        if WITH_EQ:
            scale2 = scale * scale
            u2 = scale2 * (u2 + s2 * dm) + tl.sum(e * es, 1)
            s2 = s2 * scale2 + tl.sum(e * e, 1)
        m = new_m
        xy += tl.sum(tl.where(y[:, None] == cols[None, :], x, 0.0), 1)
    # PART: [6, n_split, N] float32
    base = PART + pid_s * N + rows
    stride = n_split * N
    tl.store(base, m, mask=row_ok)
    tl.store(base + stride, s, mask=row_ok)
    tl.store(base + 2 * stride, u, mask=row_ok)
    tl.store(base + 3 * stride, xy, mask=row_ok)
    if WITH_EQ:
        tl.store(base + 4 * stride, s2, mask=row_ok)
        tl.store(base + 5 * stride, u2, mask=row_ok)


def _bwd_kernel(
    H, W, B, Y, LSE, MEANX, GLP, GENT, GX, GB,
    N, V, D, v0, vc,
    stride_hn, stride_hd, stride_wv, stride_wd, stride_gx,
    tau,
    HAS_BIAS: tl.constexpr, ENT: tl.constexpr, DOT_F32: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    local = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    cols = v0 + local
    col_ok = (local < vc) & (cols < V)
    acc = _logit_tile(H, W, rows, cols, row_ok, col_ok, D, stride_hn, stride_hd, stride_wv, stride_wd,
                      DOT_F32, IEEE, BLOCK_N, BLOCK_V, BLOCK_K)
    if HAS_BIAS:
        acc += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    x = acc / tau
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    g = tl.load(GLP + rows, mask=row_ok, other=0.0)
    y = tl.load(Y + rows, mask=row_ok, other=-1)
    p = tl.exp(x - lse[:, None])
    # d(g logp)/dx_a = g (1[a = y] - p_a)
    gx = tl.where(y[:, None] == cols[None, :], g[:, None], 0.0) - p * g[:, None]
    if ENT:
        ge = tl.load(GENT + rows, mask=row_ok, other=0.0)
        mx = tl.load(MEANX + rows, mask=row_ok, other=0.0)
        # d H / dx_a = -p_a (x_a - sum_b p_b x_b)
        gx -= ge[:, None] * p * (x - mx[:, None])
    gx = tl.where(row_ok[:, None] & col_ok[None, :], gx / tau, 0.0)
    ok = row_ok[:, None] & (local < vc)[None, :]
    tl.store(GX + rows[:, None] * stride_gx + local[None, :], gx.to(GX.dtype.element_ty), mask=ok)
    if HAS_BIAS:
        tl.store(GB + pid_n * vc + local, tl.sum(gx, 0), mask=local < vc)


_LOCK = threading.Lock()
_KERNELS: list = []


def interpreting() -> bool:
    """Triton's interpreter mode (``TRITON_INTERPRET=1`` before triton was imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# (BLOCK_N, BLOCK_V, BLOCK_K, num_warps, num_stages); Hopper/Ampere-friendly shapes.
_GPU_CONFIGS = [(128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4)]
_INTERP_BLOCKS = (16, 32, 16)


def _kernels(interpret: bool):
    """``(fwd, bwd)``: compiled for CUDA tensors, or run by the interpreter for CPU tensors.

    Triton's own helpers (``tl.zeros``, ...) are built in one mode when triton
    is imported, so the interpreter works only in a process that set
    ``TRITON_INTERPRET=1`` before importing triton (the tests use a subprocess).
    """
    if interpret != interpreting():
        raise RuntimeError(
            "triton fused head: CPU tensors need Triton's interpreter (TRITON_INTERPRET=1 set before "
            "triton is imported) and CUDA tensors need it unset"
        )
    with _LOCK:
        if not _KERNELS:
            fwd, bwd = triton.jit(_fwd_kernel), triton.jit(_bwd_kernel)
            if not interpret and os.environ.get("CLIPCTL_TRITON_AUTOTUNE", "1") != "0":
                configs = [
                    triton.Config({"BLOCK_N": bn, "BLOCK_V": bv, "BLOCK_K": bk}, num_warps=w, num_stages=st)
                    for bn, bv, bk, w, st in _GPU_CONFIGS
                ]
                fwd = triton.autotune(configs=configs, key=["D", "HAS_BIAS", "WITH_EQ", "IEEE"])(fwd)
                bwd = triton.autotune(configs=configs, key=["D", "HAS_BIAS", "ENT", "IEEE"])(bwd)
            _KERNELS.extend((fwd, bwd))
        return _KERNELS[0], _KERNELS[1]


def _launch_opts(interpret: bool, blocks: Optional[tuple]) -> dict:
    if interpret:
        bn, bv, bk = blocks or _INTERP_BLOCKS
        return {"BLOCK_N": bn, "BLOCK_V": bv, "BLOCK_K": bk}
    if os.environ.get("CLIPCTL_TRITON_AUTOTUNE", "1") == "0" or blocks:
        bn, bv, bk = blocks or _GPU_CONFIGS[0][:3]
        return {"BLOCK_N": bn, "BLOCK_V": bv, "BLOCK_K": bk, "num_warps": 8, "num_stages": 3}
    return {}  # autotuned


def _n_split(n: int, vocab: int, device: torch.device, interpret: bool) -> int:
    """Vocabulary slices for the forward: enough programs to fill the GPU (~4 per SM)."""
    if interpret:
        return max(1, min(3, vocab // 64))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    row_blocks = triton.cdiv(n, 128)
    return max(1, min(triton.cdiv(4 * sms, row_blocks), triton.cdiv(vocab, 512)))


def _mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with a float32 result, float32 accumulation also for bf16/fp16 operands."""
    if a.dtype in (torch.bfloat16, torch.float16) and a.is_cuda:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError):
            pass
    return torch.mm(a.float(), b.float())


def _mm_out(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``a @ b`` in ``dtype`` (cuBLAS accumulates half types in float32 on the GPU)."""
    if a.is_cuda and a.dtype == dtype:
        return torch.mm(a, b)
    return torch.mm(a.float(), b.float()).to(dtype)


def _flags(hidden: torch.Tensor, interpret: bool) -> dict:
    fp32 = hidden.dtype == torch.float32
    # The interpreter's tl.dot mis-multiplies bf16 operands (triton 3.9): upcast there.
    # On the GPU, fp32 inputs use IEEE dot unless torch itself allows TF32 matmuls.
    ieee = fp32 and not interpret and not torch.backends.cuda.matmul.allow_tf32
    return {"DOT_F32": interpret, "IEEE": ieee}


def vocab_chunk(n_tokens: int, vocab: int, elem_bytes: int, budget_bytes: int, align: int = CHUNK_ALIGN) -> int:
    """Columns per backward slice: the ``[tokens x chunk]`` gradient buffer fits ``budget_bytes``.

    A multiple of ``align`` columns, at least ``align``, at most the vocabulary rounded up.
    """
    cols = budget_bytes // max(1, n_tokens * elem_bytes)
    cols = max(align, cols // align * align)
    return min(cols, triton.cdiv(vocab, align) * align)


class _TritonFusedLogProbEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, tau, budget_bytes, entropy_grad, with_eq, blocks, n_split):
        n, d = hidden.shape
        vocab = weight.shape[0]
        interpret = not hidden.is_cuda
        fwd, _ = _kernels(interpret)
        dev = hidden.device
        splits = n_split or _n_split(n, vocab, dev, interpret)
        part = torch.zeros(6, splits, n, dtype=torch.float32, device=dev)
        part[0].fill_(float("-inf"))
        has_bias = bias is not None
        b_arg = bias if has_bias else hidden  # unused pointer when HAS_BIAS is False
        opts = _launch_opts(interpret, blocks)
        if n > 0:
            fwd[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), splits)](
                hidden, weight, b_arg, targets, part,
                n, vocab, d,
                hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
                float(tau),
                HAS_BIAS=has_bias, WITH_EQ=bool(with_eq), **_flags(hidden, interpret), **opts,
            )
        m, s, u, xy, s2, u2 = part.unbind(0)
        big_m = m.max(0).values
        scale = torch.exp(m - big_m)
        used = s > 0
        shift = torch.where(used, m - big_m, torch.zeros_like(m))
        s_tot = (s * scale).sum(0)
        u_tot = torch.where(used, scale * (u + s * shift), torch.zeros_like(u)).sum(0)
        lse = big_m + torch.log(s_tot)
        logp = xy.sum(0) - lse
        ent = torch.log(s_tot) - u_tot / s_tot
        mean_x = big_m + u_tot / s_tot
        if with_eq:
            sc2 = scale * scale
            s2_tot = (s2 * sc2).sum(0)
            u2_tot = torch.where(used, sc2 * (u2 + s2 * shift), torch.zeros_like(u2)).sum(0)
            eq = (u2_tot - s2_tot * (u_tot / s_tot)) / (s_tot * s_tot)
        else:
            eq = torch.empty(0, dtype=torch.float32, device=dev)
        ctx.save_for_backward(hidden, weight, targets, lse, mean_x, *([bias] if has_bias else []))
        ctx.cfg = (float(tau), int(budget_bytes), bool(entropy_grad), blocks)
        ctx.mark_non_differentiable(eq)
        return logp, ent, eq

    @staticmethod
    def backward(ctx, grad_logp, grad_ent, grad_eq):
        hidden, weight, targets, lse, mean_x, *maybe_bias = ctx.saved_tensors
        bias = maybe_bias[0] if maybe_bias else None
        tau, budget_bytes, entropy_grad, blocks = ctx.cfg
        n, d = hidden.shape
        vocab = weight.shape[0]
        dev = hidden.device
        interpret = not hidden.is_cuda
        _, bwd = _kernels(interpret)
        use_ent = entropy_grad and grad_ent is not None
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        g_lp = (grad_logp.float().contiguous() if grad_logp is not None
                else torch.zeros(n, dtype=torch.float32, device=dev))
        g_ent = grad_ent.float().contiguous() if use_ent else g_lp
        grad_h = torch.zeros(n, d, dtype=torch.float32, device=dev) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=dev) if (need_b and bias is not None) else None
        opts = _launch_opts(interpret, blocks)
        flags = _flags(hidden, interpret)
        align = blocks[1] if blocks else CHUNK_ALIGN  # tests: slices as narrow as one BLOCK_V
        chunk = vocab_chunk(n, vocab, hidden.element_size(), budget_bytes, align)
        gx_buf = torch.empty(n, chunk, dtype=hidden.dtype, device=dev)
        max_row_blocks = triton.cdiv(n, 16)
        gb_buf = torch.empty(max_row_blocks * chunk, dtype=torch.float32, device=dev) if grad_b is not None else g_lp
        b_arg = bias if bias is not None else hidden
        if n == 0:
            return (grad_h.to(hidden.dtype) if need_h else None, grad_w,
                    grad_b.to(bias.dtype) if grad_b is not None else None) + (None,) * 7
        row_blocks = {}

        def grid(meta):
            row_blocks["n"] = triton.cdiv(n, meta["BLOCK_N"])
            return (row_blocks["n"], triton.cdiv(vc, meta["BLOCK_V"]))

        for v0 in range(0, vocab, chunk):
            vc = min(chunk, vocab - v0)
            gx = gx_buf[:, :vc]
            bwd[grid](
                hidden, weight, b_arg, targets, lse, mean_x, g_lp, g_ent, gx_buf, gb_buf,
                n, vocab, d, v0, vc,
                hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1), gx_buf.stride(0),
                tau,
                HAS_BIAS=grad_b is not None, ENT=use_ent, **flags, **opts,
            )
            if grad_b is not None:
                grad_b[v0 : v0 + vc] = gb_buf[: row_blocks["n"] * vc].view(row_blocks["n"], vc).sum(0)
            if need_w:
                grad_w[v0 : v0 + vc] = _mm_out(gx.t(), hidden, weight.dtype)
            if need_h:
                grad_h += _mm_f32(gx, weight[v0 : v0 + vc])
        return (
            grad_h.to(hidden.dtype) if need_h else None,
            grad_w,
            grad_b.to(bias.dtype) if grad_b is not None else None,
            None, None, None, None, None, None, None,
        )


def supports(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> bool:
    """Whether the kernels take these inputs: fp32/bf16/fp16, hidden and weight (and bias) of one dtype."""
    ok = hidden.dtype in (torch.float32, torch.bfloat16, torch.float16) and weight.dtype == hidden.dtype
    return ok and (bias is None or bias.dtype == hidden.dtype) and hidden.device == weight.device


# (BLOCK_N, BLOCK_V, BLOCK_K) and forward vocab splits to use instead of the defaults (tests only)
TEST_TILING: Optional[tuple[tuple[int, int, int], int]] = None


def fused_flat(hidden, weight, bias, targets, temperature, budget_bytes, entropy_grad, with_expected_q):
    """``(logp, entropy, expected_q)`` for ``[N, H]`` hidden and ``[N]`` targets (autograd function).

    Called by ``fused_logprobs_entropy`` (which reshapes and detaches); same
    meaning as its tiled path. ``budget_bytes`` sizes the backward's
    ``[tokens x vocab_chunk]`` gradient buffer (at least 256 columns).
    """
    if not supports(hidden, weight, bias):
        raise TypeError(
            f"triton fused head takes fp32/bf16/fp16 hidden and weight of one dtype, got "
            f"{hidden.dtype}/{weight.dtype}{'' if bias is None else '/' + str(bias.dtype)}"
        )
    blocks, n_split = TEST_TILING or (None, None)
    return _TritonFusedLogProbEntropy.apply(
        hidden, weight, bias, targets.contiguous(), float(temperature), int(budget_bytes), bool(entropy_grad),
        bool(with_expected_q), blocks, n_split,
    )
