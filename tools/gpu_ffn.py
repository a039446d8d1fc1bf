"""GPU check and benchmark of the Triton FFN (kernels/ffn.py); run from the repo root on an H100:

    python tools/gpu_ffn.py            # full log also in $OUT/ffn.log when OUT is set

Ordered so the timing table comes early (about two minutes in all; FFN_BUDGET_S, default 100, caps
the optional parts):
1. correctness vs float64 next to PyTorch in the same dtype (the plain house rule), on a reduced set
   that compiles few kernels: bf16 every activation at M=1000, fp16 relu2 at M=1 and swiglu at M=17;
2. timings (triton.testing.do_bench, median) at 16384 tokens, bf16: ours (autotuned) vs eager
   reference vs Liger's SwiGLU when importable, fwd and fwd+bwd, TFLOP/s of the matmuls (2*M*N*K
   per GEMM, fwd+bwd = 3x fwd); then torch.compile(reference) per point while the budget lasts;
   the table is printed after each pass;
3. torch.compile(fullgraph=True) through our ops and autocast;
4. if time is left: the fused GEMMs alone vs cuBLAS and the autotuner's per-config timings.
FFN_POINTS=act:D:H,... replaces the shapes; FFN_QUICK=1 runs only steps 2 (ours, eager) and 4;
KERNELS_FFN_PERSISTENT=0 turns matmul.PERSISTENT off (kernels/matmul_persistent.py; on by default) for the whole run;
KERNELS_FFN_PERSISTENT_GATED=1 sends the gated forward to the persistent kernel too (opt-in).
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
from kernels._checks import GATED_ACTIVATIONS, ACTIVATIONS  # noqa: E402
from kernels.testing import assert_close  # noqa: E402

LOG = open(os.path.join(os.environ["OUT"], "ffn.log"), "w") if os.environ.get("OUT") else None
T0 = time.time()
BUDGET = float(os.environ.get("FFN_BUDGET_S", "100"))
DEVICE = "cuda"
POINTS = [("gelu", 768, 3072), ("relu", 768, 3072), ("swiglu", 768, 2048),
          ("gelu", 2048, 8192), ("relu", 2048, 8192), ("swiglu", 2048, 5440)]
if os.environ.get("FFN_POINTS"):  # e.g. geglu:768:2048,swiglu:768:2048
    POINTS = [(a, int(d), int(h)) for a, d, h in (s.split(":") for s in os.environ["FFN_POINTS"].split(","))]
QUICK = bool(os.environ.get("FFN_QUICK"))  # only ours and eager, then the GEMM detail (no checks, no compile)


def log(*parts):
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    if LOG:
        LOG.write(line + "\n")
        LOG.flush()


def elapsed():
    return time.time() - T0


def bench(fn):
    return do_bench(fn, warmup=10, rep=40)


def params(M, D, H, activation, bias, dtype=torch.float64):
    n_in = 2 * H if activation in GATED_ACTIVATIONS else H
    x = torch.randn(M, D, device=DEVICE, dtype=dtype)
    w_in = torch.randn(n_in, D, device=DEVICE, dtype=dtype) / D ** 0.5
    w_out = torch.randn(D, H, device=DEVICE, dtype=dtype) / H ** 0.5
    b_in = torch.randn(n_in, device=DEVICE, dtype=dtype) * 0.5 if bias else None
    b_out = torch.randn(D, device=DEVICE, dtype=dtype) * 0.5 if bias else None
    return [x, w_in, b_in, w_out, b_out]


def run(fn, tensors, dtype, dy, activation):
    leaves = [None if t is None else t.detach().to(dtype).requires_grad_() for t in tensors]
    out = fn(*leaves, activation)
    return out, torch.autograd.grad(out, [t for t in leaves if t is not None], dy.to(dtype))


def correctness(D=512, H=1000):
    fails, checks = 0, 0
    names = ("x", "w_in", "b_in", "w_out", "b_out")
    cases = [(torch.bfloat16, a, 1000) for a in ACTIVATIONS]
    cases += [(torch.float16, "relu2", 1), (torch.float16, "swiglu", 17)]
    for dtype, activation, M in cases:
        tensors = params(M, D, H, activation, True)
        dy = torch.randn(M, D, device=DEVICE, dtype=torch.float64)
        truth, truth_g = run(reference.ffn, tensors, torch.float64, dy, activation)
        ours, ours_g = run(kernels.ffn, tensors, dtype, dy, activation)
        base, base_g = run(reference.ffn, tensors, dtype, dy, activation)
        worst = []
        for name, a, t, b in zip(("y",) + names, (ours,) + ours_g, (truth,) + truth_g, (base,) + base_g):
            checks += 1
            try:
                err, allowed = assert_close(a, t, b, name=name)
                worst.append(f"{name} {err:.1e}/{allowed:.1e}")
            except AssertionError as e:
                fails += 1
                log(f"FAIL {dtype} {activation} M={M}: {e}")
        log(f"  {str(dtype)[6:]:8s} {activation:6s} M={M:5d} err/allowed: " + ", ".join(worst))
    log(f"correctness: {checks - fails}/{checks} checks pass  [{elapsed():.0f}s]")
    return fails


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


class Point:
    """One benchmark shape: bf16 leaves, upstream gradient, FLOPs, and each provider's numbers."""

    def __init__(self, activation, D, H, M=16384):
        self.activation, self.D, self.H = activation, D, H
        bias = activation not in GATED_ACTIVATIONS  # GPT-2-style MLPs carry biases, LLaMA-style SwiGLU none
        self.tensors = [None if t is None else t.requires_grad_()
                        for t in params(M, D, H, activation, bias, dtype=torch.bfloat16)]
        self.leaves = [t for t in self.tensors if t is not None]
        self.dy = torch.randn(M, D, device=DEVICE, dtype=torch.bfloat16)
        self.flops = 2 * M * D * self.tensors[1].shape[0] + 2 * M * H * D
        self.row = {}
        self.ref = self.outputs(reference.ffn)

    def outputs(self, fn):
        out = fn(*self.tensors, self.activation)
        return [out.float()] + [g.float() for g in torch.autograd.grad(out, self.leaves, self.dy)]

    def time(self, name, fn):
        got = self.outputs(fn)
        rel = max(((a - b).norm() / b.norm()).item() for a, b in zip(got, self.ref))
        fwd = bench(lambda: fn(*self.tensors, self.activation))
        both = bench(lambda: torch.autograd.grad(fn(*self.tensors, self.activation), self.leaves, self.dy))
        self.row[name] = (self.flops / fwd * 1e-9, 3 * self.flops / both * 1e-9, rel)
        log(f"  {self.activation} {self.D}->{self.H} {name}: {self.row[name][0]:.0f} / {self.row[name][1]:.0f} "
            f"TFLOP/s fwd / fwd+bwd, worst rel-L2 vs bf16 reference (output, grads) {rel:.1e}  [{elapsed():.0f}s]")


def table(points):
    log("")
    log("FFN bf16, 16384 tokens, TFLOP/s fwd / fwd+bwd (matmul FLOPs; fwd+bwd = 3x fwd); "
        "gelu/relu with biases, swiglu without")
    log("| MLP | D -> H | ours | eager | compile | liger | ours/best peer fwd / fwd+bwd | ours % of 800 |")
    log("|---|---|---|---|---|---|---|---|")
    for p in points:
        if "ours" not in p.row:
            continue
        cell = {k: f"{v[0]:.0f} / {v[1]:.0f}" for k, v in p.row.items()}
        peers = [v for k, v in p.row.items() if k != "ours"]
        ours = p.row["ours"]
        ratio = (f"{ours[0] / max(v[0] for v in peers):.2f} / {ours[1] / max(v[1] for v in peers):.2f}"
                 if peers else "-")
        log(f"| {p.activation} | {p.D} -> {p.H} | {cell['ours']} | {cell.get('eager', '-')} | "
            f"{cell.get('compile', '-')} | {cell.get('liger', '-')} | {ratio} | "
            f"{ours[0] / 8:.0f}% / {ours[1] / 8:.0f}% |")
    log(f"(ratios: ours over the best other column measured; [{elapsed():.0f}s])")
    log("")


def compile_check():
    ok = True
    for activation in ("gelu", "swiglu"):
        tensors = params(129, 256, 512, activation, True)
        dy = torch.randn(129, 256, device=DEVICE)
        eager, eager_g = run(kernels.ffn, tensors, torch.bfloat16, dy, activation)
        out, grads = run(torch.compile(kernels.ffn, fullgraph=True), tensors, torch.bfloat16, dy, activation)
        same = torch.equal(out, eager) and all(
            torch.allclose(g.float(), e.float(), rtol=1e-2, atol=1e-2) for g, e in zip(grads, eager_g))
        log(f"torch.compile(fullgraph=True) kernels.ffn {activation}: {'OK' if same else 'MISMATCH'}")
        ok = ok and same
    tensors = [t.float() for t in params(300, 256, 512, "swiglu", True)]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = kernels.ffn(*tensors, "swiglu")
    ok = ok and y.dtype == torch.bfloat16
    log(f"autocast output dtype {y.dtype}; compile/autocast checks {'pass' if ok else 'FAIL'}  [{elapsed():.0f}s]")
    return ok


def gemm_detail(p):
    """The fused GEMMs alone vs cuBLAS at the same shape, and what the autotuner tried."""
    x, w_in, w_out = (t.detach() for t in (p.tensors[0], p.tensors[1], p.tensors[3]))
    b_in = None if p.tensors[2] is None else p.tensors[2].detach()
    f1, f2 = 2 * x.shape[0] * x.shape[1] * w_in.shape[0], 2 * x.shape[0] * p.D * p.H
    g1 = bench(lambda: matmul.linear_act_fwd(x, w_in, b_in, p.activation, True))
    c1 = bench(lambda: F.linear(x, w_in, b_in))
    out, pre = matmul.linear_act_fwd(x, w_in, b_in, p.activation, True)
    pre = out if p.activation in matmul.FROM_OUTPUT else pre  # what act_bwd reads act' off
    dy = p.dy
    tuned = [(matmul._linear_act_fwd_tuned, lambda: matmul.linear_act_fwd(x, w_in, b_in, p.activation, True)),
             (matmul._act_bwd_tuned, lambda: matmul.act_bwd(dy, w_out, pre, p.activation, False, b_in is not None))]
    for kernel, call in tuned:  # tune this point's key again, so the listing below is this point's
        kernel.cache.clear()
        matmul._PICKED.clear()
        call()
        torch.cuda.synchronize()
        timings = getattr(kernel, "configs_timings", None) or {}
        listing = ", ".join(f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']}x{c.kwargs['BLOCK_K']}"
                            f"/w{c.num_warps}/s{c.num_stages}/{'tma' if c.kwargs.get('TMA') else 'ptr'}"
                            f"{'/epi-first' if c.kwargs.get('EPI_FIRST') else ''}="
                            f"{t[0] if isinstance(t, list) else t:.3f}ms" for c, t in timings.items())
        log(f"    {kernel.base_fn.__name__}: best {getattr(kernel, 'best_config', None)}; tried {listing}")
    g2 = bench(lambda: matmul.act_bwd(dy, w_out, pre, p.activation, False, b_in is not None))
    c2 = bench(lambda: dy @ w_out)
    log(f"  {p.activation} {p.D}->{p.H}: fused GEMM1 {f1 / g1 * 1e-9:.0f} vs cuBLAS linear {f1 / c1 * 1e-9:.0f}; "
        f"fused bwd GEMM {f2 / g2 * 1e-9:.0f} vs cuBLAS dy@w_out {f2 / c2 * 1e-9:.0f} TFLOP/s")
    was = matmul.PERSISTENT
    for persistent in (False, True):  # the fused GEMMs both ways (where the persistent one applies)
        matmul.PERSISTENT = persistent
        ms = bench(lambda: matmul.linear_act_fwd(x, w_in, b_in, p.activation, True))
        ms_bwd = bench(lambda: matmul.act_bwd(dy, w_out, pre, p.activation, False, b_in is not None))
        got = (*matmul.linear_act_fwd(x, w_in, b_in, p.activation, True),
               matmul.act_bwd(dy, w_out, pre, p.activation, False, b_in is not None)[0])
        if not persistent:
            ref = got
        diff = max((a.float() - r.float()).abs().max().item() for a, r in zip(got, ref))
        log(f"    fused GEMMs {'persistent' if persistent else 'per-tile'}: forward {f1 / ms * 1e-9:.0f}, backward "
            f"{f2 / ms_bwd * 1e-9:.0f} TFLOP/s, max |diff| to per-tile {diff:.1e}")
    matmul.PERSISTENT = was


def main():
    log(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
        f"autotune {'on' if matmul.autotune_enabled() else 'off'}")
    fails = "not run (FFN_QUICK)" if QUICK else correctness()
    torch.manual_seed(0)
    liger = liger_swiglu()
    log(f"Liger SwiGLU {'importable' if liger else 'not importable'}")
    points = []
    for spec in POINTS:  # pass 1: ours, eager, liger
        p = Point(*spec)
        points.append(p)
        p.time("ours", kernels.ffn)
        p.time("eager", reference.ffn)
        if liger is not None and p.activation == "swiglu":
            p.time("liger", liger)
    table(points)
    if QUICK:
        for p in points:
            gemm_detail(p)
        return
    compiled = torch.compile(reference.ffn)
    for p in points:  # pass 2: torch.compile, while the budget lasts (each shape compiles anew)
        if elapsed() > BUDGET:
            log(f"torch.compile column stopped at the {BUDGET:.0f} s budget (FFN_BUDGET_S)")
            break
        p.time("compile", compiled)
    table(points)
    compile_ok = compile_check()
    for p in points:
        if elapsed() > BUDGET + 30:
            break
        gemm_detail(p)
    log(f"correctness failures: {fails}; compile checks: {'pass' if compile_ok else 'FAIL'}; "
        f"total {elapsed():.0f}s")


if __name__ == "__main__":
    main()
