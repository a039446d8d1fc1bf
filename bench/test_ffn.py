"""The transformer MLP, ffn(x) = act(x @ w_in.T + b_in) @ w_out.T + b_out: ours, eager, compile, Liger.

Grid (PEERS.md): 16384 tokens, bf16; GELU(tanh) and ReLU at 768 -> 3072 and 2048 -> 8192 (GPT-2
style, with biases), SwiGLU at 768 -> 2048 and 2048 -> 5440 (Llama style, no biases), and ReLU^2,
SiLU, GEGLU at one shape each. FLOPs are the matmuls': 2*M*D*H per D x H matmul, so 4*M*D*H for a
plain MLP and 6*M*D*H for a gated one (w_in is 2H x D); fwd+bwd counts 3x the forward.
"""
import torch
import torch.nn.functional as F

import kernels
from bench import common
from bench.common import Case, Unsupported
from kernels._checks import GATED_ACTIVATIONS

PROVIDERS = ["ours", "eager", "compile", "liger"]
SHAPES = {"gelu": ((768, 3072), (2048, 8192)), "relu": ((768, 3072), (2048, 8192)),
          "swiglu": ((768, 2048), (2048, 5440)), "relu2": ((768, 3072),), "silu": ((768, 3072),),
          "geglu": ((768, 2048),)}
SMALL = {"relu": ((768, 3072),)}   # --bench-size small drops ReLU's second shape


def cases(size, dtypes):
    tokens = 37 if size == "tiny" else 16384
    out = []
    for act, shapes in SHAPES.items():
        for D, H in ((48, 100),) if size == "tiny" else SMALL.get(act, shapes) if size == "small" else shapes:
            for mode in ("fwd", "fwd+bwd"):
                for dtype in dtypes:
                    out.append(Case(f"ffn-{act}", mode, (("M", tokens), ("D", D), ("H", H)), dtype,
                                    f"ffn-{act}/{mode}", "D", (("activation", act),)))
    return out


def pytest_generate_tests(metafunc):
    metafunc.parametrize("case,provider", common.params(
        cases(common.bench_size(metafunc.config), common.bench_dtypes(metafunc.config)), PROVIDERS))


def gated(case):
    return case.options["activation"] in GATED_ACTIVATIONS


def flops(case):
    s = case.shape
    fwd = (6 if gated(case) else 4) * s["M"] * s["D"] * s["H"]
    return fwd * (3 if case.mode == "fwd+bwd" else 1)


def make_inputs(case, gen):
    """[x, w_in, b_in, w_out, b_out] as nn.Linear stores them (biases None for gated MLPs)."""
    M, D, H = case.shape["M"], case.shape["D"], case.shape["H"]
    dt, g = case.dtype, gated(case)
    x = common.randn((M, D), gen, dt)
    w_in = common.randn(((2 if g else 1) * H, D), gen, dt, scale=D ** -0.5)
    b_in = None if g else common.randn(((2 if g else 1) * H,), gen, dt, scale=0.1)
    w_out = common.randn((D, H), gen, dt, scale=H ** -0.5)
    b_out = None if g else common.randn((D,), gen, dt, scale=0.1)
    return [x, w_in, b_in, w_out, b_out], [common.randn((M, D), gen, dt)]


def leaves(case):
    return (0, 1, 3) if gated(case) else (0, 1, 2, 3, 4)


def _liger(act):
    try:
        if act == "swiglu":
            from liger_kernel.ops.swiglu import LigerSiLUMulFunction as Fn
        elif act == "geglu":
            from liger_kernel.ops.geglu import LigerGELUMulFunction as Fn
        elif act == "relu2":
            from liger_kernel.ops.relu_squared import LigerReLUSquaredFunction as Fn
        else:
            raise Unsupported(f"liger: Liger-Kernel has no fused {act} MLP")
    except Unsupported:
        raise
    except Exception as e:
        raise Unsupported(f"liger: Liger-Kernel is not importable ({type(e).__name__}: {e})")

    def mlp(x, w_in, b_in, w_out, b_out):
        if act == "relu2":
            return F.linear(Fn.apply(F.linear(x, w_in, b_in)), w_out, b_out)
        # LigerSwiGLUMLP's forward: separate gate and up projections, the fused act*mul, down.
        w_gate, w_up = w_in.chunk(2, dim=0)
        return F.linear(Fn.apply(F.linear(x, w_gate), F.linear(x, w_up)), w_out, b_out)
    return mlp


_COMPILED = {}


def build(case, provider):
    act = case.options["activation"]
    if provider == "ours":
        return lambda *args: kernels.ffn(*args, activation=act)
    if provider == "eager":
        return lambda *args: kernels.reference.ffn(*args, activation=act)
    if provider == "compile":
        common.compile_on_cuda_only(provider)
        if "ffn" not in _COMPILED:
            _COMPILED["ffn"] = torch.compile(kernels.reference.ffn, dynamic=False)
        return lambda *args: _COMPILED["ffn"](*args, activation=act)
    if provider == "liger":
        if not common.ON_CUDA:
            raise Unsupported("liger: Liger-Kernel is benchmarked on CUDA only")
        return _liger(act)
    raise ValueError(provider)


def test_ffn(benchmark, case, provider):
    act = case.options["activation"]
    extra = {"implementation": kernels.IMPLEMENTATION["ffn"]} if provider == "ours" else {}
    common.run_case(benchmark, case, provider, lambda c: build(c, provider),
                    lambda *args: kernels.reference.ffn(*args, activation=act),
                    make_inputs, leaves=leaves(case), flops=flops(case), extra=extra)
