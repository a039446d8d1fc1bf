"""The transformer MLP with its activation fused into Triton GEMMs: `ffn` and its block `linear_act`.

    linear_act(x, w, b, act) = act(x @ w.T + b)                     (kernels/matmul.py, one GEMM)
    ffn(x, w_in, b_in, w_out, b_out, act) = linear_act(x, w_in, b_in, act) @ w_out.T + b_out

Same contract as kernels.reference: weights as nn.Linear stores them, (out, in); gated activations
(swiglu, geglu) take w_in = cat([w_gate, w_up]) of shape (2H, D). x may have any leading shape.

Forward: the first GEMM applies bias and activation in its epilogue (the pre-activation never makes
an extra trip through memory); the second GEMM has no epilogue to fuse and is cuBLAS (F.linear).
Backward, with d = dy (M, D_out):
    d_pre   = (d @ w_out) * act'(pre)       one Triton GEMM, the derivative in its epilogue, which
                                            also sums db_in (fp32 atomics)
    dw_out  = d.T @ a,  db_out = d.T @ 1    cuBLAS (db_out as a matrix-vector product, _column_sums)
    dx      = d_pre @ w_in, dw_in = d_pre.T @ x     cuBLAS: plain GEMMs, nothing to fuse
Saved for backward: x, w_in, w_out, the pre-activation x @ w_in.T + b_in ((M, H), or (M, 2H) =
gate then up when gated) and the hidden activation a = act(pre) (M, H), in the compute dtype. a is
the second GEMM's input, in memory anyway: keeping it costs memory (as in eager PyTorch and
torch.compile, which keep it too), while re-forming it in the backward epilogue would cost one more
(M, H) write there (measured slower on the H100, bench/RESULTS.md). relu and relu2 are the exceptions:
their derivative is read off a (relu's a > 0 exactly where pre > 0; relu2's act' = 2 sqrt(a)), so their
forward writes no pre-activation and saves x, w_in, w_out and a only (kernels/matmul.py FROM_OUTPUT).
linear_act saves x, w and pre (relu, relu2: their output); its
backward has no GEMM producing the upstream gradient, so d_pre comes from one fused elementwise
Triton pass (with the bias sums), then cuBLAS for dx and dw.
The pre-activation is only written when autograd will need it (grad enabled and an input
requires grad).

Dtypes: fp16, bf16 (fp32 accumulation) and fp32 (no TF32). Output dtype = compute dtype = x's
dtype, or the autocast dtype when autocast is on for x's device. Weights and biases of another
dtype (fp32 master weights with bf16 x) are cast to the compute dtype before the kernels, like
autocast does for F.linear; the cast is differentiable, so their gradients come back in their own
dtype. float64 is not supported by the Triton path (TypeError; use kernels.reference).
Registered as torch ops (kernels::ffn_fwd, ffn_bwd, linear_act_fwd, linear_act_bwd; kernels/_ops.py) with
fake implementations, so torch.compile(fullgraph=True) traces ffn and linear_act: the autograd.Functions
FFNFn / LinearActFn call the ops under torch.compile (Dynamo traces them, forward and backward) and the
same launchers directly in eager mode, without the op dispatcher's per-call cost.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import GATED_ACTIVATIONS, check_ffn_args, check_linear_args
from ._ops import define
from ._runtime import KERNEL_DEVICE, check_device
from .matmul import ACT_CODES, FROM_OUTPUT, SMALL_M, act_bwd, linear_act_fwd

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _stores_pre(activation, save_pre):
    """Whether the forward GEMM writes the pre-activation: where the backward needs it (not for FROM_OUTPUT's)."""
    return save_pre and activation not in FROM_OUTPUT


def _pre_shape(x, w, activation, save_pre):
    return (x.shape[0], w.shape[0]) if _stores_pre(activation, save_pre) else (0,)


def _hidden(w, activation):
    return w.shape[0] // 2 if activation in GATED_ACTIVATIONS else w.shape[0]


def _check_saved(pre):
    """pre: what the backward takes the derivative from (the pre-activation, or FROM_OUTPUT's output)."""
    if pre is None or pre.dim() != 2:
        raise RuntimeError("backward through a Triton FFN forward that ran without saving its pre-activation "
                           "(it was called with grad disabled or no input requiring grad)")


# ---- the math, shared by the eager autograd.Functions and the torch ops ----------------------------

# The backward functions return None for a bias gradient not asked for (the ops put an empty tensor there,
# as their schemas return tensors; the eager autograd.Functions return the None: no allocation per call),
# and db_in as act_bwd summed it, in fp32: the ops cast it to x's dtype, the eager autograd.Functions leave
# that to the autograd engine, which casts every gradient to its input's dtype (the same aten cast as
# .to(x.dtype), without a call from Python).

# torch.mm rather than @: the same GEMM (matmul of two 2-D tensors is mm) without matmul's dispatch on the
# operands' dimensions (~0.2 us each on the CPU).

def _linear_act_bwd(grad, x, w, pre, activation, has_bias):
    d_pre, _, db = act_bwd(grad, None, pre, activation, store_act=False, bias_grad=has_bias)
    return torch.mm(d_pre, w), torch.mm(d_pre.t(), x), db


def _ffn_fwd(x, w_in, b_in, w_out, b_out, activation, save_pre):
    """(y, pre, a): pre (empty for relu, relu2) and the hidden activation a for the backward, or (y, empty, None)
    without save_pre."""
    a, pre = linear_act_fwd(x, w_in, b_in, activation, _stores_pre(activation, save_pre))
    return F.linear(a, w_out, b_out), pre, a if save_pre else None


def _derivative_source(pre, a, activation):
    """The tensor the backward takes act' from: FROM_OUTPUT's output (relu, relu2), else the pre-activation."""
    return a if activation in FROM_OUTPUT else pre


# db_out = dy.sum(0) as cuBLAS's matrix-vector product dy.T @ ones: on the H100 (tools/gpu_column_sum.py, bench/
# RESULTS.md) 19.7 us against torch's column reduction's 36.4 at 16384 x 768 bf16 (37 against 50 at 2048 wide),
# with the same error (the ones and the products are exact, the accumulation fp32) and run-to-run the same bits.
# fp32 keeps torch's sum: a matrix-vector product would follow the matmul TF32 setting. So do up to SMALL_M rows,
# where the GPU time is small and the sum's host path is the cheaper (16 against 24 us per call on the H100's host).
# The ones vector is made per call (2 bytes a row, one small fill): a vector kept between calls would be a tensor
# the op holds on to, which torch.compile's CUDA graphs (mode="reduce-overhead") refuse when it was allocated from
# their memory pool during their warm-up run.


def _column_sums(t):
    """t.sum(0) of a 2-D fp16 / bf16 / fp32 tensor, in its dtype."""
    if t.dtype == torch.float32 or t.shape[0] <= SMALL_M:
        return t.sum(0)
    return torch.mv(t.t(), t.new_ones(t.shape[0]))


def _ffn_bwd(dy, x, w_in, w_out, pre, a, activation, has_b_in, has_b_out):
    d_pre, _, db_in = act_bwd(dy, w_out, _derivative_source(pre, a, activation), activation, store_act=False,
                              bias_grad=has_b_in)
    return (torch.mm(d_pre, w_in), torch.mm(d_pre.t(), x), db_in, torch.mm(dy.t(), a),
            _column_sums(dy) if has_b_out else None)


def _or_empty(t, like):
    """An op's result for an optional one: t in like's dtype (db_in comes in fp32), or an empty tensor."""
    if t is None:
        return like.new_empty(0)
    return t if t.dtype == like.dtype else t.to(like.dtype)  # .to costs ~1 us of host time even as a no-op


# ---- torch ops, what torch.compile traces (kernels/_ops.py) ----------------------------------------

def _linear_act_fwd_impl(x, w, b, activation, save_pre):
    return linear_act_fwd(x, w, b, activation, _stores_pre(activation, save_pre))


def _linear_act_fwd_fake(x, w, b, activation, save_pre):
    return x.new_empty(x.shape[0], _hidden(w, activation)), x.new_empty(_pre_shape(x, w, activation, save_pre))


def _linear_act_bwd_impl(grad, x, w, pre, activation, has_bias):
    dx, dw, db = _linear_act_bwd(grad, x, w, pre, activation, has_bias)
    return dx, dw, _or_empty(db, x)


def _linear_act_bwd_fake(grad, x, w, pre, activation, has_bias):
    return torch.empty_like(x), torch.empty_like(w), x.new_empty(w.shape[0] if has_bias else 0)


def _ffn_fwd_impl(x, w_in, b_in, w_out, b_out, activation, save_pre):
    y, pre, a = _ffn_fwd(x, w_in, b_in, w_out, b_out, activation, save_pre)
    return y, pre, _or_empty(a, x)


def _ffn_fwd_fake(x, w_in, b_in, w_out, b_out, activation, save_pre):
    hidden = (x.shape[0], _hidden(w_in, activation)) if save_pre else (0,)
    return (x.new_empty(x.shape[0], w_out.shape[0]), x.new_empty(_pre_shape(x, w_in, activation, save_pre)),
            x.new_empty(hidden))


def _ffn_bwd_impl(dy, x, w_in, w_out, pre, a, activation, has_b_in, has_b_out):
    dx, dw_in, db_in, dw_out, db_out = _ffn_bwd(dy, x, w_in, w_out, pre, a, activation, has_b_in, has_b_out)
    return dx, dw_in, _or_empty(db_in, x), dw_out, _or_empty(db_out, x)


def _ffn_bwd_fake(dy, x, w_in, w_out, pre, a, activation, has_b_in, has_b_out):
    return (torch.empty_like(x), torch.empty_like(w_in), x.new_empty(w_in.shape[0] if has_b_in else 0),
            torch.empty_like(w_out), x.new_empty(w_out.shape[0] if has_b_out else 0))


_linear_act_fwd_op = define("linear_act_fwd(Tensor x, Tensor w, Tensor? b, str activation, bool save_pre) "
                            "-> (Tensor, Tensor)", _linear_act_fwd_impl, _linear_act_fwd_fake)
_linear_act_bwd_op = define("linear_act_bwd(Tensor grad, Tensor x, Tensor w, Tensor pre, str activation, "
                            "bool has_bias) -> (Tensor, Tensor, Tensor)", _linear_act_bwd_impl, _linear_act_bwd_fake)
_ffn_fwd_op = define("ffn_fwd(Tensor x, Tensor w_in, Tensor? b_in, Tensor w_out, Tensor? b_out, str activation, "
                     "bool save_pre) -> (Tensor, Tensor, Tensor)", _ffn_fwd_impl, _ffn_fwd_fake)
_ffn_bwd_op = define("ffn_bwd(Tensor dy, Tensor x, Tensor w_in, Tensor w_out, Tensor pre, Tensor a, str activation, "
                     "bool has_b_in, bool has_b_out) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
                     _ffn_bwd_impl, _ffn_bwd_fake)


# ---- autograd: the launchers directly in eager mode, the ops under torch.compile -------------------
# (Dynamo traces these Functions, forward and backward, into the graph; in eager mode the op dispatcher's
# per-call cost is skipped.) Under torch.compile the backward's gradients come from the ops, db_in cast
# to x's dtype there; in eager mode db_in stays fp32 (see above).

class LinearActFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, activation, save_pre):
        if torch.compiler.is_compiling():
            out, pre = _linear_act_fwd_op(x, w, b, activation, save_pre)
        else:
            out, pre = linear_act_fwd(x, w, b, activation, _stores_pre(activation, save_pre))
        ctx.save_for_backward(x, w, out if save_pre and activation in FROM_OUTPUT else pre)
        ctx.activation, ctx.has_bias = activation, b is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w, pre = ctx.saved_tensors
        _check_saved(pre)
        if torch.compiler.is_compiling():
            dx, dw, db = _linear_act_bwd_op(grad, x, w, pre, ctx.activation, ctx.has_bias)
            return dx, dw, db if ctx.has_bias else None, None, None
        dx, dw, db = _linear_act_bwd(grad, x, w, pre, ctx.activation, ctx.has_bias)
        return dx, dw, db, None, None


class FFNFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_in, b_in, w_out, b_out, activation, save_pre):
        if torch.compiler.is_compiling():
            y, pre, a = _ffn_fwd_op(x, w_in, b_in, w_out, b_out, activation, save_pre)
        else:
            y, pre, a = _ffn_fwd(x, w_in, b_in, w_out, b_out, activation, save_pre)
        ctx.save_for_backward(x, w_in, w_out, pre, a)
        ctx.activation, ctx.has_b_in, ctx.has_b_out = activation, b_in is not None, b_out is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w_in, w_out, pre, a = ctx.saved_tensors
        _check_saved(_derivative_source(pre, a, ctx.activation))
        if torch.compiler.is_compiling():
            dx, dw_in, db_in, dw_out, db_out = _ffn_bwd_op(dy, x, w_in, w_out, pre, a, ctx.activation,
                                                           ctx.has_b_in, ctx.has_b_out)
            return (dx, dw_in, db_in if ctx.has_b_in else None, dw_out, db_out if ctx.has_b_out else None,
                    None, None)
        return (*_ffn_bwd(dy, x, w_in, w_out, pre, a, ctx.activation, ctx.has_b_in, ctx.has_b_out), None, None)


# ---- public functions --------------------------------------------------------------------------------

def _cast(x, *params):
    """x and the parameters in the compute dtype: x's, or autocast's when autocast is on."""
    kind = x.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"the Triton FFN computes in float16, bfloat16 or float32, got {dtype} "
                        "(use kernels.reference for float64)")
    return [t if t is None or t.dtype == dtype else t.to(dtype) for t in (x, *params)]


def _check_index_range(x2, *weights):
    """The GEMM kernels offset rows with int32 arithmetic: rows x width must stay below 2^31."""
    width = max(max(w.shape) for w in weights)
    if x2.shape[0] * width >= 2**31:
        raise ValueError(f"x has {x2.shape[0]} rows, which with width {width} exceeds the Triton FFN's "
                         f"int32 indexing (rows x width < 2^31); split the batch")


def _needs_pre(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


_GATED = {name: gated for name, (_, gated) in ACT_CODES.items()}


def _vector_ok(b, n, dtype, device):
    return b is None or (isinstance(b, Tensor) and b.dim() == 1 and b.shape[0] == n and b.dtype == dtype
                         and b.device == device)


def _ffn_args_ok(x, w_in, b_in, w_out, b_out, activation):
    """True only where check_ffn_args and check_device pass and _cast has nothing to cast: the common case
    in one cheap test for the hot path, which runs the full checks (and their messages) when it says False."""
    gated = _GATED.get(activation)
    if gated is None or not (isinstance(x, Tensor) and isinstance(w_in, Tensor) and isinstance(w_out, Tensor)):
        return False
    dtype, device = x.dtype, x.device
    if (dtype not in SUPPORTED_DTYPES or device.type != KERNEL_DEVICE or x.dim() == 0 or w_in.dim() != 2
            or w_out.dim() != 2 or w_in.dtype != dtype or w_out.dtype != dtype or w_in.device != device
            or w_out.device != device or torch.is_autocast_enabled(KERNEL_DEVICE)):
        return False
    n_in = w_in.shape[0]
    return (x.shape[-1] == w_in.shape[1] and w_out.shape[1] == (n_in // 2 if gated else n_in)
            and not (gated and n_in % 2) and _vector_ok(b_in, n_in, dtype, device)
            and _vector_ok(b_out, w_out.shape[0], dtype, device))


def linear_act(x, w, b=None, activation="gelu"):
    """activation(x @ w.T + b) in one Triton GEMM; gated activations halve the width (w stacks gate; up)."""
    check_linear_args(x, w, b, activation)
    check_device(x=x)  # w and b are on x's device (checked above)
    x, w, b = _cast(x, w, b)
    flat = x.dim() == 2  # as it is, as in ffn
    x2, save_pre = x if flat else x.reshape(-1, x.shape[-1]), _needs_pre(x, w, b)
    _check_index_range(x2, w)
    if not save_pre:  # nothing to differentiate: no autograd.Function
        out = (_linear_act_fwd_op(x2, w, b, activation, False) if torch.compiler.is_compiling()
               else linear_act_fwd(x2, w, b, activation, False))[0]
    else:
        out = LinearActFn.apply(x2, w, b, activation, save_pre)
    return out if flat else out.reshape(*x.shape[:-1], out.shape[-1])


def ffn(x, w_in, b_in, w_out, b_out, activation):
    """linear_act(x, w_in, b_in, activation) @ w_out.T + b_out, forward and backward fused as above."""
    if not _ffn_args_ok(x, w_in, b_in, w_out, b_out, activation):
        check_ffn_args(x, w_in, b_in, w_out, b_out, activation)
        check_device(x=x)  # the weights are on x's device (checked above)
        x, w_in, b_in, w_out, b_out = _cast(x, w_in, b_in, w_out, b_out)
    # A 2-D x goes in as it is and y comes out as it is: a reshape that changes nothing is still a view, and
    # under autograd one more graph node each way (the pair: ~12 us of host time per fwd+bwd on the CPU).
    flat = x.dim() == 2
    x2 = x if flat else x.reshape(-1, x.shape[-1])
    save_pre = torch.is_grad_enabled() and (x.requires_grad or w_in.requires_grad or w_out.requires_grad
                                            or (b_in is not None and b_in.requires_grad)
                                            or (b_out is not None and b_out.requires_grad))
    _check_index_range(x2, w_in, w_out)
    if not save_pre:  # nothing to differentiate: no autograd.Function
        y = (_ffn_fwd_op if torch.compiler.is_compiling() else _ffn_fwd)(x2, w_in, b_in, w_out, b_out, activation,
                                                                          False)[0]
    else:
        y = FFNFn.apply(x2, w_in, b_in, w_out, b_out, activation, save_pre)
    return y if flat else y.reshape(*x.shape[:-1], y.shape[-1])
