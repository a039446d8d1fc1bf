"""Causal attention: ours against SDPA (each backend forced, and its default), FlexAttention, flash-attn.

Grid (FlashAttention papers, PEERS.md): B*T = 16384 tokens, H*D = 2048, D in {64, 128}, causal.
FLOPs = 4*B*H*T*T*D * 0.5 (causal) forward; fwd+bwd counts 3.5x that (backward = 2.5x forward).
"""
import torch
import torch.nn.functional as F

import kernels
from bench import common
from bench.common import Case, Unsupported

PROVIDERS = ["ours", "eager", "compile", "sdpa", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "flex",
             "flash_attn"]
T_GRID = {"full": (512, 1024, 2048, 4096, 8192, 16384), "small": (1024, 16384)}


def cases(size, dtypes):
    out = []
    for mode in ("fwd", "fwd+bwd"):
        for dtype in dtypes:
            if size == "tiny":   # the CPU: odd sizes through the interpreter
                out += [Case("attention", mode, (("B", 1), ("H", 2), ("T", 37), ("D", 16)), dtype,
                             f"attention/{mode}/D=16", "T")]
                continue
            for D in (64, 128):
                for T in T_GRID[size]:
                    dims = (("B", 16384 // T), ("H", 2048 // D), ("T", T), ("D", D))
                    out.append(Case("attention", mode, dims, dtype, f"attention/{mode}/D={D}", "T"))
    return out


def pytest_generate_tests(metafunc):
    size = common.bench_size(metafunc.config)
    # The reference is one SDPA call, so torch.compile of it adds nothing but compile time over
    # "sdpa": the small grid leaves it out, the full grid runs it.
    providers = [p for p in PROVIDERS if size != "small" or p != "compile"]
    metafunc.parametrize("case,provider", common.params(cases(size, common.bench_dtypes(metafunc.config)),
                                                        providers))


def flops(case):
    s = case.shape
    fwd = 4 * s["B"] * s["H"] * s["T"] * s["T"] * s["D"] * 0.5
    return fwd * (3.5 if case.mode == "fwd+bwd" else 1.0)


def make_inputs(case, gen):
    """q, k, v with std 0.5 (house rule), and a random upstream gradient."""
    s = case.shape
    shape = (s["B"], s["H"], s["T"], s["D"])
    q, k, v = (common.randn(shape, gen, case.dtype, scale=0.5) for _ in range(3))
    return [q, k, v], [common.randn(shape, gen, case.dtype)]


def _sdpa_with(backend_name):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = getattr(SDPBackend, backend_name)

    def fn(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return fn


_COMPILED = {}


def build(case, provider):
    if provider == "ours":
        return lambda q, k, v: kernels.attention(q, k, v, causal=True)
    if provider == "eager":
        return lambda q, k, v: kernels.reference.attention(q, k, v, causal=True)
    if provider == "compile":
        common.compile_on_cuda_only(provider)
        if "ref" not in _COMPILED:
            _COMPILED["ref"] = torch.compile(kernels.reference.attention, dynamic=False)
        return lambda q, k, v: _COMPILED["ref"](q, k, v, causal=True)
    if provider == "sdpa":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if provider.startswith("sdpa-"):
        if not common.ON_CUDA:
            raise Unsupported(f"{provider}: SDPA's flash, cuDNN and memory-efficient backends need CUDA")
        name = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-cudnn": "CUDNN_ATTENTION",
                "sdpa-efficient": "EFFICIENT_ATTENTION"}[provider]
        return _sdpa_with(name)
    if provider == "flex":
        common.compile_on_cuda_only(provider)
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        except ImportError as e:
            raise Unsupported(f"flex: FlexAttention is not available in torch {torch.__version__} ({e})")
        if "flex" not in _COMPILED:
            _COMPILED["flex"] = torch.compile(flex_attention, dynamic=False)
        T = case.shape["T"]
        # The causal block mask is built once per shape, outside the timed region.
        mask = create_block_mask(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx, B=None, H=None, Q_LEN=T,
                                 KV_LEN=T, device=common.DEVICE)
        return lambda q, k, v: _COMPILED["flex"](q, k, v, block_mask=mask)
    if provider == "flash_attn":
        try:
            from flash_attn import flash_attn_func
        except Exception as e:   # ImportError, or a wheel built for another torch
            raise Unsupported(f"flash_attn: not importable ({type(e).__name__}: {e})")
        if not common.ON_CUDA or case.dtype not in (torch.float16, torch.bfloat16):
            raise Unsupported("flash_attn: needs CUDA and fp16/bf16")
        # flash_attn takes (B, T, H, D): transposed views of our (B, H, T, D) tensors.
        return lambda q, k, v: flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               causal=True).transpose(1, 2)
    raise ValueError(provider)


def kernel_picks(case):
    """Which kernels ours took for this case: {"forward_kernel": the Gluon forward's tuned pick or "tl"}, and
    for fwd+bwd the Gluon backward's picks of the dK/dV and dQ kernels ("tl" where the `tl` one ran)."""
    s = case.shape
    q = torch.empty(s["B"], s["H"], s["T"], s["D"], dtype=case.dtype, device="meta")
    try:
        from kernels import attention_bwd_gluon, attention_gluon
    except ImportError:  # a Triton without Gluon
        return {"forward_kernel": "tl"}

    def name(config):
        return "-".join(map(str, config or ("tl",)))
    picks = {"forward_kernel": name(attention_gluon._picked.get(attention_gluon.picked_key(q, q, True)))}
    if case.mode == "fwd+bwd":
        for kernel in ("dK/dV", "dQ"):
            key = attention_bwd_gluon.picked_key(kernel, q, q, True)
            picks[f"{kernel.replace('/', '').lower()}_kernel"] = name(attention_bwd_gluon._picked.get(key))
    return picks


def test_attention(benchmark, case, provider):
    extra = {"implementation": kernels.IMPLEMENTATION["attention"]} if provider == "ours" else {}
    common.run_case(benchmark, case, provider, lambda c: build(c, provider),
                    lambda q, k, v: kernels.reference.attention(q, k, v, causal=True),
                    make_inputs, leaves=(0, 1, 2), flops=flops(case), big=True, extra=extra)
    if provider == "ours" and benchmark.enabled and common.ON_CUDA:
        benchmark.extra_info.update(kernel_picks(case))
