"""The attention forward of kernels/attention_gluon.py as a persistent kernel: its "persistent" candidates.

The pipelined kernel runs one program per (query block, head); at short T each program's prologue (the Q
tile and the first K and V blocks by TMA) and epilogue (O / l, its TMA store, the LSE store) are a large
share of its life. Here a grid of about one wave (programs_per_sm per SM) walks the tiles, and a program
overlaps the next tile's loads with the current tile:
- Q tiles alternate between two buffers: the next tile's Q is loaded after the current tile's first
  block, into the buffer that staged the previous tile's output (its TMA store waited for just before);
- K and V stream through the two-slot rings of the pipelined kernel as one sequence over the program's
  tiles: a freed slot takes the sequence's next block, the next tile's (or the one after's, where a tile
  has a single key block) when the current tile has none left; a slot's phase is its block's position
  in the sequence (`base` + j) / 2, mod 2;
- the output leaves by an asynchronous TMA store from the tile's Q buffer, waited for only before that
  buffer takes a later Q.
Per key block the schedule is the pipelined kernel's (S_j = Q K_j^T under nothing, O += P_{j-1} V_{j-1}
under the softmax of S_j, every wgmma waited for within its block).

Which tiles a program walks: causal tiles differ in work (query block i reads i + 1 key blocks), and a
static round-robin over the pipelined kernel's order (`_tile_of`) gives some programs 1.4-1.8x the mean
work (tools/fwd_persistent_model.py prints it). So tiles go in pairs of one head, query blocks x and
n_qb - 1 - x (the longer first), of equal summed work; pair u is head u // (n_qb / 2), and program p takes
pairs p, p + G, p + 2G, ... (G programs): the programs at work at one time cover consecutive heads
(sharing L2, GQA's K and V), and the work per program is within one pair of the mean. Non-causal tiles
go the same way (all equal). Needs n_qb = T / BLOCK_M even; otherwise scope, arguments and results as
attention_gluon.attention_fwd_gluon.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma, \
    warpgroup_mma_wait

from ._launch import FastLaunch
from .attention_gluon import _load_kv, _softmax_step, launch_forward
from .norms_bwd import sm_count


@gluon.jit
def _tile(s, pid, n_programs, n_qb, n_heads, n_kv_heads, seqlen, CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr,
          BLOCK_N: gl.constexpr):
    """(query block, batch x head, batch, head, kv head, key blocks) of this program's tile s: the longer
    (s even) or the shorter (s odd) query block of its pair s // 2 (see the module docstring)."""
    half = n_qb // 2
    u = pid + (s // 2) * n_programs
    bh = u // half
    x = u % half
    if s % 2 == 0:
        pid_m = n_qb - 1 - x
    else:
        pid_m = x
    b = bh // n_heads
    h = bh % n_heads
    h_kv = h // (n_heads // n_kv_heads)
    if CAUSAL:
        n_blocks = ((pid_m + 1) * BLOCK_M + BLOCK_N - 1) // BLOCK_N  # keys 0 .. the block's last row
    else:
        n_blocks = seqlen // BLOCK_N
    return pid_m, bh, b, h, h_kv, n_blocks


@gluon.jit
def _next_block(cursor, rb, rh, ch, pid, n_programs, n_qb, n_heads, n_kv_heads, seqlen, CAUSAL: gl.constexpr,
                BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr):
    """A ring's load cursor (tile s, block j, the tile's key blocks n, its first row and its column in the
    descriptor) moved to the program's next key block."""
    s, j, n, row, col = cursor
    j += 1
    if j == n:
        s += 1
        j = 0
        _, _, b, _, h_kv, n = _tile(s, pid, n_programs, n_qb, n_heads, n_kv_heads, seqlen, CAUSAL, BLOCK_M, BLOCK_N)
        row = b * rb + h_kv * rh
        col = h_kv * ch
    return s, j, n, row, col


@gluon.jit
def _load_next(desc, cursor, n_tiles, bar, dst, rb, rh, ch, pid, n_programs, n_qb, n_heads, n_kv_heads, seqlen,
               CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr):
    """Load the cursor's block (if the program has it) into dst; return the cursor moved on."""
    s, j, n, row, col = cursor
    _load_kv(desc, row + j * BLOCK_N, col, bar, dst, s < n_tiles)
    return _next_block(cursor, rb, rh, ch, pid, n_programs, n_qb, n_heads, n_kv_heads, seqlen, CAUSAL, BLOCK_M,
                       BLOCK_N)


@gluon.jit
def _attn_fwd_persistent_kernel(q_desc, k_desc, v_desc, o_desc, Lse, seqlen, n_heads, n_kv_heads, qk_scale,
                                q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, n_bh,
                                CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                                HEAD_DIM: gl.constexpr, num_warps: gl.constexpr):
    dtype: gl.constexpr = q_desc.dtype
    pid = gl.program_id(0)
    n_programs = gl.num_programs(0)
    n_qb = seqlen // BLOCK_M
    n_pairs = n_bh * (n_qb // 2)
    n_tiles = 2 * ((n_pairs - pid + n_programs - 1) // n_programs)  # pairs pid, pid + n_programs, ...

    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_layout: gl.constexpr = gl.SliceLayout(0, s_layout)
    orow_layout: gl.constexpr = gl.SliceLayout(1, o_layout)

    q_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_M, HEAD_DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(q_bars.index(i), count=1)
        mbarrier.init(k_bars.index(i), count=1)
        mbarrier.init(v_bars.index(i), count=1)

    # the first tile's Q, and the first two blocks of the K and V sequences
    pid_m, bh, b, h, h_kv, n_blocks = _tile(0, pid, n_programs, n_qb, n_heads, n_kv_heads, seqlen, CAUSAL, BLOCK_M,
                                            BLOCK_N)
    mbarrier.expect(q_bars.index(0), q_desc.block_type.nbytes, pred=n_tiles > 0)
    tma.async_copy_global_to_shared(q_desc, [b * q_rb + h * q_rh + pid_m * BLOCK_M, h * q_ch], q_bars.index(0),
                                    q_smem.index(0), pred=n_tiles > 0)
    k_next = (0, 0, n_blocks, b * k_rb + h_kv * k_rh, h_kv * k_ch)
    v_next = (0, 0, n_blocks, b * v_rb + h_kv * v_rh, h_kv * v_ch)
    for i in gl.static_range(2):
        k_next = _load_next(k_desc, k_next, n_tiles, k_bars.index(i), k_smem.index(i), k_rb, k_rh, k_ch, pid,
                            n_programs, n_qb, n_heads, n_kv_heads, seqlen, CAUSAL, BLOCK_M, BLOCK_N)
        v_next = _load_next(v_desc, v_next, n_tiles, v_bars.index(i), v_smem.index(i), v_rb, v_rh, v_ch, pid,
                            n_programs, n_qb, n_heads, n_kv_heads, seqlen, CAUSAL, BLOCK_M, BLOCK_N)

    offs_n = gl.arange(0, BLOCK_N, layout=col_layout)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)
    base = 0  # the position of the tile's key block 0 in the program's K and V sequences
    for t in range(n_tiles):
        pid_m, bh, b, h, h_kv, n_blocks = _tile(t, pid, n_programs, n_qb, n_heads, n_kv_heads, seqlen, CAUSAL,
                                                BLOCK_M, BLOCK_N)
        q = q_smem.index(t % 2)
        rows = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=row_layout)
        m_i = gl.full([BLOCK_M], -1.0e30, gl.float32, layout=row_layout)
        l_i = gl.zeros([BLOCK_M], gl.float32, layout=row_layout)
        acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, layout=o_layout)

        mbarrier.wait(q_bars.index(t % 2), (t // 2) & 1)
        # block 0: its scores and softmax, nothing to overlap with yet
        slot = base % 2
        mbarrier.wait(k_bars.index(slot), (base // 2) & 1)
        s = warpgroup_mma(q, k_smem.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(num_outstanding=0, deps=(s, ))
        k_next = _load_next(k_desc, k_next, n_tiles, k_bars.index(slot), k_smem.index(slot), k_rb, k_rh, k_ch, pid,
                            n_programs, n_qb, n_heads, n_kv_heads, seqlen, CAUSAL, BLOCK_M, BLOCK_N)
        # the next tile's Q, into the buffer whose output store (the previous tile's) is waited for here
        tma.store_wait(pendings=0)
        nm, _, nb, nh, _, _ = _tile(t + 1, pid, n_programs, n_qb, n_heads, n_kv_heads, seqlen, CAUSAL, BLOCK_M,
                                    BLOCK_N)
        mbarrier.expect(q_bars.index(1 - t % 2), q_desc.block_type.nbytes, pred=t + 1 < n_tiles)
        tma.async_copy_global_to_shared(q_desc, [nb * q_rb + nh * q_rh + nm * BLOCK_M, nh * q_ch],
                                        q_bars.index(1 - t % 2), q_smem.index(1 - t % 2), pred=t + 1 < n_tiles)
        if CAUSAL and BLOCK_N > pid_m * BLOCK_M:
            p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, offs_n, rows, qk_scale, True)
        else:
            p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, offs_n, rows, qk_scale, False)
        p = gl.convert_layout(p.to(dtype), p_layout)

        for j in range(1, n_blocks):  # the pipelined kernel's `_step`, its loads from the cursors
            slot = (base + j) % 2
            mbarrier.wait(k_bars.index(slot), ((base + j) // 2) & 1)
            s = warpgroup_mma(q, k_smem.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, orow_layout), 1)
            mbarrier.wait(v_bars.index(1 - slot), ((base + j - 1) // 2) & 1)
            acc = warpgroup_mma(p, v_smem.index(1 - slot), acc, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=1, deps=(s, ))
            k_next = _load_next(k_desc, k_next, n_tiles, k_bars.index(slot), k_smem.index(slot), k_rb, k_rh, k_ch,
                                pid, n_programs, n_qb, n_heads, n_kv_heads, seqlen, CAUSAL, BLOCK_M, BLOCK_N)
            cols = j * BLOCK_N + offs_n
            if CAUSAL and (j + 1) * BLOCK_N > pid_m * BLOCK_M:
                p_new, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, cols, rows, qk_scale, True)
            else:
                p_new, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, cols, rows, qk_scale, False)
            acc, p = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p))  # (C7514: none left in flight)
            v_next = _load_next(v_desc, v_next, n_tiles, v_bars.index(1 - slot), v_smem.index(1 - slot), v_rb, v_rh,
                                v_ch, pid, n_programs, n_qb, n_heads, n_kv_heads, seqlen, CAUSAL, BLOCK_M, BLOCK_N)
            p = gl.convert_layout(p_new.to(dtype), p_layout)
        # the last block's O += P V; its V slot takes the sequence's next block
        last = base + n_blocks - 1
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, orow_layout), 1)
        mbarrier.wait(v_bars.index(last % 2), (last // 2) & 1)
        acc = warpgroup_mma(p, v_smem.index(last % 2), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
        v_next = _load_next(v_desc, v_next, n_tiles, v_bars.index(last % 2), v_smem.index(last % 2), v_rb, v_rh, v_ch,
                            pid, n_programs, n_qb, n_heads, n_kv_heads, seqlen, CAUSAL, BLOCK_M, BLOCK_N)
        base += n_blocks

        out = acc / gl.expand_dims(gl.convert_layout(l_i, orow_layout), 1)
        q.store(out.to(dtype))  # this tile's Q is no longer read: it stages the output
        fence_async_shared()
        tma.async_copy_shared_to_global(o_desc, [bh * seqlen + pid_m * BLOCK_M, 0], q)
        gl.store(Lse + bh.to(gl.int64) * seqlen + rows, (m_i + gl.log2(l_i)) * 0.6931471805599453)

    tma.store_wait(pendings=0)
    for i in gl.static_range(2):
        mbarrier.invalidate(q_bars.index(i))
        mbarrier.invalidate(k_bars.index(i))
        mbarrier.invalidate(v_bars.index(i))


def attention_fwd_persistent(q, k, v, causal, scale, block_m=64, block_n=64, programs=None):
    """(out, lse) as attention_gluon.attention_fwd_gluon, for arguments where attention_gluon.usable holds and
    T is a multiple of 2 * block_m. programs: the grid (default: 2 per SM at block_m 64, else 1, at most one
    per pair of tiles); any count is right, tests use odd ones."""
    B, H, T, D = q.shape
    if T % (2 * block_m):
        raise ValueError(f"the persistent forward pairs query blocks: T = {T} is not a multiple of 2 x {block_m}")
    n_pairs = B * H * T // (2 * block_m)
    if programs is None:
        programs = min(n_pairs, sm_count(q.device) * (2 if block_m == 64 else 1))
    causal = bool(causal)
    return launch_forward(_fast, q, k, v, causal, scale, block_m, block_n, block_m, 1, (block_m, block_n, programs),
                          dict(CAUSAL=causal, BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=D, num_warps=block_m // 16),
                          lambda grid, args: ((programs, 1, 1), (*args[:-1], B * H)))


_fast = FastLaunch(_attn_fwd_persistent_kernel)
