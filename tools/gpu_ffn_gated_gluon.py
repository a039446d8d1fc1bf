"""Time the Gluon gated forward (kernels/matmul_gated_gluon.py) at each config of its shape class against the
`tl` gated forward it may replace and against cuBLAS, on a Hopper GPU:

    PYTHONPATH=. python tools/gpu_ffn_gated_gluon.py      # log also in $OUT/ffn_gated_gluon.log when OUT is set

bf16, M = 16384 tokens, (K, H) in (768, 2048), (2048, 5440), (768, 3072), (2048, 8192), swiglu and geglu.
Per point and per mode (pre stored, as in training; pre not stored, as in inference) one line of TFLOP/s
(2 * M * K * 2H flops, triton.testing.do_bench median):
  tl        kernels.matmul.linear_act_fwd, the gated entry kernels.ffn uses, at its autotuned config
  gluon     each config of matmul_gated_gluon.CONFIGS[shape class]; `best` the fastest
  cublas    x @ w.T alone (the bare GEMM: the ceiling), and `eager` = cuBLAS GEMM + PyTorch's elementwise
            (the peer: reference.linear_act)
and the max |gluon - tl| over max |tl| of out (and pre) at the best config, with the share of elements that
differ at all. A config that fails to build or run is printed and skipped. About 60-90 s on an H100
(compiles included); GATED_BUDGET_S (default 130) stops starting new points past it;
ACTS (say "swiglu") and WIDTHS (say "2048") keep only those activations and model widths K.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from kernels import matmul, matmul_gated_gluon as mgg, reference  # noqa: E402
from tools.tool_log import ToolLog  # noqa: E402

log = ToolLog("ffn_gated_gluon.log")
M = 16384
POINTS = [(768, 2048), (2048, 5440), (768, 3072), (2048, 8192)]
BUDGET = float(os.environ.get("GATED_BUDGET_S", "130"))
ACTS = set(os.environ.get("ACTS", "").split(",")) - {""}  # empty: swiglu and geglu
WIDTHS = {int(k) for k in os.environ.get("WIDTHS", "").split(",") if k}  # empty: every model width
T0 = time.time()


def tflops(ms, K, H):
    return 2 * M * K * 2 * H / (ms * 1e-3) / 1e12


def bench(fn):
    return do_bench(fn, warmup=10, rep=40, return_mode="median")


def name(config):
    if config[0] == "ws":  # the warp-specialized ping-pong (kernels/matmul_gated_gluon_ws.py)
        _, bm, bn, bk, stages = config
        return f"ws{bm}x{bn}x{bk}/s{stages}"
    bm, bn, bk, stages, warps = config
    return f"{bm}x{bn}x{bk}/s{stages}/w{warps}"


def difference(ours, theirs):
    """(max |ours - theirs| / max |theirs|, share of elements that differ)."""
    d = (ours.float() - theirs.float()).abs()
    return (d.max() / theirs.float().abs().max().clamp_min(1e-30)).item(), (d > 0).float().mean().item()


def point(K, H, activation, store_pre):
    dtype = torch.bfloat16
    x = torch.randn(M, K, device="cuda", dtype=dtype)
    w = (torch.randn(2 * H, K, device="cuda") / K ** 0.5).to(dtype)
    b = (torch.randn(2 * H, device="cuda") * 0.5).to(dtype)
    if not mgg.usable(x, w, b, activation):
        log(f"{activation} {K}->{H}: not usable by the Gluon kernel (?)")
        return
    parts = []
    tl_out, tl_pre = matmul.linear_act_fwd(x, w, b, activation, store_pre)  # the first call autotunes
    ms = bench(lambda: matmul.linear_act_fwd(x, w, b, activation, store_pre))
    parts.append(f"tl {tflops(ms, K, H):5.0f}")
    times, results = {}, {}
    for config in mgg.CONFIGS[mgg.shape_class(M, K)]:
        try:
            results[config] = mgg.gated_forward_gluon(x, w, b, activation, store_pre, config)
            torch.cuda.synchronize()
            times[config] = bench(lambda: mgg.gated_forward_gluon(x, w, b, activation, store_pre, config))
            parts.append(f"{name(config)} {tflops(times[config], K, H):5.0f}")
        except Exception as e:  # noqa: BLE001 (a config that does not build or run: say so, go on)
            parts.append(f"{name(config)} FAILED")
            log(f"  {activation} {K}->{H} {name(config)}: {type(e).__name__}: {str(e)[:300]}")
    gemm_ms = bench(lambda: x @ w.t())
    eager_ms = bench(lambda: reference.linear_act(x, w, b, activation))
    parts += [f"| cublas gemm {tflops(gemm_ms, K, H):5.0f}", f"eager {tflops(eager_ms, K, H):5.0f}"]
    if times:
        best = min(times, key=times.get)
        out, pre = results[best]
        rel, share = difference(out, tl_out)
        parts.append(f"| best {name(best)} {tflops(times[best], K, H):5.0f} = {ms / times[best]:.2f}x tl, "
                     f"{eager_ms / times[best]:.2f}x eager; out vs tl: max rel {rel:.1e}, {share:.1%} differ")
        if store_pre:
            rel, share = difference(pre, tl_pre)
            parts.append(f"pre: {rel:.1e}, {share:.1%}")
    log(f"{activation} {K}->{H} pre={int(store_pre)}: " + "  ".join(parts))


def main():
    log(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, M = {M}, bf16, TFLOP/s = 2*M*K*2H / time")
    for store_pre in (True, False):
        for K, H in POINTS:
            for activation in ("swiglu", "geglu"):
                if (ACTS and activation not in ACTS) or (WIDTHS and K not in WIDTHS):
                    continue
                if time.time() - T0 > BUDGET:
                    log(f"budget of {BUDGET:.0f} s spent: {activation} {K}->{H} pre={int(store_pre)} and later skipped")
                    return
                try:
                    point(K, H, activation, store_pre)
                except Exception as e:  # noqa: BLE001 (one point's failure must not end the run)
                    log(f"{activation} {K}->{H} pre={int(store_pre)}: FAILED {type(e).__name__}: {str(e)[:300]}")
    log(f"done in {time.time() - T0:.0f} s")


if __name__ == "__main__":
    log.run(main)
