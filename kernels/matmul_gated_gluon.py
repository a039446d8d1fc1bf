"""The gated FFN forward (swiglu, geglu) for Hopper in Gluon: one wgmma of N = 2 * BLOCK_N per k-step.

    pre  = x @ w.T + b                       (M, 2H), w = cat([w_gate, w_up]) of shape (2H, K)
    out  = f(pre[:, :H]) * pre[:, H:]        (M, H), f = silu (swiglu) or tanh-GELU (geglu)

Same outputs, saved tensors and rounding points as the gated path of the `tl` forward (kernels/matmul_tl.py)
(`linear_act_fwd`): gate and up are rounded to x's dtype after the bias (that is `pre`, written when
store_pre), f(gate) is computed in fp32 from the rounded gate and rounded before the product with the
rounded up, and the product is rounded once more. The activation formulas are those of
kernels/_activations.py, written out again in Gluon (a Gluon kernel cannot call a `triton.jit` one).

Why: the `tl` kernel issues two dots of N = BLOCK_N (gate tile, up tile) per k-step into two
accumulators; measured on an H200 it reaches about 510 TFLOP/s where cuBLAS's bare GEMM of the same
shape does about 660. Here each k-step TMA-loads the x tile and the gate rows and up rows of W into
the two halves of one [2 * BLOCK_N, BLOCK_K] shared buffer and issues ONE asynchronous wgmma of
N = 2 * BLOCK_N (instruction N = 256 at BLOCK_N = 128) into one fp32 accumulator. The epilogue splits
the accumulator into its gate and up halves in registers: in the wgmma layout a thread holds columns
c and c + BLOCK_N alike, so reshape (BM, 2, BN) -> permute -> split moves no data.

Schedule: persistent, one program per SM, output tiles in grouped order (GROUP_M row-tiles share
each sweep over the columns, so their W tiles stay in L2). The loads run STAGES - 1 k-steps ahead of
the wgmma through a ring of STAGES shared buffers, one mbarrier each, and the load counter runs on
across tiles: the next tile's first loads are in flight during this tile's epilogue. Each k-step
issues its wgmma, waits until the previous one has completed (one stays in flight) and refills the
slot that one read. The epilogue's stores are TMA bulk copies from EPI_BUFS staging tiles (as many
of the one to three stores per tile as fit in shared memory beside the ring): they drain while the
next tile's main loop runs.

Scope (`usable`): Hopper (sm_90), fp16 / bf16, x (M, K) and w (2H, K) with unit last strides,
16-byte aligned bases and row pitches (TMA), K and H multiples of 8; bias None or (2H,) of x's dtype.
Edges (M, H and K not multiples of the tiles) are zero-filled by TMA on load and clipped on store.
kernels/matmul.py's linear_act_fwd takes it where it applies and M > SMALL_M, timed per shape against the
tl kernel (the ninth session's table is there).
"""
import functools
import operator

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma, \
    warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from ._activations import GELU_EXP2_1, GELU_EXP2_3, SILU_EXP2
from ._launch import FastLaunch, descriptor_facts, launch_memo
from ._runtime import cdiv

_GL_DTYPES = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}
ACT_CODES = {"swiglu": 2, "geglu": 1}  # kernels/matmul.py's codes of f: SILU, GELU
PLAIN_ACT_CODES = {"relu": 0, "gelu": 1, "silu": 2, "relu2": 3}  # the non-gated ones: RELU, GELU, SILU, RELU2
GROUP_M = 8
SMEM_LIMIT = 232448 - 2048  # the H100's / H200's 227 KB per block, less room for the mbarriers

# (BLOCK_M, BLOCK_N, BLOCK_K, stages, num_warps). BLOCK_N is the width of each half (gate, up): the wgmma is
# BLOCK_M x 2 BLOCK_N. The first entry of a class is its default (untuned); kernels/matmul.py times a class's
# entries against each other and the tl kernel. First GPU run (H200, M 16384, tools/gpu_ffn_gated_gluon.py):
# 128 x 128 x 64 with 4 or 3 stages led at every shape; 128 x 64 x 64 (267-368 TFLOP/s) and BLOCK_K 32
# (285-466) never did and are left out.
# ("ws", BLOCK_M, BLOCK_N, BLOCK_K, stages): the warp-specialized ping-pong kernel of matmul_gated_gluon_ws
# (BLOCK_M rows per consumer: a warpgroup per 64). Its 3-stage twin (421-558 TFLOP/s against 4 stages' 541-648, H200,
# 2026-11-27 eleventh session) never led and is left out. The 128-row one (two-warpgroup consumers, 128 x 64 halves;
# 8-64 bytes of spills in its epilogue): fifteenth session, H100, M 16384 (tools/gpu_ffn_gated_gluon.py), the fastest
# Gluon config at swiglu 2048 -> 5440 with pre (600 TFLOP/s) and at 7 of 8 points without pre (595-644), behind
# the 64-row one with pre at 768 (1% at H 2048, 9-16% at H 3072); the per-shape timing keeps whichever leads, or the
# tl kernel.
CONFIGS = {
    # M up to 1024: one warpgroup of 64 rows, more tiles to spread over the SMs (kernels/matmul.py sends
    # M <= SMALL_M = 1024 to the tl kernel: host time weighs more there)
    "small_m": ((64, 128, 64, 4, 4), (128, 128, 64, 3, 8)),
    # K <= 1024 (768 -> 2048 / 3072): few k-steps per tile, so the epilogue weighs more
    "narrow_k": ((128, 128, 64, 4, 8), (128, 128, 64, 3, 8), ("ws", 64, 128, 64, 4), ("ws", 128, 64, 64, 4)),
    # K > 1024 (2048 -> 5440 / 8192)
    "wide_k": ((128, 128, 64, 4, 8), (128, 128, 64, 3, 8), ("ws", 64, 128, 64, 4), ("ws", 128, 64, 64, 4)),
}


def shape_class(M, K):
    """The CONFIGS key of a problem."""
    if M <= 1024:
        return "small_m"
    return "narrow_k" if K <= 1024 else "wide_k"


def epilogue_buffers(config, dtype_bytes, store_pre):
    """Staging tiles for the epilogue's TMA stores: as many of the 1 (out) or 3 (out, gate, up) as fit."""
    bm, bn, bk, stages, _ = config
    ring = stages * (bm + 2 * bn) * bk * dtype_bytes
    tile = bm * bn * dtype_bytes
    return max(1, min(3 if store_pre else 1, (SMEM_LIMIT - ring) // tile))


@gluon.jit
def _rcp(x):
    """1 / x by the SFU's approximate reciprocal alone (rcp.approx.ftz.f32, one ulp): x >= 1 here, where the fp32
    division's range checks and scalings (div.full.f32: a compare and three multiplies more) buy nothing."""
    return gl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=gl.float32, is_pure=True,
                                     pack=1)


@gluon.jit
def _activation(h, ACT: gl.constexpr):
    """kernels/_activations.activation in Gluon, the same expressions but for the reciprocal (_rcp: may differ from
    the `tl` kernels' in the last fp32 bit): RELU, GELU (tanh form, as h * sigmoid(2u) by one exp2), SILU, RELU2 (the
    gated kernels take GELU or SILU)."""
    if ACT == 0:
        return gl.maximum(h, 0.0)
    elif ACT == 1:
        return h * _rcp(1.0 + gl.exp2(h * (GELU_EXP2_1 + GELU_EXP2_3 * (h * h))))
    elif ACT == 2:
        return h * _rcp(1.0 + gl.exp2(h * SILU_EXP2))
    else:
        r = gl.maximum(h, 0.0)
        return r * r


@gluon.jit
def _tile_origin(tile_id, num_pid_m, num_pid_n, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                 GROUP: gl.constexpr):
    """(first row, first column) of output tile tile_id in grouped order (kernels.matmul_persistent.grouped_tile)."""
    per_group = GROUP * num_pid_n
    first_m = (tile_id // per_group) * GROUP
    group_m = gl.minimum(num_pid_m - first_m, GROUP)
    pid_m = first_m + (tile_id % per_group) % group_m
    pid_n = (tile_id % per_group) // group_m
    return pid_m * BLOCK_M, pid_n * BLOCK_N


@gluon.jit
def _load_step(step, total, k_tiles, num_pid_m, num_pid_n, x_desc, wg_desc, wu_desc, x_ring, w_ring, bars,
               STAGES: gl.constexpr, GROUP: gl.constexpr):
    """TMA loads of this program's k-step `step` (counted across its tiles) into ring slot step % STAGES:
    the x tile, and the gate and up rows of W into the two halves of one buffer. Nothing past `total`."""
    BLOCK_M: gl.constexpr = x_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = x_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = wg_desc.block_type.shape[0]
    tile_id = gl.program_id(0) + (step // k_tiles) * gl.num_programs(0)
    off_m, off_n = _tile_origin(tile_id, num_pid_m, num_pid_n, BLOCK_M, BLOCK_N, GROUP)
    k = (step % k_tiles) * BLOCK_K
    slot = step % STAGES
    bar = bars.index(slot)
    pred = step < total
    w = w_ring.index(slot)
    mbarrier.expect(bar, x_desc.block_type.nbytes + 2 * wg_desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(x_desc, [off_m, k], bar, x_ring.index(slot), pred=pred)
    tma.async_copy_global_to_shared(wg_desc, [off_n, k], bar, w.slice(0, BLOCK_N), pred=pred)
    tma.async_copy_global_to_shared(wu_desc, [off_n, k], bar, w.slice(BLOCK_N, BLOCK_N), pred=pred)


@gluon.jit
def _store_tile(desc, off_m, off_n, value, c_smem, count, EPI_BUFS: gl.constexpr):
    """The count-th store of this program, through staging tile count % EPI_BUFS: the wait lets only the
    EPI_BUFS - 1 latest stores run on, so the one that last read this tile has completed."""
    buf = c_smem.index(count % EPI_BUFS)
    tma.store_wait(pendings=EPI_BUFS - 1)
    buf.store(value)
    fence_async_shared()
    tma.async_copy_shared_to_global(desc, [off_m, off_n], buf)


@gluon.jit
def _gated_values(acc, off_n, cols, Bias, H, half_layout: gl.constexpr, dtype: gl.constexpr, ACT: gl.constexpr,
                  HAS_BIAS: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr):
    """(out, pre_gate, pre_up) of an accumulator tile [gate | up] in dtype: the halves, the bias, PyTorch's
    rounding points (kernels/matmul_tl.py). Both gated kernels' epilogues (this module's and the ping-pong's)."""
    gate, up = gl.split(gl.permute(gl.reshape(acc, [BLOCK_M, 2, BLOCK_N]), (0, 2, 1)))
    gate = gl.convert_layout(gate, half_layout)
    up = gl.convert_layout(up, half_layout)
    if HAS_BIAS:
        offs_n = off_n + cols
        in_h = offs_n < H
        gate += gl.expand_dims(gl.load(Bias + offs_n, mask=in_h, other=0.0).to(gl.float32), 0)
        up += gl.expand_dims(gl.load(Bias + H + offs_n, mask=in_h, other=0.0).to(gl.float32), 0)
    pre_gate = gate.to(dtype)
    pre_up = up.to(dtype)
    out = (_activation(pre_gate.to(gl.float32), ACT).to(dtype).to(gl.float32) * pre_up.to(gl.float32)).to(dtype)
    return out, pre_gate, pre_up


@gluon.jit
def _gated_fwd_kernel(x_desc, wg_desc, wu_desc, out_desc, pg_desc, pu_desc, Bias, M, H, K,
                      ACT: gl.constexpr, HAS_BIAS: gl.constexpr, STORE_PRE: gl.constexpr, STAGES: gl.constexpr,
                      EPI_BUFS: gl.constexpr, GROUP: gl.constexpr, num_warps: gl.constexpr):
    # x_desc (M, K) in [BLOCK_M, BLOCK_K] tiles; wg_desc / wu_desc the gate / up rows of W, (H, K) each, in
    # [BLOCK_N, BLOCK_K] tiles; out_desc (M, H), pg_desc / pu_desc the gate / up columns of pre, (M, H) each.
    BLOCK_M: gl.constexpr = x_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = x_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = wg_desc.block_type.shape[0]
    dtype: gl.constexpr = x_desc.dtype
    # The accumulator (BLOCK_M, 2 BLOCK_N): gate columns, then up columns; each warp owns 16-row slabs.
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, 2 * BLOCK_N, 16])
    # Either half alone: the same registers as the accumulator's columns of that half
    half_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                          instr_shape=[16, BLOCK_N, 16])
    col_layout: gl.constexpr = gl.SliceLayout(0, half_layout)

    x_ring = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, BLOCK_K], x_desc.layout)
    w_ring = gl.allocate_shared_memory(dtype, [STAGES, 2 * BLOCK_N, BLOCK_K], wg_desc.layout)
    c_smem = gl.allocate_shared_memory(dtype, [EPI_BUFS, BLOCK_M, BLOCK_N], out_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)

    num_pid_m = gl.cdiv(M, BLOCK_M)
    num_pid_n = gl.cdiv(H, BLOCK_N)
    k_tiles = gl.cdiv(K, BLOCK_K)
    my_tiles = gl.cdiv(num_pid_m * num_pid_n - gl.program_id(0), gl.num_programs(0))  # the grid is <= tiles
    total = my_tiles * k_tiles
    for s in gl.static_range(STAGES - 1):
        _load_step(s, total, k_tiles, num_pid_m, num_pid_n, x_desc, wg_desc, wu_desc, x_ring, w_ring, bars,
                   STAGES, GROUP)
    produced = STAGES - 1
    consumed = 0
    cols = gl.arange(0, BLOCK_N, layout=col_layout)
    acc = gl.zeros([BLOCK_M, 2 * BLOCK_N], gl.float32, layout=acc_layout)
    n_stores: gl.constexpr = 3 if STORE_PRE else 1
    for t in range(my_tiles):
        off_m, off_n = _tile_origin(gl.program_id(0) + t * gl.num_programs(0), num_pid_m, num_pid_n, BLOCK_M,
                                    BLOCK_N, GROUP)
        for ki in range(k_tiles):
            slot = consumed % STAGES
            mbarrier.wait(bars.index(slot), (consumed // STAGES) & 1)
            acc = warpgroup_mma(x_ring.index(slot), w_ring.index(slot).permute((1, 0)), acc, use_acc=ki > 0,
                                is_async=True)
            # the previous k-step's wgmma has completed: its slot takes the load STAGES - 1 steps ahead
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))
            _load_step(produced, total, k_tiles, num_pid_m, num_pid_n, x_desc, wg_desc, wu_desc, x_ring, w_ring,
                       bars, STAGES, GROUP)
            produced += 1
            consumed += 1
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))

        # Epilogue: the halves, bias, PyTorch's rounding points (kernels/matmul_tl.py), the stores.
        out, pre_gate, pre_up = _gated_values(acc, off_n, cols, Bias, H, half_layout, dtype, ACT, HAS_BIAS, BLOCK_M,
                                              BLOCK_N)
        _store_tile(out_desc, off_m, off_n, out, c_smem, t * n_stores, EPI_BUFS)
        if STORE_PRE:
            _store_tile(pg_desc, off_m, off_n, pre_gate, c_smem, t * n_stores + 1, EPI_BUFS)
            _store_tile(pu_desc, off_m, off_n, pre_up, c_smem, t * n_stores + 2, EPI_BUFS)
    tma.store_wait(pendings=0)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(i))


@functools.lru_cache(maxsize=None)
def _is_hopper(device_index):
    return torch.cuda.get_device_capability(device_index)[0] == 9


@functools.lru_cache(maxsize=None)
def _num_sms(device_index):
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _tma_2d(t):
    return t.stride(1) == 1 and t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0


def usable(x, w, b, activation):
    """Whether gated_forward_gluon takes these arguments (see the module docstring)."""
    if activation not in ACT_CODES or not (x.is_cuda and x.dim() == 2 and w.dim() == 2):
        return False
    M, K = x.shape
    n_pre = w.shape[0]
    return (x.dtype in _GL_DTYPES and w.dtype == x.dtype and w.device == x.device and w.shape[1] == K
            and n_pre % 16 == 0 and K % 8 == 0 and M > 0 and K > 0 and M * n_pre < 2**31
            and (b is None or (b.dim() == 1 and b.shape[0] == n_pre and b.dtype == x.dtype and b.device == x.device))
            and _tma_2d(x) and _tma_2d(w) and _is_hopper(x.device.index or 0))


@functools.lru_cache(maxsize=None)
def _layout(block, dtype):
    return gl.NVMMASharedLayout.get_default_for(list(block), _GL_DTYPES[dtype])


_templates = {}  # (shape, strides, dtype, block) -> a descriptor of such a tensor, without its base
MAX_TEMPLATES = 4096  # then the cache starts over (many row counts, as in inference)


def _descriptor(base, shape, block):
    """A host TMA descriptor over (rows, cols) = shape of base's rows (pitch base.stride(0)), in tiles of block.
    As kernels/attention_gluon's: the first of a kind is built and checked by TensorDescriptor, later ones are
    copies with another base (base's alignment is checked by `usable`, the pre and out tensors are fresh)."""
    key = (shape, base.stride(0), base.dtype, block)
    template = _templates.get(key)
    if template is None:
        template = TensorDescriptor(base, list(shape), [base.stride(0), 1], list(block), _layout(block, base.dtype))
        template.launch_facts = descriptor_facts(template)
        template.tma_maps = {}  # the copies' CUtensorMaps by base address (kernels/_raw_launch.py), shared too
        template.base = None  # (the cache must not keep base alive)
        if len(_templates) >= MAX_TEMPLATES:
            _templates.clear()
        _templates[key] = template
    desc = object.__new__(TensorDescriptor)
    desc.__dict__.update(template.__dict__)
    desc.base = base
    return desc


def launch_args(x, w, bias, store_pre, out, pre, bm, bn, bk):
    """(grid, runtime arguments) of a gated forward launch, this module's kernel's or the ping-pong's
    (matmul_gated_gluon_ws): TMA descriptors of x in bm x bk tiles, of W's gate and up halves in bn x bk, of
    out and pre's two halves in bm x bn (out's stand in for pre's where it is not stored), the bias (a contiguous
    vector, or x where there is none), M, H, K; at most one program per SM, each walking its tiles."""
    M, K = x.shape
    H = w.shape[0] // 2
    x_desc = _descriptor(x, (M, K), (bm, bk))
    wg_desc = _descriptor(w, (H, K), (bn, bk))
    wu_desc = _descriptor(w[H:], (H, K), (bn, bk))
    out_desc = _descriptor(out, (M, H), (bm, bn))
    pg_desc, pu_desc = (_descriptor(pre, (M, H), (bm, bn)), _descriptor(pre[:, H:], (M, H), (bm, bn))) \
        if store_pre else (out_desc, out_desc)
    grid = (min(cdiv(M, bm) * cdiv(H, bn), _num_sms(x.device.index or 0)), 1, 1)
    return grid, (x_desc, wg_desc, wu_desc, out_desc, pg_desc, pu_desc, bias, M, H, K)


def gated_addresses(x, w, bias, store_pre, out, pre):
    """The data pointers behind launch_args's arguments, in order (w[H:] and pre[:, H:] by their offsets)."""
    H, size = w.shape[0] // 2, x.element_size()
    o = out.data_ptr()
    if not store_pre:
        return x.data_ptr(), w.data_ptr(), w.data_ptr() + H * w.stride(0) * size, o, o, o, bias.data_ptr()
    return (x.data_ptr(), w.data_ptr(), w.data_ptr() + H * w.stride(0) * size, o, pre.data_ptr(),
            pre.data_ptr() + H * size, bias.data_ptr())


def launch_forward(fast, config, activation, x, w, b, store_pre, addresses, setup):
    """fast's launch of a forward whose setup() gives (grid, arguments, meta), the arguments from launch_args (or
    the non-gated twin's) with `addresses` their tensors' data pointers, remembered (kernels/_launch.launch_memo)
    under what fixes its grid, constexprs and every argument's launch facts: the config, activation, bias and
    store_pre, x's shape and row pitch, W's rows and pitch, the dtype (x's: W's and the bias's are the same,
    `usable` says) and device. out and pre are fresh contiguous tensors; the bias a contiguous vector. A
    repeated call then builds no arguments (descriptors) and no FastLaunch key."""
    aligned = not functools.reduce(operator.or_, addresses) % 16
    key = (config, activation, b is not None, bool(store_pre), *x.shape, x.stride(0), w.shape[0], w.stride(0), x.dtype,
           x.get_device())
    launch_memo(fast, key, addresses, aligned, setup)


def gated_forward_gluon(x, w, b, activation, store_pre, config=None, out=None, pre=None):
    """(out (M, H), pre (M, 2H) or an empty tensor) as kernels.matmul.linear_act_fwd for a gated activation,
    where `usable` holds; config (BLOCK_M, BLOCK_N, BLOCK_K, stages, num_warps), default from CONFIGS. out
    and pre, when given, are contiguous tensors of those shapes to fill (linear_act_fwd allocates them)."""
    M, K = x.shape
    H = w.shape[0] // 2
    if out is None:
        out = torch.empty((M, H), device=x.device, dtype=x.dtype)
        pre = torch.empty((M, 2 * H) if store_pre else (0,), device=x.device, dtype=x.dtype)
    config = config or CONFIGS[shape_class(M, K)][0]
    if config[0] == "ws":
        from .matmul_gated_gluon_ws import gated_forward_ws
        return gated_forward_ws(x, w, b, activation, store_pre, config, out, pre)
    bm, bn, bk, stages, warps = config
    bias = x if b is None else b.contiguous()
    launch_forward(_fast, config, activation, x, w, b, store_pre, gated_addresses(x, w, bias, store_pre, out, pre),
                   lambda: (*launch_args(x, w, bias, store_pre, out, pre, bm, bn, bk),
                            dict(ACT=ACT_CODES[activation], HAS_BIAS=b is not None, STORE_PRE=bool(store_pre),
                                 STAGES=stages, EPI_BUFS=epilogue_buffers(config, x.element_size(), store_pre),
                                 GROUP=GROUP_M, num_warps=warps)))
    return out, pre


_fast = FastLaunch(_gated_fwd_kernel)
