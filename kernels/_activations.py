"""The FFN activations and their derivatives as Triton device functions, shared by the GEMM kernels."""
import triton
import triton.language as tl


@triton.jit
def tanh_via_sigmoid(x):
    # tanh via sigmoid: exact identity, and tl.sigmoid exists on every backend and in the interpreter.
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def activation(h, ACT: tl.constexpr):
    if ACT == 0:
        return tl.maximum(h, 0.0)
    elif ACT == 1:
        return 0.5 * h * (1.0 + tanh_via_sigmoid(0.7978845608028654 * (h + 0.044715 * h * h * h)))
    elif ACT == 2:
        return h * tl.sigmoid(h)
    else:
        r = tl.maximum(h, 0.0)
        return r * r


@triton.jit
def activation_and_grad(h, ACT: tl.constexpr):
    """(act(h), act'(h))."""
    if ACT == 0:
        return tl.maximum(h, 0.0), tl.where(h > 0.0, 1.0, 0.0)
    elif ACT == 1:
        inner = 0.7978845608028654 * (h + 0.044715 * h * h * h)
        t = tanh_via_sigmoid(inner)
        d_inner = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * h * h)
        return 0.5 * h * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * h * (1.0 - t * t) * d_inner
    elif ACT == 2:
        s = tl.sigmoid(h)
        return h * s, s * (1.0 + h * (1.0 - s))
    else:
        r = tl.maximum(h, 0.0)
        return r * r, 2.0 * r
