"""Backward of LayerNorm and RMSNorm (and their residual-add variants) in Triton.

With xhat = (s - mean) * rstd (rms: s * rstd), g = dy * w, and means taken over the row's N columns:

    layer: ds = rstd * (g - xhat * mean(g * xhat) - mean(g))
    rms:   ds = rstd * (g - xhat * mean(g * xhat))
    dw = sum over rows of dy * xhat,  db = sum over rows of dy

For the add variants the gradient arriving on the returned sum is added to ds, and ds is then both
d(x) and d(residual). dw and db are reduced deterministically without atomics: a persistent grid of
about one wave of programs walks the rows (program p takes row blocks p, p + P, p + 2P, ...), each
program accumulates its share in registers (or, for rows too wide for registers, in its own row of
an fp32 buffer that no other program touches) and writes one partial row; a second launch sums the
P partial rows of dw and of db (one launch for both). Same inputs and launch shape give the same bits.
"""
import functools
import math

import torch
import triton
import triton.language as tl

from ._launch import FastLaunch, LaunchPlan
from ._runtime import cdiv, next_power_of_2

MAX_FUSED_N = 8192   # widest row the one-pass backward keeps in registers (x, dy, two accumulators)
LOOP_BLOCK_N = 4096  # chunk width of the looped backward kernel
PREFETCH = None      # None: prefetch_for's choice; True / False force it (tests, tools/gpu_norms.py)


@triton.jit
def _load_tile(P, stride_pm, block, n_rows, n_cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Rows block * BLOCK_M ... of an (n_rows, n_cols) matrix, in its storage dtype; zeros off the edge.
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    return tl.load(P + rows.to(tl.int64)[:, None] * stride_pm + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _stats_and_partials(Stats, Part, n_rows, n_cols, IS_RMS: tl.constexpr, HAS_W: tl.constexpr):
    # Mean and Rstd inside the forward's stats buffer; this program's partial rows of dw and db in
    # the (HAS_W + HAS_B, n_programs, n_cols) buffer, dw's block first.
    pid = tl.program_id(0).to(tl.int64)
    n_progs = tl.num_programs(0).to(tl.int64)
    if IS_RMS:
        Rstd = Stats
    else:
        Rstd = Stats + n_rows
    DWp = Part + pid * n_cols
    if HAS_W:
        DBp = DWp + n_progs * n_cols
    else:
        DBp = DWp
    return Stats, Rstd, DWp, DBp


@triton.jit(do_not_specialize=["n_rows"])
def _norm_bwd_kernel(X, W, DY, DS, DX, Part, Stats,
                     stride_xm, stride_dym, stride_dsm,
                     n_rows, n_cols,
                     IS_RMS: tl.constexpr, HAS_DS: tl.constexpr, HAS_W: tl.constexpr,
                     HAS_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     PREFETCH: tl.constexpr):
    # Persistent: program pid takes row blocks pid, pid + P, ... With PREFETCH the next block's
    # x / dy / ds tiles are loaded before this block is computed, so their latency overlaps it.
    # dx is a new contiguous tensor: its row stride is n_cols.
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    Mean, Rstd, DWp, DBp = _stats_and_partials(Stats, Part, n_rows, n_cols, IS_RMS, HAS_W)
    n_blocks = tl.cdiv(n_rows, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    if HAS_W:
        w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    dw_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if PREFETCH:
        x_next = _load_tile(X, stride_xm, pid, n_rows, n_cols, BLOCK_M, BLOCK_N)
        dy_next = _load_tile(DY, stride_dym, pid, n_rows, n_cols, BLOCK_M, BLOCK_N)
        if HAS_DS:
            ds_next = _load_tile(DS, stride_dsm, pid, n_rows, n_cols, BLOCK_M, BLOCK_N)
    for block in range(pid, n_blocks, n_progs):
        if PREFETCH:
            x, dy = x_next.to(tl.float32), dy_next.to(tl.float32)
            x_next = _load_tile(X, stride_xm, block + n_progs, n_rows, n_cols, BLOCK_M, BLOCK_N)
            dy_next = _load_tile(DY, stride_dym, block + n_progs, n_rows, n_cols, BLOCK_M, BLOCK_N)
            if HAS_DS:
                ds = ds_next.to(tl.float32)
                ds_next = _load_tile(DS, stride_dsm, block + n_progs, n_rows, n_cols, BLOCK_M, BLOCK_N)
        else:
            x = _load_tile(X, stride_xm, block, n_rows, n_cols, BLOCK_M, BLOCK_N).to(tl.float32)
            dy = _load_tile(DY, stride_dym, block, n_rows, n_cols, BLOCK_M, BLOCK_N).to(tl.float32)
            if HAS_DS:
                ds = _load_tile(DS, stride_dsm, block, n_rows, n_cols, BLOCK_M, BLOCK_N).to(tl.float32)
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < n_rows
        mask = row_mask[:, None] & col_mask[None, :]
        rstd = tl.load(Rstd + rows, mask=row_mask, other=0.0)
        if IS_RMS:
            xhat = x * rstd[:, None]
        else:
            mean = tl.load(Mean + rows, mask=row_mask, other=0.0)
            xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        if HAS_W:
            g = dy * w
            dw_acc += dy * xhat
        else:
            g = dy
        if HAS_B:
            db_acc += dy
        c1 = tl.sum(xhat * g, axis=1) / n_cols
        if IS_RMS:
            dx = (g - xhat * c1[:, None]) * rstd[:, None]
        else:
            c2 = tl.sum(g, axis=1) / n_cols
            dx = (g - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        if HAS_DS:
            dx += ds
        tl.store(DX + rows.to(tl.int64)[:, None] * n_cols + cols[None, :], dx.to(DX.dtype.element_ty),
                 mask=mask)
    if HAS_W:
        tl.store(DWp + cols, tl.sum(dw_acc, axis=0), mask=col_mask)
    if HAS_B:
        tl.store(DBp + cols, tl.sum(db_acc, axis=0), mask=col_mask)


@triton.jit(do_not_specialize=["n_rows"])
def _norm_bwd_looped_kernel(X, W, DY, DS, DX, Part, Stats,
                            stride_xm, stride_dym, stride_dsm,
                            n_rows, n_cols,
                            IS_RMS: tl.constexpr, HAS_DS: tl.constexpr, HAS_W: tl.constexpr,
                            HAS_B: tl.constexpr, BLOCK_N: tl.constexpr):
    # Rows too wide for registers: per row, pass 1 reduces mean(g * xhat) and mean(g) chunk by chunk,
    # pass 2 writes dx and adds into this program's own zero-initialized partial row of dw / db.
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    Mean, Rstd, DWp, DBp = _stats_and_partials(Stats, Part, n_rows, n_cols, IS_RMS, HAS_W)
    for row in range(pid, n_rows, n_progs):
        rstd = tl.load(Rstd + row)
        if IS_RMS:
            mean = 0.0
        else:
            mean = tl.load(Mean + row)
        x_row = X + tl.cast(row, tl.int64) * stride_xm
        dy_row = DY + tl.cast(row, tl.int64) * stride_dym
        acc1 = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_N], dtype=tl.float32)
        for start in range(0, n_cols, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = cols < n_cols
            xhat = tl.where(mask, (tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32) - mean) * rstd, 0.0)
            g = tl.load(dy_row + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_W:
                g = g * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
            acc1 += xhat * g
            acc2 += g
        c1 = tl.sum(acc1, axis=0) / n_cols
        c2 = tl.sum(acc2, axis=0) / n_cols
        for start in range(0, n_cols, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = cols < n_cols
            xhat = tl.where(mask, (tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32) - mean) * rstd, 0.0)
            dy = tl.load(dy_row + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_W:
                g = dy * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
                tl.store(DWp + cols, tl.load(DWp + cols, mask=mask, other=0.0) + dy * xhat, mask=mask)
            else:
                g = dy
            if HAS_B:
                tl.store(DBp + cols, tl.load(DBp + cols, mask=mask, other=0.0) + dy, mask=mask)
            if IS_RMS:
                dx = (g - xhat * c1) * rstd
            else:
                dx = (g - xhat * c1 - c2) * rstd
            if HAS_DS:
                dx += tl.load(DS + tl.cast(row, tl.int64) * stride_dsm + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(DX + tl.cast(row, tl.int64) * n_cols + cols, dx.to(DX.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["n_parts"])
def _sum_partials_kernel(Part, DW, DB, n_parts, n_cols, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                         BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    # The second stage of the dw / db reduction, both in one launch: DW[c] = sum over p of
    # Part[0, p, c] and DB[c] = sum over p of Part[HAS_W, p, c], in a fixed order, written straight in
    # the parameters' dtypes.
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    if HAS_W:
        tl.store(DW + cols, _sum_rows(Part, n_parts, n_cols, cols, BLOCK_P, BLOCK_N).to(DW.dtype.element_ty),
                 mask=col_mask)
        Part += tl.cast(n_parts, tl.int64) * n_cols
    if HAS_B:
        tl.store(DB + cols, _sum_rows(Part, n_parts, n_cols, cols, BLOCK_P, BLOCK_N).to(DB.dtype.element_ty),
                 mask=col_mask)


@triton.jit
def _sum_rows(P, n_parts, n_cols, cols, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    # sum over p of P[p, cols] for an (n_parts, n_cols) fp32 matrix, in fp32
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for start in range(0, n_parts, BLOCK_P):
        parts = start + tl.arange(0, BLOCK_P)
        mask = (parts < n_parts)[:, None] & (cols < n_cols)[None, :]
        acc += tl.load(P + parts.to(tl.int64)[:, None] * n_cols + cols[None, :], mask=mask, other=0.0)
    return tl.sum(acc, axis=0)


_bwd_launch = FastLaunch(_norm_bwd_kernel)
_bwd_looped_launch = FastLaunch(_norm_bwd_looped_kernel)
_sum_launch = FastLaunch(_sum_partials_kernel)


@functools.lru_cache(maxsize=None)
def bwd_config(n_cols):
    """Launch shape for a width: BLOCK_M x BLOCK_N tile per loop step, warps, programs per SM.

    From the H100 sweeps (tools/gpu_norms.py, 2026-11-27, CUDA-graph GPU time): up to 1024 columns
    2048-element tiles with 4 warps and 4 programs per SM (768: 61 us against 74 us for 4 x 1024 tiles
    of 8 warps), wider rows 4096-element tiles. Loading the next tile ahead (PREFETCH) wins 2-8% at
    every width for layer_norm, rms_norm and add_rms_norm, but loses 2-16% for add_layer_norm, whose
    third prefetched tile (the sum's gradient) and bias accumulator cost too many registers; norm_bwd
    turns it off there (`prefetch_for`).
    """
    block_n = next_power_of_2(n_cols)
    block_m = max(1, min(128, (2048 if block_n <= 1024 else 4096) // block_n))
    num_warps = max(1, min(16, block_m * block_n // 512))
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": num_warps,
            "progs_per_sm": max(1, 16 // num_warps)}


def prefetch_for(is_rms, has_dsum):
    """Whether the one-pass backward loads the next tile ahead: at every width, except for
    add_layer_norm (see bwd_config)."""
    return is_rms or not has_dsum


@functools.lru_cache(maxsize=None)
def sum_config(n_parts, n_cols):
    """(grid, BLOCK_P, BLOCK_N) of the second-stage reduction: 4096-element tiles, BLOCK_P partial rows
    high (one tile holds all of a full persistent grid's partial rows; three sizes only, few compiles)."""
    block_p = 256 if n_parts > 64 else 64 if n_parts > 8 else 8
    block_n = 4096 // block_p
    return cdiv(n_cols, block_n), block_p, block_n


def n_cols_rows(t):
    """(width, rows) of t viewed as (rows, width); numel // width is cheaper than a product of the shape."""
    n_cols = t.shape[-1]
    return n_cols, t.numel() // n_cols if n_cols else math.prod(t.shape[:-1])


def rows_of(t, n_cols):
    """(t as a 2D tensor with unit column stride, its row stride), copying only when no such view exists.

    A contiguous tensor is returned as it is (the kernels only read its data pointer).
    """
    if t.is_contiguous():
        return t, n_cols
    t2 = t.reshape(-1, n_cols)
    if t2.stride(1) != 1 and n_cols > 1:
        t2 = t2.contiguous()  # the kernels index columns as X + col: a column stride needs a copy
    return t2, t2.stride(0)


@functools.lru_cache(maxsize=None)
def sm_count(device):
    """Streaming multiprocessors on a CUDA device (a few "programs" under the CPU interpreter)."""
    if device.type != "cuda":
        return 4
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_properties(index).multi_processor_count


def _bwd_plans(n_rows, n_cols, device, is_rms, has_ds, has_w, has_b, config, prefetch):
    """(programs, main launch plan, second-stage plan or None) for a shape."""
    flags = dict(IS_RMS=is_rms, HAS_DS=has_ds, HAS_W=has_w, HAS_B=has_b)
    n_sm = sm_count(device)
    if n_cols <= MAX_FUSED_N:
        cfg = config(n_cols)
        n_progs = min(n_sm * cfg["progs_per_sm"], cdiv(n_rows, cfg["BLOCK_M"]))
        main = LaunchPlan((n_progs,), **flags, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                          num_warps=cfg["num_warps"],
                          PREFETCH=prefetch_for(is_rms, has_ds) if prefetch is None else prefetch)
    else:
        n_progs = min(n_sm * 2, n_rows)
        main = LaunchPlan((n_progs,), **flags, BLOCK_N=LOOP_BLOCK_N, num_warps=8)
    if not (has_w or has_b):
        return n_progs, main, None
    grid, block_p, block_n = sum_config(n_progs, n_cols)
    return n_progs, main, LaunchPlan((grid,), HAS_W=has_w, HAS_B=has_b, BLOCK_P=block_p, BLOCK_N=block_n,
                                     num_warps=4)


# The backward's plans under every fact of their launches' arguments but the tensors' alignment (as
# norms._FWD_PLANS, for FastLaunch.launch_known). bwd_config and PREFETCH are part of the key so that a
# tool swapping them (tools/gpu_norms.py) gets new plans.
_BWD_PLANS = {}
MAX_PLANS = 4096


def norm_bwd(dy, saved, dsum, weight, bias, stats, is_rms):
    """Launch the backward kernels; returns (ds in saved's dtype, dw like weight or None, db like bias or None).

    saved is the forward's normalized input (x, or the sum), stats the forward's fp32 statistics.
    """
    n_cols, n_rows = n_cols_rows(saved)
    contiguous = saved.is_contiguous()  # (then its empty_like is contiguous, and cheaper with no format)
    dx = torch.empty_like(saved) if contiguous else torch.empty_like(saved, memory_format=torch.contiguous_format)
    has_w, has_b = weight is not None, bias is not None
    if n_rows == 0 or n_cols == 0:
        return (dx, torch.zeros_like(weight) if has_w else None, torch.zeros_like(bias) if has_b else None)
    x2, stride_xm = (saved, n_cols) if contiguous else rows_of(saved, n_cols)
    dy2, stride_dym = (dy, n_cols) if dy.is_contiguous() else rows_of(dy, n_cols)
    ds2, stride_dsm = rows_of(dsum, n_cols) if dsum is not None else (dy2, stride_dym)
    w = weight.contiguous() if has_w else x2
    key = (n_rows, n_cols, stride_xm, stride_dym, stride_dsm, x2.dtype, dy2.dtype, ds2.dtype, w.dtype,
           bias.dtype if has_b else None, saved.device, is_rms, dsum is not None, has_w, has_b, bwd_config, PREFETCH)
    plans = _BWD_PLANS.get(key)
    if plans is None:
        if len(_BWD_PLANS) >= MAX_PLANS:
            _BWD_PLANS.clear()
        plans = _BWD_PLANS[key] = _bwd_plans(n_rows, n_cols, *key[10:])
    n_progs, main, second = plans
    # No partials without weight and bias: dx stands in as an unused pointer, as in every launch with a
    # missing tensor.
    part = dx
    if n_cols <= MAX_FUSED_N:
        if second is not None:
            part = saved.new_empty(has_w + has_b, n_progs, n_cols, dtype=torch.float32)
        launcher = _bwd_launch
    else:
        if second is not None:  # zeros: the looped kernel adds into its partial rows
            part = saved.new_zeros((has_w + has_b, n_progs, n_cols), dtype=torch.float32)
        launcher = _bwd_looped_launch
    # (the data pointers go to Triton's launcher too: FastLaunch.launch_known's `pointers`)
    p0, p1, p2, p3, p4, p5, p6 = (x2.data_ptr(), w.data_ptr(), dy2.data_ptr(), ds2.data_ptr(), dx.data_ptr(),
                                  part.data_ptr(), stats.data_ptr())
    rest = (stride_xm, stride_dym, stride_dsm, n_rows, n_cols)
    launcher.launch_known(main, (x2, w, dy2, ds2, dx, part, stats, *rest), not (p0 | p1 | p2 | p3 | p4 | p5 | p6) % 16,
                          (p0, p1, p2, p3, p4, p5, p6, *rest))
    if second is None:
        return dx, None, None
    # (1-D: a parameter's empty_like is contiguous, or has the odd stride of a single element)
    dw = torch.empty_like(weight) if has_w else None
    db = torch.empty_like(bias) if has_b else None
    dw_, db_ = (dw if has_w else db), (db if has_b else dw)
    q1, q2 = dw_.data_ptr(), db_.data_ptr()
    _sum_launch.launch_known(second, (part, dw_, db_, n_progs, n_cols), not (p5 | q1 | q2) % 16,
                             (p5, q1, q2, n_progs, n_cols))
    return dx, dw, db
