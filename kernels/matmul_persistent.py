"""The fused GEMMs of kernels/matmul.py as persistent TMA kernels: the forward act(x @ w.T + b), gated
or not, and the backward d_pre = (dy @ w_out) * act'(pre) (the GEMM case, without re-forming act(pre)).

Why: in the one-tile-per-program kernels the epilogue (bias, activation, the stores) runs while the
SM's tensor cores idle, and its memory traffic is as large as the GEMM's inputs at FFN shapes
(measured on the H100: fused GEMM 417-425 TFLOP/s against 650-670 for cuBLAS on the bare GEMM).
Here one program per SM walks the output tiles (grouped order, `grouped_tile`); the tile
loop and its K loop are flattened (`tl.range(..., flatten=True)`) so Triton's pipeliner issues the
next tile's TMA loads during this tile's epilogue, and the epilogue stores through tensor descriptors
(asynchronous bulk copies: the SM goes on to the next tile's main loop while they drain).
kernels/matmul.PERSISTENT says where they are used.

Same contracts and the same roundings as matmul._linear_act_fwd_kernel and matmul._act_bwd_kernel.
Needs what TMA needs: 16-bit operands, 16-byte aligned bases and row strides, unit last strides, and
N a multiple of 8 (the gated halves start at column N and go through their own descriptors: one
descriptor over both halves would let an edge gate tile spill into the up columns). `usable` says when.
"""
import functools

import torch
import triton
import triton.language as tl

from ._activations import activation, activation_and_grad
from ._launch import FastLaunch, LaunchPlan, remembered_pick
from ._runtime import cdiv, interpreting


@triton.jit
def grouped_tile(tile_id, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP: tl.constexpr):
    """(first row, first column) of output tile tile_id in grouped order: GROUP row-tiles share each
    column sweep, so their B tiles stay in L2 (the per-tile kernels pass their program id)."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP * num_pid_n
    first_m = (tile_id // per_group) * GROUP
    group_m = min(num_pid_m - first_m, GROUP)
    pid_m = first_m + (tile_id % per_group) % group_m
    pid_n = (tile_id % per_group) // group_m
    return pid_m * BLOCK_M, pid_n * BLOCK_N


@triton.jit(do_not_specialize=["M", "M_BUCKET"])
def _linear_act_fwd_persistent_kernel(X, W, Bias, Pre, Out, M, N, K, stride_xm, stride_wn, stride_pm, stride_om,
                                      M_BUCKET, ACT: tl.constexpr, GATED: tl.constexpr, HAS_BIAS: tl.constexpr,
                                      STORE_PRE: tl.constexpr, NUM_PROGRAMS: tl.constexpr,
                                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    dtype = Out.dtype.element_ty
    w_rows = N
    if GATED:
        w_rows = 2 * N
    x_desc = tl.make_tensor_descriptor(X, shape=[M, K], strides=[stride_xm, 1], block_shape=[BLOCK_M, BLOCK_K])
    w_desc = tl.make_tensor_descriptor(W, shape=[w_rows, K], strides=[stride_wn, 1], block_shape=[BLOCK_N, BLOCK_K])
    out_desc = tl.make_tensor_descriptor(Out, shape=[M, N], strides=[stride_om, 1], block_shape=[BLOCK_M, BLOCK_N])
    pre_desc = tl.make_tensor_descriptor(Pre, shape=[M, N], strides=[stride_pm, 1], block_shape=[BLOCK_M, BLOCK_N])
    up_desc = tl.make_tensor_descriptor(Pre + N, shape=[M, N], strides=[stride_pm, 1], block_shape=[BLOCK_M, BLOCK_N])
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    for tile_id in tl.range(tl.program_id(0), num_tiles, NUM_PROGRAMS, flatten=True):
        start_m, start_n = grouped_tile(tile_id, M, N, BLOCK_M, BLOCK_N, 8)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in range(k_tiles):
            a = x_desc.load([start_m, ki * BLOCK_K])
            acc = tl.dot(a, w_desc.load([start_n, ki * BLOCK_K]).T, acc)
            if GATED:
                acc_up = tl.dot(a, w_desc.load([N + start_n, ki * BLOCK_K]).T, acc_up)
        if HAS_BIAS:
            offs_n = start_n + tl.arange(0, BLOCK_N)
            acc += tl.load(Bias + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
            if GATED:
                acc_up += tl.load(Bias + N + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        pre = acc.to(dtype)
        if STORE_PRE:
            pre_desc.store([start_m, start_n], pre)
            if GATED:
                up_desc.store([start_m, start_n], acc_up.to(dtype))
        out = activation(pre.to(tl.float32), ACT)
        if GATED:
            out = out.to(dtype).to(tl.float32) * acc_up.to(dtype).to(tl.float32)
        out_desc.store([start_m, start_n], out.to(dtype))


@triton.jit(do_not_specialize=["M", "M_BUCKET"])
def _act_bwd_persistent_kernel(G, W, Pre, DPre, DBias, M, N, K, stride_gm, stride_wk, stride_pm, stride_dm, M_BUCKET,
                               ACT: tl.constexpr, GATED: tl.constexpr, HAS_DBIAS: tl.constexpr,
                               NUM_PROGRAMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                               BLOCK_K: tl.constexpr):
    # d_pre = (dy @ w_out) * act'(pre), as matmul._act_bwd_kernel with FROM_GEMM and no STORE_ACT: G is dy
    # (M, K), W is w_out (K, N) row-major; Pre and DPre are (M, N), or (M, 2N) gate then up when gated.
    # Rows past M and columns past N read as zeros, so their d_pre is 0 and the stores clip them.
    dtype = DPre.dtype.element_ty
    g_desc = tl.make_tensor_descriptor(G, shape=[M, K], strides=[stride_gm, 1], block_shape=[BLOCK_M, BLOCK_K])
    w_desc = tl.make_tensor_descriptor(W, shape=[K, N], strides=[stride_wk, 1], block_shape=[BLOCK_K, BLOCK_N])
    pre_desc = tl.make_tensor_descriptor(Pre, shape=[M, N], strides=[stride_pm, 1], block_shape=[BLOCK_M, BLOCK_N])
    up_desc = tl.make_tensor_descriptor(Pre + N, shape=[M, N], strides=[stride_pm, 1], block_shape=[BLOCK_M, BLOCK_N])
    d_desc = tl.make_tensor_descriptor(DPre, shape=[M, N], strides=[stride_dm, 1], block_shape=[BLOCK_M, BLOCK_N])
    d_up_desc = tl.make_tensor_descriptor(DPre + N, shape=[M, N], strides=[stride_dm, 1],
                                          block_shape=[BLOCK_M, BLOCK_N])
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    for tile_id in tl.range(tl.program_id(0), num_tiles, NUM_PROGRAMS, flatten=True):
        start_m, start_n = grouped_tile(tile_id, M, N, BLOCK_M, BLOCK_N, 8)
        d_act = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in range(k_tiles):
            d_act = tl.dot(g_desc.load([start_m, ki * BLOCK_K]), w_desc.load([ki * BLOCK_K, start_n]), d_act)
        h = pre_desc.load([start_m, start_n]).to(tl.float32)
        f, df = activation_and_grad(h, ACT)
        d_act = d_act.to(dtype).to(tl.float32)  # PyTorch's rounding points, as in matmul._act_bwd_kernel
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if GATED:
            up = up_desc.load([start_m, start_n]).to(tl.float32)
            f = f.to(dtype).to(tl.float32)
            d_h = ((d_act * up).to(dtype).to(tl.float32) * df).to(dtype)
            d_up = (d_act * f).to(dtype)
            d_desc.store([start_m, start_n], d_h)
            d_up_desc.store([start_m, start_n], d_up)
            if HAS_DBIAS:
                # relaxed: no barrier before each atomic (kernels/matmul_tl.py's _act_bwd_kernel says why)
                tl.atomic_add(DBias + N + offs_n, tl.sum(d_up.to(tl.float32), axis=0), mask=offs_n < N,
                              sem="relaxed")
        else:
            d_h = (d_act * df).to(dtype)
            d_desc.store([start_m, start_n], d_h)
        if HAS_DBIAS:
            tl.atomic_add(DBias + offs_n, tl.sum(d_h.to(tl.float32), axis=0), mask=offs_n < N,
                          sem="relaxed")


def _config(bm, bn, bk, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)


if interpreting():
    _CONFIGS = _GATED_CONFIGS = _BWD_CONFIGS = [_config(32, 32, 32, 4, 1)]
else:
    _CONFIGS = [_config(128, 128, 64, 8, 4), _config(128, 256, 64, 8, 3), _config(128, 128, 64, 8, 3)]
    _GATED_CONFIGS = [_config(128, 128, 64, 8, 3), _config(128, 64, 64, 8, 4), _config(128, 64, 64, 4, 4)]
    # The backward without 128 x 256, whose gated variant asks 279 KB of shared memory (H200, sixth session).
    _BWD_CONFIGS = [c for c in _CONFIGS if c.kwargs["BLOCK_N"] <= 128]


def _prune(configs, named_args, **kwargs):
    # The forward's gated variant carries two accumulators.
    return _GATED_CONFIGS if kwargs.get("GATED", False) else _CONFIGS


_tuned = triton.autotune(configs=_CONFIGS + [c for c in _GATED_CONFIGS if c not in _CONFIGS],
                         key=["M_BUCKET", "N", "K", "ACT", "GATED", "STORE_PRE"],
                         prune_configs_by={"early_config_prune": _prune})(_linear_act_fwd_persistent_kernel)


_bwd_tuned = triton.autotune(configs=_BWD_CONFIGS, key=["M_BUCKET", "N", "K", "ACT", "GATED", "HAS_DBIAS"],
                             reset_to_zero=["DBias"])(_act_bwd_persistent_kernel)


@functools.lru_cache(maxsize=None)
def _num_sms(device_index):
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def usable(n, *tensors):
    """Whether the operands meet TMA's rules (see the module docstring); empty tensors are not used."""
    def ok(t):
        return t.dim() < 2 or (t.element_size() == 2 and t.data_ptr() % 16 == 0 and t.stride(-1) == 1
                               and (t.stride(0) * 2) % 16 == 0)
    return n % 8 == 0 and all(map(ok, tensors))


def _configs_of(fast, gated):
    """The autotune list of a kernel (its FastLaunch) and variant."""
    if fast is _bwd_fast:
        return _BWD_CONFIGS
    return _GATED_CONFIGS if gated else _CONFIGS


def _fixed_config(configs):
    """The config launched without the autotuner (KERNELS_AUTOTUNE=0: the GPU tests)."""
    return configs[0]


_fwd_fast = FastLaunch(_linear_act_fwd_persistent_kernel)
_bwd_fast = FastLaunch(_act_bwd_persistent_kernel)
# (autotuned kernel, M bucket, N, K, constexprs, tensor dtypes) -> the config the autotuner picked there
_PICKED = {}


def _run(tuned, fast, programs, M, N, K, m_bucket, args, meta, tune):
    """The first call of an autotune key goes through the autotuner; later calls, and every call with
    tune False (GPU tests: the list's first config), launch the jitted kernel directly (FastLaunch: the
    autotuner's per-call host work cost more than the launch itself, kernels/_launch.py). Returns the
    LaunchPlan of a direct launch (None after the autotuner's), for matmul._PLANS."""
    if tune:
        def grid(m):
            return (min(programs, cdiv(M, m["BLOCK_M"]) * cdiv(N, m["BLOCK_N"])),)
        config = remembered_pick(_PICKED, tuned, grid, args, meta, m_bucket, N, K)
        if config is None:  # this first call went through the autotuner
            return None
    else:
        config = _fixed_config(_configs_of(fast, meta["GATED"]))
    blocks = config.kwargs
    tiles = (-(-M // blocks["BLOCK_M"])) * (-(-N // blocks["BLOCK_N"]))  # ceil divisions
    grid, meta = (min(programs, tiles),), {**meta, **config.all_kwargs()}
    fast[grid](*args, **meta)
    return LaunchPlan(grid, **meta)


def _programs(device):
    """One program per SM (fewer for small outputs: _run caps the grid at the tile count)."""
    return 4 if interpreting() else _num_sms(device.index or 0)


def launch_bwd(dy, w_out, pre, d_pre, dbias, code, gated, m_bucket, tune=True):
    """d_pre (and dbias's column sums, when dbias is not empty) for matmul.act_bwd's GEMM case; returns _run's plan."""
    M, K = dy.shape
    N = w_out.shape[1]
    programs = _programs(dy.device)
    return _run(_bwd_tuned, _bwd_fast, programs, M, N, K, m_bucket,
         (dy, w_out, pre, d_pre, dbias, M, N, K, dy.stride(0), w_out.stride(0), pre.stride(0), d_pre.stride(0),
          m_bucket), dict(ACT=code, GATED=gated, HAS_DBIAS=dbias.numel() > 0, NUM_PROGRAMS=programs), tune)


def launch(x, w, b, pre, out, code, gated, store_pre, m_bucket, tune=True):
    """The forward over every output tile; returns _run's plan."""
    M, K = x.shape
    N = out.shape[1]
    programs = _programs(x.device)
    return _run(_tuned, _fwd_fast, programs, M, N, K, m_bucket,
         (x, w, b if b is not None else x, pre if store_pre else out, out, M, N, K, x.stride(0), w.stride(0),
          pre.stride(0) if store_pre else out.stride(0), out.stride(0), m_bucket),
         dict(ACT=code, GATED=gated, HAS_BIAS=b is not None, STORE_PRE=store_pre, NUM_PROGRAMS=programs), tune)
