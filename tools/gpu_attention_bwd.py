"""Backward-kernel variants of the Triton attention, timed on the GPU (tuning hints, not a benchmark):

    python tools/gpu_attention_bwd.py      # from the repo root, on the H100

For each shape of the FlashAttention grid in ATTB_SHAPES (DxT, default 128x1024,64x1024,128x8192):
1. agreement of every config with the tables' first (dq, dk, dv max abs difference over max abs value);
2. the whole backward (preprocess + dK/dV + dQ) in ms, sweeping the dK/dV configs with dQ at its
   table's first entry, then the dQ configs with dK/dV at its first entry (do_bench median), TFLOP/s
   counted as 2.5x the forward FLOPs;
3. per shape: the preprocess, dK/dV and dQ kernels timed alone at the tables' first configs, and
   compiled FlexAttention's forward and forward+backward on the same inputs (ATTB_FLEX=0 skips it);
4. registers and spills of every compiled backward kernel (CompiledKernel.n_regs / n_spills).
A summary (best ms per shape and part, and the configs) is printed last; with OUT set the log is
also written to $OUT/attention_bwd.log.
"""
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402

import kernels  # noqa: E402,F401
from tools.tool_log import ToolLog  # noqa: E402

att = sys.modules["kernels.attention"]  # (the package exports a function of the same name)
bwd = sys.modules["kernels.attention_bwd"]
log = ToolLog("attention_bwd.log")

DKDV = {64: [(64, 64, 4, 3), (64, 128, 8, 3), (32, 128, 8, 3), (64, 64, 4, 2), (32, 128, 4, 4)],
        128: [(64, 128, 8, 3), (64, 128, 8, 2), (32, 128, 8, 2), (32, 128, 8, 3), (64, 64, 4, 3)]}
DQ = {64: [(64, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2)],
      128: [(128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 2)]}
if os.environ.get("ATTB_PARTS") == "dkdv":  # sweep the dK/dV kernel only
    DQ = {d: rows[:1] for d, rows in DQ.items()}


def inputs(D, T):
    B, H = 16384 // T, 2048 // D
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, dout = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
    return q, k, v, dout, 4 * B * H * T * T * D * 0.5


def parts_ms(dout, q, k, v, out, lse, scale, base):
    """(preprocess, dK/dV, dQ) ms, each kernel launched alone as attention_bwd launches it."""
    _, launches = bwd.backward_launches(dout, q, k, v, out, lse, True, scale, config=base)
    for launch in launches:  # in order once: the later kernels read what the preprocess wrote
        launch()
    return tuple(triton.testing.do_bench(f, warmup=5, rep=30) for f in launches)


def flex_ms(q, k, v, dout):
    """Compiled FlexAttention (causal block mask): (fwd ms, fwd+bwd ms)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    T = q.shape[2]
    mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, T, T, device="cuda")
    flex = torch.compile(flex_attention)
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    with torch.no_grad():
        fwd = triton.testing.do_bench(lambda: flex(q, k, v, block_mask=mask), warmup=5, rep=30)
    both = triton.testing.do_bench(lambda: flex(qg, kg, vg, block_mask=mask).backward(dout), warmup=5, rep=30,
                                   grad_to_none=[qg, kg, vg])
    return fwd, both


def kernel_registers():
    for kernel in (bwd._attn_bwd_dkdv_kernel, bwd._attn_bwd_dq_kernel):
        for per_device in kernel.device_caches.values():
            for compiled in per_device[0].values():
                c = compiled.metadata
                consts = getattr(getattr(compiled, "src", None), "constants", {}) or {}
                blocks = {str(k): v for k, v in consts.items() if "BLOCK" in str(k)}
                log(f"  {kernel.fn.__name__}: {blocks} warps {c.num_warps} stages {c.num_stages} regs {compiled.n_regs} "
                    f"spills {compiled.n_spills} smem {c.shared}")


def main():
    t0 = time.time()
    log(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    shapes = [tuple(int(x) for x in s.split("x")) for s in os.environ.get("ATTB_SHAPES", "128x1024,64x1024,128x8192").split(",")]
    best = {}
    for D, T in shapes:
        q, k, v, dout, flops = inputs(D, T)
        out, lse = att.attention_fwd(q, k, v, True)
        scale = 1 / math.sqrt(D)
        base = {"dkdv": DKDV[D][0], "dq": DQ[D][0]}
        ref = bwd.attention_bwd(dout, q, k, v, out, lse, True, scale, config=base)
        try:
            p, a, b = parts_ms(dout, q, k, v, out, lse, scale, base)
            log(f"== D{D} T{T} kernels alone at {base}: preprocess {p:.3f} ms, dK/dV {a:.3f} ms, dQ {b:.3f} ms")
        except Exception as e:
            log(f"== D{D} T{T} kernels alone: {type(e).__name__}: {str(e)[:300]}")
        if os.environ.get("ATTB_FLEX", "1") != "0":
            try:
                f, fb = flex_ms(q, k, v, dout)
                log(f"== D{D} T{T} flex: fwd {f:.3f} ms, fwd+bwd {fb:.3f} ms, bwd {fb - f:.3f} ms  ({time.time() - t0:.0f}s)")
            except Exception as e:
                log(f"== D{D} T{T} flex: {type(e).__name__}: {str(e)[:300]}")
        for part, table in (("dkdv", DKDV[D]), ("dq", DQ[D])):
            for cfg in table:
                config = dict(base, **{part: cfg})

                def run():
                    return bwd.attention_bwd(dout, q, k, v, out, lse, True, scale, config=config)
                try:
                    err = max(((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
                              for a, b in zip(run(), ref))
                    ms = triton.testing.do_bench(run, warmup=5, rep=30)
                except Exception as e:
                    log(f"  {part}={cfg}: {type(e).__name__}: {str(e)[:200]}")
                    continue
                log(f"  {part}={cfg}: {ms:.3f} ms {2.5 * flops / ms * 1e-9:5.0f} TFLOP/s  (agreement {err:.1e})")
                key = (D, T, part)
                if key not in best or ms < best[key][0]:
                    best[key] = (ms, cfg)
        del q, k, v, dout, out, lse
    try:
        kernel_registers()
    except Exception as e:
        log(f"registers: {type(e).__name__}: {e}")
    log(f"\n== summary: best whole-backward ms per part swept (the other part at its first config), "
        f"{time.time() - t0:.0f}s")
    for (D, T, part), (ms, cfg) in sorted(best.items()):
        log(f"  D{D} T{T} {part:5s} {ms:.3f} ms  {cfg}")


if __name__ == "__main__":
    log.run(main)
