"""One checkout against another on one card: the FFN's backward GEMM kernel (kernels.matmul.act_bwd, with the bias
sums), kernels.ffn's forward without grad and its fwd+bwd, do_bench medians in us, one line per point. Run it from
each checkout in turn, alternating, in one device call (the twelfth session's A/B of the relaxed atomics and the
non-gated Gluon forward, bench/RESULTS.md):

    git archive <rev> | tar -x -C tools/.old          # the other checkout, inside the working tree (it travels)
    for r in 1 2; do
      (cd tools/.old && PYTHONPATH=$PWD python3 ../gpu_ffn_ab.py old$r)
      PYTHONPATH=$PWD python3 tools/gpu_ffn_ab.py new$r
    done

It imports `kernels` from PYTHONPATH, and uses only what both checkouts have (act_bwd's and ffn's signatures).
FFN_AB_POINTS=relu:768:3072,... picks the points (non-gated: biases on every layer).
"""
import os
import sys

import torch
from triton.testing import do_bench

import kernels
from kernels import matmul

M = 16384
POINTS = [(a, int(d), int(h)) for a, d, h in (p.split(":") for p in os.environ.get(
    "FFN_AB_POINTS", "relu:768:3072,gelu:768:3072,gelu:2048:8192").split(","))]


def main(label):
    torch.manual_seed(0)
    for act, D, H in POINTS:
        dt = torch.bfloat16
        x = torch.randn(M, D, device="cuda", dtype=dt, requires_grad=True)
        w_in = (torch.randn(H, D, device="cuda", dtype=dt) * D ** -0.5).requires_grad_()
        b_in = (torch.randn(H, device="cuda", dtype=dt) * 0.1).requires_grad_()
        w_out = (torch.randn(D, H, device="cuda", dtype=dt) * H ** -0.5).requires_grad_()
        b_out = (torch.randn(D, device="cuda", dtype=dt) * 0.1).requires_grad_()
        dy = torch.randn(M, D, device="cuda", dtype=dt)
        pre = torch.randn(M, H, device="cuda", dtype=dt).abs()  # also a valid relu / relu2 output (what act_bwd reads)
        leaves = [x, w_in, b_in, w_out, b_out]

        def bwd():
            matmul.act_bwd(dy, w_out.detach(), pre, act, False, True)

        def fwd():
            with torch.no_grad():
                kernels.ffn(x, w_in, b_in, w_out, b_out, act)

        def step():
            torch.autograd.grad(kernels.ffn(x, w_in, b_in, w_out, b_out, act), leaves, dy)
        for fn in (bwd, fwd, step):  # the first calls tune
            fn()
            fn()
        torch.cuda.synchronize()
        us = [1e3 * do_bench(fn, warmup=25, rep=200, return_mode="median") for fn in (bwd, fwd, step)]
        print(f"{label} {act} {D}->{H}: act_bwd {us[0]:.0f} us  fwd {us[1]:.0f} us  fwd+bwd {us[2]:.0f} us", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "this")
