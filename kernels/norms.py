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
- torch.compile: the forward and backward launches are torch ops (`kernels::norm_fwd`,
  `kernels::norm_bwd`; kernels/_ops.py) with fake implementations, which the autograd.Function NormFn
  calls under torch.compile (Dynamo traces it, forward and backward), so `torch.compile(fullgraph=True)`
  traces the public functions without graph breaks.
- host overhead: in eager mode the public functions skip the op dispatcher (NormFn calling the
  launchers directly; no autograd at all when nothing needs a gradient,
  and then no statistics allocated or stored),
  check the common case in one cheap test (the full checker and its messages run when it fails),
  launch plans (grid, constexprs, the binary) are cached under every fact of their arguments but the
  tensors' alignment (a dict lookup and an alignment test per launch), no autotuning, one forward
  launch and two backward launches, each through the compiled kernel's launcher (kernels/_launch.py).
  Still, at 16384 x 768 a fwd+bwd costs more CPU time (autograd.Function plus three launches) than
  GPU time, so per-call timings there measure the host (bench/RESULTS.md; tools/host_profile_cpu.py
  times the host path on a machine without a GPU).
"""
import functools
import math

import torch
import triton
import triton.language as tl

from . import reference
from ._checks import check_norm_args, norm_args_ok
from ._launch import FastLaunch, LaunchPlan
from ._ops import define
from ._runtime import KERNEL_DEVICE, cdiv, check_device, next_power_of_2
from .norms_bwd import n_cols_rows, norm_bwd, rows_of

MAX_FUSED_N = 16384  # widest row the one-pass forward kernel keeps in registers
LOOP_BLOCK_N = 4096  # chunk width of the looped forward kernel


@triton.jit
def _add_pairs(a0, b0, a1, b1):
    return a0 + a1, b0 + b1


@triton.jit(do_not_specialize=["n_rows"])
def _norm_fwd_kernel(X, R, W, B, Y, S, Stats, stride_xm, stride_rm, n_rows, n_cols, eps,
                     IS_RMS: tl.constexpr, HAS_RES: tl.constexpr, HAS_W: tl.constexpr,
                     HAS_B: tl.constexpr, HAS_STATS: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr):
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
        tl.store(S + r64 * n_cols + cols[None, :], s, mask=mask)
        x = s.to(tl.float32)
    if IS_RMS:
        var = tl.sum(x * x, axis=1) / n_cols
        xc = x
    else:
        mean = tl.sum(x, axis=1) / n_cols
        d = tl.where(mask, x - mean[:, None], 0.0)
        # Corrected two-pass: rows far from zero (|mean| >> std) lose digits in the first sum; the
        # mean of the residuals d repairs the mean, and var = mean(d^2) - mean(d)^2.
        # Both sums of d in one reduction tree: one exchange between warps instead of two.
        sum_d, sum_d2 = tl.reduce((d, d * d), 1, _add_pairs)
        corr = sum_d / n_cols
        var = tl.maximum(sum_d2 / n_cols - corr * corr, 0.0)
        mean += corr
        if HAS_STATS:
            tl.store(Stats + rows, mean, mask=row_mask)
        xc = d - corr[:, None]
    rstd = tl.rsqrt(var + eps)
    if HAS_STATS:
        if IS_RMS:
            tl.store(Stats + rows, rstd, mask=row_mask)
        else:
            tl.store(Stats + n_rows + rows, rstd, mask=row_mask)
    y = xc * rstd[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + r64 * n_cols + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["n_rows"])
def _norm_fwd_looped_kernel(X, R, W, B, Y, S, Stats, stride_xm, stride_rm, n_rows, n_cols, eps,
                            IS_RMS: tl.constexpr, HAS_RES: tl.constexpr, HAS_W: tl.constexpr,
                            HAS_B: tl.constexpr, HAS_STATS: tl.constexpr, BLOCK_N: tl.constexpr):
    # One program per row, streamed in BLOCK_N chunks: statistics first, then the normalization.
    row = tl.program_id(0)
    X += row.to(tl.int64) * stride_xm
    Y += row.to(tl.int64) * n_cols
    if HAS_RES:
        R += row.to(tl.int64) * stride_rm
        S += row.to(tl.int64) * n_cols
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
        if HAS_STATS:
            tl.store(Stats + row, mean)
    rstd = tl.rsqrt(var + eps)
    if HAS_STATS:
        if IS_RMS:
            tl.store(Stats + row, rstd)
        else:
            tl.store(Stats + n_rows + row, rstd)
    for start in range(0, n_cols, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        mask = cols < n_cols
        y = (tl.load(SRC + cols, mask=mask, other=0.0).to(tl.float32) - mean) * rstd
        if HAS_W:
            y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + cols, y.to(Y.dtype.element_ty), mask=mask)


_fwd_launch = FastLaunch(_norm_fwd_kernel)
_fwd_looped_launch = FastLaunch(_norm_fwd_looped_kernel)


@functools.lru_cache(maxsize=None)
def fwd_config(n_cols):
    """Launch shape for a width: BLOCK_M rows of BLOCK_N columns per program and its warp count.

    Narrow rows are packed several to a program. Up to 2048 columns, 4096-element tiles with 4 warps
    (H100 sweep, tools/gpu_norms.py, 2026-11-27: 768 wide, 19.5 us against 26.5 us for 8 x 1024 tiles of
    8 warps); wider rows keep 8192-element tiles, one warp per 1024 elements.
    """
    block_n = next_power_of_2(n_cols)
    if block_n <= 2048:
        return {"BLOCK_M": max(1, min(128, 4096 // block_n)), "BLOCK_N": block_n, "num_warps": 4}
    block_m = max(1, 8192 // block_n)
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": max(1, min(16, block_m * block_n // 1024))}


def _fwd_plan(n_rows, n_cols, is_rms, has_res, has_w, has_b, has_stats, config):
    """The forward's grid and constexprs for a shape."""
    flags = dict(IS_RMS=is_rms, HAS_RES=has_res, HAS_W=has_w, HAS_B=has_b, HAS_STATS=has_stats)
    if n_cols <= MAX_FUSED_N:
        cfg = config(n_cols)
        return LaunchPlan((cdiv(n_rows, cfg["BLOCK_M"]),), **flags, **cfg)
    return LaunchPlan((n_rows,), **flags, BLOCK_N=LOOP_BLOCK_N, num_warps=8)


# Launch plans under every fact of their launch's arguments but the tensors' alignment (dtypes, ints),
# so that FastLaunch.launch_known finds the binary without checking them. fwd_config is part of the key
# so that a tool swapping it (tools/gpu_norms.py sweeps launch shapes) gets new plans.
_FWD_PLANS = {}
MAX_PLANS = 4096  # then the cache starts over (many row counts, as in inference with varying batches)


def norm_fwd(x, residual, weight, bias, eps, is_rms, need_stats=True):
    """Launch the forward kernel; returns (y, the sum or None, stats).

    stats is fp32 (2, n_rows) for LayerNorm (mean, rstd) and (1, n_rows) for RMSNorm (rstd); None with
    need_stats=False (no backward to follow: neither allocated nor stored).
    Arguments are assumed checked (the public functions do it).
    """
    n_cols, n_rows = n_cols_rows(x)
    # (empty_like and new_empty with int sizes are the cheapest allocation calls on the host; y is
    # contiguous: x's empty_like where x is, else the format's, which costs a little more)
    contiguous = x.is_contiguous()
    y = torch.empty_like(x) if contiguous else torch.empty_like(x, memory_format=torch.contiguous_format)
    summed = None
    if residual is not None:
        sum_dtype = x.dtype if residual.dtype == x.dtype else torch.promote_types(x.dtype, residual.dtype)
        summed = torch.empty_like(x, dtype=sum_dtype, memory_format=torch.contiguous_format)
    stats = x.new_empty(1 if is_rms else 2, n_rows, dtype=torch.float32) if need_stats else None
    if n_rows == 0 or n_cols == 0:
        return y, summed, stats
    # y and the sum are new contiguous tensors (row stride n_cols); x and residual may have strided rows.
    # A missing tensor's pointer is another tensor's (y for the sum and the stats, x for the rest), never used.
    x2, stride_xm = (x, n_cols) if contiguous else rows_of(x, n_cols)
    r2, stride_rm = rows_of(residual, n_cols) if residual is not None else (x2, stride_xm)
    w = weight.contiguous() if weight is not None else x2
    b = bias.contiguous() if bias is not None else x2
    s = summed if summed is not None else y
    st = stats if need_stats else y
    key = (n_rows, n_cols, stride_xm, stride_rm, x2.dtype, r2.dtype, w.dtype, b.dtype, s.dtype, eps.__class__,
           is_rms, residual is not None, weight is not None, bias is not None, need_stats, fwd_config)
    plan = _FWD_PLANS.get(key)
    if plan is None:
        if len(_FWD_PLANS) >= MAX_PLANS:
            _FWD_PLANS.clear()
        plan = _FWD_PLANS[key] = _fwd_plan(n_rows, n_cols, *key[10:])
    # (the data pointers go to Triton's launcher too: FastLaunch.launch_known's `pointers`)
    p0, p1, p2, p3, p4, p5, p6 = (x2.data_ptr(), r2.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(),
                                  s.data_ptr(), st.data_ptr())
    rest = (stride_xm, stride_rm, n_rows, n_cols, eps)
    (_fwd_launch if n_cols <= MAX_FUSED_N else _fwd_looped_launch).launch_known(
        plan, (x2, r2, w, b, y, s, st, *rest), not (p0 | p1 | p2 | p3 | p4 | p5 | p6) % 16,
        (p0, p1, p2, p3, p4, p5, p6, *rest))
    return y, summed, stats


# ---- torch ops, what torch.compile traces (kernels/_ops.py) ----------------------------------------

def _norm_fwd_impl(x, residual, weight, bias, eps, is_rms):
    y, summed, stats = norm_fwd(x, residual, weight, bias, eps, is_rms)
    return y, summed if summed is not None else y.new_empty((0,)), stats


def _norm_fwd_fake(x, residual, weight, bias, eps, is_rms):
    n_rows = math.prod(x.shape[:-1])
    sum_dtype = torch.promote_types(x.dtype, residual.dtype) if residual is not None else x.dtype
    return (x.new_empty(x.shape),
            x.new_empty(x.shape if residual is not None else (0,), dtype=sum_dtype),
            x.new_empty((1 if is_rms else 2, n_rows), dtype=torch.float32))


def _norm_bwd_impl(dy, saved, dsum, weight, bias, stats, is_rms):
    dx, dw, db = norm_bwd(dy, saved, dsum, weight, bias, stats, is_rms)
    return dx, dw if dw is not None else dx.new_empty((0,)), db if db is not None else dx.new_empty((0,))


def _norm_bwd_fake(dy, saved, dsum, weight, bias, stats, is_rms):
    return (saved.new_empty(saved.shape),
            weight.new_empty(weight.shape) if weight is not None else saved.new_empty((0,)),
            bias.new_empty(bias.shape) if bias is not None else saved.new_empty((0,)))


_norm_fwd_op = define("norm_fwd(Tensor x, Tensor? residual, Tensor? weight, Tensor? bias, float eps, bool is_rms) "
                      "-> (Tensor, Tensor, Tensor)", _norm_fwd_impl, _norm_fwd_fake)
_norm_bwd_op = define("norm_bwd(Tensor dy, Tensor saved, Tensor? dsum, Tensor? weight, Tensor? bias, Tensor stats, "
                      "bool is_rms) -> (Tensor, Tensor, Tensor)", _norm_bwd_impl, _norm_bwd_fake)


def _norm_bwd_via_op(dy, saved, dsum, weight, bias, stats, is_rms):
    dx, dw, db = _norm_bwd_op(dy, saved, dsum, weight, bias, stats, is_rms)
    return dx, dw if weight is not None else None, db if bias is not None else None


# ---- autograd: the launchers directly in eager mode, the ops under torch.compile -------------------

def _save(ctx, x, residual, weight, bias, summed, stats, is_rms):
    # The backward needs the normalized input (x, or the stored sum) and the fp32 statistics only
    # (bias is kept for its dtype: db is written in it).
    ctx.save_for_backward(summed if residual is not None else x, weight, bias, stats)
    ctx.is_rms = is_rms
    ctx.dtypes = (x.dtype, residual.dtype) if residual is not None else None


def _backward(ctx, dy, dsum, bwd):
    """Gradients (x, residual, weight, bias) given those of (y, sum); `bwd` launches the kernels."""
    saved, weight, bias, stats = ctx.saved_tensors
    if dy is None:  # only the returned sum was used: the norm's parameters get no gradient
        dx, dw, db = dsum, None, None
    else:
        dx, dw, db = bwd(dy, saved, dsum, weight, bias, stats, ctx.is_rms)
    if ctx.dtypes is None:
        return dx, None, dw, db
    x_dtype, res_dtype = ctx.dtypes  # add variants: d(x) = d(residual) = d(sum), each in its dtype
    return _cast(dx, x_dtype), _cast(dx, res_dtype), dw, db


def _cast(t, dtype):
    # t.to(dtype) returns t itself when it has that dtype, but costs about 1 us of host time anyway
    return t if t.dtype == dtype else t.to(dtype)


class NormFn(torch.autograd.Function):
    """The launchers directly in eager mode (no op dispatcher per call), the torch ops under torch.compile
    (Dynamo traces this Function, forward and backward, into the graph).

    Returns y for the plain norms and (y, sum) for the add variants.
    """

    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps, is_rms):
        if torch.compiler.is_compiling():
            y, summed, stats = _norm_fwd_op(x, residual, weight, bias, eps, is_rms)
        else:
            y, summed, stats = norm_fwd(x, residual, weight, bias, eps, is_rms)
            # No zero tensors for outputs that got no gradient (Dynamo cannot trace this: compiled
            # backwards get zeros, which the kernels take as well).
            ctx.set_materialize_grads(False)
        _save(ctx, x, residual, weight, bias, summed, stats, is_rms)
        return y if residual is None else (y, summed)

    @staticmethod
    def backward(ctx, dy, dsum=None):
        bwd = _norm_bwd_via_op if torch.compiler.is_compiling() else norm_bwd
        return (*_backward(ctx, dy, dsum if ctx.dtypes is not None else None, bwd), None, None)


# ---- public API ----------------------------------------------------------------------------------

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _kernels_take(x, residual, weight, bias, eps):
    """The hot path's whole argument check: True where the checks below would all pass on the way to
    the kernels (valid arguments, no float64, x on the kernels' device); False sends a call through them."""
    return (norm_args_ok(x, weight, bias, eps, residual, KERNEL_DTYPES)
            and (x.is_cpu if KERNEL_DEVICE == "cpu" else x.is_cuda))


def _check_kernel_device(x):
    if x.device.type != KERNEL_DEVICE:  # check_norm_args has put every tensor on x's device
        check_device(x=x)  # the shared message
        raise ValueError(f"x is on {x.device}, but the Triton kernels were set up for {KERNEL_DEVICE} tensors")


def _norm(x, residual, weight, bias, eps, is_rms):
    """y, or (y, sum) with a residual: the torch op under torch.compile, else the launchers directly."""
    eps = float(eps)
    if torch.is_grad_enabled() and (x.requires_grad or (residual is not None and residual.requires_grad)
                                    or (weight is not None and weight.requires_grad)
                                    or (bias is not None and bias.requires_grad)):
        return NormFn.apply(x, residual, weight, bias, eps, is_rms)
    if torch.compiler.is_compiling():
        y, summed, _ = _norm_fwd_op(x, residual, weight, bias, eps, is_rms)
    else:
        y, summed, _ = norm_fwd(x, residual, weight, bias, eps, is_rms, False)  # nothing to differentiate: no stats
    return y if residual is None else (y, summed)


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dim."""
    if not _kernels_take(x, None, weight, bias, eps):
        check_norm_args(x, weight, bias, eps)
        if x.dtype == torch.float64:
            return reference.layer_norm(x, weight, bias, eps)
        _check_kernel_device(x)
    return _norm(x, None, weight, bias, eps, False)


def rms_norm(x, weight=None, eps=1e-6):
    """x / sqrt(mean(x^2) + eps) * weight over the last dim."""
    if not _kernels_take(x, None, weight, None, eps):
        check_norm_args(x, weight, None, eps)
        if x.dtype == torch.float64:
            return reference.rms_norm(x, weight, eps)
        _check_kernel_device(x)
    return _norm(x, None, weight, None, eps, True)


def add_layer_norm(x, residual, weight=None, bias=None, eps=1e-5):
    """(layer_norm(x + residual), x + residual), reading x and residual once."""
    if residual is None or not _kernels_take(x, residual, weight, bias, eps):
        check_norm_args(x, weight, bias, eps, residual)
        if residual is None:
            return layer_norm(x, weight, bias, eps), x
        if x.dtype == torch.float64 or residual.dtype == torch.float64:
            return reference.add_layer_norm(x, residual, weight, bias, eps)
        _check_kernel_device(x)
    return _norm(x, residual, weight, bias, eps, False)


def add_rms_norm(x, residual, weight=None, eps=1e-6):
    """(rms_norm(x + residual), x + residual), reading x and residual once."""
    if residual is None or not _kernels_take(x, residual, weight, None, eps):
        check_norm_args(x, weight, None, eps, residual)
        if residual is None:
            return rms_norm(x, weight, eps), x
        if x.dtype == torch.float64 or residual.dtype == torch.float64:
            return reference.add_rms_norm(x, residual, weight, eps)
        _check_kernel_device(x)
    return _norm(x, residual, weight, None, eps, True)
