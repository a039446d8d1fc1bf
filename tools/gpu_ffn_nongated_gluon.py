"""Time the Gluon kernels of the non-gated activations, the backward GEMM (kernels/matmul_bwd_gluon_ws.py) and the
forward on the gated ping-pong's kernel (matmul_gated_gluon_ws.plain_forward_ws), at each config against the `tl`
kernels they may replace and against cuBLAS, on a Hopper GPU:

    PYTHONPATH=. python tools/gpu_ffn_nongated_gluon.py      # log also in $OUT/ffn_nongated_gluon.log when OUT is set

Backward:
bf16, M = 16384 tokens, d_pre = (dy @ w_out) * act'(pre) with dy (M, D), w_out (D, H): the suite's (D, H) in
(768, 3072), (2048, 8192), every non-gated activation, with the first layer's bias gradient (the suite's MLPs
have biases). Per point one line of TFLOP/s (2 * M * D * H / time, triton.testing.do_bench median):
  tl        kernels.matmul._act_bwd_tl (the tl kernel act_bwd runs today, autotuned on its first call)
  ws        each config of matmul_bwd_gluon_ws.CONFIGS; `best` the fastest
  cublas    dy @ w_out alone (the ceiling), and `eager` = the GEMM + PyTorch's activation backward
and the max |ws - tl| over max |tl| of d_pre at the best config, with the share of elements that differ, and
both kernels' TFLOP/s without the bias sums. A config
that fails to build or run is printed and skipped. Forward: the same per point for act(x @ w.T + b), x (M, D),
w (H, D), pre stored (training) and not (inference), against matmul._linear_act_fwd_tl (the persistent tl
kernel), cuBLAS's x @ w.T and eager's F.linear + activation. Last, the gated backward (swiglu, geglu at
768 -> 2048 and 2048 -> 5440: pre and d_pre (M, 2H), TFLOP/s of its dy @ w_out) at matmul_bwd_gluon_ws.GATED_CONFIGS
against the persistent `tl` kernel. BUDGET_S (default 150) stops starting new points; FORWARD_ONLY=1 times the
forward points alone, GATED_ONLY=1 the gated backward points alone; ACTS (say "gelu,silu") and WIDTHS (say "768")
keep only those activations and model widths D.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from kernels import matmul, matmul_bwd_gluon_ws as bw, matmul_gated_gluon_ws as ws, reference  # noqa: E402
from tools.tool_log import ToolLog  # noqa: E402

log = ToolLog("ffn_nongated_gluon.log")
M = 16384
POINTS = [(768, 3072), (2048, 8192)]
BUDGET = float(os.environ.get("BUDGET_S", "150"))
FORWARD_ONLY = os.environ.get("FORWARD_ONLY") == "1"  # the forward points alone (a forward config's trial)
GATED_ONLY = os.environ.get("GATED_ONLY") == "1"  # the gated backward points alone
GATED_POINTS = [(768, 2048), (2048, 5440)]  # the suite's swiglu / geglu widths (H: the gate's and the up's each)
ACTS = set(os.environ.get("ACTS", "").split(",")) - {""}  # empty: every activation
WIDTHS = {int(d) for d in os.environ.get("WIDTHS", "").split(",") if d}  # empty: every model width
T0 = time.time()


def tflops(ms, D, H):
    return 2 * M * D * H / (ms * 1e-3) / 1e12


def bench(fn):
    return do_bench(fn, warmup=10, rep=40, return_mode="median")


def name(config):
    _, bm, bn, bk, stages = config
    return f"ws{bm}x{bn}x{bk}/s{stages}"


def time_configs(configs, run, output, D, H, what):
    """run(config) for each config: ({config: ms}, {config: output after its first run}, a TFLOP/s column per
    config); a config that fails to build or run gets FAILED and a log line."""
    times, results, parts = {}, {}, []
    for config in configs:
        try:
            run(config)
            torch.cuda.synchronize()
            results[config] = output.clone()
            times[config] = bench(lambda: run(config))
            parts.append(f"{name(config)} {tflops(times[config], D, H):5.0f}")
        except Exception as e:  # noqa: BLE001 (a config that does not build or run: say so, go on)
            parts.append(f"{name(config)} FAILED")
            log(f"  {what} {name(config)}: {type(e).__name__}: {str(e)[:300]}")
    return times, results, parts


def best_column(best, times, results, tl_result, tl_ms, eager_ms, what):
    """The best config's time against the tl kernel's and eager's, and how its output differs from tl's."""
    d = (results[best].float() - tl_result.float()).abs()
    rel = (d.max() / tl_result.float().abs().max().clamp_min(1e-30)).item()
    return (f"| best {name(best)} {times[best] * 1e3:.0f} us = {tl_ms / times[best]:.2f}x tl, "
            f"{eager_ms / times[best]:.2f}x eager; {what} vs tl: max rel {rel:.1e}, "
            f"{(d > 0).float().mean().item():.1%} differ")


def point(D, H, activation):
    dtype = torch.bfloat16
    width = 2 * H if activation in bw.GATED_ACT_CODES else H  # gated: pre and d_pre are (gate, up)
    dy = torch.randn(M, D, device="cuda", dtype=dtype)
    w_out = (torch.randn(D, H, device="cuda") / D ** 0.5).to(dtype)
    pre = torch.randn(M, width, device="cuda", dtype=dtype)
    if activation in matmul.FROM_OUTPUT:  # what act_bwd reads act' off for them: the forward's output
        pre = reference.activate(pre, activation)
    d_pre = torch.empty_like(pre)
    dbias = torch.zeros(width, device="cuda", dtype=torch.float32)
    if not bw.usable(dy, w_out, pre, d_pre, activation):
        log(f"{activation} {D}->{H}: not usable by the Gluon kernel (?)")
        return

    def tl():
        dbias.zero_()
        matmul._act_bwd_tl(dy, w_out, pre, activation, False, True, d_pre, None, dbias, True, D)
    tl()  # the first call autotunes
    tl_d_pre = d_pre.clone()
    ms = bench(tl)

    def run_ws(config):
        dbias.zero_()
        bw.act_bwd_ws(dy, w_out, pre, d_pre, dbias, activation, config)
    times, results, parts = time_configs(bw.configs_for(activation), run_ws, d_pre, D, H, f"{activation} {D}->{H}")
    parts.insert(0, f"tl {tflops(ms, D, H):5.0f}")
    gemm_ms = bench(lambda: dy @ w_out)
    pre_grad = pre.detach().requires_grad_()
    act = reference.activate(pre_grad, activation)
    eager_ms = bench(lambda: torch.autograd.grad(act, pre_grad, dy @ w_out, retain_graph=True))
    parts += [f"| cublas gemm {tflops(gemm_ms, D, H):5.0f}", f"eager {tflops(eager_ms, D, H):5.0f}"]
    if times:
        best = min(times, key=times.get)
        parts.append(best_column(best, times, results, tl_d_pre, ms, eager_ms, "d_pre"))
        # what the bias sums cost each kernel: the same calls without them
        none = torch.empty(0, device="cuda")
        tl_ms = bench(lambda: matmul._act_bwd_tl(dy, w_out, pre, activation, False, False, d_pre, None, none, True, D))
        ws_ms = bench(lambda: bw.act_bwd_ws(dy, w_out, pre, d_pre, none, activation, best))
        parts.append(f"| no bias sums: tl {tflops(tl_ms, D, H):5.0f} ws {tflops(ws_ms, D, H):5.0f}")
    log(f"{activation} {D}->{H}: " + "  ".join(parts))


def forward_point(D, H, activation, store_pre):
    dtype = torch.bfloat16
    x = torch.randn(M, D, device="cuda", dtype=dtype)
    w = (torch.randn(H, D, device="cuda") / D ** 0.5).to(dtype)
    b = (torch.randn(H, device="cuda") * 0.5).to(dtype)
    out = torch.empty(M, H, device="cuda", dtype=dtype)
    pre = torch.empty((M, H) if store_pre else (0,), device="cuda", dtype=dtype)
    if not ws.usable_plain(x, w, b, activation):
        log(f"fwd {activation} {D}->{H}: not usable by the Gluon kernel (?)")
        return

    def tl():
        matmul._linear_act_fwd_tl(x, w, b, activation, store_pre, out, pre)
    tl()  # the first call autotunes
    tl_out = out.clone()
    ms = bench(tl)

    def run(config):
        ws.plain_forward_ws(x, w, b, activation, store_pre, config, out, pre)
    times, results, parts = time_configs(ws.PLAIN_CONFIGS, run, out, D, H, f"fwd {activation} {D}->{H}")
    parts.insert(0, f"tl {tflops(ms, D, H):5.0f}")
    gemm_ms = bench(lambda: x @ w.t())
    eager_ms = bench(lambda: reference.linear_act(x, w, b, activation))
    parts += [f"| cublas gemm {tflops(gemm_ms, D, H):5.0f}", f"eager {tflops(eager_ms, D, H):5.0f}"]
    if times:
        parts.append(best_column(min(times, key=times.get), times, results, tl_out, ms, eager_ms, "out"))
    log(f"fwd {activation} {D}->{H} pre={int(store_pre)}: " + "  ".join(parts))


def main():
    log(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, M = {M}, bf16, TFLOP/s = 2*M*D*H / time")
    runs = [] if FORWARD_ONLY or GATED_ONLY else [(point, (D, H, a)) for D, H in POINTS for a in bw.ACT_CODES]
    runs += [] if GATED_ONLY else [(forward_point, (D, H, a, p)) for p in (True, False) for D, H in POINTS
                                   for a in bw.ACT_CODES]
    runs += [] if FORWARD_ONLY else [(point, (D, H, a)) for D, H in GATED_POINTS for a in bw.GATED_ACT_CODES]
    runs = [(fn, args) for fn, args in runs if (not ACTS or args[2] in ACTS) and (not WIDTHS or args[0] in WIDTHS)]
    for fn, args in runs:
        if time.time() - T0 > BUDGET:
            log(f"budget of {BUDGET:.0f} s spent: {fn.__name__}{args} and later skipped")
            return
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 (one point's failure must not end the run)
            log(f"{fn.__name__}{args}: FAILED {type(e).__name__}: {str(e)[:300]}")
    log(f"done in {time.time() - T0:.0f} s")


if __name__ == "__main__":
    log.run(main)
