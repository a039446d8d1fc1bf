"""Where the gated FFN forward's time goes at the suite's points (bf16, M 16384, no grad, no biases), ms
(triton.testing.do_bench median), on a Hopper GPU:

    PYTHONPATH=. python tools/gpu_ffn_fwd_split.py

Per point: kernels.ffn, the compiled and eager reference, then the in-projection alone as linear_act_fwd
dispatches it (the tuner's pick, printed), the `tl` kernel and each Gluon config alone, cuBLAS's plain x @ w_in.T
and the out-projection (cuBLAS). TFLOP/s = 2 M D 2H over the in-projection's time. About 90 s on an H100.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import kernels  # noqa: E402
from kernels import matmul, reference  # noqa: E402

torch.manual_seed(0)


def ms(fn):
    return do_bench(fn, warmup=50, rep=300, return_mode="median")


for act, D, H in (("swiglu", 2048, 5440), ("geglu", 2048, 5440), ("swiglu", 768, 2048)):
    M = 16384
    x = torch.randn(M, D, device="cuda", dtype=torch.bfloat16)
    w_in = torch.randn(2 * H, D, device="cuda", dtype=torch.bfloat16) / D ** 0.5
    w_out = torch.randn(D, H, device="cuda", dtype=torch.bfloat16) / H ** 0.5
    a = torch.randn(M, H, device="cuda", dtype=torch.bfloat16)
    comp = torch.compile(reference.ffn)
    OUT_BUF = torch.empty(M, H, device="cuda", dtype=torch.bfloat16)
    EMPTY = torch.empty(0, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        r = {}
        for name, fn in (("ours ffn", lambda: kernels.ffn(x, w_in, None, w_out, None, act)),
                         ("compile ffn", lambda: comp(x, w_in, None, w_out, None, act)),
                         ("eager ffn", lambda: reference.ffn(x, w_in, None, w_out, None, act)),
                         ("ours in-proj (dispatch)", lambda: matmul.linear_act_fwd(x, w_in, None, act, False)),
                         ("tl in-proj", lambda: matmul._linear_act_fwd_tl(x, w_in, None, act, False, OUT_BUF, EMPTY)),
                         ("cublas x@w_in.T", lambda: x @ w_in.t()),
                         ("cublas down a@w_out.T", lambda: F.linear(a, w_out))):
            try:
                fn()
                fn()
                torch.cuda.synchronize()
                r[name] = ms(fn)
            except Exception as e:
                r[name] = f"ERR {type(e).__name__}: {e}"[:120]
        gl = matmul._gated_gluon()
        for cfg in gl.CONFIGS[gl.shape_class(M, D)]:
            out = torch.empty(M, H, device="cuda", dtype=torch.bfloat16)

            def gluon_in_proj(cfg=cfg, out=out):
                gl.gated_forward_gluon(x, w_in, None, act, False, cfg, out, EMPTY)
            gluon_in_proj()
            torch.cuda.synchronize()
            r[f"gluon {cfg}"] = ms(gluon_in_proj)
    flops_in = 2 * M * D * 2 * H
    print(f"{act} {D}->{H} picks {matmul._GLUON_PICKS}")
    for k, v in r.items():
        if isinstance(v, float):
            tf = flops_in / v / 1e9 if ("in-proj" in k or "gluon" in k or "x@w_in" in k) else None
            print(f"  {k:28s} {v:.3f} ms" + (f"  {tf:.0f} TFLOP/s" if tf else ""))
        else:
            print(f"  {k:28s} {v}")
