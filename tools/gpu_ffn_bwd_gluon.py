"""Time the Gluon backward GEMM of the non-gated activations (kernels/matmul_bwd_gluon_ws.py) at each config against
the `tl` kernel it may replace and against cuBLAS, on a Hopper GPU:

    PYTHONPATH=. python tools/gpu_ffn_bwd_gluon.py      # log also in $OUT/ffn_bwd_gluon.log when OUT is set

bf16, M = 16384 tokens, d_pre = (dy @ w_out) * act'(pre) with dy (M, D), w_out (D, H): the suite's (D, H) in
(768, 3072), (2048, 8192), every non-gated activation, with the first layer's bias gradient (the suite's MLPs
have biases). Per point one line of TFLOP/s (2 * M * D * H / time, triton.testing.do_bench median):
  tl        kernels.matmul._act_bwd_tl (the tl kernel act_bwd runs today, autotuned on its first call)
  ws        each config of matmul_bwd_gluon_ws.CONFIGS; `best` the fastest
  cublas    dy @ w_out alone (the ceiling), and `eager` = the GEMM + PyTorch's activation backward
and the max |ws - tl| over max |tl| of d_pre at the best config, with the share of elements that differ. A config
that fails to build or run is printed and skipped. BWD_BUDGET_S (default 120) stops starting new points past it.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from kernels import matmul, matmul_bwd_gluon_ws as bw, reference  # noqa: E402
from tools.tool_log import ToolLog  # noqa: E402

log = ToolLog("ffn_bwd_gluon.log")
M = 16384
POINTS = [(768, 3072), (2048, 8192)]
BUDGET = float(os.environ.get("BWD_BUDGET_S", "120"))
T0 = time.time()


def tflops(ms, D, H):
    return 2 * M * D * H / (ms * 1e-3) / 1e12


def bench(fn):
    return do_bench(fn, warmup=10, rep=40, return_mode="median")


def name(config):
    _, bm, bn, bk, stages = config
    return f"ws{bm}x{bn}x{bk}/s{stages}"


def point(D, H, activation):
    dtype = torch.bfloat16
    dy = torch.randn(M, D, device="cuda", dtype=dtype)
    w_out = (torch.randn(D, H, device="cuda") / D ** 0.5).to(dtype)
    pre = torch.randn(M, H, device="cuda", dtype=dtype)
    d_pre = torch.empty_like(pre)
    dbias = torch.zeros(H, device="cuda", dtype=torch.float32)
    if not bw.usable(dy, w_out, pre, d_pre, activation):
        log(f"{activation} {D}->{H}: not usable by the Gluon kernel (?)")
        return

    def tl():
        dbias.zero_()
        matmul._act_bwd_tl(dy, w_out, pre, activation, False, True, d_pre, None, dbias, True, D)
    tl()  # the first call autotunes
    tl_d_pre = d_pre.clone()
    ms = bench(tl)
    parts, times, results = [f"tl {tflops(ms, D, H):5.0f}"], {}, {}
    for config in bw.CONFIGS:
        def ws():
            dbias.zero_()
            bw.act_bwd_ws(dy, w_out, pre, d_pre, dbias, activation, config)
        try:
            ws()
            torch.cuda.synchronize()
            results[config] = d_pre.clone()
            times[config] = bench(ws)
            parts.append(f"{name(config)} {tflops(times[config], D, H):5.0f}")
        except Exception as e:  # noqa: BLE001 (a config that does not build or run: say so, go on)
            parts.append(f"{name(config)} FAILED")
            log(f"  {activation} {D}->{H} {name(config)}: {type(e).__name__}: {str(e)[:300]}")
    gemm_ms = bench(lambda: dy @ w_out)
    pre_grad = pre.detach().requires_grad_()
    act = reference.activate(pre_grad, activation)
    eager_ms = bench(lambda: torch.autograd.grad(act, pre_grad, dy @ w_out, retain_graph=True))
    parts += [f"| cublas gemm {tflops(gemm_ms, D, H):5.0f}", f"eager {tflops(eager_ms, D, H):5.0f}"]
    if times:
        best = min(times, key=times.get)
        d = (results[best].float() - tl_d_pre.float()).abs()
        rel = (d.max() / tl_d_pre.float().abs().max().clamp_min(1e-30)).item()
        parts.append(f"| best {name(best)} {times[best] * 1e3:.0f} us = {ms / times[best]:.2f}x tl, "
                     f"{eager_ms / times[best]:.2f}x eager; d_pre vs tl: max rel {rel:.1e}, "
                     f"{(d > 0).float().mean().item():.1%} differ")
    log(f"{activation} {D}->{H}: " + "  ".join(parts))


def main():
    log(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, M = {M}, bf16, TFLOP/s = 2*M*D*H / time")
    for D, H in POINTS:
        for activation in bw.ACT_CODES:
            if time.time() - T0 > BUDGET:
                log(f"budget of {BUDGET:.0f} s spent: {activation} {D}->{H} and later skipped")
                return
            try:
                point(D, H, activation)
            except Exception as e:  # noqa: BLE001 (one point's failure must not end the run)
                log(f"{activation} {D}->{H}: FAILED {type(e).__name__}: {str(e)[:300]}")
    log(f"done in {time.time() - T0:.0f} s")


if __name__ == "__main__":
    log.run(main)
