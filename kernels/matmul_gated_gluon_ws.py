"""The gated FFN forward of kernels/matmul_gated_gluon.py, warp-specialized with two consumer warpgroups in
ping-pong: its ("ws", ...) candidates.

The persistent kernel there runs its epilogue (the accumulator's halves, the activation, the stores) on the
warps that issue the wgmmas: the tensor cores idle through it, about one k-step's worth of time per tile of
32 k-steps at K = 2048, and it reaches 574 TFLOP/s where cuBLAS's bare GEMM does 659 (H100, tenth session,
bench/RESULTS.md). Here a program runs three partitions (`gl.warp_specialize`):
- the producer (one warpgroup, few registers) TMA-loads the program's k-steps, tile after tile, into a ring
  of STAGES slots (the x tile, and the gate and up rows of W into the two halves of one buffer, as there):
  a "full" mbarrier per slot says it is loaded, an "empty" one that its reader is done with it;
- two consumers (the default partition and a worker, a warpgroup per 64 of their BLOCK_M rows) take the
  program's tiles in turn, consumer c the tiles t = c, c + 2, ...: per k-step one wgmma of BLOCK_M x 2 BLOCK_N,
  then the epilogue of the other matmul_gated_gluon kernel through the consumer's own staging tiles. With
  BLOCK_M 128 each warp runs half the epilogue per unit of MMA work that it does at 64 rows (the backward GEMM's
  two-warpgroup consumers, kernels/matmul_bwd_gluon_ws.py, gained 6-12% from it); the producer then gets
  setmaxnreg's least registers (partition_regs).
The ring is consumed in the order it is filled, so consumer 1's first k-step is loaded only as consumer 0's
tile drains from the ring: consumer 0's epilogue runs under consumer 1's main loop and the reverse, the
ping-pong of CUTLASS's Hopper kernels. One hand-over per tile keeps the consumers' waits in step: a consumer
starts a tile only once the previous tile's consumer has seen that tile's last k-step land ("turns"
mbarriers). Without it a consumer could wait on a slot's "full" barrier two phases ahead of it, and a wait on
parity 1 passes on a barrier still in phase 0 (tools/ws_gated_protocol_check.py found that race; it models
the protocol under random interleavings and checks this one).

Same outputs, saved tensors and rounding points as matmul_gated_gluon (and so the `tl` gated forward);
scope as its `usable`. On an H200 (eleventh session, tools/gpu_ffn_gated_gluon.py) its 4-stage config led the
gated shapes at 13 of 16 points, 541-648 TFLOP/s, 1.00-1.08x the `tl` kernel, outputs bitwise equal to it.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma, \
    warpgroup_mma_wait

from ._launch import FastLaunch
from ._runtime import cdiv
from .matmul_gated_gluon import ACT_CODES, GROUP_M, PLAIN_ACT_CODES, SMEM_LIMIT, _GL_DTYPES, _activation, \
    _descriptor, _gated_values, _is_hopper, _num_sms, _tile_origin, _tma_2d, gated_addresses, launch_args, \
    launch_forward

CONSUMER_REGS, PRODUCER_REGS = 232, 40  # per thread: two consumer warpgroups and a producer fill the 64K
LEAN_PRODUCER_REGS = 24  # setmaxnreg's least: enough for the producer's loop of TMA issues


def partition_regs(bm):
    """(consumer, producer) registers per thread for consumers of bm // 16 warps (a warpgroup per 64 rows): one
    warpgroup each, the split above; two, what the 64K registers of an SM leave them beside a lean producer
    warpgroup, a multiple of 8 (setmaxnreg)."""
    if bm == 64:
        return CONSUMER_REGS, PRODUCER_REGS
    return (65536 - 128 * LEAN_PRODUCER_REGS) // (4 * bm) // 8 * 8, LEAN_PRODUCER_REGS


def epilogue_buffers(config, dtype_bytes, store_pre):
    """Staging tiles per consumer for the epilogue's TMA stores: as many of the 1 (out) or 3 (out, gate,
    up) as fit beside the ring, for both consumers."""
    _, bm, bn, bk, stages = config
    ring = stages * (bm + 2 * bn) * bk * dtype_bytes
    tile = bm * bn * dtype_bytes
    return max(1, min(3 if store_pre else 1, (SMEM_LIMIT - ring) // (2 * tile)))


@gluon.jit
def _producer(x_desc, wg_desc, wu_desc, x_ring, w_ring, full, empty, num_pid_m, num_pid_n, k_tiles, my_tiles,
              STAGES: gl.constexpr, GROUP: gl.constexpr, GATED: gl.constexpr):
    BLOCK_M: gl.constexpr = x_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = x_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = wg_desc.block_type.shape[0]
    TILE_N: gl.constexpr = BLOCK_N if GATED else 2 * BLOCK_N  # output columns per tile
    nbytes: gl.constexpr = x_desc.block_type.nbytes + 2 * wg_desc.block_type.nbytes
    seq = 0
    for t in range(my_tiles):
        off_m, off_n = _tile_origin(gl.program_id(0) + t * gl.num_programs(0), num_pid_m, num_pid_n, BLOCK_M,
                                    TILE_N, GROUP)
        for ki in range(k_tiles):
            slot = seq % STAGES
            # a fresh barrier passes a wait on parity 1: the ring's first round is free
            mbarrier.wait(empty.index(slot), ((seq // STAGES) & 1) ^ 1)
            bar = full.index(slot)
            w = w_ring.index(slot)
            mbarrier.expect(bar, nbytes)
            tma.async_copy_global_to_shared(x_desc, [off_m, ki * BLOCK_K], bar, x_ring.index(slot))
            tma.async_copy_global_to_shared(wg_desc, [off_n, ki * BLOCK_K], bar, w.slice(0, BLOCK_N))
            if GATED:  # the up rows of W, through their own descriptor
                tma.async_copy_global_to_shared(wu_desc, [off_n, ki * BLOCK_K], bar, w.slice(BLOCK_N, BLOCK_N))
            else:  # the next BLOCK_N rows of W: the tile's second half of output columns
                tma.async_copy_global_to_shared(wg_desc, [off_n + BLOCK_N, ki * BLOCK_K], bar,
                                                w.slice(BLOCK_N, BLOCK_N))
            seq += 1


@gluon.jit
def _store_tile(desc, off_m, off_n, value, c_smem, first_buf, count, EPI_BUFS: gl.constexpr):
    """This consumer's count-th store, through its staging tile first_buf + count % EPI_BUFS (see
    matmul_gated_gluon._store_tile; a consumer's waits count only its own stores)."""
    buf = c_smem.index(first_buf + count % EPI_BUFS)
    tma.store_wait(pendings=EPI_BUFS - 1)
    buf.store(value)
    fence_async_shared()
    tma.async_copy_shared_to_global(desc, [off_m, off_n], buf)


@gluon.jit
def _plain_half(acc_half, off_m, off_n, cols, Bias, H, c_smem, first_buf, count, out_desc, pre_desc,
                dtype: gl.constexpr, ACT: gl.constexpr, HAS_BIAS: gl.constexpr, STORE_PRE: gl.constexpr,
                EPI_BUFS: gl.constexpr):
    """The non-gated epilogue of one half of a tile (columns off_n ...): the `tl` forward's rounding points
    (pre = acc + bias rounded, out = act(pre) rounded), out stored, then pre when STORE_PRE; returns the
    consumer's store count after."""
    if HAS_BIAS:
        offs_n = off_n + cols
        acc_half += gl.expand_dims(gl.load(Bias + offs_n, mask=offs_n < H, other=0.0).to(gl.float32), 0)
    pre = acc_half.to(dtype)
    _store_tile(out_desc, off_m, off_n, _activation(pre.to(gl.float32), ACT).to(dtype), c_smem, first_buf, count,
                EPI_BUFS)
    count += 1
    if STORE_PRE:
        _store_tile(pre_desc, off_m, off_n, pre, c_smem, first_buf, count, EPI_BUFS)
        count += 1
    return count


@gluon.jit
def _tile_main_loop(ME: gl.constexpr, i, t, a_ring, b_ring, full, empty, turns, acc, k_tiles, my_tiles,
                    STAGES: gl.constexpr, B_NK: gl.constexpr):
    """Consumer ME's main loop over tile t, its i-th: its turn awaited, then per k-step the slot awaited (the turn
    handed on at the tile's last one), one asynchronous wgmma into acc, and the previous k-step's slot freed once
    its wgmma has completed; the last slot freed after. B_NK: the B ring holds [N, K] boxes (nn.Linear's weight
    rows), taken transposed; else [K, N] ones."""
    first = t * k_tiles  # the tile's first k-step in the ring's sequence
    # the previous tile's consumer has seen that tile's last k-step land (its hand-over number i - 1 + ME)
    mbarrier.wait(turns.index(ME), (i - 1 + ME) & 1, pred=i - 1 + ME >= 0)
    for ki in range(k_tiles):
        seq = first + ki
        slot = seq % STAGES
        mbarrier.wait(full.index(slot), (seq // STAGES) & 1)
        mbarrier.arrive(turns.index(1 - ME), pred=(ki == k_tiles - 1) & (t + 1 < my_tiles))
        if B_NK:
            acc = warpgroup_mma(a_ring.index(slot), b_ring.index(slot).permute((1, 0)), acc, use_acc=ki > 0,
                                is_async=True)
        else:
            acc = warpgroup_mma(a_ring.index(slot), b_ring.index(slot), acc, use_acc=ki > 0, is_async=True)
        # the previous k-step's wgmma has completed: the producer may refill its slot
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))
        mbarrier.arrive(empty.index((seq + STAGES - 1) % STAGES), pred=ki > 0)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    mbarrier.arrive(empty.index((first + k_tiles - 1) % STAGES))
    return acc


@gluon.jit
def _consumer(ME: gl.constexpr, x_ring, w_ring, full, empty, turns, c_smem, out_desc, pg_desc, pu_desc, Bias, H,
              num_pid_m, num_pid_n, k_tiles, my_tiles, ACT: gl.constexpr, HAS_BIAS: gl.constexpr,
              STORE_PRE: gl.constexpr, STAGES: gl.constexpr, EPI_BUFS: gl.constexpr, GROUP: gl.constexpr,
              GATED: gl.constexpr):
    BLOCK_M: gl.constexpr = x_ring.shape[1]
    BLOCK_N: gl.constexpr = c_smem.shape[2]
    TILE_N: gl.constexpr = BLOCK_N if GATED else 2 * BLOCK_N  # output columns per tile
    dtype: gl.constexpr = x_ring.dtype
    WARPS: gl.constexpr = BLOCK_M // 16  # a warpgroup per 64 rows (partition_regs)
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                         instr_shape=[16, 2 * BLOCK_N, 16])
    half_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                          instr_shape=[16, BLOCK_N, 16])
    col_layout: gl.constexpr = gl.SliceLayout(0, half_layout)
    n_stores: gl.constexpr = (3 if STORE_PRE else 1) if GATED else (4 if STORE_PRE else 2)  # per tile
    cols = gl.arange(0, BLOCK_N, layout=col_layout)
    acc = gl.zeros([BLOCK_M, 2 * BLOCK_N], gl.float32, layout=acc_layout)
    for i in range((my_tiles - ME + 1) // 2):
        t = ME + 2 * i
        off_m, off_n = _tile_origin(gl.program_id(0) + t * gl.num_programs(0), num_pid_m, num_pid_n, BLOCK_M,
                                    TILE_N, GROUP)
        acc = _tile_main_loop(ME, i, t, x_ring, w_ring, full, empty, turns, acc, k_tiles, my_tiles, STAGES, True)

        # the epilogue, under the other consumer's main loop
        if GATED:  # matmul_gated_gluon._gated_fwd_kernel's
            out, pre_gate, pre_up = _gated_values(acc, off_n, cols, Bias, H, half_layout, dtype, ACT, HAS_BIAS,
                                                  BLOCK_M, BLOCK_N)
            _store_tile(out_desc, off_m, off_n, out, c_smem, ME * EPI_BUFS, i * n_stores, EPI_BUFS)
            if STORE_PRE:
                _store_tile(pg_desc, off_m, off_n, pre_gate, c_smem, ME * EPI_BUFS, i * n_stores + 1, EPI_BUFS)
                _store_tile(pu_desc, off_m, off_n, pre_up, c_smem, ME * EPI_BUFS, i * n_stores + 2, EPI_BUFS)
        else:  # the two halves of the tile's 2 BLOCK_N columns in turn (fewer live registers)
            first_half, second_half = gl.split(gl.permute(gl.reshape(acc, [BLOCK_M, 2, BLOCK_N]), (0, 2, 1)))
            count = _plain_half(gl.convert_layout(first_half, half_layout), off_m, off_n, cols, Bias, H, c_smem,
                                ME * EPI_BUFS, i * n_stores, out_desc, pg_desc, dtype, ACT, HAS_BIAS, STORE_PRE,
                                EPI_BUFS)
            _plain_half(gl.convert_layout(second_half, half_layout), off_m, off_n + BLOCK_N, cols, Bias, H, c_smem,
                        ME * EPI_BUFS, count, out_desc, pg_desc, dtype, ACT, HAS_BIAS, STORE_PRE, EPI_BUFS)
    tma.store_wait(pendings=0)


@gluon.jit
def _ring_barriers(STAGES: gl.constexpr):
    """The ping-pong's mbarriers, initialized: a ring's "full" and "empty" per slot (one consumer reads each slot)
    and the consumers' two "turns"."""
    full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turns = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(turns.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(full.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    return full, empty, turns


@gluon.jit
def _invalidate_ring_barriers(full, empty, turns, STAGES: gl.constexpr):
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(full.index(i))
        mbarrier.invalidate(empty.index(i))
    for i in gl.static_range(2):
        mbarrier.invalidate(turns.index(i))


@gluon.jit
def _gated_fwd_ws_kernel(x_desc, wg_desc, wu_desc, out_desc, pg_desc, pu_desc, Bias, M, H, K,
                         ACT: gl.constexpr, HAS_BIAS: gl.constexpr, STORE_PRE: gl.constexpr, STAGES: gl.constexpr,
                         EPI_BUFS: gl.constexpr, GROUP: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                         PRODUCER_REGS: gl.constexpr, num_warps: gl.constexpr, GATED: gl.constexpr):
    # descriptors as matmul_gated_gluon._gated_fwd_kernel's, x and the outputs in tiles of 64 rows
    BLOCK_M: gl.constexpr = x_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = x_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = wg_desc.block_type.shape[0]
    dtype: gl.constexpr = x_desc.dtype
    x_ring = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, BLOCK_K], x_desc.layout)
    w_ring = gl.allocate_shared_memory(dtype, [STAGES, 2 * BLOCK_N, BLOCK_K], wg_desc.layout)
    c_smem = gl.allocate_shared_memory(dtype, [2 * EPI_BUFS, BLOCK_M, BLOCK_N], out_desc.layout)
    full, empty, turns = _ring_barriers(STAGES)

    num_pid_m = gl.cdiv(M, BLOCK_M)
    num_pid_n = gl.cdiv(H, BLOCK_N if GATED else 2 * BLOCK_N)
    k_tiles = gl.cdiv(K, BLOCK_K)
    my_tiles = gl.cdiv(num_pid_m * num_pid_n - gl.program_id(0), gl.num_programs(0))  # the grid is <= tiles
    gl.warp_specialize([
        (_consumer, (0, x_ring, w_ring, full, empty, turns, c_smem, out_desc, pg_desc, pu_desc, Bias, H, num_pid_m,
                     num_pid_n, k_tiles, my_tiles, ACT, HAS_BIAS, STORE_PRE, STAGES, EPI_BUFS, GROUP, GATED)),
        (_consumer, (1, x_ring, w_ring, full, empty, turns, c_smem, out_desc, pg_desc, pu_desc, Bias, H, num_pid_m,
                     num_pid_n, k_tiles, my_tiles, ACT, HAS_BIAS, STORE_PRE, STAGES, EPI_BUFS, GROUP, GATED)),
        (_producer, (x_desc, wg_desc, wu_desc, x_ring, w_ring, full, empty, num_pid_m, num_pid_n, k_tiles, my_tiles,
                     STAGES, GROUP, GATED)),
    ], [BLOCK_M // 16, 4], [CONSUMER_REGS, PRODUCER_REGS])
    _invalidate_ring_barriers(full, empty, turns, STAGES)


def gated_forward_ws(x, w, b, activation, store_pre, config, out, pre):
    """Fill out (M, H) and, when store_pre, pre (M, 2H) as matmul_gated_gluon.gated_forward_gluon, where its
    `usable` holds; config ("ws", BLOCK_M, BLOCK_N, BLOCK_K, stages), BLOCK_M the rows of one consumer (64 or
    128: one or two warpgroups)."""
    _, bm, bn, bk, stages = config
    consumer, producer = partition_regs(bm)
    bias = x if b is None else b.contiguous()
    launch_forward(_fast, config, activation, x, w, b, store_pre, gated_addresses(x, w, bias, store_pre, out, pre),
                   lambda: (*launch_args(x, w, bias, store_pre, out, pre, bm, bn, bk),
                            dict(ACT=ACT_CODES[activation], HAS_BIAS=b is not None, STORE_PRE=bool(store_pre),
                                 STAGES=stages, EPI_BUFS=epilogue_buffers(config, x.element_size(), store_pre),
                                 GROUP=GROUP_M, CONSUMER_REGS=consumer, PRODUCER_REGS=producer, num_warps=bm // 16,
                                 GATED=True)))
    return out, pre


_fast = FastLaunch(_gated_fwd_ws_kernel)


# The non-gated forward (relu, gelu, silu, relu2: kernels/matmul.py's persistent `tl` kernel runs it otherwise) on
# the same kernel with GATED False: a consumer's tile is BLOCK_M rows x 2 BLOCK_N columns, the two BLOCK_N-row boxes
# of W loaded into the halves of one buffer, one wgmma of N = 2 BLOCK_N; its epilogue takes the halves in turn. The
# 128 x 128 config (two-warpgroup consumers; no spills in bf16, 4-24 bytes in fp16), fifteenth session, H100, M 16384
# (tools/gpu_ffn_nongated_gluon.py FORWARD_ONLY=1): 1-6% ahead of the 64-row one at every 2048 -> 8192 point (gelu
# with pre 556 TFLOP/s, 1.04x the tl kernel), behind it at 768 with pre; timed per shape like the others.
# Twelfth session, H200, M 16384, bf16, pre stored: 457-572 TFLOP/s at 768 -> 3072 (1.13-1.18x the persistent tl
# kernel), 561-599 at 2048 -> 8192 (0.94-1.05x; kernels/matmul.py times the two per shape).
PLAIN_CONFIGS = (("ws", 64, 128, 64, 4), ("ws", 128, 64, 64, 4))


def usable_plain(x, w, b, activation):
    """Whether plain_forward_ws takes these arguments: Hopper, fp16 / bf16, x (M, K) and w (N, K) as TMA takes
    them, N and K multiples of 8, b None or (N,) of x's dtype."""
    if activation not in PLAIN_ACT_CODES or not (x.is_cuda and x.dim() == 2 and w.dim() == 2):
        return False
    M, K = x.shape
    N = w.shape[0]
    return (x.dtype in _GL_DTYPES and w.dtype == x.dtype and w.device == x.device and w.shape[1] == K
            and N % 8 == 0 and K % 8 == 0 and M > 0 and K > 0 and M * max(N, K) < 2**31
            and (b is None or (b.dim() == 1 and b.shape[0] == N and b.dtype == x.dtype and b.device == x.device))
            and _tma_2d(x) and _tma_2d(w) and _is_hopper(x.device.index or 0))


def plain_forward_ws(x, w, b, activation, store_pre, config, out, pre):
    """Fill out = act(x @ w.T + b) (M, N) and, when store_pre, pre (M, N), as kernels.matmul.linear_act_fwd's
    non-gated path, where usable_plain holds; out and pre contiguous; config from PLAIN_CONFIGS."""
    M, K = x.shape
    N = w.shape[0]
    _, bm, bn, bk, stages = config
    consumer, producer = partition_regs(bm)
    bias = x if b is None else b.contiguous()
    o = out.data_ptr()
    addresses = (x.data_ptr(), w.data_ptr(), w.data_ptr(), o, pre.data_ptr() if store_pre else o, o, bias.data_ptr())

    def setup():
        out_desc = _descriptor(out, (M, N), (bm, bn))
        pre_desc = _descriptor(pre, (M, N), (bm, bn)) if store_pre else out_desc
        w_desc = _descriptor(w, (N, K), (bn, bk))
        grid = (min(cdiv(M, bm) * cdiv(N, 2 * bn), _num_sms(x.device.index or 0)), 1, 1)
        return (grid, (_descriptor(x, (M, K), (bm, bk)), w_desc, w_desc, out_desc, pre_desc, out_desc, bias, M, N, K),
                dict(ACT=PLAIN_ACT_CODES[activation], HAS_BIAS=b is not None, STORE_PRE=bool(store_pre),
                     STAGES=stages, EPI_BUFS=epilogue_buffers(config, x.element_size(), store_pre), GROUP=GROUP_M,
                     CONSUMER_REGS=consumer, PRODUCER_REGS=producer, num_warps=bm // 16, GATED=False))
    launch_forward(_fast, config, activation, x, w, b, store_pre, addresses, setup)
    return out, pre
