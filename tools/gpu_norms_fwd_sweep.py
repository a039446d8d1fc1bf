"""The norms' forward at the suite's narrow widths: every launch shape against torch.compile's kernel.

    python tools/gpu_norms_fwd_sweep.py      # from the repo root, on a CUDA machine; ~1-2 minutes

At 16384 x 768 our forward's GPU time trailed torch.compile's fused kernel (H100, graph timing:
layer_norm 0.90x, rms_norm 0.96x; bench/RESULTS.md). This times, per op and width (bf16, 16384
rows, no grad, so no statistics are stored, as in the suite's fwd points):
  - torch.compile of the reference;
  - our forward at its default launch shape and at every (BLOCK_M rows, num_warps) of a grid,
both as GPU time (do_bench_cudagraph: CUDA-graph replay, no host, no L2 flush) and per call
(do_bench: CUDA events, L2 flushed). GB/s counts x read plus y written. The table comes last.

Environment: SWEEP_WIDTHS (default 768,2048), SWEEP_OPS (default layer_norm,rms_norm),
SWEEP_CONFIGS (default every BLOCK_M x num_warps of the grid, e.g. "4x4,2x2"), SWEEP_SECS (default 150:
stops timing then and still prints).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from triton.testing import do_bench, do_bench_cudagraph  # noqa: E402

import kernels  # noqa: E402
from kernels import norms, reference  # noqa: E402
from kernels._runtime import next_power_of_2  # noqa: E402
from kernels.testing import call_norm as call  # noqa: E402

ROWS = 16384
WIDTHS = [int(n) for n in os.environ.get("SWEEP_WIDTHS", "768,2048").split(",")]
OPS = os.environ.get("SWEEP_OPS", "layer_norm,rms_norm").split(",")
BUDGET = float(os.environ.get("SWEEP_SECS", "150"))
CONFIGS = [tuple(int(v) for v in c.split("x")) for c in os.environ["SWEEP_CONFIGS"].split(",")] if (
    os.environ.get("SWEEP_CONFIGS")) else [(bm, nw) for bm in (1, 2, 4, 8, 16) for nw in (1, 2, 4, 8)]
MAX_TILE = 16384  # elements per program: beyond it the registers spill
T0 = time.time()


def inputs(op, n):
    g = torch.Generator(device="cuda").manual_seed(n)
    x = torch.randn(ROWS, n, device="cuda", generator=g).to(torch.bfloat16)
    r = torch.randn(ROWS, n, device="cuda", generator=g).to(torch.bfloat16) if op.startswith("add_") else None
    w = (1 + 0.5 * torch.randn(n, device="cuda", generator=g)).to(torch.bfloat16)
    b = torch.randn(n, device="cuda", generator=g).to(torch.bfloat16) if "layer" in op else None
    return [x, r, w, b]


def gbs(op, n, ms):
    return (4 if op.startswith("add_") else 2) * ROWS * n * 2 / ms * 1e-6


def timed(fn, args):
    with torch.no_grad():
        fn(*args)
        torch.cuda.synchronize()
        graph = do_bench_cudagraph(lambda: fn(*args), rep=60, return_mode="median")
        events = do_bench(lambda: fn(*args), warmup=10, rep=60, return_mode="median")
    return graph, events


def with_config(bm, nw):
    def config(n_cols):
        return {"BLOCK_M": bm, "BLOCK_N": next_power_of_2(n_cols), "num_warps": nw}
    return config


def main():
    assert torch.cuda.is_available(), "tools/gpu_norms_fwd_sweep.py needs a CUDA device"
    rows = []  # (op, n, label, graph ms, events ms)

    def add(op, n, label, fn, args):
        rows.append((op, n, label, *timed(fn, args)))
        print(f"{op:12s} {n:5d} {label:24s} graph {rows[-1][3] * 1e3:6.1f} us  events {rows[-1][4] * 1e3:6.1f} us",
              flush=True)
    default = norms.fwd_config
    for op in OPS:
        for n in WIDTHS:
            args = inputs(op, n)
            torch._dynamo.reset()
            compiled = torch.compile(lambda *a, op=op: call(reference, op, *a), dynamic=False)
            add(op, n, "compile", compiled, args)
            ours = lambda *a, op=op: call(kernels, op, *a)  # noqa: E731
            add(op, n, f"ours {default(n)['BLOCK_M']}x{default(n)['num_warps']} (default)", ours, args)
            for bm, nw in CONFIGS:
                if bm * next_power_of_2(n) > MAX_TILE or time.time() - T0 > BUDGET:
                    continue
                norms.fwd_config = with_config(bm, nw)
                try:
                    add(op, n, f"ours {bm}x{nw}", ours, args)
                finally:
                    norms.fwd_config = default
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}; bf16, {ROWS} rows, forward, no grad")
    print("| op | N | compile graph us (GB/s) | ours default graph | best ours graph (BLOCK_M x warps) "
          "| compile events us | ours default events | best ours events |")
    print("|---|---|---|---|---|---|---|---|")
    for op in OPS:
        for n in WIDTHS:
            mine = [r for r in rows if r[0] == op and r[1] == n]
            comp = next(r for r in mine if r[2] == "compile")
            dflt = next(r for r in mine if r[2].endswith("(default)"))
            ours = [r for r in mine if r[2].startswith("ours")]
            bg = min(ours, key=lambda r: r[3])
            be = min(ours, key=lambda r: r[4])
            print(f"| {op} | {n} | {comp[3] * 1e3:.1f} ({gbs(op, n, comp[3]):.0f}) | {dflt[3] * 1e3:.1f} "
                  f"({gbs(op, n, dflt[3]):.0f}) | {bg[3] * 1e3:.1f} ({gbs(op, n, bg[3]):.0f}) {bg[2][5:]} "
                  f"| {comp[4] * 1e3:.1f} | {dflt[4] * 1e3:.1f} | {be[4] * 1e3:.1f} {be[2][5:]} |")


if __name__ == "__main__":
    main()
