"""The attention forward for Hopper in Gluon, with FlashAttention-3's intra-warpgroup overlap: the
fast path of kernels.attention's forward where it applies (`usable`); the `tl` kernel does the rest.

Why Gluon: in `tl`, Triton 3.6 waits for every score `tl.dot` right after issuing it (`wgmma.wait_group 0`
in the PTX), so the softmax never overlaps the tensor cores (bench/RESULTS.md, sixth session). Gluon
exposes the asynchronous wgmma and its wait. Per key block j >= 1 (P_{j-1} and its rescale factor kept
from the previous block):

      issue  S_j = Q K_j^T                          (asynchronous)
      O *= alpha_{j-1}; issue O += P_{j-1} V_{j-1}   (asynchronous)
      wait until S_j is done                        (O += P V stays in flight)
      softmax of S_j -> P_j, alpha_j                (CUDA cores, under O += P V on the tensor cores)
      wait until O += P V is done

Every wgmma is waited for within its block: one left in flight across the loop's back edge makes ptxas
serialize every wgmma of the kernel (its info C7514). K and V arrive by TMA into two-slot rings with one
mbarrier per slot; a slot is refilled with block j + 2 as soon as the wgmma reading it has completed.

Each of q, k, v is read through one 2D TMA descriptor whose rows are token rows of pitch stride(2): a
(B, H, T, D) tensor qualifies when its batch stride is a multiple of that pitch and its heads are
either further rows (contiguous (B, H, T, D)) or column offsets within a row (views of a fused
(B, T, 3 * H, D) QKV projection, as the model makes them). Scope: T == S, T a multiple of 128, D 64 or
128, fp16 / bf16, causal or not, GQA. Output (B, H, T, D) contiguous and the natural-log LSE, as
kernels.attention.attention_fwd's.
"""
import functools
import os

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma, \
    warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from . import _tuning, attention_bwd
from .norms_bwd import sm_count
from ._launch import FastLaunch, descriptor_facts, launch_memo
from ._runtime import next_power_of_2

LOG2E = 1.4426950408889634
_GL_DTYPES = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}
# Candidates per head dim, timed on a shape's first call: ("pipelined", block_m, block_n) is this module's
# kernel, ("pingpong", block_n, stages) the warp-specialized one of attention_gluon_ws, ("persistent", block_m,
# block_n) the persistent one of attention_gluon_persistent. On the H200 over the
# FlashAttention grid (bench/RESULTS.md, eighth session): at D = 64 pipelined 64 x 128 / 64 x 64 led and the
# ping-pong nowhere; at D = 128 the ping-pong (128, 2 stages) led from T = 2048 on (up to +20%) and tied at
# T = 1024, pipelined 64 x 64 led below; pipelined 128 x 128 and the ping-pong's other settings led nowhere.
# The persistent kernel (tenth session, H100, tools/gpu_attention_gluon.py GLUON_QUICK): causal D = 128 T = 512
# 294 TFLOP/s against 253 (pipelined 64 x 64) and 219 (ping-pong), tied at T = 1024 (378 / 377), behind from
# T = 2048 on; at D = 64 (64 x 128) behind at every point (215-428 against 229-477): a candidate at D = 128 only.
CONFIGS = {64: (("pipelined", 64, 128), ("pipelined", 64, 64)),
           128: (("pipelined", 64, 64), ("pingpong", 128, 2), ("persistent", 64, 64))}
_picked = {}  # shape key -> its config, or None where no candidate could be built
_unbuildable = set()  # candidates this Triton's Gluon failed to build (tried once, then left out)


@gluon.jit
def _tile_of(n_qb, head_group):
    """(query block, batch x head) of this program in a 1D grid of n_qb blocks per head: heads in groups of
    head_group, and within a group the longest causal rows of every head first, then the next longest:
    a group's blocks share L2 (its heads' K and V) and the grid's last programs are its shortest."""
    pid = gl.program_id(0)
    n_bh = gl.num_programs(0) // n_qb
    group = pid // (head_group * n_qb)
    first_bh = group * head_group
    size = gl.minimum(head_group, n_bh - first_bh)  # the last group may be smaller
    r = pid - first_bh * n_qb
    return n_qb - 1 - r // size, first_bh + r % size


@gluon.jit
def _load_kv(desc, row, col, bar, dst, pred):
    mbarrier.expect(bar, desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(desc, [row, col], bar, dst, pred=pred)


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
def _step(j, acc, p_prev, alpha_prev, m_i, l_i, q_smem, k_smem, v_smem, k_bars, v_bars, k_desc, v_desc, k_row,
          k_col, v_row, v_col, n_blocks, rows, offs_n, s_zero, pid_m, qk_scale, p_layout: gl.constexpr,
          orow_layout: gl.constexpr, CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr):
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
    _load_kv(k_desc, k_row + (j + 2) * BLOCK_N, k_col, k_bars.index(slot), k_smem.index(slot), j + 2 < n_blocks)
    # 4. the softmax of block j while the tensor cores do O += P V
    cols = j * BLOCK_N + offs_n
    if CAUSAL and (j + 1) * BLOCK_N > pid_m * BLOCK_M:
        p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, cols, rows, qk_scale, True)
    else:
        p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, cols, rows, qk_scale, False)
    # 5. everything done before the next block: a wgmma left in flight across the loop's back edge makes
    # ptxas serialize every wgmma of the kernel (C7514)
    acc, p_prev = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p_prev))
    _load_kv(v_desc, v_row + (j + 1) * BLOCK_N, v_col, v_bars.index(1 - slot), v_smem.index(1 - slot),
             j + 1 < n_blocks)
    return acc, gl.convert_layout(p.to(dtype), p_layout), alpha, m_i, l_i


@gluon.jit
def _attn_fwd_gluon_kernel(q_desc, k_desc, v_desc, o_desc, Lse, seqlen, n_heads, n_kv_heads, qk_scale,
                           q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, head_group,
                           CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                           HEAD_DIM: gl.constexpr, num_warps: gl.constexpr):
    dtype: gl.constexpr = q_desc.dtype
    pid_m, pid_bh = _tile_of(seqlen // BLOCK_M, head_group)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    h_kv = h // (n_heads // n_kv_heads)
    # tile coordinates in the 2D descriptors (see `_tile_rows`): row = b * rb + head * rh + t, col = head * ch
    q_row = b * q_rb + h * q_rh + pid_m * BLOCK_M
    k_row = b * k_rb + h_kv * k_rh
    v_row = b * v_rb + h_kv * v_rh
    k_col = h_kv * k_ch
    v_col = h_kv * v_ch

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
        n_blocks = ((pid_m + 1) * BLOCK_M + BLOCK_N - 1) // BLOCK_N  # keys 0 .. the block's last row
    else:
        n_blocks = seqlen // BLOCK_N
    mbarrier.expect(q_bar, q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [q_row, h * q_ch], q_bar, q_smem)
    for i in gl.static_range(2):
        _load_kv(k_desc, k_row + i * BLOCK_N, k_col, k_bars.index(i), k_smem.index(i), i < n_blocks)
        _load_kv(v_desc, v_row + i * BLOCK_N, v_col, v_bars.index(i), v_smem.index(i), i < n_blocks)

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
    _load_kv(k_desc, k_row + 2 * BLOCK_N, k_col, k_bars.index(0), k_smem.index(0), 2 < n_blocks)
    if CAUSAL and BLOCK_N > pid_m * BLOCK_M:
        p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, offs_n, rows, qk_scale, True)
    else:
        p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, offs_n, rows, qk_scale, False)
    p = gl.convert_layout(p.to(dtype), p_layout)
    for j in range(1, n_blocks):
        acc, p, alpha, m_i, l_i = _step(j, acc, p, alpha, m_i, l_i, q_smem, k_smem, v_smem, k_bars, v_bars, k_desc,
                                        v_desc, k_row, k_col, v_row, v_col, n_blocks, rows, offs_n, s_zero, pid_m,
                                        qk_scale, p_layout, orow_layout, CAUSAL, BLOCK_M, BLOCK_N)
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
    tma.async_copy_shared_to_global(o_desc, [pid_bh * seqlen + pid_m * BLOCK_M, 0], q_smem)
    lse = (m_i + gl.log2(l_i)) * 0.6931471805599453
    gl.store(Lse + pid_bh.to(gl.int64) * seqlen + rows, lse)
    tma.store_wait(pendings=0)


def _tile_rows(t):
    """(rows, cols, rb, rh, ch) of the 2D view that reads t (B, H, T, D) in tiles of whole token rows, or None.

    The view's rows have pitch t.stride(2); element (b, h, i, d) sits at row b * rb + h * rh + i and
    column h * ch + d, so a tile of consecutive tokens of one head is one TMA box."""
    if t.data_ptr() % 16:
        return None
    return _tile_rows_of(t.shape, t.stride(), t.element_size())


@functools.lru_cache(maxsize=4096)
def _tile_rows_of(shape, stride, itemsize):
    """_tile_rows for a 16-byte aligned base: a function of the shape and strides only (remembered: the dispatch
    asks it of q, k, v and dout on every call)."""
    B, H, T, D = shape
    s_b, s_h, s_t, s_d = stride
    if s_d != 1 or s_t < D or (B > 1 and s_b % s_t) or (s_t * itemsize) % 16:
        return None
    rb = s_b // s_t if B > 1 else 0
    if H == 1:
        rh, ch = 0, 0
    elif s_h % s_t == 0:
        rh, ch = s_h // s_t, 0  # heads one after another: (B, H, T, D) contiguous
    elif (H - 1) * s_h + D <= s_t:
        rh, ch = 0, s_h  # heads side by side within a token's row: views of a fused QKV projection
    else:
        return None
    rows, cols = (B - 1) * rb + (H - 1) * rh + T, (H - 1) * ch + D
    if rows >= 2**31 or cols >= 2**31:  # TMA's coordinates are 32-bit
        return None
    return rows, cols, rb, rh, ch


# Causal blocks differ in work (block i reads i + 1 key blocks): heads go in groups of about one wave of
# programs, each group's longest blocks first, so that a group's heads share L2 and the grid ends on short
# blocks (H200, bench/RESULTS.md eighth session: D = 128, T = 1024..8192 +2-6%; T = 512 -7%). Non-causal
# blocks are equal: one head at a time there. KERNELS_ATTN_HEAD_GROUPS=0: one head at a time everywhere.
HEAD_GROUPS = os.environ.get("KERNELS_ATTN_HEAD_GROUPS", "1") == "1"


def heads_per_group(n_qb, n_bh, programs_per_sm, device, causal):
    """Heads per group for a grid of n_qb blocks per head (see HEAD_GROUPS)."""
    if not (HEAD_GROUPS and causal):
        return 1
    return max(1, min(n_bh, sm_count(device) * programs_per_sm // n_qb))


@functools.lru_cache(maxsize=None)
def _is_hopper(device_index):
    return torch.cuda.get_device_capability(device_index)[0] == 9


def usable(q, k, v):
    """Whether the Gluon forward takes these arguments (see the module docstring)."""
    B, H, T, D = q.shape
    return (q.is_cuda and q.dtype in _GL_DTYPES and k.dtype == q.dtype and v.dtype == q.dtype and D in (64, 128)
            and k.shape[2] == T and T % 128 == 0 and _is_hopper(q.device.index or 0)
            and B * H * T < 2**31 and all(_tile_rows(t) is not None for t in (q, k, v)))


def picked_key(q, k, causal):
    """The key under which `_picked` remembers a shape's config."""
    B, H, T, D = q.shape
    return D, bool(causal), q.dtype, T, next_power_of_2(B * H), H // k.shape[1]


def attention_fwd_tuned(q, k, v, causal, scale):
    """(out, lse) from the fastest of CONFIGS for this shape (timed on its first call), or None when no
    candidate can be built here (another Triton's Gluon API): the caller falls back to the tl kernel."""
    B, H, T, D = q.shape
    key = picked_key(q, k, causal)
    config = _picked.get(key, False)
    if config is False:  # this shape's first call: pick, and build (and run) the kernel once
        # as the tl kernels: small problems (and KERNELS_AUTOTUNE=0) take the first config untuned
        tune = attention_bwd.TUNE and B * H * T * T >= attention_bwd.TUNE_MIN_WORK
        config = _picked[key] = _tuning.fastest(CONFIGS[D], lambda c: run_config(q, k, v, causal, scale, c), tune,
                                                "the Gluon attention forward", unbuildable=_unbuildable)
    return None if config is None else run_config(q, k, v, causal, scale, config)


def run_config(q, k, v, causal, scale, config):
    """(out, lse) from the kernel and settings one CONFIGS entry names."""
    kind, a, b = config
    if kind == "pingpong":
        return attention_gluon_ws.attention_fwd_ws(q, k, v, causal, scale, block_n=a, stages=b)
    if kind == "persistent":
        return attention_gluon_persistent.attention_fwd_persistent(q, k, v, causal, scale, block_m=a, block_n=b)
    return attention_fwd_gluon(q, k, v, causal, scale, block_m=a, block_n=b)


@functools.lru_cache(maxsize=None)
def _layout(rows, D, dtype):
    return gl.NVMMASharedLayout.get_default_for([rows, D], _GL_DTYPES[dtype])


_descriptors = {}  # (shape, strides, dtype, block rows) -> (a descriptor of such a tensor, its tile addressing)
MAX_DESCRIPTORS = 4096  # then the cache starts over (many sequence lengths, as in inference)


def _descriptor(t, block_rows):
    """A host TMA descriptor of t in tiles of block_rows token rows, and (rb, rh, ch) (see `_tile_rows`).

    A descriptor is its tensor's address plus what the key holds: the first of a kind is built (and
    checked) by TensorDescriptor, later ones are copies with another base, at a fraction of the host
    time (t's 16-byte alignment was checked by `usable`)."""
    key = (t.shape, t.stride(), t.dtype, block_rows)
    known = _descriptors.get(key)
    if known is None:
        rows, cols, rb, rh, ch = _tile_rows(t)
        layout = _layout(block_rows, t.shape[3], t.dtype)
        template = TensorDescriptor(t, [rows, cols], [t.stride(2), 1], [block_rows, t.shape[3]], layout)
        template.launch_facts = descriptor_facts(template)  # FastLaunch's key, shared by the copies
        template.tma_maps = {}  # the copies' CUtensorMaps by base address (kernels/_raw_launch.py), shared too
        template.base = None  # (the cache must not keep t alive)
        if len(_descriptors) >= MAX_DESCRIPTORS:
            _descriptors.clear()
        known = _descriptors[key] = (template, (rb, rh, ch))
    template, tiles = known
    desc = object.__new__(TensorDescriptor)
    desc.__dict__.update(template.__dict__)
    desc.base = t
    return desc, tiles


def forward_launch(q, k, v, scale, q_rows, kv_rows, program_rows, group, out, lse):
    """(grid, runtime arguments) of a Gluon forward (this module's or attention_gluon_ws's) into out and lse: q
    and the output in TMA tiles of q_rows rows, k and v of kv_rows, program_rows query rows per program, heads in
    groups of `group` (heads_per_group)."""
    B, H, T, D = q.shape
    q_desc, q_tiles = _descriptor(q, q_rows)
    k_desc, k_tiles = _descriptor(k, kv_rows)
    v_desc, v_tiles = _descriptor(v, kv_rows)
    o_desc, _ = _descriptor(out, q_rows)
    args = (q_desc, k_desc, v_desc, o_desc, lse, T, H, k.shape[1], scale * LOG2E, *q_tiles, *k_tiles, *v_tiles,
            group)
    return (T // program_rows * B * H, 1, 1), args


def launch_forward(fast, q, k, v, causal, scale, q_rows, kv_rows, program_rows, programs_per_sm, extra, meta,
                   adapt=None):
    """(out, lse) of a Gluon forward launched by fast on forward_launch's grid and arguments (adapt(grid, args)
    may change them: the persistent kernel's), remembered (kernels/_launch.launch_memo) under extra (the
    kernel's constexprs and whatever else shapes its launch), the head groups, q's, k's and v's shapes and
    strides (their descriptors' facts and tile addressing), the dtype and device, and, per call, the tensors'
    addresses and the scale. A repeated call then builds no descriptors. (q, k, v: 16-byte aligned, `usable`
    says; out, lse fresh.)"""
    B, H, T, D = q.shape
    out = torch.empty((B, H, T, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
    scale = float(scale)
    group = heads_per_group(T // program_rows, B * H, programs_per_sm, q.device, causal)
    values = (q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(), scale * LOG2E)
    key = (*extra, bool(causal), group, q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype,
           q.get_device())

    def setup():
        grid, args = forward_launch(q, k, v, scale, q_rows, kv_rows, program_rows, group, out, lse)
        if adapt is not None:
            grid, args = adapt(grid, args)
        return grid, args, meta
    launch_memo(fast, key, values, True, setup)
    return out, lse


def attention_fwd_gluon(q, k, v, causal, scale, block_n=None, block_m=128):
    """(out, lse) as kernels.attention.attention_fwd, for arguments where `usable` holds.

    block_m 128: two warpgroups of 64 query rows per program, one program per SM; block_m 64: one
    warpgroup, so that two programs share an SM and one's softmax can run under the other's wgmma."""
    D = q.shape[3]
    block_n = block_n or (64 if D == 128 else 128)
    causal = bool(causal)
    return launch_forward(_fast, q, k, v, causal, scale, block_m, block_n, block_m, 2 if block_m == 64 else 1,
                          (block_m, block_n), dict(CAUSAL=causal, BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=D,
                                                   num_warps=block_m // 16))


_fast = FastLaunch(_attn_fwd_gluon_kernel)  # Triton's launch path costs more host time than a small forward

from . import attention_gluon_persistent, attention_gluon_ws  # noqa: E402 (last: they import this module's helpers)
