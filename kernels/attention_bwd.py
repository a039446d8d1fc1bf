"""Backward of the fused attention (FlashAttention-2 style recomputation), and the autotune set-up
shared with the forward in kernels/attention.py.

With P = softmax(S), S = scale * Q K^T, and the saved per-row log-sum-exp L (natural log):

    P    = exp(S - L)                    recomputed block by block, never stored
    dV   = P^T dO
    dP   = dO V^T
    dS   = P * (dP - delta),  delta = rowsum(dO * O)      (the preprocess kernel)
    dQ   = scale * dS K,      dK = scale * dS^T Q

Three kernels: `_attn_bwd_preprocess_kernel` (delta, and L * log2(e), both into buffers padded to a
multiple of PAD_ROWS rows per head), `_attn_bwd_dkdv_kernel` (one program per key block and kv head;
with GQA it loops over the query heads of its group, so the group's dK/dV is summed in registers,
deterministically, without atomics), `_attn_bwd_dq_kernel` (one program per query block and head).
Causal loops are split into masked diagonal blocks and unmasked off-diagonal blocks. Exponentials use
exp2 with log2(e) folded into the scale. Rows with no key (causal, T > S) carry L = +inf, so their
P, dQ and contributions to dK/dV are exactly 0; so do the padding rows.
"""
import functools
import os

import torch
import triton
import triton.language as tl
import triton.testing

from ._launch import FastLaunch, launch_planned
from ._runtime import cdiv, interpreting, next_power_of_2

LOG2E = 1.4426950408889634


def seq_bucket(n):
    """Autotune key for a sequence length: the next power of two (at least 16)."""
    return max(16, next_power_of_2(max(int(n), 1)))


@functools.lru_cache(maxsize=4096)
def plan(B, H, H_kv, T, S, D, dtype):
    """Per-shape launch constants, computed once: (meta constexprs, T, S, B*H and B*H_kv buckets).

    The B*H buckets are in the autotune key: a config tuned on a small test shape (few programs,
    where small blocks win on occupancy) must not be reused for a large batch of the same length.
    """
    # fp32 inputs keep IEEE fp32 dots (tf32 would lose ~1e-3 and miss the fp32 tolerance).
    meta = dict(HEAD_DIM=D, BLOCK_D=next_power_of_2(D),
                DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32")
    return meta, (seq_bucket(T), seq_bucket(S), next_power_of_2(B * H), next_power_of_2(B * H_kv))


def _configs(shapes):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) tuples -> triton.Config list.

    Under the interpreter a single small config (unequal blocks, so the causal split is exercised
    with BLOCK_M != BLOCK_N) keeps the CPU tests fast and skips tuning.
    """
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


# False (or KERNELS_AUTOTUNE=0): every bucket takes its table's first config, no tuning (GPU tests).
TUNE = os.environ.get("KERNELS_AUTOTUNE", "1") != "0"
# Buckets with T_BUCKET * S_BUCKET * BH_BUCKET below this are latency-bound: first config, untuned.
TUNE_MIN_WORK = 1 << 24


def _head_dim_key(block_d):
    """The tables' key for a padded head dim."""
    return 64 if block_d <= 64 else 128 if block_d <= 128 else 256


def _prune_by_head_dim(table):
    """An early_config_prune hook choosing the config list by padded head dim (Hopper, 228 KB smem).

    Small problems (T * S * B * H below TUNE_MIN_WORK) are latency-bound: they take the table's first
    entry untuned, which saves compiling every candidate for each small shape seen in tests and decoding.
    """
    def prune(configs, named_args, **kwargs):
        key = _head_dim_key(kwargs.get("BLOCK_D", named_args.get("BLOCK_D")))
        q = named_args.get("Q")
        wanted = FP32_TABLE[key] if q is not None and q.element_size() == 4 else table[key]
        if not TUNE or named_args["T_BUCKET"] * named_args["S_BUCKET"] * named_args["BH_BUCKET"] < TUNE_MIN_WORK:
            wanted = wanted[:1]
        kept = [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in wanted]
        kept = kept or configs[:1]
        _PRUNED_TO[0] = len(kept)  # read by _tune_bench, which the autotuner calls right after this
        return kept
    return prune


_PRUNED_TO = [0]


# Hopper-pruned candidates per padded head dim: (BLOCK_M, BLOCK_N, num_warps, num_stages). The first
# entry is the untuned default: what the autotuner picked on the FlashAttention grid (bf16, B*T = 16384,
# T >= 2048) on an H200 by tools/gpu_attention.py (2026-11-27). Candidates that never won there and measured slow in
# that script's config sweep (D128, T4096) are left out, which also saves their compiles:
#   fwd:  (128, 128, 8, 3) 437 TFLOP/s, (128, 64, 8, 3) 421, (64, 64, 4, 3) 405, (128, 64, 4, 3) 233
#   bwd with dK/dV at (64, 128, 8, 3) 2.36 ms (the pick), (64, 64, 4, 3) 3.16, (64, 128, 4, 3) 5.41,
#       (128, 64, 8, 3) 5.89, (128, 128, 8, 2) 6.28
#   bwd with dQ at (128, 64, 8, 3) 2.36 ms (the pick), (128, 128, 8, 2) 2.49, (64, 64, 4, 3) 2.60,
#       (128, 64, 4, 4) 3.78
# Small grids (few B*H, short T) can prefer the smaller blocks, hence (64, 64, 4, 3) everywhere.
FWD_TABLE = {
    64: [(64, 64, 4, 3), (128, 64, 4, 3), (128, 128, 8, 3)],
    128: [(128, 128, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3)],
    256: [(64, 64, 4, 2), (128, 64, 8, 2), (64, 64, 4, 3)],
}
# Backward: the inner (looped) block may also be 32 with a deeper pipeline, as in Triton's tutorial.
# dK/dV re-measured on 2026-11-27 after its loop lost its row masks (tools/gpu_attention_bwd.py, H200,
# whole backward, bf16 causal, B*T = 16384): D64 T1024 (64, 64, 4, 3) 0.664 ms, (64, 64, 4, 2) 0.682,
# (32, 128, 4, 4) 0.692; D128 T1024 / T8192 (64, 128, 8, 3) 0.699 / 3.488 ms, (64, 128, 8, 2)
# 0.713 / 3.663, (32, 128, 8, 3) 0.727 / 3.757 (ptxas: 255 registers and 2-16 bytes of spills for the
# 64-row tiles, none for the 32-row ones).
DKDV_TABLE = {
    64: [(64, 64, 4, 3), (64, 64, 4, 2), (32, 128, 4, 4)],
    128: [(64, 128, 8, 3), (64, 128, 8, 2), (32, 128, 8, 3)],
    256: [(64, 64, 4, 2), (64, 128, 8, 2), (64, 64, 8, 2)],
}
DQ_TABLE = {
    64: [(64, 64, 4, 3), (128, 64, 8, 3), (128, 64, 4, 3)],
    128: [(128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3)],
    256: [(64, 64, 4, 2), (128, 64, 8, 2), (64, 64, 8, 2)],
}
# fp32 inputs (a correctness path: IEEE fp32 dots) take small tiles in every kernel: the 16-bit tables'
# tiles, twice the bytes, overflow the 227 KB of shared memory (dK/dV at (64, 128, 8, 2) asked 384 KB).
FP32_TABLE = {64: [(32, 64, 4, 2)], 128: [(32, 64, 4, 2)], 256: [(32, 32, 4, 1)]}
INTERPRET_FWD = [(32, 16, 4, 1)]
INTERPRET_DKDV = [(16, 32, 4, 1)]
INTERPRET_DQ = [(32, 16, 4, 1)]
# Lengths and head counts vary between calls: no recompile for each divisibility-by-16 pattern or == 1.
NO_SPECIALIZE = ["n_heads", "n_kv_heads", "seqlen_q", "seqlen_k", "T_BUCKET", "S_BUCKET", "BH_BUCKET", "KV_BUCKET"]
# The autotuner adds the tensors' dtypes. BH_BUCKET / KV_BUCKET: next powers of two of B * H and B * H_kv.
TUNE_KEY = ["T_BUCKET", "S_BUCKET", "BH_BUCKET", "KV_BUCKET", "BLOCK_D", "CAUSAL"]


def autotuned(kernel, table, interpret_shapes, extra_key=()):
    """Wrap a jit kernel in triton.autotune over the table's configs (one fixed config when interpreting)."""
    key = TUNE_KEY + list(extra_key)
    if interpreting():
        return triton.autotune(configs=_configs(interpret_shapes), key=key)(kernel)
    shapes = sorted({s for t in (table, FP32_TABLE) for rows in t.values() for s in rows})
    return triton.autotune(configs=_configs(shapes), key=key, do_bench=_tune_bench,
                           prune_configs_by={"early_config_prune": _prune_by_head_dim(table)})(kernel)


def _tune_bench(fn, quantiles):
    """The autotuner's timer: nothing to compare when pruning left one config (the autotuner would still
    time it, ~50 ms per bucket); else shorter than do_bench's 25 + 100 ms default, first call only."""
    if _PRUNED_TO[0] == 1:
        return [0.0] * len(quantiles) if quantiles else 0.0
    return triton.testing.do_bench(fn, warmup=10, rep=40, quantiles=quantiles)


@triton.jit
def load_tile(ptrs, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, CHECK_ROWS: tl.constexpr,
              EVEN_D: tl.constexpr):
    """Load a (rows, BLOCK_D) tile, zero-filling rows >= n_rows (if CHECK_ROWS) and columns >= HEAD_DIM."""
    if CHECK_ROWS:
        if EVEN_D:
            x = tl.load(ptrs, mask=(rows < n_rows)[:, None], other=0.0)
        else:
            x = tl.load(ptrs, mask=(rows < n_rows)[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    else:
        if EVEN_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)
    return x


@triton.jit
def _attn_bwd_preprocess_kernel(Out, DO, Lse, Delta, Lse2, stride_ob, stride_oh, stride_ot, stride_dob, stride_doh,
                                stride_dot, n_heads, seqlen_q, padded_q,
                                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta = rowsum(dO * O) and lse2 = L * log2(e), per row, into buffers of padded_q rows per head.

    Padding rows (seqlen_q <= row < padded_q) get delta = 0 and lse2 = +inf (P = 0 there), so the
    dK/dV loop may read a whole last query block without row masks.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // n_heads).to(tl.int64)
    off_h = (pid_bh % n_heads).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    o = load_tile(Out + off_b * stride_ob + off_h * stride_oh + rows[:, None] * stride_ot + offs_d[None, :],
                  rows, seqlen_q, offs_d, HEAD_DIM, True, EVEN_D)
    do = load_tile(DO + off_b * stride_dob + off_h * stride_doh + rows[:, None] * stride_dot + offs_d[None, :],
                   rows, seqlen_q, offs_d, HEAD_DIM, True, EVEN_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    lse = tl.load(Lse + pid_bh.to(tl.int64) * seqlen_q + rows, mask=rows < seqlen_q, other=float("inf"))
    out_rows = pid_bh.to(tl.int64) * padded_q + rows
    tl.store(Delta + out_rows, delta, mask=rows < padded_q)
    tl.store(Lse2 + out_rows, lse * 1.4426950408889634, mask=rows < padded_q)


@triton.jit
def _attn_bwd_dkdv_inner(dk, dv, k, v, Q, DO, Lse2, Delta, stride_qt, stride_dot, offs_n, offs_d, lo, hi,
                         seqlen_q, diag, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                         EVEN_D: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Accumulate dK, dV (BLOCK_N, BLOCK_D) over query blocks [lo, hi); MASKED applies the causal mask.

    S^T = K Q^T is computed by key rows, so P^T and dS^T come out of their dots in the layout the dV and
    dK dots take as their register operand (no transposes); k and v stay in shared memory.
    hi may pass seqlen_q (the last block's padding rows): Lse2 and Delta are padded buffers (+inf and 0
    there, so P = dS = 0) and q, dO rows are clamped to the last row, so no load carries a row mask
    (each mask costs registers, and this loop has none to spare at D = 128).
    """
    offs_m = tl.arange(0, BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        rows = start_m + offs_m
        in_rows = tl.minimum(rows, seqlen_q - 1)
        q = load_tile(Q + in_rows[:, None] * stride_qt + offs_d[None, :], rows, seqlen_q, offs_d, HEAD_DIM,
                      False, EVEN_D)
        do = load_tile(DO + in_rows[:, None] * stride_dot + offs_d[None, :], rows, seqlen_q, offs_d, HEAD_DIM,
                       False, EVEN_D)
        lse2 = tl.load(Lse2 + rows)
        delta = tl.load(Delta + rows)
        qk_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale      # (BLOCK_N, BLOCK_M)
        if MASKED:
            qk_t = tl.where(rows[None, :] + diag >= offs_n[:, None], qk_t, float("-inf"))
        p_t = tl.exp2(qk_t - lse2[None, :])
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _attn_bwd_dkdv_kernel(Q, K, V, DO, Lse2, Delta, DK, DV,
                          stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                          stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
                          stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt,
                          n_heads, n_kv_heads, seqlen_q, seqlen_k, padded_q, qk_scale, sm_scale, T_BUCKET,
                          S_BUCKET, BH_BUCKET, KV_BUCKET,
                          HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                          DOT_PRECISION: tl.constexpr, GQA: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bkv = tl.program_id(1)
    off_b = (pid_bkv // n_kv_heads).to(tl.int64)
    off_kh = pid_bkv % n_kv_heads
    # Without GQA the loop over the group's heads is compiled away (one head): fewer live registers.
    group = 1
    if GQA:
        group = n_heads // n_kv_heads
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_h = off_kh.to(tl.int64)
    k = load_tile(K + off_b * stride_kb + kv_h * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :],
                  offs_n, seqlen_k, offs_d, HEAD_DIM, True, EVEN_D)
    v = load_tile(V + off_b * stride_vb + kv_h * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :],
                  offs_n, seqlen_k, offs_d, HEAD_DIM, True, EVEN_D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    diag = seqlen_k - seqlen_q  # query i sits at key position i + diag
    if CAUSAL:
        # Queries before m_lo see none of these keys; from m_full on they see all of them.
        m_lo = tl.maximum(start_n - diag, 0) // BLOCK_M * BLOCK_M
        m_full = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - diag, 0), BLOCK_M) * BLOCK_M
    else:
        m_lo = 0
        m_full = 0
    m_end = tl.cdiv(seqlen_q, BLOCK_M) * BLOCK_M  # the last block's padding rows contribute 0
    for g in range(0, group):
        off_h = (off_kh * group + g).to(tl.int64)
        q_src = Q + off_b * stride_qb + off_h * stride_qh
        do_src = DO + off_b * stride_dob + off_h * stride_doh
        row_base = (off_b * n_heads + off_h) * padded_q
        lse_g = Lse2 + row_base
        delta_g = Delta + row_base
        dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, q_src, do_src, lse_g, delta_g, stride_qt, stride_dot, offs_n,
                                      offs_d, m_lo, tl.minimum(m_full, m_end), seqlen_q, diag, qk_scale, HEAD_DIM,
                                      BLOCK_M, EVEN_D, True, DOT_PRECISION)
        dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, q_src, do_src, lse_g, delta_g, stride_qt, stride_dot, offs_n,
                                      offs_d, m_full, m_end, seqlen_q, diag, qk_scale, HEAD_DIM, BLOCK_M, EVEN_D,
                                      False, DOT_PRECISION)
    mask = (offs_n < seqlen_k)[:, None] & (offs_d < HEAD_DIM)[None, :]
    tl.store(DK + off_b * stride_dkb + kv_h * stride_dkh + offs_n[:, None] * stride_dkt + offs_d[None, :],
             (dk * sm_scale).to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + off_b * stride_dvb + kv_h * stride_dvh + offs_n[:, None] * stride_dvt + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=mask)


@triton.jit
def _attn_bwd_dq_inner(dq, q, do, lse2, delta, K, V, stride_kt, stride_vt, offs_m, offs_d, lo, hi, seqlen_k,
                       diag, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr,
                       MASKED: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Accumulate dQ (BLOCK_M, BLOCK_D) over key blocks [lo, hi); MASKED checks key bounds (and causality)."""
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        k = load_tile(K + cols[:, None] * stride_kt + offs_d[None, :], cols, seqlen_k, offs_d, HEAD_DIM, MASKED,
                      EVEN_D)
        v = load_tile(V + cols[:, None] * stride_vt + offs_d[None, :], cols, seqlen_k, offs_d, HEAD_DIM, MASKED,
                      EVEN_D)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if MASKED:
            keep = cols[None, :] < seqlen_k
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            qk = tl.where(keep, qk, float("-inf"))
        p = tl.exp2(qk - lse2[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _attn_bwd_dq_kernel(Q, K, V, DO, Lse2, Delta, DQ,
                        stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                        stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
                        stride_dqb, stride_dqh, stride_dqt,
                        n_heads, n_kv_heads, seqlen_q, seqlen_k, padded_q, qk_scale, sm_scale, T_BUCKET,
                        S_BUCKET, BH_BUCKET, KV_BUCKET,
                        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                        DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # the longest causal rows first
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // n_heads).to(tl.int64)
    off_h = (pid_bh % n_heads).to(tl.int64)
    off_kh = off_h // (n_heads // n_kv_heads)
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = load_tile(Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :],
                  offs_m, seqlen_q, offs_d, HEAD_DIM, True, EVEN_D)
    do = load_tile(DO + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :],
                   offs_m, seqlen_q, offs_d, HEAD_DIM, True, EVEN_D)
    row_mask = offs_m < seqlen_q
    row_base = pid_bh.to(tl.int64) * padded_q
    lse2 = tl.load(Lse2 + row_base + offs_m, mask=offs_m < padded_q, other=float("inf"))
    delta = tl.load(Delta + row_base + offs_m, mask=offs_m < padded_q, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    diag = seqlen_k - seqlen_q
    if CAUSAL:
        hi = tl.minimum(seqlen_k, start_m + BLOCK_M + diag)
        n_full = tl.minimum(tl.maximum(start_m + diag + 1, 0) // BLOCK_N * BLOCK_N, seqlen_k // BLOCK_N * BLOCK_N)
    else:
        hi = seqlen_k
        n_full = seqlen_k // BLOCK_N * BLOCK_N
    k_src = K + off_b * stride_kb + off_kh * stride_kh
    v_src = V + off_b * stride_vb + off_kh * stride_vh
    dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_src, v_src, stride_kt, stride_vt, offs_m, offs_d, 0, n_full,
                            seqlen_k, diag, qk_scale, HEAD_DIM, BLOCK_N, EVEN_D, False, CAUSAL, DOT_PRECISION)
    dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_src, v_src, stride_kt, stride_vt, offs_m, offs_d, n_full, hi,
                            seqlen_k, diag, qk_scale, HEAD_DIM, BLOCK_N, EVEN_D, True, CAUSAL, DOT_PRECISION)
    mask = row_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    tl.store(DQ + off_b * stride_dqb + off_h * stride_dqh + offs_m[:, None] * stride_dqt + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=mask)


_dkdv_tuned = autotuned(_attn_bwd_dkdv_kernel, DKDV_TABLE, INTERPRET_DKDV)
_dq_tuned = autotuned(_attn_bwd_dq_kernel, DQ_TABLE, INTERPRET_DQ)
# Direct launches of the jit kernels once a config is known (kernels/_launch.py: less host work)
_preprocess_fast = FastLaunch(_attn_bwd_preprocess_kernel)
_dkdv_fast = FastLaunch(_attn_bwd_dkdv_kernel)
_dq_fast = FastLaunch(_attn_bwd_dq_kernel)


# The dK/dV and dQ kernels of kernels/attention_bwd_gluon.py run where they apply (Hopper, the forward's Gluon
# scope), each timed per shape against the `tl` one (ninth session, H200: fwd+bwd 3-10% faster, the `tl` dK/dV
# kernel kept only at D 64 T 16384). KERNELS_ATTN_BWD_GLUON=0 keeps the `tl` kernels everywhere.
GLUON_BWD = os.environ.get("KERNELS_ATTN_BWD_GLUON", "1") != "0"


@functools.lru_cache(maxsize=None)
def _gluon_bwd():
    """kernels.attention_bwd_gluon, or None where this Triton has no Gluon (imported late: it imports
    attention_gluon, which imports this module)."""
    try:
        from . import attention_bwd_gluon
    except ImportError:
        return None
    return attention_bwd_gluon


# The padded per-row buffers (lse2, delta) hold a multiple of this many rows per head: at least every
# BLOCK_M of the dK/dV tables, so its last query block reads them whole.
PAD_ROWS = 128


def unit_last_stride(t):
    """The kernels take any strides but a unit stride along the head dim; copy the rare other case."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


# (kernel, TUNE, shape buckets, dtype, constexprs) -> the autotuner's pick, so that later calls launch the
# jit kernel directly instead of paying the autotuner's per-call key building (host overhead).
_PICKED = {}


def _launch(tuned, fast, grid, args, meta, config, key=None):
    """Launch the autotuned kernel, or the jit one (`fast`, a FastLaunch of it) with config = (BLOCK_M,
    BLOCK_N, num_warps, num_stages).

    key (shape buckets and dtype, which with meta make the autotuner's own key): after the first launch
    of a key, its picked config is remembered and launched directly.
    """
    if config is None and key is not None:
        key = (tuned, TUNE, key, *meta.values())
        config = _PICKED.get(key)
        if config is None:
            tuned[grid](*args, **meta)
            best = getattr(tuned, "best_config", None)
            if best is not None:
                _PICKED[key] = (best.kwargs["BLOCK_M"], best.kwargs["BLOCK_N"], best.num_warps, best.num_stages)
            return
    if config is None:
        tuned[grid](*args, **meta)
    else:
        bm, bn, w, s = config
        fast[grid(dict(BLOCK_M=bm, BLOCK_N=bn))](*args, **meta, BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s)


def attention_bwd(dout, q, k, v, out, lse, causal, scale, config=None):
    """(dq, dk, dv) from the saved output and log-sum-exp; config = {"dkdv": tuple, "dq": tuple} forces blocks."""
    grads, launches = backward_launches(dout, q, k, v, out, lse, causal, scale, config)
    for launch in launches:
        launch()
    return grads


def backward_launches(dout, q, k, v, out, lse, causal, scale, config=None):
    """((dq, dk, dv), [preprocess, dK/dV, dQ launch closures]): the gradients are filled once the
    closures ran, in order (tools/gpu_attention_bwd.py times each one alone)."""
    B, H, T, D = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if dq.numel() == 0 or dk.numel() == 0:
        return (dq.zero_(), dk.zero_(), dv.zero_()), []
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1 or out.stride(-1) != 1:
        q, k, v, out = (unit_last_stride(t) for t in (q, k, v, out))
    lse = lse.contiguous()
    meta, buckets = plan(B, H, H_kv, T, S, D, q.dtype)
    padded_q = cdiv(T, PAD_ROWS) * PAD_ROWS
    delta = torch.empty((B, H, padded_q), dtype=torch.float32, device=q.device)
    lse2 = torch.empty((B, H, padded_q), dtype=torch.float32, device=q.device)
    so, sdo = out.stride(), dout.stride()
    meta = dict(meta, CAUSAL=bool(causal))
    scale = float(scale)
    common = (H, H_kv, T, S, padded_q, scale * LOG2E, scale, *buckets)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *sdo[:3])
    config = config or {}
    if config.get("dkdv") and config["dkdv"][0] > PAD_ROWS:
        raise ValueError(f"config['dkdv'] BLOCK_M must be at most PAD_ROWS = {PAD_ROWS} (the padded per-row "
                         f"buffers), got {config['dkdv'][0]}")

    def preprocess():
        grid = (padded_q // 64, B * H)
        args = (out, dout, lse, delta, lse2, so[0], so[1], so[2], sdo[0], sdo[1], sdo[2], H, T, padded_q)
        # the key: every int argument and the tensors' dtypes (lse, delta and lse2 are fp32)
        launch_planned(_preprocess_fast, (grid, out.dtype, dout.dtype, q.get_device(), D, *args[5:]), grid, args,
                       dict(HEAD_DIM=D, BLOCK_D=meta["BLOCK_D"], BLOCK_M=64),
                       not (out.data_ptr() | dout.data_ptr() | lse.data_ptr()) % 16)

    gluon = _gluon_bwd() if GLUON_BWD and not config else None
    gluon = gluon if gluon is not None and gluon.usable(q, k, v, dout) else None

    def dkdv_tl():
        _launch(_dkdv_tuned, _dkdv_fast, lambda m: (cdiv(S, m["BLOCK_N"]), B * H_kv),
                (q, k, v, dout, lse2, delta, dk, dv, *strides, *dk.stride()[:3], *dv.stride()[:3], *common),
                dict(meta, GQA=H != H_kv), config.get("dkdv"), (buckets, q.dtype))

    def dq_tl():
        _launch(_dq_tuned, _dq_fast, lambda m: (cdiv(T, m["BLOCK_M"]), B * H),
                (q, k, v, dout, lse2, delta, dq, *strides, *dq.stride()[:3], *common), meta, config.get("dq"),
                (buckets, q.dtype))

    def dkdv():
        if gluon is None or not gluon.dkdv_tuned(q, k, v, dout, lse2, delta, dk, dv, causal, scale, padded_q,
                                                 fallback=dkdv_tl):
            dkdv_tl()  # the Gluon kernel does not apply, does not build, or timed slower here

    def dq_():
        if gluon is None or not gluon.dq_tuned(q, k, v, dout, lse2, delta, dq, causal, scale, padded_q,
                                               fallback=dq_tl):
            dq_tl()

    return (dq, dk, dv), [preprocess, dkdv, dq_]
