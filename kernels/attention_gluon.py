"""EXPERIMENTAL (branch next/attn-fwd-gluon; not yet run on a GPU): the attention forward in Gluon for
Hopper, with FlashAttention-3's intra-warpgroup overlap written out.

Why Gluon: in `tl`, Triton 3.6 waits for every score `tl.dot` right after issuing it (`wgmma.wait_group 0`
in the PTX), so the softmax of key block j never overlaps the tensor cores (bench/RESULTS.md, sixth
session). Gluon exposes the asynchronous wgmma and its wait:

    iteration j (scores S_j of key block j ready in registers):
      issue  S_{j+1} = Q K_{j+1}^T          (asynchronous)
      softmax of S_j -> P_j, alpha          (CUDA cores, while S_{j+1} runs on the tensor cores)
      wait until O += P_{j-1} V_{j-1} is done (one group may stay in flight: S_{j+1})
      O *= alpha; issue O += P_j V_j         (asynchronous)
      wait until S_{j+1} is done             (O += P_j V_j may stay in flight)

K and V arrive by TMA into a two-slot ring with one mbarrier per slot; the slot of block j is refilled
with block j + 2 once the wgmma reading it has completed.

Scope of the prototype (kernels/attention.py keeps the general `tl` kernel for everything else):
q, k, v contiguous (B, H, T, D) / (B, H_kv, S, D), T == S, T a multiple of BLOCK_M and BLOCK_N, D in
{64, 128}, fp16 / bf16, causal or not, GQA. Output and the natural-log LSE as attention_fwd's.
"""
import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma, \
    warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

LOG2E = 1.4426950408889634
_GL_DTYPES = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}


@gluon.jit
def _load_kv(desc, row, bar, dst, pred):
    mbarrier.expect(bar, desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(desc, [row, 0], bar, dst, pred=pred)


@gluon.jit
def _softmax_step(s, m_i, l_i, cols, rows, qk_scale, MASK: gl.constexpr):
    """Online-softmax update for one block of scores s (fp32, wgmma layout): (p, alpha, m_new, l_new)."""
    if MASK:  # causal diagonal block: key col visible to query row when col <= row
        s = gl.where(gl.expand_dims(cols, 0) <= gl.expand_dims(rows, 1), s * qk_scale, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1))
        p = gl.exp2(s - gl.expand_dims(m_new, 1))
    else:
        m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
        p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
    alpha = gl.exp2(m_i - m_new)
    return p, alpha, m_new, l_i * alpha + gl.sum(p, 1)


@gluon.jit
def _step(j, acc, p_prev, alpha_prev, m_i, l_i, q_smem, k_smem, v_smem, k_bars, v_bars, k_desc, v_desc, kv_row,
          n_blocks, rows, offs_n, s_zero, pid_m, qk_scale, p_layout: gl.constexpr, orow_layout: gl.constexpr,
          CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr):
    """Key block j >= 1: S_j = Q K_j^T, and O += P_{j-1} V_{j-1} running under the softmax of S_j."""
    dtype: gl.constexpr = q_smem.dtype
    slot = j % 2
    # 1. the scores of block j, asynchronously
    mbarrier.wait(k_bars.index(slot), (j // 2) & 1)
    s = warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    # 2. O = alpha_{j-1} O + P_{j-1} V_{j-1}, asynchronously (O is complete: every wgmma was waited for)
    acc = acc * gl.expand_dims(gl.convert_layout(alpha_prev, orow_layout), 1)
    mbarrier.wait(v_bars.index(1 - slot), ((j - 1) // 2) & 1)
    acc = warpgroup_mma(p_prev, v_smem.index(1 - slot), acc, is_async=True)
    # 3. the scores are needed now; O += P V stays in flight
    s = warpgroup_mma_wait(num_outstanding=1, deps=(s, ))
    _load_kv(k_desc, kv_row + (j + 2) * BLOCK_N, k_bars.index(slot), k_smem.index(slot), j + 2 < n_blocks)
    # 4. the softmax of block j while the tensor cores do O += P V
    cols = j * BLOCK_N + offs_n
    if CAUSAL and (j + 1) * BLOCK_N > pid_m * BLOCK_M:
        p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, cols, rows, qk_scale, True)
    else:
        p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, cols, rows, qk_scale, False)
    # 5. everything done before the next block: a wgmma left in flight across the loop's back edge makes
    # ptxas serialize every wgmma of the kernel (C7514)
    acc, p_prev = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p_prev))
    _load_kv(v_desc, kv_row + (j + 1) * BLOCK_N, v_bars.index(1 - slot), v_smem.index(1 - slot), j + 1 < n_blocks)
    return acc, gl.convert_layout(p.to(dtype), p_layout), alpha, m_i, l_i


@gluon.jit
def _attn_fwd_gluon_kernel(q_desc, k_desc, v_desc, o_desc, Lse, seqlen, n_heads, n_kv_heads, qk_scale,
                           CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                           HEAD_DIM: gl.constexpr, num_warps: gl.constexpr):
    dtype: gl.constexpr = q_desc.dtype
    pid_m = gl.num_programs(0) - 1 - gl.program_id(0)  # the longest causal rows first
    pid_bh = gl.program_id(1)
    kv_head = (pid_bh // n_heads) * n_kv_heads + (pid_bh % n_heads) // (n_heads // n_kv_heads)
    q_row = pid_bh * seqlen + pid_m * BLOCK_M  # rows of the (B * H * T, D) views
    kv_row = kv_head * seqlen

    # Scores S (BLOCK_M, BLOCK_N) and output O (BLOCK_M, HEAD_DIM) live in wgmma accumulator layouts;
    # P feeds the second wgmma from registers.
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_layout: gl.constexpr = gl.SliceLayout(0, s_layout)
    orow_layout: gl.constexpr = gl.SliceLayout(1, o_layout)

    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(2):
        mbarrier.init(k_bars.index(i), count=1)
        mbarrier.init(v_bars.index(i), count=1)

    if CAUSAL:
        n_blocks = (pid_m + 1) * BLOCK_M // BLOCK_N  # keys 0 .. the block's last row
    else:
        n_blocks = seqlen // BLOCK_N
    mbarrier.expect(q_bar, q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [q_row, 0], q_bar, q_smem)
    for i in gl.static_range(2):
        _load_kv(k_desc, kv_row + i * BLOCK_N, k_bars.index(i), k_smem.index(i), i < n_blocks)
        _load_kv(v_desc, kv_row + i * BLOCK_N, v_bars.index(i), v_smem.index(i), i < n_blocks)

    rows = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=row_layout)
    offs_n = gl.arange(0, BLOCK_N, layout=col_layout)
    m_i = gl.full([BLOCK_M], -1.0e30, gl.float32, layout=row_layout)
    l_i = gl.zeros([BLOCK_M], gl.float32, layout=row_layout)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, layout=o_layout)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)

    mbarrier.wait(q_bar, 0)
    # block 0: its scores and softmax, nothing to overlap with yet
    mbarrier.wait(k_bars.index(0), 0)
    s = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(num_outstanding=0, deps=(s, ))
    _load_kv(k_desc, kv_row + 2 * BLOCK_N, k_bars.index(0), k_smem.index(0), 2 < n_blocks)
    if CAUSAL and BLOCK_N > pid_m * BLOCK_M:
        p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, offs_n, rows, qk_scale, True)
    else:
        p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, offs_n, rows, qk_scale, False)
    p = gl.convert_layout(p.to(dtype), p_layout)
    for j in range(1, n_blocks):
        acc, p, alpha, m_i, l_i = _step(j, acc, p, alpha, m_i, l_i, q_smem, k_smem, v_smem, k_bars, v_bars, k_desc,
                                        v_desc, kv_row, n_blocks, rows, offs_n, s_zero, pid_m, qk_scale, p_layout,
                                        orow_layout, CAUSAL, BLOCK_M, BLOCK_N)
    # the last block's O += P V
    last = n_blocks - 1
    acc = acc * gl.expand_dims(gl.convert_layout(alpha, orow_layout), 1)
    mbarrier.wait(v_bars.index(last % 2), (last // 2) & 1)
    acc = warpgroup_mma(p, v_smem.index(last % 2), acc, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))

    mbarrier.invalidate(q_bar)
    for i in gl.static_range(2):
        mbarrier.invalidate(k_bars.index(i))
        mbarrier.invalidate(v_bars.index(i))
    out = acc / gl.expand_dims(gl.convert_layout(l_i, orow_layout), 1)
    q_smem.store(out.to(dtype))  # Q is no longer read: its tile stages the output
    fence_async_shared()
    tma.async_copy_shared_to_global(o_desc, [q_row, 0], q_smem)
    lse = (m_i + gl.log2(l_i)) * 0.6931471805599453
    gl.store(Lse + pid_bh.to(gl.int64) * seqlen + rows, lse)
    tma.store_wait(pendings=0)


def usable(q, k, v, causal):
    """Whether the prototype takes these arguments (see the module docstring)."""
    B, H, T, D = q.shape
    return (q.is_cuda and q.dtype in _GL_DTYPES and k.dtype == q.dtype and v.dtype == q.dtype and D in (64, 128)
            and k.shape[2] == T and T % 128 == 0 and all(t.is_contiguous() for t in (q, k, v))
            and torch.cuda.get_device_capability(q.device)[0] == 9)


def attention_fwd_gluon(q, k, v, causal, scale, block_n=None):
    """(out, lse) as kernels.attention.attention_fwd, for arguments where `usable` holds."""
    B, H, T, D = q.shape
    H_kv = k.shape[1]
    BLOCK_M = 128
    BLOCK_N = block_n or (64 if D == 128 else 128)
    out = torch.empty_like(q)
    lse = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
    gdt = _GL_DTYPES[q.dtype]
    q_layout = gl.NVMMASharedLayout.get_default_for([BLOCK_M, D], gdt)
    kv_layout = gl.NVMMASharedLayout.get_default_for([BLOCK_N, D], gdt)
    q2, o2 = q.view(B * H * T, D), out.view(B * H * T, D)
    k2, v2 = k.view(B * H_kv * T, D), v.view(B * H_kv * T, D)
    q_desc = TensorDescriptor(q2, list(q2.shape), list(q2.stride()), [BLOCK_M, D], q_layout)
    o_desc = TensorDescriptor(o2, list(o2.shape), list(o2.stride()), [BLOCK_M, D], q_layout)
    k_desc = TensorDescriptor(k2, list(k2.shape), list(k2.stride()), [BLOCK_N, D], kv_layout)
    v_desc = TensorDescriptor(v2, list(v2.shape), list(v2.stride()), [BLOCK_N, D], kv_layout)
    _attn_fwd_gluon_kernel[(T // BLOCK_M, B * H)](q_desc, k_desc, v_desc, o_desc, lse, T, H, H_kv, scale * LOG2E,
                                                  bool(causal), BLOCK_M, BLOCK_N, D, num_warps=8)
    return out, lse
