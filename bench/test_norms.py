"""LayerNorm, RMSNorm and their fused add variants: ours against eager, torch.compile and Liger-Kernel.

Grid (PEERS.md): 16384 rows x N in {768, 2048, 4096, 8192}, bf16, weight (and bias for LayerNorm).
Bytes moved, e = element size (weights and statistics are negligible):
- layer_norm, rms_norm: forward reads x, writes y = 2*M*N*e; fwd+bwd adds the backward's read of
  dy and x and write of dx, 3*M*N*e (PEERS.md).
- add_layer_norm, add_rms_norm: forward reads x and residual, writes y and the sum = 4*M*N*e;
  backward reads dy, d(sum) and the sum, writes dx (the residual's gradient is the same tensor)
  = 4*M*N*e, so fwd+bwd = 8*M*N*e.
"""
import torch

import kernels
from bench import common
from bench.common import Case, Unsupported

OPS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm")
PROVIDERS = ["ours", "eager", "compile", "liger"]
WIDTHS = {"full": {op: (768, 2048, 4096, 8192) for op in OPS},
          "small": {"layer_norm": (768, 4096), "rms_norm": (768, 4096), "add_layer_norm": (4096,),
                    "add_rms_norm": (4096,)},
          "tiny": {op: (100,) for op in OPS}}
HAS_BIAS = {"layer_norm": True, "rms_norm": False, "add_layer_norm": True, "add_rms_norm": False}
EPS = {"layer_norm": 1e-5, "add_layer_norm": 1e-5, "rms_norm": 1e-6, "add_rms_norm": 1e-6}


def cases(size, dtypes):
    rows = 37 if size == "tiny" else 16384
    return [Case(op, mode, (("M", rows), ("N", n)), dtype, f"{op}/{mode}", "N")
            for op in OPS for mode in ("fwd", "fwd+bwd") for dtype in dtypes for n in WIDTHS[size][op]]


def pytest_generate_tests(metafunc):
    metafunc.parametrize("case,provider", common.params(
        cases(common.bench_size(metafunc.config), common.bench_dtypes(metafunc.config)), PROVIDERS))


def nbytes(case):
    s = case.shape
    per = (4 if case.op.startswith("add_") else 2) if case.mode == "fwd" else (8 if case.op.startswith("add_") else 5)
    return per * s["M"] * s["N"] * torch.finfo(case.dtype).bits // 8


def make_inputs(case, gen):
    """[x, (residual,) weight, (bias)]: x with a non-zero mean, weight near 1; upstream gradients."""
    M, N = case.shape["M"], case.shape["N"]
    args = [common.randn((M, N), gen, case.dtype, shift=0.5)]
    if case.op.startswith("add_"):
        args.append(common.randn((M, N), gen, case.dtype))
    args.append(common.randn((N,), gen, case.dtype, scale=0.1, shift=1.0))
    if HAS_BIAS[case.op]:
        args.append(common.randn((N,), gen, case.dtype, scale=0.1))
    n_out = 2 if case.op.startswith("add_") else 1
    return args, [common.randn((M, N), gen, case.dtype) for _ in range(n_out)]


def op_fn(module, op):
    f, eps = getattr(module, op), EPS[op]
    return lambda *args: f(*args, eps=eps)


def _liger(op):
    try:
        if op in ("layer_norm", "add_layer_norm"):
            from liger_kernel.ops.layer_norm import LigerLayerNormFunction as Fn
        elif op == "rms_norm":
            from liger_kernel.ops.rms_norm import LigerRMSNormFunction as Fn
        else:
            from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction as Fn
    except Exception as e:   # ImportError, or a version with other names
        raise Unsupported(f"liger: Liger-Kernel is not importable ({type(e).__name__}: {e})")
    eps = EPS[op]
    if op == "layer_norm":
        return lambda x, w, b: Fn.apply(x, w, b, eps)
    if op == "add_layer_norm":   # Liger has no fused add + LayerNorm: the add, then its LayerNorm
        def add_ln(x, r, w, b):
            s = x + r
            return Fn.apply(s, w, b, eps), s
        return add_ln
    # casting_mode "gemma" computes x * rstd * w in fp32 and rounds once, as the reference does
    # ("llama" rounds x * rstd before the weight); in_place=False: dy must survive repeated backwards.
    if op == "rms_norm":
        return lambda x, w: Fn.apply(x, w, eps, 0.0, "gemma", False)
    return lambda x, r, w: Fn.apply(x, r, w, eps, 0.0, "gemma", False)


_COMPILED = {}


def build(case, provider):
    if provider == "ours":
        return op_fn(kernels, case.op)
    if provider == "eager":
        return op_fn(kernels.reference, case.op)
    if provider == "compile":
        common.compile_on_cuda_only(provider)
        if case.op not in _COMPILED:
            _COMPILED[case.op] = torch.compile(getattr(kernels.reference, case.op), dynamic=False)
        f, eps = _COMPILED[case.op], EPS[case.op]
        return lambda *args: f(*args, eps=eps)
    if provider == "liger":
        if not common.ON_CUDA:
            raise Unsupported("liger: Liger-Kernel is benchmarked on CUDA only")
        return _liger(case.op)
    raise ValueError(provider)


def test_norm(benchmark, case, provider):
    extra = {"implementation": kernels.IMPLEMENTATION[case.op]} if provider == "ours" else {}
    n_args = 2 + case.op.startswith("add_") + HAS_BIAS[case.op]
    common.run_case(benchmark, case, provider, lambda c: build(c, provider), op_fn(kernels.reference, case.op),
                    make_inputs, leaves=tuple(range(n_args)), bytes_=nbytes(case), extra=extra)
