"""The FFN activations and their derivatives as Triton device functions, shared by the GEMM kernels.

GELU (tanh form) is computed as h * sigmoid(2u), u = sqrt(2/pi) (h + 0.044715 h^3): 0.5 (1 + tanh(u)) is
sigmoid(2u) exactly, and sigmoid(2u) = 1 / (1 + 2^(h (GELU_EXP2_1 + GELU_EXP2_3 h^2))) with ln 2 folded into the
constants. One exp2 and one division per element (Triton's fp32 division is div.full.f32, two ulp), act(h) formed
as h * s in the forward as in the backward's recomputation, so the two agree bit for bit. Why: the GEMMs'
epilogues, where the other consumer's main loop does not hide them, paid for the tanh-through-sigmoid form's extra
multiplies and its 1 + (2 s - 1) (which also lost the small values' low bits). The Gluon kernels
(matmul_gated_gluon._activation, matmul_bwd_gluon_ws._act_grad) compute the same expressions in the same order but
take the reciprocal from the SFU alone (matmul_gated_gluon._rcp), so theirs may differ in the last fp32 bit.
"""
import triton
import triton.language as tl

GELU_EXP2_1 = tl.constexpr(-2.302208198144325)  # -2 sqrt(2/pi) / ln 2
GELU_EXP2_3 = tl.constexpr(-0.1029432395800235)  # GELU_EXP2_1 * 0.044715
GELU_DARG_1 = tl.constexpr(1.5957691216057308)  # d(2u)/dh = 2 sqrt(2/pi) (1 + 3 * 0.044715 h^2)
GELU_DARG_3 = tl.constexpr(0.21406444881780076)  # 2 sqrt(2/pi) * 3 * 0.044715
SILU_EXP2 = tl.constexpr(-1.4426950408889634)  # -1 / ln 2: e^-h = 2^(h SILU_EXP2)
# activation_and_grad's code for relu2 when given its output a = relu(pre)^2 instead of pre (kernels/matmul.py,
# FROM_OUTPUT): act' = 2 relu(pre) = 2 sqrt(a), and "act" is a itself. The other codes are kernels/matmul.py's.
RELU2_FROM_OUTPUT = 4


@triton.jit
def activation(h, ACT: tl.constexpr):
    if ACT == 0:
        return tl.maximum(h, 0.0)
    elif ACT == 1:
        return h * (1.0 / (1.0 + tl.exp2(h * (GELU_EXP2_1 + GELU_EXP2_3 * (h * h)))))
    elif ACT == 2:
        return h * (1.0 / (1.0 + tl.exp2(h * SILU_EXP2)))
    else:
        r = tl.maximum(h, 0.0)
        return r * r


@triton.jit
def activation_and_grad(h, ACT: tl.constexpr):
    """(act(h), act'(h))."""
    if ACT == 0:
        return tl.maximum(h, 0.0), tl.where(h > 0.0, 1.0, 0.0)
    elif ACT == 1:
        h2 = h * h
        s = 1.0 / (1.0 + tl.exp2(h * (GELU_EXP2_1 + GELU_EXP2_3 * h2)))
        return h * s, s + h * s * (1.0 - s) * (GELU_DARG_1 + GELU_DARG_3 * h2)
    elif ACT == 2:
        s = 1.0 / (1.0 + tl.exp2(h * SILU_EXP2))
        return h * s, s * (1.0 + h * (1.0 - s))
    elif ACT == 3:
        r = tl.maximum(h, 0.0)
        return r * r, 2.0 * r
    else:  # RELU2_FROM_OUTPUT: h is relu2's output a = relu(pre)^2, and act'(pre) = 2 relu(pre) = 2 sqrt(a)
        return h, 2.0 * tl.sqrt(h)
