"""Fused scaled-dot-product attention in Triton (FlashAttention-2 style), forward and backward.

    out[b, h, i] = sum_j softmax_j(scale * q[b, h, i] . k[b, h // G, j]) v[b, h // G, j]

q is (B, H, T, D); k and v are (B, H_kv, S, D) with G = H / H_kv (grouped-query / multi-query
attention reads the shared kv head in place, never repeating it). Under `causal`, query i sits at key
position S - T + i (bottom-right alignment, as when decoding against a KV cache) and sees keys
0 .. S - T + i; a query with no key to see (T > S) outputs exactly 0 and gets zero gradients.

- Any T, S (no multiple-of-block requirement), any B * H, head dims 16..256 in steps of 8 (padded
  to a power of two inside the kernel with masks), fp16 / bf16 / fp32 in, fp32 accumulation, output
  in the input dtype. fp32 inputs use IEEE fp32 dots, not tf32.
- Any strides with a unit stride along D: q, k, v may be views of a fused (B, T, 3, H, D) QKV
  projection; they are not copied.
- The forward keeps a running max and sum per row (online softmax, exp2 with log2(e) folded into
  the scale, so large logits cannot overflow) and saves only the output and the per-row
  log-sum-exp (fp32, natural log; +inf for rows with no key). The backward (kernels/attention_bwd.py)
  recomputes the probabilities.
- Causal key loops are split into unmasked off-diagonal blocks and masked diagonal blocks; query
  blocks are launched longest first.
- Configs are autotuned per (next power of two of T, of S, of B * H, of B * H_kv, padded D, causal,
  dtype) from a short Hopper-pruned list (kernels/attention_bwd.py); later calls in the same bucket
  launch the remembered pick directly. Small problems (T * S * B * H < 2^24) and KERNELS_AUTOTUNE=0
  take the list's first config untuned. Under TRITON_INTERPRET=1 a single small config runs (CPU
  tests). The interpreter's bf16 tl.dot is wrong, so bf16 is GPU-only in tests.
- On Hopper the forward goes to the Gluon kernels of kernels/attention_gluon.py (FlashAttention-3's
  overlap of the softmax with the tensor cores) and attention_gluon_ws.py (plus its warp specialization
  and ping-pong, a D = 128 candidate) where they apply: T == S a multiple of 128, D 64 or
  128, fp16 / bf16, q, k, v contiguous or views of a fused QKV projection. KERNELS_ATTN_GLUON=0 (or
  USE_GLUON = False) keeps every call on the `tl` kernel.
- `attention` goes through `AttentionFn` (autograd) where a gradient is wanted, else to the forward
  alone (no autograd.Function: host time). Under torch.compile its forward and backward call the torch
  ops `torch.ops.kernels.attention_fwd` / `attention_bwd` (kernels/_ops.py, with fake implementations), so
  `torch.compile` traces through without graph breaks; in eager mode they call the same launchers
  directly (the op dispatcher costs more host time per call than the rest of the launch).
"""
import math
import os

import torch
import triton
import triton.language as tl

from ._checks import check_attention_args
from ._launch import FastLaunch
from ._ops import define
from ._runtime import KERNEL_DEVICE, cdiv, check_device, tma_scratch
from .attention_bwd import FWD_TABLE, INTERPRET_FWD, LOG2E, NO_SPECIALIZE, _launch, attention_bwd, autotuned, \
    load_tile, plan, unit_last_stride

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

try:  # Gluon (triton.experimental): Triton 3.6 runs it, 3.9 imports it; without it every call takes tl
    from . import attention_gluon
except (ImportError, AttributeError):
    attention_gluon = None
USE_GLUON = attention_gluon is not None and os.environ.get("KERNELS_ATTN_GLUON", "1") == "1"


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, K, V, stride_kt, stride_vt, offs_m, offs_d, lo, hi, seqlen_k, diag, qk_scale,
                    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr, MASKED: tl.constexpr,
                    CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr):
    """Online softmax over key blocks [lo, hi); MASKED checks key bounds (and causality).

    K and V are tensor descriptors (USE_TMA; out-of-range rows read as 0) or pointers to the head's rows.
    """
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        if USE_TMA:
            k = K.load([start_n, 0])
        else:
            k = load_tile(K + cols[:, None] * stride_kt + offs_d[None, :], cols, seqlen_k, offs_d, HEAD_DIM, MASKED,
                          EVEN_D)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if MASKED:
            keep = cols[None, :] < seqlen_k
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            qk = tl.where(keep, qk * qk_scale, float("-inf"))   # log2 units
            # m_i starts at -1e30 (finite): a fully masked row gives exp2(-inf) = 0, never inf - inf.
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            qk = qk - m_new[:, None]
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            qk = qk * qk_scale - m_new[:, None]   # one FMA per element
        p = tl.exp2(qk)
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if USE_TMA:
            v = V.load([start_n, 0])
        else:
            v = load_tile(V + cols[:, None] * stride_vt + offs_d[None, :], cols, seqlen_k, offs_d, HEAD_DIM, MASKED,
                          EVEN_D)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _attn_fwd_kernel(Q, K, V, Out, Lse,
                     stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                     stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot,
                     n_heads, n_kv_heads, seqlen_q, seqlen_k, qk_scale, T_BUCKET, S_BUCKET, BH_BUCKET, KV_BUCKET,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                     DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # the longest causal rows first
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // n_heads).to(tl.int64)
    off_h = (pid_bh % n_heads).to(tl.int64)
    off_kh = off_h // (n_heads // n_kv_heads)
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    k_src = K + off_b * stride_kb + off_kh * stride_kh
    v_src = V + off_b * stride_vb + off_kh * stride_vh
    o_base = Out + off_b * stride_ob + off_h * stride_oh
    if USE_TMA:
        # Per-head descriptors: rows past T or S and columns past HEAD_DIM read as 0, stores are clipped.
        q = tl.make_tensor_descriptor(q_base, shape=[seqlen_q, HEAD_DIM], strides=[stride_qt, 1],
                                      block_shape=[BLOCK_M, BLOCK_D]).load([start_m, 0])
        k_src = tl.make_tensor_descriptor(k_src, shape=[seqlen_k, HEAD_DIM], strides=[stride_kt, 1],
                                          block_shape=[BLOCK_N, BLOCK_D])
        v_src = tl.make_tensor_descriptor(v_src, shape=[seqlen_k, HEAD_DIM], strides=[stride_vt, 1],
                                          block_shape=[BLOCK_N, BLOCK_D])
    else:
        q = load_tile(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], offs_m, seqlen_q, offs_d, HEAD_DIM,
                      True, EVEN_D)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    diag = seqlen_k - seqlen_q  # query i sits at key position i + diag
    if CAUSAL:
        # Keys below n_full are visible to every row of this block; [n_full, hi) needs the mask.
        hi = tl.minimum(seqlen_k, start_m + BLOCK_M + diag)
        n_full = tl.minimum(tl.maximum(start_m + diag + 1, 0) // BLOCK_N * BLOCK_N, seqlen_k // BLOCK_N * BLOCK_N)
    else:
        hi = seqlen_k
        n_full = seqlen_k // BLOCK_N * BLOCK_N
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_src, v_src, stride_kt, stride_vt, offs_m, offs_d, 0,
                                    n_full, seqlen_k, diag, qk_scale, HEAD_DIM, BLOCK_N, EVEN_D, False, CAUSAL,
                                    DOT_PRECISION, USE_TMA)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_src, v_src, stride_kt, stride_vt, offs_m, offs_d, n_full,
                                    hi, seqlen_k, diag, qk_scale, HEAD_DIM, BLOCK_N, EVEN_D, True, CAUSAL,
                                    DOT_PRECISION, USE_TMA)
    dead = l_i == 0.0  # no key visible: output 0, L = +inf (so the backward's P is 0)
    l_safe = tl.where(dead, 1.0, l_i)
    out = (acc / l_safe[:, None]).to(Out.dtype.element_ty)
    lse = tl.where(dead, float("inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    row_mask = offs_m < seqlen_q
    if USE_TMA:
        tl.make_tensor_descriptor(o_base, shape=[seqlen_q, HEAD_DIM], strides=[stride_ot, 1],
                                  block_shape=[BLOCK_M, BLOCK_D]).store([start_m, 0], out)
    else:
        tl.store(o_base + offs_m[:, None] * stride_ot + offs_d[None, :], out,
                 mask=row_mask[:, None] & (offs_d < HEAD_DIM)[None, :])
    tl.store(Lse + pid_bh.to(tl.int64) * seqlen_q + offs_m, lse, mask=row_mask)


_fwd_tuned = autotuned(_attn_fwd_kernel, FWD_TABLE, INTERPRET_FWD, extra_key=["USE_TMA"])
_fwd_fast = FastLaunch(_attn_fwd_kernel)  # the direct launch once a config is known


# Tensor-descriptor (TMA) loads in the forward. Off until timed on the H100 (tools/gpu_attention.py).
USE_TMA = False


def _tma_ok(*tensors):
    """TMA needs 16-byte aligned bases and row strides (always true for D % 8 == 0 unless offset views)."""
    if not USE_TMA:
        return False
    for t in tensors:
        size = t.element_size()
        if t.data_ptr() % 16 or any((st * size) % 16 for st in t.stride()[:3]):
            return False
    return True


def check_kernel_args(q, k, v, scale, device=True):
    """The reference's checks plus what the kernels add: device, dtype, head dim range."""
    check_attention_args(q, k, v, scale)
    if device and not (q.device.type == KERNEL_DEVICE and k.device.type == KERNEL_DEVICE
                       and v.device.type == KERNEL_DEVICE):
        check_device(q=q, k=k, v=v)  # (it reads the environment: only where the import-time answer differs)
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"q must be float16, bfloat16 or float32 for the Triton attention, got {q.dtype}")
    D = q.shape[-1]
    if not (16 <= D <= 256 and D % 8 == 0):
        raise ValueError(f"q's head dim must be a multiple of 8 in 16..256 for the Triton attention, got {D}")
    if q.shape[0] * q.shape[1] > 65535:  # B*H is the launch grid's second axis, capped by CUDA
        raise ValueError(f"q's batch x heads must be at most 65535 for the Triton attention, got "
                         f"{q.shape[0]} x {q.shape[1]}; split the batch")


def attention_fwd(q, k, v, causal=True, scale=None, config=None, use_tma=None):
    """(out, lse): out (B, H, T, D) in q's dtype, lse (B, H, T) fp32 natural-log log-sum-exp per row.

    config = (BLOCK_M, BLOCK_N, num_warps, num_stages) bypasses the autotuner and use_tma=True/False
    forces the TMA-descriptor loads on or off (for benchmarking; None = USE_TMA where aligned); either
    one keeps the call on the `tl` kernel (else Hopper may take the Gluon forward, see above).
    """
    check_kernel_args(q, k, v, scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _fwd(q, k, v, causal, scale, config, use_tma)


def _fwd(q, k, v, causal, scale, config=None, use_tma=None):
    """attention_fwd on validated arguments (scale a float)."""
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = (unit_last_stride(t) for t in (q, k, v))
    if USE_GLUON and config is None and use_tma is None and attention_gluon.usable(q, k, v):
        result = attention_gluon.attention_fwd_tuned(q, k, v, causal, scale)
        if result is not None:
            return result
    B, H, T, D = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    meta, buckets = plan(B, H, H_kv, T, S, D, q.dtype)
    tma = _tma_ok(q, k, v, out) if use_tma is None else use_tma
    meta = dict(meta, CAUSAL=bool(causal), USE_TMA=tma)
    args = (q, k, v, out, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
            H, H_kv, T, S, scale * LOG2E, *buckets)
    if tma and q.is_cuda:
        triton.set_allocator(tma_scratch)  # device-side descriptors need a little global scratch
    _launch(_fwd_tuned, _fwd_fast, lambda m: (cdiv(T, m["BLOCK_M"]), B * H), args, meta, config,
            (buckets, q.dtype))
    return out, lse


def _attention_fwd_fake(q, k, v, causal, scale):
    B, H, T, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((B, H, T), dtype=torch.float32)


def _attention_bwd_fake(dout, q, k, v, out, lse, causal, scale):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


_attention_fwd_op = define("attention_fwd(Tensor q, Tensor k, Tensor v, bool causal, float scale) -> (Tensor, Tensor)",
                           attention_fwd, _attention_fwd_fake)
_attention_bwd_op = define("attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
                           "bool causal, float scale) -> (Tensor, Tensor, Tensor)", attention_bwd, _attention_bwd_fake)


class AttentionFn(torch.autograd.Function):
    """Under torch.compile the registered custom ops (traceable, with fake implementations); in eager
    mode the same launchers directly, skipping the op dispatcher's per-call cost (host overhead)."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        if torch.compiler.is_compiling():
            out, lse = _attention_fwd_op(q, k, v, causal, scale)
        else:
            out, lse = _fwd(q, k, v, causal, scale)  # attention() validated the arguments
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale = causal, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        if torch.compiler.is_compiling():
            dq, dk, dv = _attention_bwd_op(dout, q, k, v, out, lse, ctx.causal, ctx.scale)
        else:
            dq, dk, dv = attention_bwd(dout, q, k, v, out, lse, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None


def attention(q, k, v, causal=True, scale=None):
    """softmax(q k^T * scale) v with the reference's contract (see kernels.reference.attention)."""
    # Under torch.compile the device check (it reads the environment) runs inside the op instead.
    compiling = torch.compiler.is_compiling()
    check_kernel_args(q, k, v, scale, device=not compiling)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if not compiling and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        return _fwd(q, k, v, bool(causal), scale)[0]  # no gradient wanted: no autograd.Function (host time)
    return AttentionFn.apply(q, k, v, bool(causal), scale)
