"""The FFN's backward GEMM, d_pre = (dy @ w_out) * act'(pre), on Hopper in Gluon, warp-specialized in ping-pong as
the gated forward of kernels/matmul_gated_gluon_ws.py.

    d_act = dy @ w_out          dy (M, K), w_out (K, N): nn.Linear's (D_out, H) weight, K = D_out, N = H
    d_pre = d_act * act'(pre)   (M, N), and its column sums (the first layer's bias gradient) when asked
    gated (swiglu, geglu): pre = (gate, up) (M, 2N), out = f(gate) * up, and d_pre = (d_gate, d_up) with
    d_gate = (d_act * up) * f'(gate), d_up = d_act * f(gate): two pre tiles in and two d_pre tiles out per tile

Why: the `tl` per-tile kernel (kernels/matmul_tl.py, `_act_bwd_kernel`) takes 216-226 us for relu 768 -> 3072 at
M 16384 on an H100 (eleventh session, tools/gpu_ffn_pick_stability.py), where cuBLAS runs a GEMM of that
size in about 100 us and the epilogue's memory (pre in, d_pre out: 200 MB) needs 67 us at the copy ceiling:
its epilogue runs while the tensor cores idle, and the persistent `tl` kernel measured no faster. Here a
program runs three partitions (`gl.warp_specialize`), as in matmul_gated_gluon_ws:
- the producer (one warpgroup, few registers) TMA-loads the dy tile and the w_out tile of each k-step of the
  program's tiles, tile after tile, into a ring of STAGES slots ("full" / "empty" mbarriers per slot), and after a
  tile's k-steps its pre tile into that tile's consumer's own shared-memory slices ("pre_full" / "pre_empty" per
  consumer), so that the pre tile lands during the tile's main loop;
- two consumers (a warpgroup per 64 rows of BLOCK_M each) take the program's tiles in turn: per k-step one wgmma of
  BLOCK_M x BLOCK_N, then the epilogue, slice by slice of SLICE_N columns: the pre slice read from shared memory in
  the accumulator's layout, act', the d_pre slice written over it and stored from there by TMA, the bias-gradient
  column sums added by fp32 atomics; all of it meant to run under the other consumer's main loop. Once the stores
  have read the slices the consumer hands them back to the producer.
The hand-over protocol ("turns": a consumer starts a tile once the previous tile's consumer has seen that
tile's last k-step land) is matmul_gated_gluon_ws's, checked there by tools/ws_gated_protocol_check.py.

Same rounding points as the `tl` kernel: d_act rounded to the dtype, act' in fp32 from the stored pre, d_pre
= (d_act * act') rounded; the bias gradient sums the rounded d_pre in fp32 (atomics, in varying order, as
the `tl` kernel's). Rows past M read zeros (TMA fills dy's and pre's), so their d_pre is 0 and adds nothing to
the sums; the stores clip them.

Scope (`usable`): Hopper (sm_90), fp16 / bf16, dy (M, K), w_out (K, N) and pre (M, N) (gated: (M, 2N)) with unit
last strides, d_pre contiguous, 16-byte aligned bases and row pitches (TMA), N and K multiples of 8 (so the up
halves' bases are aligned too). kernels/matmul.py's act_bwd times configs_for(activation) against the `tl` kernel
(gated: the persistent one) on a shape's first call (KERNELS_FFN_GLUON_BWD=0 keeps the `tl` kernels).

The gated epilogue (gate and up slices from the producer's TMA loads, d_gate and d_up written over them) follows
matmul_persistent's gated backward's rounding points; the gate's and up's halves are separate (M, N) descriptors
over pre's and d_pre's rows, so a tile past N reads zeros, not the up's first columns. sm_90a (Triton 3.6): no
spills at 64 x 128; geglu with the bias sums gets its wgmmas serialized by ptxas (C7514), which its timing against
the `tl` kernel weighs. Sixteenth session, H100, M 16384 with the bias sums: best config
1.30x / 1.16x the persistent `tl` kernel at swiglu / geglu 768 -> 2048, 1.07x at swiglu 2048 -> 5440, 0.83x at geglu
2048 -> 5440 (there the `tl` kernel stays).

Where the time goes (thirteenth session, H200, M 16384, gelu with the bias sums, epilogue parts left out one at a
time; TFLOP/s): the main loop alone runs 640 (64 x 128) and 760-810 (64 x 256), the whole kernel 320 / 200 at 768 ->
3072: the epilogue, not the GEMM, sets the pace. A one-warpgroup consumer runs its epilogue on one warp per SM
sub-partition, whose dependent chains (load, act', rounding, store, sums) nothing else hides, and it took about three
times the other consumer's main loop; leaving out the pre load, the store or the sums each gained 10-50%. Two
warpgroups per consumer (128 x 128 tiles, 64-column slices) halve the epilogue's share of each warp against the MMA
work: best config per point against the `tl` kernel, TFLOP/s (tools/gpu_ffn_nongated_gluon.py):
  768 -> 3072:  relu 405 (128 x 128) vs 383, gelu 353 vs 333, silu 373 vs 351, relu2 423 (64 x 256) vs 398
  2048 -> 8192: relu 583 (64 x 256) vs 521, gelu 531 (128 x 128) vs 479, silu 544 vs 505, relu2 594 vs 538
1.06-1.12x at every point, d_pre bitwise equal. (Its first GPU run read 0.45-0.65x: the bias-sum atomics were acq_rel,
a GPU-wide memory barrier and an L1 invalidation before each; relaxed, they are fire-and-forget.) Those numbers are the
consumers' own pre loads (from global memory, in the accumulator's layout); leaving that load out was worth 15-50%,
hence the producer's TMA loads of pre here (fourteenth session, H100, best config against the `tl` kernel, d_pre
bitwise equal):
  768 -> 3072:  relu 482 (128 x 128) vs 359, gelu 392 vs 322, silu 428 vs 337, relu2 483 vs 388
  2048 -> 8192: relu 629 vs 537, gelu 590 vs 472, silu 564 vs 472, relu2 599 vs 588
"""
import functools
import operator

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma

from ._activations import GELU_DARG_1, GELU_DARG_3, GELU_EXP2_1, GELU_EXP2_3, RELU2_FROM_OUTPUT, SILU_EXP2
from ._launch import FastLaunch, launch_memo
from ._runtime import cdiv
from .matmul_gated_gluon import ACT_CODES as GATED_ACT_CODES, GROUP_M, PLAIN_ACT_CODES as ACT_CODES, _GL_DTYPES, \
    _descriptor, _is_hopper, _num_sms, _rcp, _tile_origin, _tma_2d
from .matmul_gated_gluon_ws import _invalidate_ring_barriers, _ring_barriers, _tile_main_loop, partition_regs

# ("ws", BLOCK_M, BLOCK_N, BLOCK_K, stages), BLOCK_M the rows of one consumer (a warpgroup per 64). A 64 x 128 tile
# loads its own dy and w_out boxes, (64 + 128) K elements per 64 x 128 x K products; 64 x 256 and 128 x 128 a sixth
# and a third less. Thirteenth session, H200, M 16384, with the bias sums, TFLOP/s at 64 x 128 / 64 x 256 / 128 x 128
# (4 stages), the pre tile then read from global memory by the consumers: gelu 768 -> 3072 315 / 200 / 353, relu2
# 374 / 423 / 404; gelu 2048 -> 8192 366 / 310 / 531, relu 380 / 583 / 577. Now each consumer's pre tile is TMA-loaded
# by the producer into the consumer's own slices (BLOCK_M x SLICE_N each, its whole tile), where the epilogue writes
# d_pre back for its TMA stores: only configs whose ring, slices and sums' scratch fit (shared_bytes) are listed.
# Fourteenth session, H100, the same points: gelu 768 -> 3072 354 / 171 / 392, relu2 446 / 431 / 483; gelu 2048 ->
# 8192 470 / 283 / 590, relu 492 / 479 / 629 (every config tested on the GPU in bf16 and fp16).
CONFIGS = (("ws", 64, 128, 64, 6), ("ws", 64, 128, 64, 4), ("ws", 64, 256, 64, 3), ("ws", 128, 128, 64, 4),
           ("ws", 128, 128, 64, 3))
# The gated activations (swiglu, geglu): pre and d_pre are (M, 2N), gate then up, so a tile's epilogue reads two pre
# tiles and writes two d_pre tiles, and each consumer's slices double: 128 x 128 no longer fits beside a ring of 3.
# 64 x 128 at 6 stages was the fastest at every gated suite point (H100, sixteenth session: swiglu / geglu 768 -> 2048
# 311 / 277 TFLOP/s, swiglu 2048 -> 5440 444); 128 x 64 (one slice per tile, 12-56 bytes of spills) never won
# outright (298 / 277, a tie at geglu 768 / 348) and ran on the GPU in one test case only, so it is not offered.
GATED_CONFIGS = (("ws", 64, 128, 64, 4), ("ws", 64, 128, 64, 6))
# name -> the code of act' (the gate's f, for a gated one): relu2's from its output (kernels/matmul.py FROM_OUTPUT)
_ALL_CODES = {**ACT_CODES, "relu2": RELU2_FROM_OUTPUT, **GATED_ACT_CODES}


SLICE_N = 64  # the pre / d_pre boxes' width: 128 bytes of 16-bit elements, the widest 128-byte-swizzled TMA box

# The bias sums' column reduction (gl.sum over the consumer's warps) takes compiler scratch beside our
# buffers: 4 KB (sm_90a, Triton 3.6: a kernel asked 228 KB with the sums, 224 without, over the 227 KB a block may
# have; its GPU tests failed with the sums only, thirteenth session).
SUM_SCRATCH = 4096


def shared_bytes(config, dtype_bytes, has_dbias=True, gated=False):
    """Shared memory a config asks: the ring, both consumers' pre / d_pre tiles (gate and up ones when gated), the
    sums' scratch."""
    _, bm, bn, bk, stages = config
    return ((stages * (bm * bk + bk * bn) + 2 * (1 + gated) * bm * bn) * dtype_bytes
            + (SUM_SCRATCH if has_dbias else 0))


def configs_for(activation):
    """The configs act_bwd_ws takes for this activation."""
    return GATED_CONFIGS if activation in GATED_ACT_CODES else CONFIGS


@gluon.jit
def _gate_act_and_grad(h, ACT: gl.constexpr):
    """(f(h), f'(h)) as kernels/_activations.activation_and_grad computes them (the same expressions but for the
    reciprocal, matmul_gated_gluon._rcp): GELU (1) or SILU (2), a gated activation's gate or the plain one."""
    if ACT == 1:
        h2 = h * h
        s = _rcp(1.0 + gl.exp2(h * (GELU_EXP2_1 + GELU_EXP2_3 * h2)))
        return h * s, s + h * s * (1.0 - s) * (GELU_DARG_1 + GELU_DARG_3 * h2)
    else:
        s = _rcp(1.0 + gl.exp2(h * SILU_EXP2))
        return h * s, s * (1.0 + h * (1.0 - s))


@gluon.jit
def _act_grad(h, ACT: gl.constexpr):
    """act'(h) for the non-gated codes (GELU's and SILU's from _gate_act_and_grad; its unused f(h) is dead code); relu's
    and relu2's h is their output (kernels/matmul.py FROM_OUTPUT), as in kernels/_activations.activation_and_grad."""
    if ACT == 0:
        return (h > 0.0).to(gl.float32)
    elif ACT > 2:  # RELU2_FROM_OUTPUT, relu2's only code here (a plain int: jitted code reads only constexpr globals)
        return 2.0 * gl.sqrt(h)
    else:
        _, df = _gate_act_and_grad(h, ACT)
        return df


@gluon.jit
def _producer(g_desc, w_desc, p_desc, u_desc, g_ring, w_ring, pre_tiles, full, empty, pre_full, pre_empty, num_pid_m,
              num_pid_n, k_tiles, my_tiles, STAGES: gl.constexpr, SLICES: gl.constexpr, GROUP: gl.constexpr,
              GATED: gl.constexpr):
    BLOCK_M: gl.constexpr = g_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = g_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[1]
    nbytes: gl.constexpr = g_desc.block_type.nbytes + w_desc.block_type.nbytes
    seq = 0
    for t in range(my_tiles):
        off_m, off_n = _tile_origin(gl.program_id(0) + t * gl.num_programs(0), num_pid_m, num_pid_n, BLOCK_M,
                                    BLOCK_N, GROUP)
        for ki in range(k_tiles):
            slot = seq % STAGES
            # a fresh barrier passes a wait on parity 1: the ring's first round is free
            mbarrier.wait(empty.index(slot), ((seq // STAGES) & 1) ^ 1)
            bar = full.index(slot)
            mbarrier.expect(bar, nbytes)
            tma.async_copy_global_to_shared(g_desc, [off_m, ki * BLOCK_K], bar, g_ring.index(slot))
            tma.async_copy_global_to_shared(w_desc, [ki * BLOCK_K, off_n], bar, w_ring.index(slot))
            seq += 1
        # the tile's pre, into its consumer's slices once that consumer's stores of its previous tile have read them
        # (issued after the tile's k-steps: by then the consumer is in this tile's main loop, done with the last)
        me = t % 2
        mbarrier.wait(pre_empty.index(me), ((t // 2) & 1) ^ 1)
        bar = pre_full.index(me)
        if GATED:  # the gate's slices, then the up's: 2 SLICES per consumer
            mbarrier.expect(bar, 2 * SLICES * p_desc.block_type.nbytes)
            for j in gl.static_range(SLICES):
                tma.async_copy_global_to_shared(p_desc, [off_m, off_n + j * p_desc.block_type.shape[1]], bar,
                                                pre_tiles.index(2 * me * SLICES + j))
                tma.async_copy_global_to_shared(u_desc, [off_m, off_n + j * p_desc.block_type.shape[1]], bar,
                                                pre_tiles.index(2 * me * SLICES + SLICES + j))
        else:
            mbarrier.expect(bar, SLICES * p_desc.block_type.nbytes)
            for j in gl.static_range(SLICES):
                tma.async_copy_global_to_shared(p_desc, [off_m, off_n + j * p_desc.block_type.shape[1]], bar,
                                                pre_tiles.index(me * SLICES + j))


@gluon.jit
def _d_pre_slice(d_act, off_m, off_n, cols, DBias, N, d_desc, du_desc, buf, up_buf, dtype: gl.constexpr,
                 ACT: gl.constexpr, HAS_DBIAS: gl.constexpr, GATED: gl.constexpr):
    """The epilogue of one slice of a tile (columns off_n ...) from d_act (dy @ w_out, rounded to the dtype), the
    `tl` kernels' rounding points: the pre slice read from its shared-memory tile buf in d_act's layout, act', the
    d_pre slice written back over it (each thread over what it read) and stored from there by TMA, its column sums
    added to DBias. Gated: the gate's slice in buf and the up's in up_buf, d_gate = (d_act * up) * f'(gate) and
    d_up = d_act * f(gate) written over them, each stored by TMA (d_desc, du_desc: d_pre's gate and up halves),
    their sums into DBias's halves. Rows and columns past the edges: TMA read zeros into pre there (and dy's,
    w_out's: d_act is 0), so their d_pre is 0; the store clips them."""
    h = buf.load(d_act.type.layout).to(gl.float32)
    if GATED:
        up = up_buf.load(d_act.type.layout).to(gl.float32)
        f, df = _gate_act_and_grad(h, ACT)
        d = d_act.to(gl.float32)
        d_pre = ((d * up).to(dtype).to(gl.float32) * df).to(dtype)  # as matmul_persistent's gated backward
        d_up = (d * f.to(dtype).to(gl.float32)).to(dtype)
        buf.store(d_pre)
        up_buf.store(d_up)
        fence_async_shared()
        tma.async_copy_shared_to_global(d_desc, [off_m, off_n], buf)
        tma.async_copy_shared_to_global(du_desc, [off_m, off_n], up_buf)
        if HAS_DBIAS:
            offs_n = off_n + cols
            gl.atomic_add(DBias + offs_n, gl.sum(d_pre.to(gl.float32), axis=0), mask=offs_n < N, sem="relaxed")
            gl.atomic_add(DBias + N + offs_n, gl.sum(d_up.to(gl.float32), axis=0), mask=offs_n < N, sem="relaxed")
    else:
        d_pre = (d_act.to(gl.float32) * _act_grad(h, ACT)).to(dtype)
        buf.store(d_pre)
        fence_async_shared()
        tma.async_copy_shared_to_global(d_desc, [off_m, off_n], buf)
        if HAS_DBIAS:
            # relaxed: acq_rel (the default) fences each of these atomics (kernels/matmul_tl.py's _act_bwd_kernel)
            offs_n = off_n + cols
            gl.atomic_add(DBias + offs_n, gl.sum(d_pre.to(gl.float32), axis=0), mask=offs_n < N, sem="relaxed")


@gluon.jit
def _halves(x, layout: gl.constexpr):
    """The left and right halves of x's columns, each in layout."""
    M: gl.constexpr = x.shape[0]
    N: gl.constexpr = x.shape[1]
    left, right = gl.split(gl.permute(gl.reshape(x, [M, 2, N // 2]), (0, 2, 1)))
    return gl.convert_layout(left, layout), gl.convert_layout(right, layout)


@gluon.jit
def _consumer(ME: gl.constexpr, g_ring, w_ring, pre_tiles, full, empty, turns, pre_full, pre_empty, d_desc, du_desc,
              DBias, N, num_pid_m, num_pid_n, k_tiles, my_tiles, ACT: gl.constexpr, HAS_DBIAS: gl.constexpr,
              STAGES: gl.constexpr, SLICES: gl.constexpr, UP: gl.constexpr, GROUP: gl.constexpr,
              GATED: gl.constexpr):
    BLOCK_M: gl.constexpr = g_ring.shape[1]
    BLOCK_N: gl.constexpr = w_ring.shape[2]  # the tile's columns, SLICES slices of SLICE columns
    SLICE: gl.constexpr = pre_tiles.shape[2]
    dtype: gl.constexpr = g_ring.dtype
    WARPS: gl.constexpr = BLOCK_M // 16  # a warpgroup per 64 rows (partition_regs)
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                         instr_shape=[16, BLOCK_N, 16])
    half_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                          instr_shape=[16, BLOCK_N // 2, 16])
    slice_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                           instr_shape=[16, SLICE, 16])
    cols = gl.arange(0, SLICE, layout=gl.SliceLayout(0, slice_layout))
    # this consumer's slices in pre_tiles: SLICES of pre (the gate's when gated), then, gated, UP = SLICES of the up's
    first = ME * (SLICES + UP)
    for i in range((my_tiles - ME + 1) // 2):
        t = ME + 2 * i
        off_m, off_n = _tile_origin(gl.program_id(0) + t * gl.num_programs(0), num_pid_m, num_pid_n, BLOCK_M,
                                    BLOCK_N, GROUP)
        # a fresh accumulator per tile (the first k-step overwrites it): one carried through the loop would hold its
        # registers through the epilogue
        acc = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=acc_layout)
        acc = _tile_main_loop(ME, i, t, g_ring, w_ring, full, empty, turns, acc, k_tiles, my_tiles, STAGES, False)

        # the epilogue, under the other consumer's main loop, from d_act rounded to the dtype (as the `tl` kernel's:
        # half the registers of the fp32 accumulator), slice by slice once the tile's pre has landed
        d_act = acc.to(dtype)
        mbarrier.wait(pre_full.index(ME), i & 1)
        if SLICES == 1:
            _d_pre_slice(gl.convert_layout(d_act, slice_layout), off_m, off_n, cols, DBias, N, d_desc, du_desc,
                         pre_tiles.index(first), pre_tiles.index(first + UP), dtype, ACT, HAS_DBIAS, GATED)
        elif SLICES == 2:
            left, right = _halves(d_act, slice_layout)
            _d_pre_slice(left, off_m, off_n, cols, DBias, N, d_desc, du_desc, pre_tiles.index(first),
                         pre_tiles.index(first + UP), dtype, ACT, HAS_DBIAS, GATED)
            _d_pre_slice(right, off_m, off_n + SLICE, cols, DBias, N, d_desc, du_desc, pre_tiles.index(first + 1),
                         pre_tiles.index(first + 1 + UP), dtype, ACT, HAS_DBIAS, GATED)
        else:  # 4: the halves' halves
            left, right = _halves(d_act, half_layout)
            q0, q1 = _halves(left, slice_layout)
            _d_pre_slice(q0, off_m, off_n, cols, DBias, N, d_desc, du_desc, pre_tiles.index(first),
                         pre_tiles.index(first + UP), dtype, ACT, HAS_DBIAS, GATED)
            _d_pre_slice(q1, off_m, off_n + SLICE, cols, DBias, N, d_desc, du_desc, pre_tiles.index(first + 1),
                         pre_tiles.index(first + 1 + UP), dtype, ACT, HAS_DBIAS, GATED)
            q2, q3 = _halves(right, slice_layout)
            _d_pre_slice(q2, off_m, off_n + 2 * SLICE, cols, DBias, N, d_desc, du_desc, pre_tiles.index(first + 2),
                         pre_tiles.index(first + 2 + UP), dtype, ACT, HAS_DBIAS, GATED)
            _d_pre_slice(q3, off_m, off_n + 3 * SLICE, cols, DBias, N, d_desc, du_desc, pre_tiles.index(first + 3),
                         pre_tiles.index(first + 3 + UP), dtype, ACT, HAS_DBIAS, GATED)
        # the stores have read the slices: the producer may load the next tile's pre into them
        tma.store_wait(pendings=0)
        mbarrier.arrive(pre_empty.index(ME))


@gluon.jit
def _act_bwd_ws_kernel(g_desc, w_desc, p_desc, u_desc, d_desc, du_desc, DBias, M, N, K,
                       ACT: gl.constexpr, HAS_DBIAS: gl.constexpr, STAGES: gl.constexpr, GROUP: gl.constexpr,
                       CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr, GATED: gl.constexpr,
                       num_warps: gl.constexpr):
    # g_desc: dy (M, K) in [BLOCK_M, BLOCK_K] tiles; w_desc: w_out (K, N) in [BLOCK_K, BLOCK_N] tiles;
    # p_desc, d_desc: pre and d_pre (M, N) in [BLOCK_M, SLICE_N] slices of a tile. Gated: those are pre's and d_pre's
    # gate halves (M, N) of (M, 2N), u_desc and du_desc their up halves (else p_desc and d_desc again, unused).
    BLOCK_M: gl.constexpr = g_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = g_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[1]
    SLICE: gl.constexpr = p_desc.block_type.shape[1]  # SLICE_N
    SLICES: gl.constexpr = BLOCK_N // SLICE
    UP: gl.constexpr = SLICES * GATED  # a consumer's up slices follow its gate slices
    dtype: gl.constexpr = g_desc.dtype
    g_ring = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, BLOCK_K], g_desc.layout)
    w_ring = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_K, BLOCK_N], w_desc.layout)
    pre_tiles = gl.allocate_shared_memory(dtype, [2 * (SLICES + UP), BLOCK_M, SLICE], p_desc.layout)
    full, empty, turns = _ring_barriers(STAGES)
    pre_full = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    pre_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(pre_full.index(i), count=1)
        mbarrier.init(pre_empty.index(i), count=1)

    num_pid_m = gl.cdiv(M, BLOCK_M)
    num_pid_n = gl.cdiv(N, BLOCK_N)
    k_tiles = gl.cdiv(K, BLOCK_K)
    my_tiles = gl.cdiv(num_pid_m * num_pid_n - gl.program_id(0), gl.num_programs(0))  # the grid is <= tiles
    gl.warp_specialize([
        (_consumer, (0, g_ring, w_ring, pre_tiles, full, empty, turns, pre_full, pre_empty, d_desc, du_desc, DBias,
                     N, num_pid_m, num_pid_n, k_tiles, my_tiles, ACT, HAS_DBIAS, STAGES, SLICES, UP, GROUP, GATED)),
        (_consumer, (1, g_ring, w_ring, pre_tiles, full, empty, turns, pre_full, pre_empty, d_desc, du_desc, DBias,
                     N, num_pid_m, num_pid_n, k_tiles, my_tiles, ACT, HAS_DBIAS, STAGES, SLICES, UP, GROUP, GATED)),
        (_producer, (g_desc, w_desc, p_desc, u_desc, g_ring, w_ring, pre_tiles, full, empty, pre_full, pre_empty,
                     num_pid_m, num_pid_n, k_tiles, my_tiles, STAGES, SLICES, GROUP, GATED)),
    ], [BLOCK_M // 16, 4], [CONSUMER_REGS, PRODUCER_REGS])
    _invalidate_ring_barriers(full, empty, turns, STAGES)
    for i in gl.static_range(2):
        mbarrier.invalidate(pre_full.index(i))
        mbarrier.invalidate(pre_empty.index(i))


def usable(dy, w_out, pre, d_pre, activation):
    """Whether act_bwd_ws takes these arguments (see the module docstring; gated: pre and d_pre (M, 2N))."""
    if activation not in _ALL_CODES or not (dy.is_cuda and dy.dim() == 2 and w_out.dim() == 2):
        return False
    M, K = dy.shape
    N = w_out.shape[1]
    width = 2 * N if activation in GATED_ACT_CODES else N
    return (dy.dtype in _GL_DTYPES and w_out.dtype == dy.dtype and pre.dtype == dy.dtype and d_pre.dtype == dy.dtype
            and w_out.shape[0] == K and pre.shape == (M, width) and d_pre.shape == (M, width) and M > 0
            and K % 8 == 0 and N % 8 == 0 and M * max(width, K, pre.stride(0)) < 2**31 and d_pre.is_contiguous()
            and _tma_2d(dy) and _tma_2d(w_out) and _tma_2d(pre) and _tma_2d(d_pre) and _is_hopper(dy.device.index or 0))


def act_bwd_ws(dy, w_out, pre, d_pre, dbias, activation, config=None):
    """Fill d_pre (M, N) with (dy @ w_out) * act'(pre), and add its column sums into dbias (fp32, zeroed by the
    caller) when dbias is not empty, where `usable` holds; config from configs_for(activation) (default its first).
    Gated: pre and d_pre (M, 2N), gate then up, and dbias 2N sums, as kernels/matmul.act_bwd's."""
    M, K = dy.shape
    N = w_out.shape[1]
    gated = activation in GATED_ACT_CODES
    config = config or configs_for(activation)[0]
    has_dbias = dbias.numel() > 0
    sums = dbias if has_dbias else d_pre  # (an unused pointer without the sums)
    # remembered (kernels/_launch.launch_memo) under what fixes the grid, constexprs and arguments' launch facts,
    # and the tensors' addresses (in argument order): the up halves' by their offsets, so that a remembered call
    # builds no views (the gate's are pre's and d_pre's own; non-gated kernels take pre's and d_pre's again)
    p, d = pre.data_ptr(), d_pre.data_ptr()
    up_offset = N * pre.element_size() if gated else 0
    addresses = (dy.data_ptr(), w_out.data_ptr(), p, p + up_offset, d, d + up_offset, sums.data_ptr())
    aligned = not functools.reduce(operator.or_, addresses) % 16
    key = (config, activation, has_dbias, M, K, N, dy.stride(0), w_out.stride(0), pre.stride(0), dy.dtype,
           dy.get_device())

    def setup():
        _, bm, bn, bk, stages = config
        consumer, producer = partition_regs(bm)
        grid = (min(cdiv(M, bm) * cdiv(N, bn), _num_sms(dy.device.index or 0)), 1, 1)
        p_desc, d_desc = _descriptor(pre, (M, N), (bm, SLICE_N)), _descriptor(d_pre, (M, N), (bm, SLICE_N))
        u_desc, du_desc = ((_descriptor(pre[:, N:], (M, N), (bm, SLICE_N)),
                            _descriptor(d_pre[:, N:], (M, N), (bm, SLICE_N))) if gated else (p_desc, d_desc))
        args = (_descriptor(dy, (M, K), (bm, bk)), _descriptor(w_out, (K, N), (bk, bn)), p_desc, u_desc, d_desc,
                du_desc, sums, M, N, K)
        return grid, args, dict(ACT=_ALL_CODES[activation], HAS_DBIAS=has_dbias, STAGES=stages, GROUP=GROUP_M,
                                CONSUMER_REGS=consumer, PRODUCER_REGS=producer, GATED=gated, num_warps=bm // 16)
    launch_memo(_fast, key, addresses, aligned, setup)
    return d_pre


_fast = FastLaunch(_act_bwd_ws_kernel)
