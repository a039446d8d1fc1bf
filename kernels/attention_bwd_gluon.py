"""The attention backward's dK/dV and dQ kernels in Gluon for Hopper, with the forward's trick
(kernels/attention_gluon.py): wgmmas issued asynchronously so that the exponentials and dS run on the CUDA cores
under the tensor cores' work. The `tl` preprocess (delta = rowsum(dO * O), lse2) runs first, as for the `tl`
kernels. kernels/attention_bwd.py sends each of the two kernels here where it applies and timed faster than its
`tl` twin for the shape (KERNELS_ATTN_BWD_GLUON=0: never).

dK/dV: one program owns BLOCK_N keys of one (batch, kv head) and walks the query blocks that see them (all of
every head of its GQA group), accumulating in registers

    dV += P^T dO          dK += dS^T Q          (dK scaled by the softmax scale at the end)

where, per query block, S^T = K Q^T, P^T = exp2(S^T * scale * log2(e) - lse2), dP^T = V dO^T and
dS^T = P^T * (dP^T - delta): lse2 and delta are the `tl` backward's preprocess buffers (padded rows).
Per query block j (Q_j, dO_j by TMA into two-slot rings):

      issue  S^T = K Q_j^T,  dP^T = V dO_j^T         (asynchronous)
      wait S^T; P^T = exp2(...)                        (under dP^T on the tensor cores)
      issue  dV += P^T dO_j                           (P^T from registers)
      wait dP^T; dS^T = P^T (dP^T - delta)             (under dV += P^T dO_j)
      issue  dK += dS^T Q_j; wait everything           (no wgmma in flight across the back edge: C7514)

dQ: one program owns BLOCK_M query rows of one (batch, head) and walks the key blocks they see: S = Q K^T and
dP = dO V^T issued together, P's exponentials under dP, then dQ += dS K (no atomics: P and dP are computed
again, as by the `tl` kernels).

Scope as the forward's Gluon path (`attention_gluon.usable`: T == S a multiple of 128, D 64 / 128, fp16 /
bf16, 2D-tileable q, k, v, and dO).
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma, \
    warpgroup_mma_wait

from . import _tuning, attention_bwd, attention_gluon
from ._launch import FastLaunch, launch_memo
from ._runtime import cdiv, next_power_of_2
from .attention_gluon import LOG2E, _descriptor

# (block_n, block_m, num_warps) per head dim, timed on a shape's first call against each other and the `tl`
# kernel (the first one where the shape is too small to time): block_n keys per program (64 per warpgroup),
# block_m query rows per step. Registers for sm_90a (Triton 3.6, offline, `python tools/sm90_registers.py
# attention_bwd_gluon`), causal or not, no spills: D 64 175-198; D 128 (64, 64, 4) 239-248, (128, 64, 8)
# 239-251 (both spilled 20-92 bytes before K and V were indexed as in _dkdv_step).
# H200, causal, T 1024 / 4096 / 16384, ms: D 128 (64, 64, 4) 0.285 / 0.942 / 3.514, (128, 64, 8) 0.347 / 1.112 /
# 3.763, (64, 32, 4) 0.330 / 1.114 / 4.406 (left out), the `tl` kernel 0.392 / 1.172 / 4.085. Left out after the
# first GPU run: D 64 (128, 64, 8), 20-34% slower than (64, 64, 4); D 128 (128, 32, 8), 13-19% slower.
CONFIGS = {64: ((64, 64, 4), ), 128: ((64, 64, 4), (128, 64, 8))}
# (block_m, block_n, num_warps) of the dQ kernel: block_m query rows per program (64 per warpgroup), block_n
# keys per step (registers 122-231, no spills; Q and dO indexed as K and V in _dkdv_step only saved 8-12 at
# D 128 causal, so they are not). Left out likewise: (128, 128, 8) at D 64 (5-35% slower),
# (128, 64, 8) at D 128 (1-13% slower than (64, 64, 4)).
DQ_CONFIGS = {64: ((64, 64, 4), (128, 64, 8)), 128: ((64, 64, 4), (128, 128, 8))}


@gluon.jit
def _load_rows(desc, row, col, bar, dst, pred):
    mbarrier.expect(bar, desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(desc, [row, col], bar, dst, pred=pred)


@gluon.jit
def _dkdv_step(j, it, dk, dv, k_smem, v_smem, q_smem, do_smem, q_bars, do_bars, q_desc, do_desc, q_row, q_col,
               do_row, do_col, Lse2, Delta, row_base, seqlen, n_blocks, m_first, keys, offs_m, zero_s, qk_scale,
               MASK: gl.constexpr, op_layout: gl.constexpr, BLOCK_M: gl.constexpr):
    """Query block m_first + j (ring position it) into dk, dv; MASK applies the causal mask."""
    dtype: gl.constexpr = q_smem.dtype
    slot = it % 2
    phase = (it // 2) & 1
    # K and V (loop-invariant tiles) through an index that is always 0 but that LLVM cannot prove constant
    # (seqlen >> 31, seqlen being positive): else LLVM hoists their wgmma descriptors (64 bits per K-step) out of
    # the loop and holds them in registers across it; D 128 (128, 64, 8) then spilled 20-84 bytes at 255
    # registers (Triton 3.6, ptxas -v). Rebuilt per use they cost integer ops in the loop, not registers.
    kv = it & (seqlen >> 31)
    k_tile = k_smem.index(kv)
    v_tile = v_smem.index(kv)
    start_m = (m_first + j) * BLOCK_M
    rows = start_m + offs_m
    lse2 = gl.load(Lse2 + row_base + rows)
    delta = gl.load(Delta + row_base + rows)
    mbarrier.wait(q_bars.index(slot), phase)
    s_t = warpgroup_mma(k_tile, q_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    mbarrier.wait(do_bars.index(slot), phase)
    dp_t = warpgroup_mma(v_tile, do_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    s_t = warpgroup_mma_wait(num_outstanding=1, deps=(s_t, ))
    # P^T = exp2(S^T * scale * log2 e - lse2), 0 where the key comes after the query
    if MASK:
        visible = gl.expand_dims(keys, 1) <= gl.expand_dims(rows, 0)
        p_t = gl.where(visible, gl.exp2(s_t * qk_scale - gl.expand_dims(lse2, 0)), 0.0)
    else:
        p_t = gl.exp2(s_t * qk_scale - gl.expand_dims(lse2, 0))
    p_op = gl.convert_layout(p_t.to(dtype), op_layout)
    dv = warpgroup_mma(p_op, do_smem.index(slot), dv, is_async=True)
    dp_t = warpgroup_mma_wait(num_outstanding=1, deps=(dp_t, ))
    ds_t = p_t * (dp_t - gl.expand_dims(delta, 0))
    ds_op = gl.convert_layout(ds_t.to(dtype), op_layout)
    dk = warpgroup_mma(ds_op, q_smem.index(slot), dk, is_async=True)
    dv, dk, p_op, ds_op = warpgroup_mma_wait(num_outstanding=0, deps=(dv, dk, p_op, ds_op))
    # both tiles of this slot are read: refill it with block j + 2
    more = j + 2 < n_blocks
    _load_rows(q_desc, q_row + (j + 2) * BLOCK_M, q_col, q_bars.index(slot), q_smem.index(slot), more)
    _load_rows(do_desc, do_row + (j + 2) * BLOCK_M, do_col, do_bars.index(slot), do_smem.index(slot), more)
    return dk, dv


@gluon.jit
def _attn_bwd_dkdv_gluon_kernel(q_desc, k_desc, v_desc, do_desc, dk_desc, dv_desc, Lse2, Delta, seqlen, n_heads,
                                n_kv_heads, padded_q, qk_scale, sm_scale,
                                q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, do_rb, do_rh, do_ch,
                                CAUSAL: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr,
                                HEAD_DIM: gl.constexpr, num_warps: gl.constexpr):
    dtype: gl.constexpr = q_desc.dtype
    pid_n = gl.program_id(0)  # (causal: the first keys are read by the most query blocks: they go first)
    pid_bkv = gl.program_id(1)
    b = pid_bkv // n_kv_heads
    h_kv = pid_bkv % n_kv_heads
    group = n_heads // n_kv_heads
    start_n = pid_n * BLOCK_N

    # S^T, dP^T (BLOCK_N, BLOCK_M) and dK, dV (BLOCK_N, HEAD_DIM) in wgmma accumulator layouts; P^T and dS^T
    # feed the dV and dK wgmmas from registers.
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_M, 16])
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, HEAD_DIM, 16])
    op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    keys = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, s_layout))
    offs_m = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, s_layout))

    k_smem = gl.allocate_shared_memory(dtype, [1, BLOCK_N, HEAD_DIM], k_desc.layout)  # ([1, ...]: see _dkdv_step)
    v_smem = gl.allocate_shared_memory(dtype, [1, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_M, HEAD_DIM], q_desc.layout)
    do_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_M, HEAD_DIM], do_desc.layout)
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    do_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar, count=1)
    for i in gl.static_range(2):
        mbarrier.init(q_bars.index(i), count=1)
        mbarrier.init(do_bars.index(i), count=1)

    mbarrier.expect(kv_bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(k_desc, [b * k_rb + h_kv * k_rh + start_n, h_kv * k_ch], kv_bar, k_smem.index(0))
    tma.async_copy_global_to_shared(v_desc, [b * v_rb + h_kv * v_rh + start_n, h_kv * v_ch], kv_bar, v_smem.index(0))

    n_qb = seqlen // BLOCK_M
    if CAUSAL:  # query blocks before the key block see none of it; from m_full on they see all of it
        m_first = start_n // BLOCK_M
        m_full = gl.minimum((start_n + BLOCK_N) // BLOCK_M, n_qb)
    else:
        m_first = 0
        m_full = 0
    n_blocks = n_qb - m_first
    zero_s = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, layout=s_layout)
    dk = gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, layout=acc_layout)
    dv = gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, layout=acc_layout)
    mbarrier.wait(kv_bar, 0)

    it = 0  # query blocks consumed so far: the rings' position (every loaded block is consumed in order)
    for g in range(group):
        h = h_kv * group + g
        q_row = b * q_rb + h * q_rh + m_first * BLOCK_M
        do_row = b * do_rb + h * do_rh + m_first * BLOCK_M
        q_col = h * q_ch
        do_col = h * do_ch
        row_base = (b * n_heads + h).to(gl.int64) * padded_q
        for i in gl.static_range(2):  # this head's first two blocks into the ring slots it reaches them in
            slot = (it + i) % 2
            _load_rows(q_desc, q_row + i * BLOCK_M, q_col, q_bars.index(slot), q_smem.index(slot), i < n_blocks)
            _load_rows(do_desc, do_row + i * BLOCK_M, do_col, do_bars.index(slot), do_smem.index(slot), i < n_blocks)
        for j in range(0, m_full - m_first):  # the diagonal band: masked
            dk, dv = _dkdv_step(j, it + j, dk, dv, k_smem, v_smem, q_smem, do_smem, q_bars, do_bars, q_desc, do_desc,
                                q_row, q_col, do_row, do_col, Lse2, Delta, row_base, seqlen, n_blocks, m_first, keys,
                                offs_m, zero_s, qk_scale, True, op_layout, BLOCK_M)
        for j in range(m_full - m_first, n_blocks):
            dk, dv = _dkdv_step(j, it + j, dk, dv, k_smem, v_smem, q_smem, do_smem, q_bars, do_bars, q_desc, do_desc,
                                q_row, q_col, do_row, do_col, Lse2, Delta, row_base, seqlen, n_blocks, m_first, keys,
                                offs_m, zero_s, qk_scale, False, op_layout, BLOCK_M)
        it += n_blocks

    mbarrier.invalidate(kv_bar)
    for i in gl.static_range(2):
        mbarrier.invalidate(q_bars.index(i))
        mbarrier.invalidate(do_bars.index(i))
    # K and V are no longer read: their tiles stage dK and dV for the TMA stores
    k_smem.index(0).store((dk * sm_scale).to(dtype))
    v_smem.index(0).store(dv.to(dtype))
    fence_async_shared()
    out_row = pid_bkv * seqlen + start_n
    tma.async_copy_shared_to_global(dk_desc, [out_row, 0], k_smem.index(0))
    tma.async_copy_shared_to_global(dv_desc, [out_row, 0], v_smem.index(0))
    tma.store_wait(pendings=0)


@gluon.jit
def _dq_step(j, dq, q_smem, do_smem, k_smem, v_smem, k_bars, v_bars, k_desc, v_desc, k_row, k_col, v_row, v_col,
             n_blocks, rows, offs_n, lse2, delta, zero_s, qk_scale, MASK: gl.constexpr, op_layout: gl.constexpr,
             BLOCK_N: gl.constexpr):
    """Key block j into dq; MASK applies the causal mask."""
    dtype: gl.constexpr = q_smem.dtype
    slot = j % 2
    phase = (j // 2) & 1
    mbarrier.wait(k_bars.index(slot), phase)
    s = warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    mbarrier.wait(v_bars.index(slot), phase)
    dp = warpgroup_mma(do_smem, v_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(num_outstanding=1, deps=(s, ))
    if MASK:
        cols = j * BLOCK_N + offs_n
        visible = gl.expand_dims(cols, 0) <= gl.expand_dims(rows, 1)
        p = gl.where(visible, gl.exp2(s * qk_scale - gl.expand_dims(lse2, 1)), 0.0)
    else:
        p = gl.exp2(s * qk_scale - gl.expand_dims(lse2, 1))
    dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp, ))
    ds = gl.convert_layout((p * (dp - gl.expand_dims(delta, 1))).to(dtype), op_layout)
    dq = warpgroup_mma(ds, k_smem.index(slot), dq, is_async=True)
    dq, ds = warpgroup_mma_wait(num_outstanding=0, deps=(dq, ds))
    more = j + 2 < n_blocks  # both tiles of this slot are read: refill it with block j + 2
    _load_rows(k_desc, k_row + (j + 2) * BLOCK_N, k_col, k_bars.index(slot), k_smem.index(slot), more)
    _load_rows(v_desc, v_row + (j + 2) * BLOCK_N, v_col, v_bars.index(slot), v_smem.index(slot), more)
    return dq


@gluon.jit
def _attn_bwd_dq_gluon_kernel(q_desc, k_desc, v_desc, do_desc, dq_desc, Lse2, Delta, seqlen, n_heads, n_kv_heads,
                              padded_q, qk_scale, sm_scale,
                              q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, do_rb, do_rh, do_ch,
                              CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                              HEAD_DIM: gl.constexpr, num_warps: gl.constexpr):
    """dQ = scale * sum over key blocks of dS K, for BLOCK_M query rows of one (batch, head) per program:
    per key block S = Q K^T and dP = dO V^T issued together, P's exponentials under dP, dQ += dS K issued
    and waited for before the next block."""
    dtype: gl.constexpr = q_desc.dtype
    pid_m = gl.num_programs(0) - 1 - gl.program_id(0)  # the longest causal rows first
    pid_bh = gl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    h_kv = h // (n_heads // n_kv_heads)
    start_m = pid_m * BLOCK_M

    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, HEAD_DIM, 16])
    op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    rows = start_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout))
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))

    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], q_desc.layout)
    do_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], do_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, HEAD_DIM], v_desc.layout)
    qdo_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(qdo_bar, count=1)
    for i in gl.static_range(2):
        mbarrier.init(k_bars.index(i), count=1)
        mbarrier.init(v_bars.index(i), count=1)

    if CAUSAL:  # keys up to the block's last row; from n_full on the blocks reach past its first row
        n_blocks = (start_m + BLOCK_M + BLOCK_N - 1) // BLOCK_N
        n_full = start_m // BLOCK_N
    else:
        n_blocks = seqlen // BLOCK_N
        n_full = n_blocks
    k_row = b * k_rb + h_kv * k_rh
    v_row = b * v_rb + h_kv * v_rh
    k_col = h_kv * k_ch
    v_col = h_kv * v_ch
    mbarrier.expect(qdo_bar, q_desc.block_type.nbytes + do_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [b * q_rb + h * q_rh + start_m, h * q_ch], qdo_bar, q_smem)
    tma.async_copy_global_to_shared(do_desc, [b * do_rb + h * do_rh + start_m, h * do_ch], qdo_bar, do_smem)
    for i in gl.static_range(2):
        _load_rows(k_desc, k_row + i * BLOCK_N, k_col, k_bars.index(i), k_smem.index(i), i < n_blocks)
        _load_rows(v_desc, v_row + i * BLOCK_N, v_col, v_bars.index(i), v_smem.index(i), i < n_blocks)

    row_base = pid_bh.to(gl.int64) * padded_q
    lse2 = gl.load(Lse2 + row_base + rows)
    delta = gl.load(Delta + row_base + rows)
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)
    dq = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, layout=acc_layout)
    mbarrier.wait(qdo_bar, 0)
    for j in range(0, n_full):
        dq = _dq_step(j, dq, q_smem, do_smem, k_smem, v_smem, k_bars, v_bars, k_desc, v_desc, k_row, k_col, v_row,
                      v_col, n_blocks, rows, offs_n, lse2, delta, zero_s, qk_scale, False, op_layout, BLOCK_N)
    for j in range(n_full, n_blocks):  # the diagonal band: masked
        dq = _dq_step(j, dq, q_smem, do_smem, k_smem, v_smem, k_bars, v_bars, k_desc, v_desc, k_row, k_col, v_row,
                      v_col, n_blocks, rows, offs_n, lse2, delta, zero_s, qk_scale, True, op_layout, BLOCK_N)

    mbarrier.invalidate(qdo_bar)
    for i in gl.static_range(2):
        mbarrier.invalidate(k_bars.index(i))
        mbarrier.invalidate(v_bars.index(i))
    q_smem.store((dq * sm_scale).to(dtype))  # Q is no longer read: its tile stages dQ
    fence_async_shared()
    tma.async_copy_shared_to_global(dq_desc, [pid_bh * seqlen + start_m, 0], q_smem)
    tma.store_wait(pendings=0)


def usable(q, k, v, dout):
    """Where dkdv_gluon takes the arguments: the Gluon forward's scope, dout 2D-tileable too."""
    return attention_gluon.usable(q, k, v) and attention_gluon._tile_rows(dout) is not None


_picked = {}  # (kernel, shape key) -> its config, or None where no candidate could be built


def picked_key(name, q, k, causal):
    """The key under which `_picked` remembers kernel `name`'s ("dK/dV" or "dQ") pick for a shape."""
    B, H, T, D = q.shape
    return name, D, bool(causal), q.dtype, T, next_power_of_2(B * H), H // k.shape[1]


def tuned(name, launch, configs, q, k, causal, *args, fallback=None):
    """launch(*args, config) with the fastest of configs for this shape (timed on its first call, as the
    forward's, against fallback(), the `tl` kernel, when given); False where the `tl` kernel timed faster or
    no candidate can be built here (the caller launches the `tl` kernel)."""
    B, H, T, D = q.shape
    key = picked_key(name, q, k, causal)
    config = _picked.get(key, False)
    if config is False:
        tune = attention_bwd.TUNE and B * H * T * T >= attention_bwd.TUNE_MIN_WORK
        config = _picked[key] = _tuning.fastest(configs[D], lambda c: launch(*args, c), tune,
                                                f"the Gluon {name} kernel", fallback=fallback)
    if config is None:
        return False
    launch(*args, config)
    return True


def dkdv_tuned(q, k, v, dout, lse2, delta, dk, dv, causal, scale, padded_q, fallback=None):
    return tuned("dK/dV", dkdv_gluon, CONFIGS, q, k, causal, q, k, v, dout, lse2, delta, dk, dv, causal, scale,
                 padded_q, fallback=fallback)


def dq_tuned(q, k, v, dout, lse2, delta, dq, causal, scale, padded_q, fallback=None):
    return tuned("dQ", dq_gluon, DQ_CONFIGS, q, k, causal, q, k, v, dout, lse2, delta, dq, causal, scale, padded_q,
                 fallback=fallback)


def _key(q, k, v, dout, padded_q, *extra):
    """What fixes a backward launch besides the tensors' addresses and the scale (kernels/_launch.launch_memo): the
    config and causality (extra), q's, k's, v's and dout's shapes and strides (their descriptors' facts and tile
    addressing; dk, dv, dq are contiguous, of q's or k's shape), the preprocess buffers' padded length, the dtype
    and device."""
    return (*extra, q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), dout.shape, dout.stride(),
            padded_q, q.dtype, q.get_device())


def _operands(q, k, v, dout, block_m, block_n):
    """The descriptors of q and dout in block_m-row tiles, of k and v in block_n-row ones, and their tile
    addressing (q's, k's, v's, dout's), as both kernels take them."""
    q_desc, q_tiles = _descriptor(q, block_m)
    do_desc, do_tiles = _descriptor(dout, block_m)
    k_desc, k_tiles = _descriptor(k, block_n)
    v_desc, v_tiles = _descriptor(v, block_n)
    return (q_desc, k_desc, v_desc, do_desc), (*q_tiles, *k_tiles, *v_tiles, *do_tiles)


def dkdv_gluon(q, k, v, dout, lse2, delta, dk, dv, causal, scale, padded_q, config=None):
    """Fill dk, dv (contiguous (B, H_kv, S, D)) from the preprocess buffers lse2, delta ((B, H, padded_q)
    fp32), for arguments where `usable` holds; config = (block_n, block_m, num_warps)."""
    B, H, T, D = q.shape
    H_kv = k.shape[1]
    block_n, block_m, num_warps = config or CONFIGS[D][0]
    causal, scale = bool(causal), float(scale)
    values = (q.data_ptr(), k.data_ptr(), v.data_ptr(), dout.data_ptr(), dk.data_ptr(), dv.data_ptr(), lse2.data_ptr(),
              delta.data_ptr(), scale * LOG2E, scale)

    def setup():
        descriptors, tiles = _operands(q, k, v, dout, block_m, block_n)
        args = (*descriptors, _descriptor(dk, block_n)[0], _descriptor(dv, block_n)[0], lse2, delta, T, H, H_kv,
                padded_q, values[-2], scale, *tiles)
        return (cdiv(T, block_n), B * H_kv, 1), args, dict(CAUSAL=causal, BLOCK_N=block_n, BLOCK_M=block_m,
                                                            HEAD_DIM=D, num_warps=num_warps)
    launch_memo(_fast, _key(q, k, v, dout, padded_q, causal, block_n, block_m, num_warps), values, True, setup)


def dq_gluon(q, k, v, dout, lse2, delta, dq, causal, scale, padded_q, config=None):
    """Fill dq (contiguous (B, H, T, D)) from the preprocess buffers, for arguments where `usable` holds;
    config = (block_m, block_n, num_warps)."""
    B, H, T, D = q.shape
    block_m, block_n, num_warps = config or DQ_CONFIGS[D][0]
    causal, scale = bool(causal), float(scale)
    values = (q.data_ptr(), k.data_ptr(), v.data_ptr(), dout.data_ptr(), dq.data_ptr(), lse2.data_ptr(),
              delta.data_ptr(), scale * LOG2E, scale)

    def setup():
        descriptors, tiles = _operands(q, k, v, dout, block_m, block_n)
        args = (*descriptors, _descriptor(dq, block_m)[0], lse2, delta, T, H, k.shape[1], padded_q, values[-2],
                scale, *tiles)
        return (T // block_m, B * H, 1), args, dict(CAUSAL=causal, BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=D,
                                                     num_warps=num_warps)
    launch_memo(_dq_fast, _key(q, k, v, dout, padded_q, causal, block_m, block_n, num_warps), values, True, setup)


_fast = FastLaunch(_attn_bwd_dkdv_gluon_kernel)
_dq_fast = FastLaunch(_attn_bwd_dq_gluon_kernel)
