"""The Gluon attention forward of kernels/attention_gluon.py with FlashAttention-3's other two tricks, warp
specialization and the ping-pong of two consumer warpgroups: its "pingpong" candidates (the D = 128 pick
from T = 2048 on, on the H200: bench/RESULTS.md, eighth session).

One program takes 2 x BLOCK_M query rows of one head, in three partitions (`gl.warp_specialize`):
- the producer (one warpgroup, few registers) loads both Q tiles, then K and V blocks by TMA into
  STAGES-slot rings: "full" mbarriers tell the consumers a slot is loaded, "empty" ones (two arrivals)
  tell the producer both consumers are done with it;
- two consumers (a warpgroup of BLOCK_M rows each, the default partition and a worker) run the
  per-block schedule of attention_gluon (S_j = Q K_j^T, then O += P_{j-1} V_{j-1} under the softmax
  of S_j), taking turns to issue their wgmmas: consumer 0 issues, hands the turn over (an mbarrier),
  and does its softmax while consumer 1's wgmmas run, and so on. The tensor cores see one consumer's
  GEMMs while the other's exponentials run.

Under causal masking consumer 1 (the later rows) may need one key block more than consumer 0: the
turns stop after consumer 0's last block, and consumer 0 releases the blocks it does not read.
Scope, arguments and results as attention_gluon.attention_fwd_gluon.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma, \
    warpgroup_mma_wait

from ._launch import FastLaunch
from .attention_gluon import _softmax_step, _tile_of, launch_forward


@gluon.jit
def _producer(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars, k_full, v_full, k_empty, v_empty, q_row, q_col,
              k_row, k_col, v_row, v_col, n_blocks, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
              STAGES: gl.constexpr):
    for c in gl.static_range(2):
        mbarrier.expect(q_bars.index(c), q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [q_row + c * BLOCK_M, q_col], q_bars.index(c), q_smem.index(c))
    for j in range(n_blocks):
        slot = j % STAGES
        free = ((j // STAGES) & 1) ^ 1  # a fresh barrier passes a wait on parity 1: the first round is free
        mbarrier.wait(k_empty.index(slot), free)
        mbarrier.expect(k_full.index(slot), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [k_row + j * BLOCK_N, k_col], k_full.index(slot), k_smem.index(slot))
        mbarrier.wait(v_empty.index(slot), free)
        mbarrier.expect(v_full.index(slot), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [v_row + j * BLOCK_N, v_col], v_full.index(slot), v_smem.index(slot))


@gluon.jit
def _take_turn(turns, k, n_turns, ME: gl.constexpr):
    # consumer 0 goes first: its first wait is on parity 1 (a fresh barrier's); consumer 1 waits for
    # consumer 0's first hand-over (parity 0). Each hand-over completes one phase of the other's barrier.
    if k < n_turns:
        mbarrier.wait(turns.index(ME), (k & 1) ^ (1 - ME))


@gluon.jit
def _pass_turn(turns, k, n_turns, ME: gl.constexpr):
    if k < n_turns:
        mbarrier.arrive(turns.index(1 - ME))


@gluon.jit
def _consumer(ME: gl.constexpr, q_smem, k_smem, v_smem, q_bars, k_full, v_full, k_empty, v_empty, turns, o_desc, Lse,
              o_row, lse_row, first_row, n_mine, n_turns, n_blocks, qk_scale, CAUSAL: gl.constexpr,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr):
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_layout: gl.constexpr = gl.SliceLayout(0, s_layout)
    orow_layout: gl.constexpr = gl.SliceLayout(1, o_layout)

    q = q_smem.index(ME)
    rows = first_row + gl.arange(0, BLOCK_M, layout=row_layout)
    offs_n = gl.arange(0, BLOCK_N, layout=col_layout)
    m_i = gl.full([BLOCK_M], -1.0e30, gl.float32, layout=row_layout)
    l_i = gl.zeros([BLOCK_M], gl.float32, layout=row_layout)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, layout=o_layout)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)
    mbarrier.wait(q_bars.index(ME), 0)

    # block 0
    mbarrier.wait(k_full.index(0), 0)
    _take_turn(turns, 0, n_turns, ME)
    s = warpgroup_mma(q, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    _pass_turn(turns, 0, n_turns, ME)
    s = warpgroup_mma_wait(num_outstanding=0, deps=(s, ))
    mbarrier.arrive(k_empty.index(0))
    if CAUSAL and BLOCK_N > first_row:
        p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, offs_n, rows, qk_scale, True)
    else:
        p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, offs_n, rows, qk_scale, False)
    p = gl.convert_layout(p.to(dtype), p_layout)

    for j in range(1, n_mine):
        slot = j % STAGES
        prev = (j - 1) % STAGES
        mbarrier.wait(k_full.index(slot), (j // STAGES) & 1)
        _take_turn(turns, j, n_turns, ME)
        s = warpgroup_mma(q, k_smem.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, orow_layout), 1)
        mbarrier.wait(v_full.index(prev), ((j - 1) // STAGES) & 1)
        acc = warpgroup_mma(p, v_smem.index(prev), acc, is_async=True)
        _pass_turn(turns, j, n_turns, ME)
        s = warpgroup_mma_wait(num_outstanding=1, deps=(s, ))
        mbarrier.arrive(k_empty.index(slot))
        cols = j * BLOCK_N + offs_n
        if CAUSAL and (j + 1) * BLOCK_N > first_row:
            p_new, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, cols, rows, qk_scale, True)
        else:
            p_new, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, cols, rows, qk_scale, False)
        acc, p = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p))
        mbarrier.arrive(v_empty.index(prev))
        p = gl.convert_layout(p_new.to(dtype), p_layout)

    last = n_mine - 1
    acc = acc * gl.expand_dims(gl.convert_layout(alpha, orow_layout), 1)
    mbarrier.wait(v_full.index(last % STAGES), (last // STAGES) & 1)
    acc = warpgroup_mma(p, v_smem.index(last % STAGES), acc, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    mbarrier.arrive(v_empty.index(last % STAGES))
    for j in range(n_mine, n_blocks):  # blocks only the other consumer reads: release them once loaded
        mbarrier.wait(k_full.index(j % STAGES), (j // STAGES) & 1)
        mbarrier.arrive(k_empty.index(j % STAGES))
        mbarrier.wait(v_full.index(j % STAGES), (j // STAGES) & 1)
        mbarrier.arrive(v_empty.index(j % STAGES))

    out = acc / gl.expand_dims(gl.convert_layout(l_i, orow_layout), 1)
    q.store(out.to(dtype))  # this consumer's Q tile is no longer read: it stages the output
    fence_async_shared()
    tma.async_copy_shared_to_global(o_desc, [o_row, 0], q)
    gl.store(Lse + lse_row + rows, (m_i + gl.log2(l_i)) * 0.6931471805599453)
    tma.store_wait(pendings=0)


@gluon.jit
def _attn_fwd_ws_kernel(q_desc, k_desc, v_desc, o_desc, Lse, seqlen, n_heads, n_kv_heads, qk_scale,
                        q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, head_group,
                        CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                        STAGES: gl.constexpr, num_warps: gl.constexpr):
    dtype: gl.constexpr = q_desc.dtype
    pid_m, pid_bh = _tile_of(seqlen // (2 * BLOCK_M), head_group)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    h_kv = h // (n_heads // n_kv_heads)
    first_row = pid_m * 2 * BLOCK_M  # consumer c takes rows first_row + c * BLOCK_M ...
    q_row = b * q_rb + h * q_rh + first_row
    k_row = b * k_rb + h_kv * k_rh
    v_row = b * v_rb + h_kv * v_rh

    q_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_M, HEAD_DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    turns = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(q_bars.index(i), count=1)
        mbarrier.init(turns.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_full.index(i), count=1)
        mbarrier.init(v_full.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=2)  # both consumers release each block
        mbarrier.init(v_empty.index(i), count=2)

    if CAUSAL:  # keys 0 .. each consumer's last row
        n_0 = (first_row + BLOCK_M + BLOCK_N - 1) // BLOCK_N
        n_1 = (first_row + 2 * BLOCK_M + BLOCK_N - 1) // BLOCK_N
    else:
        n_0 = seqlen // BLOCK_N
        n_1 = n_0
    o_row = pid_bh * seqlen + first_row
    lse_row = pid_bh.to(gl.int64) * seqlen
    gl.warp_specialize([
        (_consumer, (0, q_smem, k_smem, v_smem, q_bars, k_full, v_full, k_empty, v_empty, turns, o_desc, Lse, o_row,
                     lse_row, first_row, n_0, n_0, n_1, qk_scale, CAUSAL, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES)),
        (_consumer, (1, q_smem, k_smem, v_smem, q_bars, k_full, v_full, k_empty, v_empty, turns, o_desc, Lse,
                     o_row + BLOCK_M, lse_row, first_row + BLOCK_M, n_1, n_0, n_1, qk_scale, CAUSAL, BLOCK_M,
                     BLOCK_N, HEAD_DIM, STAGES)),
        (_producer, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars, k_full, v_full, k_empty, v_empty, q_row,
                     h * q_ch, k_row, h_kv * k_ch, v_row, h_kv * v_ch, n_1, BLOCK_M, BLOCK_N, STAGES)),
    ], [4, 4], [232, 40])


def attention_fwd_ws(q, k, v, causal, scale, block_n=128, stages=2):
    """(out, lse) as attention_gluon.attention_fwd_gluon, for arguments where attention_gluon.usable holds
    (T a multiple of 128 = 2 consumers x 64 rows)."""
    causal = bool(causal)
    return launch_forward(_fast, q, k, v, causal, scale, 64, block_n, 2 * 64, 1, (block_n, stages),
                          dict(CAUSAL=causal, BLOCK_M=64, BLOCK_N=block_n, HEAD_DIM=q.shape[3], STAGES=stages,
                               num_warps=4))


_fast = FastLaunch(_attn_fwd_ws_kernel)
