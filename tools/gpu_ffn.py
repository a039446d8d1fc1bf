"""GPU check and benchmark of the Triton FFN (kernels/ffn.py); run from the repo root on an H100:

    python tools/gpu_ffn.py            # full log also in $OUT/ffn.log when OUT is set

1. correctness vs float64, next to PyTorch in the same dtype (house rule), bf16 and fp16, every
   activation, odd M, output and every gradient;
2. torch.compile(fullgraph=True) traces ffn and linear_act, and autocast picks bf16;
3. timings (triton.testing.do_bench, median ms) at 16384 tokens: ours vs eager reference vs
   torch.compile(reference) (vs Liger's SwiGLU when importable), fwd and fwd+bwd, TFLOP/s of the
   matmuls (2*M*N*K per GEMM, fwd+bwd = 3x fwd), plus the first GEMM alone vs cuBLAS and the
   autotuner's per-config timings, so one run says what to tune. The table comes last.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import kernels  # noqa: E402
from kernels import matmul, reference  # noqa: E402
from kernels._checks import ACTIVATIONS, GATED_ACTIVATIONS  # noqa: E402
from kernels.testing import assert_close  # noqa: E402

LOG = open(os.path.join(os.environ["OUT"], "ffn.log"), "w") if os.environ.get("OUT") else None
T0 = time.time()
DEVICE = "cuda"


def log(*parts):
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    if LOG:
        LOG.write(line + "\n")
        LOG.flush()


def params(M, D, H, activation, bias, dtype=torch.float64, scale=1.0):
    n_in = 2 * H if activation in GATED_ACTIVATIONS else H
    x = torch.randn(M, D, device=DEVICE, dtype=dtype)
    w_in = torch.randn(n_in, D, device=DEVICE, dtype=dtype) * (scale / D ** 0.5)
    w_out = torch.randn(D, H, device=DEVICE, dtype=dtype) / H ** 0.5
    b_in = torch.randn(n_in, device=DEVICE, dtype=dtype) * 0.5 if bias else None
    b_out = torch.randn(D, device=DEVICE, dtype=dtype) * 0.5 if bias else None
    return [x, w_in, b_in, w_out, b_out]


def run(fn, tensors, dtype, dy, activation):
    leaves = [None if t is None else t.detach().to(dtype).requires_grad_() for t in tensors]
    out = fn(*leaves, activation)
    return out, torch.autograd.grad(out, [t for t in leaves if t is not None], dy.to(dtype))


def stored_in(dtype):
    """reference.ffn in float64 with every stored tensor (and its gradient) rounded to dtype: the
    ideal kernel that keeps the pre-activation in the input dtype, as PyTorch and ours do."""
    def r(t):
        return None if t is None else t.to(dtype).to(torch.float64)

    def ffn(x, w_in, b_in, w_out, b_out, activation):
        a = r(reference.activate(r(F.linear(r(x), r(w_in), r(b_in))), activation))
        return r(F.linear(a, r(w_out), r(b_out)))
    return ffn


def farther(a, b, truth):
    return a if (a.double() - truth).abs().max() >= (b.double() - truth).abs().max() else b


def correctness(dtypes=(torch.bfloat16, torch.float16), D=512, H=1000, big_m=4099):
    """Odd M with the small-M tile; big_m (bf16, gelu and swiglu) goes through the autotuned big tiles."""
    fails, checks = 0, 0
    names = ("x", "w_in", "b_in", "w_out", "b_out")
    cases = [(dtype, activation, M) for dtype in dtypes for activation in ACTIVATIONS for M in (1, 17, 1000)]
    cases += [(dtypes[0], activation, big_m) for activation in ("gelu", "swiglu")]
    for dtype, activation, M in cases:
        bias = M != 17
        tensors = params(M, D, H, activation, bias)
        dy = torch.randn(M, D, device=DEVICE, dtype=torch.float64)
        truth, truth_g = run(reference.ffn, tensors, torch.float64, dy, activation)
        ours, ours_g = run(kernels.ffn, tensors, dtype, dy, activation)
        base, base_g = run(reference.ffn, tensors, dtype, dy, activation)
        # As in tests/test_ffn.py: the baseline is the farther of PyTorch and the ideal stored-in-dtype
        # kernel, since PyTorch's extra roundings can cancel the shared pre-activation rounding by luck.
        ideal, ideal_g = run(stored_in(dtype), tensors, torch.float64, dy, activation)
        base = farther(base, ideal.to(dtype), truth)
        base_g = tuple(farther(b, i.to(dtype), t) for b, i, t in zip(base_g, ideal_g, truth_g))
        present = [n for n, t in zip(names, tensors) if t is not None]
        worst = []
        for name, a, t, b in zip(("y",) + tuple(present), (ours,) + ours_g, (truth,) + truth_g,
                                 (base,) + base_g):
            checks += 1
            try:
                err, allowed = assert_close(a, t, b, name=name)
                worst.append(f"{name} {err:.1e}/{allowed:.1e}")
            except AssertionError as e:
                fails += 1
                log(f"FAIL {dtype} {activation} M={M}: {e}")
        log(f"  {str(dtype)[6:]:8s} {activation:6s} M={M:5d} bias={bias!s:5s} err/allowed: "
            + ", ".join(worst))
    log(f"correctness: {checks - fails}/{checks} checks pass  [{time.time() - T0:.0f}s]")
    return fails


def compile_check():
    ok = True
    for activation in ("gelu", "swiglu"):
        tensors = params(129, 256, 512, activation, True)
        dy = torch.randn(129, 256, device=DEVICE)
        eager, eager_g = run(kernels.ffn, tensors, torch.bfloat16, dy, activation)
        torch._dynamo.reset()
        out, grads = run(torch.compile(kernels.ffn, fullgraph=True), tensors, torch.bfloat16, dy, activation)
        same = torch.equal(out, eager) and all(
            torch.allclose(g.float(), e.float(), rtol=1e-2, atol=1e-2) for g, e in zip(grads, eager_g))
        x, w = tensors[0].bfloat16(), tensors[1].bfloat16()
        la = torch.compile(kernels.linear_act, fullgraph=True)(x, w, None, activation)
        same = same and torch.equal(la, kernels.linear_act(x, w, None, activation))
        log(f"torch.compile(fullgraph=True) {activation}: {'OK' if same else 'MISMATCH'}")
        ok = ok and same
    tensors = [t.float() for t in params(300, 256, 512, "swiglu", True)]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = kernels.ffn(*tensors, "swiglu")
    log(f"autocast bf16: output dtype {y.dtype}")
    log(f"compile/autocast checks {'pass' if ok and y.dtype == torch.bfloat16 else 'FAIL'}  [{time.time() - T0:.0f}s]")
    return ok


def liger_swiglu():
    try:
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    except ImportError:
        return None

    def fn(x, w_in, b_in, w_out, b_out, activation):
        # LLaMA-style MLP as Liger runs it: separate gate/up projections, fused silu(gate) * up.
        gate, up = w_in.chunk(2, dim=0)
        return F.linear(LigerSiLUMulFunction.apply(F.linear(x, gate), F.linear(x, up)), w_out)
    return fn


def bench_point(activation, D, H, M=16384):
    bias = activation not in GATED_ACTIVATIONS  # GPT-2-style MLPs carry biases, LLaMA-style SwiGLU none
    tensors = [None if t is None else t.requires_grad_() for t in
               params(M, D, H, activation, bias, dtype=torch.bfloat16)]
    leaves = [t for t in tensors if t is not None]
    dy = torch.randn(M, D, device=DEVICE, dtype=torch.bfloat16)
    n_in = tensors[1].shape[0]
    flops = 2 * M * D * n_in + 2 * M * H * D
    providers = {"ours": kernels.ffn, "eager": reference.ffn, "compile": torch.compile(reference.ffn)}
    if activation == "swiglu" and liger_swiglu() is not None:
        providers["liger"] = liger_swiglu()
    row = {}
    truth = reference.ffn(*tensors, activation).float()
    for name, fn in providers.items():
        out = fn(*tensors, activation)
        rel = ((out.float() - truth).norm() / truth.norm()).item()
        fwd = do_bench(lambda: fn(*tensors, activation))
        both = do_bench(lambda: torch.autograd.grad(fn(*tensors, activation), leaves, dy))
        row[name] = (flops / fwd * 1e-9, 3 * flops / both * 1e-9, rel)
    # The fused first GEMM alone against cuBLAS's plain linear (no activation) at the same shape.
    x, w_in = tensors[0].detach(), tensors[1].detach()
    b_in = None if tensors[2] is None else tensors[2].detach()
    g1 = do_bench(lambda: matmul.linear_act_fwd(x, w_in, b_in, activation, True))
    cublas = do_bench(lambda: F.linear(x, w_in, b_in))
    pre = matmul.linear_act_fwd(x, w_in, b_in, activation, True)[1]
    w_out = tensors[3].detach()
    g2 = do_bench(lambda: matmul.act_bwd(dy, w_out, pre, activation, True, bias))
    cublas2 = do_bench(lambda: dy @ w_out)
    f1, f2 = 2 * M * D * n_in, 2 * M * D * H
    log(f"  {activation} {D}->{H}: fused GEMM1 {f1 / g1 * 1e-9:.0f} vs cuBLAS linear {f1 / cublas * 1e-9:.0f}; "
        f"fused bwd GEMM {f2 / g2 * 1e-9:.0f} vs cuBLAS dy@w_out {f2 / cublas2 * 1e-9:.0f} TFLOP/s")
    for kernel in (matmul._linear_act_fwd_kernel, matmul._act_bwd_kernel):
        timings = getattr(kernel, "configs_timings", None) or {}
        listing = ", ".join(f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']}x{c.kwargs['BLOCK_K']}"
                            f"/w{c.num_warps}/s{c.num_stages}/{'tma' if c.kwargs.get('TMA') else 'ptr'}={t[0] if isinstance(t, list) else t:.3f}ms"
                            for c, t in timings.items())
        log(f"    {kernel.base_fn.__name__}: best {kernel.best_config}; tried {listing}")
    log(f"  [{time.time() - T0:.0f}s]")
    return row


def main():
    log(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    fails = correctness()
    compile_ok = compile_check()
    torch.manual_seed(0)
    points = [("gelu", 768, 3072), ("relu", 768, 3072), ("swiglu", 768, 2048),
              ("gelu", 2048, 8192), ("relu", 2048, 8192), ("swiglu", 2048, 5440)]
    rows = [(p, bench_point(*p)) for p in points]
    table(rows)
    log(f"correctness failures: {fails}; compile checks: {'pass' if compile_ok else 'FAIL'}; "
        f"total {time.time() - T0:.0f}s")


def table(rows):
    log("")
    log("FFN bf16, 16384 tokens, TFLOP/s fwd / fwd+bwd (matmul FLOPs; fwd+bwd = 3x fwd); "
        "gelu/relu with biases, swiglu without")
    log("| MLP | D -> H | ours | eager | compile | liger | ours/best peer fwd / fwd+bwd | ours % of 800 |")
    log("|---|---|---|---|---|---|---|---|")
    for (activation, D, H), row in rows:
        cell = {k: f"{v[0]:.0f} / {v[1]:.0f}" for k, v in row.items()}
        peers = [v for k, v in row.items() if k != "ours"]
        best_f, best_b = max(p[0] for p in peers), max(p[1] for p in peers)
        ours = row["ours"]
        log(f"| {activation} | {D} -> {H} | {cell['ours']} | {cell['eager']} | {cell['compile']} | "
            f"{cell.get('liger', '-')} | {ours[0] / best_f:.2f} / {ours[1] / best_b:.2f} | "
            f"{ours[0] / 8:.0f}% / {ours[1] / 8:.0f}% |")
    log("(ratios: ours over the best of the other columns; rel-L2 error of each provider vs the "
        "bf16 reference: " + "; ".join(f"{a} {D}: " + " ".join(f"{k} {v[2]:.1e}" for k, v in row.items())
                                       for (a, D, H), row in rows) + ")")


if __name__ == "__main__":
    main()
