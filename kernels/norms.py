"""LayerNorm and RMSNorm in Triton, each optionally fused with the residual add before it.

Over the last dim (n_cols = N) of x viewed as (n_rows, N):

    s      = x + residual                        (add variants; stored in the promoted dtype)
    layer: y = (s - mean(s)) * rstd * w + b,     rstd = 1 / sqrt(mean((s - mean(s))^2) + eps)
    rms:   y = s * rstd * w,                     rstd = 1 / sqrt(mean(s^2) + eps)

- dtypes: fp16, bf16, fp32 activations; statistics and arithmetic in fp32; y has x's dtype. Weight
  and bias may have another dtype (fp32 weights with bf16 activations, as under autocast); their
  gradients come back in their own dtype. float64 input goes to the PyTorch reference, since the
  kernels compute in fp32.
- shapes: any leading shape, any width. Up to MAX_FUSED_N columns a row lives in registers and the
  forward kernel normalizes a 2D block of several rows per program, so narrow rows (768) still move
  enough bytes per program; wider rows use a looped kernel that streams the row in chunks (two
  passes for RMSNorm, three for LayerNorm, the later ones mostly hitting L2).
- accuracy: the LayerNorm mean is corrected by the mean of the residuals (corrected two-pass), so
  rows whose mean is large against their spread keep their digits.
- strides: rows may be strided (a view of a wider buffer is not copied); the last dim must have
  stride 1, otherwise the launcher makes an explicit contiguous copy.
- backward (kernels/norms_bwd.py): dx from the saved input (x, or the sum for the add variants) and
  the fp32 mean/rstd; dweight and dbias from per-program partial sums (a persistent grid of about
  one wave of programs, each accumulating its rows in registers), summed by a second small
  reduction: no atomics, deterministic. For the add variants d(residual) = d(x) = d(sum), which is
  the gradient through the norm plus the gradient arriving on the returned sum.
- torch.compile: the forward and backward launches are torch.library custom ops (`kernels::norm_fwd`,
  `kernels::norm_bwd`) with fake implementations and a registered autograd formula, so
  `torch.compile(fullgraph=True)` traces the public functions without graph breaks.
"""
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from . import reference
from ._checks import check_norm_args
from ._runtime import check_device
from .norms_bwd import as_rows, norm_bwd

MAX_FUSED_N = 16384  # widest row the one-pass forward kernel keeps in registers
LOOP_BLOCK_N = 4096  # chunk width of the looped forward kernel


@triton.jit
def _norm_fwd_kernel(X, R, W, B, Y, S, Mean, Rstd,
                     stride_xm, stride_rm, stride_ym, stride_sm,
                     n_rows, n_cols, eps,
                     IS_RMS: tl.constexpr, HAS_RES: tl.constexpr, HAS_W: tl.constexpr,
                     HAS_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # One program normalizes BLOCK_M whole rows held in registers as a (BLOCK_M, BLOCK_N) tile.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    col_mask = cols < n_cols
    mask = row_mask[:, None] & col_mask[None, :]
    r64 = rows.to(tl.int64)[:, None]
    x = tl.load(X + r64 * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = tl.load(R + r64 * stride_rm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        # Round the sum to its storage dtype first: the norm and the backward see the stored sum.
        s = (x + r).to(S.dtype.element_ty)
        tl.store(S + r64 * stride_sm + cols[None, :], s, mask=mask)
        x = s.to(tl.float32)
    if IS_RMS:
        var = tl.sum(x * x, axis=1) / n_cols
        xc = x
    else:
        mean = tl.sum(x, axis=1) / n_cols
        d = tl.where(mask, x - mean[:, None], 0.0)
        # Corrected two-pass: rows far from zero (|mean| >> std) lose digits in the first sum; the
        # mean of the residuals d repairs the mean, and var = mean(d^2) - mean(d)^2.
        corr = tl.sum(d, axis=1) / n_cols
        var = tl.maximum(tl.sum(d * d, axis=1) / n_cols - corr * corr, 0.0)
        mean += corr
        tl.store(Mean + rows, mean, mask=row_mask)
        xc = d - corr[:, None]
    rstd = tl.rsqrt(var + eps)
    tl.store(Rstd + rows, rstd, mask=row_mask)
    y = xc * rstd[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + r64 * stride_ym + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _norm_fwd_looped_kernel(X, R, W, B, Y, S, Mean, Rstd,
                            stride_xm, stride_rm, stride_ym, stride_sm,
                            n_cols, eps,
                            IS_RMS: tl.constexpr, HAS_RES: tl.constexpr, HAS_W: tl.constexpr,
                            HAS_B: tl.constexpr, BLOCK_N: tl.constexpr):
    # One program per row, streamed in BLOCK_N chunks: statistics first, then the normalization.
    row = tl.program_id(0)
    X += row.to(tl.int64) * stride_xm
    Y += row.to(tl.int64) * stride_ym
    if HAS_RES:
        R += row.to(tl.int64) * stride_rm
        S += row.to(tl.int64) * stride_sm
    # Pass 1: the sum (LayerNorm) or the sum of squares (RMSNorm); the add variants store s here and
    # the later passes read s back instead of x and residual.
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, n_cols, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        mask = cols < n_cols
        x = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            s = (x + tl.load(R + cols, mask=mask, other=0.0).to(tl.float32)).to(S.dtype.element_ty)
            tl.store(S + cols, s, mask=mask)
            x = s.to(tl.float32)
        if IS_RMS:
            acc += x * x
        else:
            acc += x
    if HAS_RES:
        SRC = S
    else:
        SRC = X
    if IS_RMS:
        mean = 0.0
        var = tl.sum(acc, axis=0) / n_cols
    else:
        # Pass 2 (LayerNorm): sums of d = x - mean and d^2; the corrected two-pass formula
        # var = mean(d^2) - mean(d)^2 also repairs the rounding of the first mean.
        mean = tl.sum(acc, axis=0) / n_cols
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_N], dtype=tl.float32)
        for start in range(0, n_cols, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = cols < n_cols
            x = tl.load(SRC + cols, mask=mask, other=0.0).to(tl.float32)
            d = tl.where(mask, x - mean, 0.0)
            acc += d
            acc2 += d * d
        corr = tl.sum(acc, axis=0) / n_cols
        var = tl.maximum(tl.sum(acc2, axis=0) / n_cols - corr * corr, 0.0)
        mean += corr
        tl.store(Mean + row, mean)
    rstd = tl.rsqrt(var + eps)
    tl.store(Rstd + row, rstd)
    for start in range(0, n_cols, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        mask = cols < n_cols
        y = (tl.load(SRC + cols, mask=mask, other=0.0).to(tl.float32) - mean) * rstd
        if HAS_W:
            y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + cols, y.to(Y.dtype.element_ty), mask=mask)


def fwd_config(n_cols):
    """Launch shape for a width: BLOCK_M rows of BLOCK_N columns per program and its warp count.

    Narrow rows are packed several to a program so that each moves ~16 KB of bf16 in and out.
    """
    block_n = triton.next_power_of_2(n_cols)
    block_m = max(1, min(128, 8192 // block_n))
    num_warps = max(1, min(16, block_m * block_n // 1024))
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": num_warps}


def norm_fwd(x, residual, weight, bias, eps, is_rms):
    """Launch the forward kernel; returns (y, sum or an empty tensor, mean or empty, rstd)."""
    n_cols = x.shape[-1]
    n_rows = math.prod(x.shape[:-1])
    sum_dtype = torch.promote_types(x.dtype, residual.dtype) if residual is not None else x.dtype
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    summed = torch.empty(x.shape if residual is not None else (0,), dtype=sum_dtype, device=x.device)
    mean = torch.empty((0 if is_rms else n_rows,), dtype=torch.float32, device=x.device)
    rstd = torch.empty((n_rows,), dtype=torch.float32, device=x.device)
    if x.numel() == 0:
        return y, summed, mean, rstd
    x2 = as_rows(x, n_cols)
    r2 = as_rows(residual, n_cols) if residual is not None else x2
    s2 = summed.view(-1, n_cols) if residual is not None else x2
    y2 = y.view(-1, n_cols)
    w = weight.contiguous() if weight is not None else x2
    b = bias.contiguous() if bias is not None else x2
    args = (x2, r2, w, b, y2, s2, mean if not is_rms else rstd, rstd,
            x2.stride(0), r2.stride(0), y2.stride(0), s2.stride(0))
    flags = {"IS_RMS": is_rms, "HAS_RES": residual is not None, "HAS_W": weight is not None,
             "HAS_B": bias is not None}
    if n_cols <= MAX_FUSED_N:
        cfg = fwd_config(n_cols)
        grid = (triton.cdiv(n_rows, cfg["BLOCK_M"]),)
        _norm_fwd_kernel[grid](*args, n_rows, n_cols, eps, **flags, **cfg)
    else:
        _norm_fwd_looped_kernel[(n_rows,)](*args, n_cols, eps, **flags, BLOCK_N=LOOP_BLOCK_N,
                                           num_warps=8)
    return y, summed, mean, rstd


# ---- torch custom ops: what torch.compile sees ---------------------------------------------------

@torch.library.custom_op("kernels::norm_fwd", mutates_args=())
def _norm_fwd_op(x: torch.Tensor, residual: Optional[torch.Tensor], weight: Optional[torch.Tensor],
                 bias: Optional[torch.Tensor], eps: float, is_rms: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return norm_fwd(x, residual, weight, bias, eps, is_rms)


@_norm_fwd_op.register_fake
def _norm_fwd_fake(x, residual, weight, bias, eps, is_rms):
    n_rows = math.prod(x.shape[:-1])
    sum_dtype = torch.promote_types(x.dtype, residual.dtype) if residual is not None else x.dtype
    return (x.new_empty(x.shape),
            x.new_empty(x.shape if residual is not None else (0,), dtype=sum_dtype),
            x.new_empty((0 if is_rms else n_rows,), dtype=torch.float32),
            x.new_empty((n_rows,), dtype=torch.float32))


@torch.library.custom_op("kernels::norm_bwd", mutates_args=())
def _norm_bwd_op(dy: torch.Tensor, saved: torch.Tensor, dsum: Optional[torch.Tensor],
                 weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], mean: torch.Tensor,
                 rstd: torch.Tensor, is_rms: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return norm_bwd(dy, saved, dsum, weight, bias, mean, rstd, is_rms)


@_norm_bwd_op.register_fake
def _norm_bwd_fake(dy, saved, dsum, weight, bias, mean, rstd, is_rms):
    return (saved.new_empty(saved.shape),
            weight.new_empty(weight.shape) if weight is not None else saved.new_empty((0,)),
            bias.new_empty(bias.shape) if bias is not None else saved.new_empty((0,)))


def _norm_setup_context(ctx, inputs, output):
    x, residual, weight, bias, eps, is_rms = inputs
    _, summed, mean, rstd = output
    # The backward needs the normalized input (x, or the stored sum) and the fp32 statistics only
    # (bias is kept for its dtype: db is written in it).
    ctx.save_for_backward(summed if residual is not None else x, weight, bias, mean, rstd)
    ctx.is_rms = is_rms
    ctx.has_res = residual is not None
    ctx.dtypes = (x.dtype, residual.dtype if residual is not None else None)
    ctx.set_materialize_grads(False)  # no zero tensors for outputs that got no gradient


def _norm_backward(ctx, dy, dsum, dmean, drstd):
    saved, weight, bias, mean, rstd = ctx.saved_tensors
    if dy is None:  # only the returned sum was used: the norm's parameters get no gradient
        dx, dw, db = dsum, None, None
    else:
        dx, dw, db = _norm_bwd_op(dy, saved, dsum if ctx.has_res else None, weight, bias, mean, rstd,
                                  ctx.is_rms)
        dw = dw if weight is not None else None
        db = db if bias is not None else None
    x_dtype, res_dtype = ctx.dtypes
    dx_out = dx.to(x_dtype) if dx is not None else None
    dres = dx.to(res_dtype) if ctx.has_res and dx is not None else None
    return dx_out, dres, dw, db, None, None


_norm_fwd_op.register_autograd(_norm_backward, setup_context=_norm_setup_context)


# ---- public API ----------------------------------------------------------------------------------

def _norm(x, residual, weight, bias, eps, is_rms):
    check_device(x=x, residual=residual, weight=weight, bias=bias)
    return _norm_fwd_op(x, residual, weight, bias, float(eps), is_rms)


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dim."""
    check_norm_args(x, weight, bias, eps)
    if x.dtype == torch.float64:
        return reference.layer_norm(x, weight, bias, eps)
    return _norm(x, None, weight, bias, eps, False)[0]


def rms_norm(x, weight=None, eps=1e-6):
    """x / sqrt(mean(x^2) + eps) * weight over the last dim."""
    check_norm_args(x, weight, None, eps)
    if x.dtype == torch.float64:
        return reference.rms_norm(x, weight, eps)
    return _norm(x, None, weight, None, eps, True)[0]


def add_layer_norm(x, residual, weight=None, bias=None, eps=1e-5):
    """(layer_norm(x + residual), x + residual), reading x and residual once."""
    check_norm_args(x, weight, bias, eps, residual)
    if residual is None:
        return layer_norm(x, weight, bias, eps), x
    if torch.promote_types(x.dtype, residual.dtype) == torch.float64:
        return reference.add_layer_norm(x, residual, weight, bias, eps)
    y, summed, _, _ = _norm(x, residual, weight, bias, eps, False)
    return y, summed


def add_rms_norm(x, residual, weight=None, eps=1e-6):
    """(rms_norm(x + residual), x + residual), reading x and residual once."""
    check_norm_args(x, weight, None, eps, residual)
    if residual is None:
        return rms_norm(x, weight, eps), x
    if torch.promote_types(x.dtype, residual.dtype) == torch.float64:
        return reference.add_rms_norm(x, residual, weight, eps)
    y, summed, _, _ = _norm(x, residual, weight, None, eps, True)
    return y, summed
