"""Backward of LayerNorm and RMSNorm (and their residual-add variants) in Triton.

With xhat = (s - mean) * rstd (rms: s * rstd), g = dy * w, and means taken over the row's N columns:

    layer: ds = rstd * (g - xhat * mean(g * xhat) - mean(g))
    rms:   ds = rstd * (g - xhat * mean(g * xhat))
    dw = sum over rows of dy * xhat,  db = sum over rows of dy

For the add variants the gradient arriving on the returned sum is added to ds, and ds is then both
d(x) and d(residual). dw and db are reduced deterministically without atomics: a persistent grid of
about one wave of programs walks the rows (program p takes row blocks p, p + P, p + 2P, ...), each
program accumulates its share in registers (or, for rows too wide for registers, in its own row of
an fp32 buffer that no other program touches) and writes one partial row; a second small reduction
sums the P partial rows. Same inputs and launch shape give the same bits.
"""
import math

import torch
import triton
import triton.language as tl

MAX_FUSED_N = 8192   # widest row the one-pass backward keeps in registers (x, dy, two accumulators)
LOOP_BLOCK_N = 4096  # chunk width of the looped backward kernel
PREFETCH = False     # default of the one-pass kernel's PREFETCH switch (tools/gpu_norms.py times both)


@triton.jit
def _load_tile(P, stride_pm, block, n_rows, n_cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Rows block * BLOCK_M ... of an (n_rows, n_cols) matrix, in its storage dtype; zeros off the edge.
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    return tl.load(P + rows.to(tl.int64)[:, None] * stride_pm + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _norm_bwd_kernel(X, W, DY, DS, DX, DWp, DBp, Mean, Rstd,
                     stride_xm, stride_dym, stride_dsm, stride_dxm,
                     n_rows, n_cols,
                     IS_RMS: tl.constexpr, HAS_DS: tl.constexpr, HAS_W: tl.constexpr,
                     HAS_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     PREFETCH: tl.constexpr):
    # Persistent: program pid takes row blocks pid, pid + P, ... With PREFETCH the next block's
    # x / dy / ds tiles are loaded before this block is computed, so their latency overlaps it.
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
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
        tl.store(DX + rows.to(tl.int64)[:, None] * stride_dxm + cols[None, :], dx.to(DX.dtype.element_ty),
                 mask=mask)
    if HAS_W:
        tl.store(DWp + pid * n_cols + cols, tl.sum(dw_acc, axis=0), mask=col_mask)
    if HAS_B:
        tl.store(DBp + pid * n_cols + cols, tl.sum(db_acc, axis=0), mask=col_mask)


@triton.jit
def _norm_bwd_looped_kernel(X, W, DY, DS, DX, DWp, DBp, Mean, Rstd,
                            stride_xm, stride_dym, stride_dsm, stride_dxm,
                            n_rows, n_cols,
                            IS_RMS: tl.constexpr, HAS_DS: tl.constexpr, HAS_W: tl.constexpr,
                            HAS_B: tl.constexpr, BLOCK_N: tl.constexpr):
    # Rows too wide for registers: per row, pass 1 reduces mean(g * xhat) and mean(g) chunk by chunk,
    # pass 2 writes dx and adds into this program's own zero-initialized partial row of dw / db.
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    DWp += pid * n_cols
    DBp += pid * n_cols
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
            tl.store(DX + tl.cast(row, tl.int64) * stride_dxm + cols, dx.to(DX.dtype.element_ty), mask=mask)


@triton.jit
def _sum_partials_kernel(P, Out, n_parts, n_cols, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    # Out[c] = sum over p of P[p, c] in a fixed order: the second stage of the dw / db reduction,
    # written straight in the parameter's dtype.
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for start in range(0, n_parts, BLOCK_P):
        parts = start + tl.arange(0, BLOCK_P)
        mask = (parts < n_parts)[:, None] & col_mask[None, :]
        acc += tl.load(P + parts[:, None] * n_cols + cols[None, :], mask=mask, other=0.0)
    tl.store(Out + cols, tl.sum(acc, axis=0).to(Out.dtype.element_ty), mask=col_mask)


def sum_partials(partial, like):
    """Sum the (n_parts, n_cols) fp32 partial rows into a new tensor shaped and typed like `like`."""
    n_parts, n_cols = partial.shape
    out = torch.empty(like.shape, dtype=like.dtype, device=like.device)
    block_p = min(triton.next_power_of_2(n_parts), 256)
    block_n = max(16, 4096 // block_p)
    _sum_partials_kernel[(triton.cdiv(n_cols, block_n),)](partial, out, n_parts, n_cols,
                                                          BLOCK_P=block_p, BLOCK_N=block_n, num_warps=4)
    return out


def bwd_config(n_cols):
    """Launch shape for a width: BLOCK_M x BLOCK_N tile per loop step, warps, programs per SM."""
    block_n = triton.next_power_of_2(n_cols)
    block_m = max(1, min(128, 4096 // block_n))
    num_warps = max(1, min(16, block_m * block_n // 512))
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": num_warps,
            "progs_per_sm": max(1, 16 // num_warps), "PREFETCH": PREFETCH}


def as_rows(t, n_cols):
    """t as an (n_rows, n_cols) view with unit column stride, copying only when no such view exists."""
    t2 = t.reshape(-1, n_cols)
    if t2.stride(1) != 1 and n_cols > 1:
        t2 = t2.contiguous()  # the kernels index columns as X + col: a column stride needs a copy
    return t2


_SM_COUNT = {}


def sm_count(device):
    """Streaming multiprocessors on a CUDA device (a few "programs" under the CPU interpreter)."""
    if device.type != "cuda":
        return 4
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def norm_bwd(dy, saved, dsum, weight, bias, mean, rstd, is_rms):
    """Launch the backward kernels; returns (ds in saved's dtype, dw like weight, db like bias).

    A missing weight or bias gets an empty tensor in its place (custom ops return tensors).
    """
    n_cols = saved.shape[-1]
    n_rows = math.prod(saved.shape[:-1])
    dx = torch.empty(saved.shape, dtype=saved.dtype, device=saved.device)
    if saved.numel() == 0:
        return (dx, torch.zeros_like(weight) if weight is not None else saved.new_empty((0,)),
                torch.zeros_like(bias) if bias is not None else saved.new_empty((0,)))
    x2, dy2, dx2 = as_rows(saved, n_cols), as_rows(dy, n_cols), dx.view(-1, n_cols)
    ds2 = as_rows(dsum, n_cols) if dsum is not None else dy2
    w = weight.contiguous() if weight is not None else x2
    flags = {"IS_RMS": is_rms, "HAS_DS": dsum is not None, "HAS_W": weight is not None,
             "HAS_B": bias is not None}
    fused = n_cols <= MAX_FUSED_N
    if fused:
        cfg = dict(bwd_config(n_cols))
        n_progs = min(sm_count(saved.device) * cfg.pop("progs_per_sm"), triton.cdiv(n_rows, cfg["BLOCK_M"]))
    else:
        n_progs = min(sm_count(saved.device) * 2, n_rows)
    alloc = torch.empty if fused else torch.zeros  # the looped kernel adds into its partial row
    dw_part = alloc((n_progs if weight is not None else 0, n_cols), dtype=torch.float32, device=saved.device)
    db_part = alloc((n_progs if bias is not None else 0, n_cols), dtype=torch.float32, device=saved.device)
    args = (x2, w, dy2, ds2, dx2, dw_part if weight is not None else dx2, db_part if bias is not None else dx2,
            mean if not is_rms else rstd, rstd, x2.stride(0), dy2.stride(0), ds2.stride(0), dx2.stride(0),
            n_rows, n_cols)
    if fused:
        _norm_bwd_kernel[(n_progs,)](*args, **flags, **cfg)
    else:
        _norm_bwd_looped_kernel[(n_progs,)](*args, **flags, BLOCK_N=LOOP_BLOCK_N, num_warps=8)
    dw = sum_partials(dw_part, weight) if weight is not None else saved.new_empty((0,))
    db = sum_partials(db_part, bias) if bias is not None else saved.new_empty((0,))
    return dx, dw, db
