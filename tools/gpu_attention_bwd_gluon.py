"""Time the Gluon backward kernels (kernels/attention_bwd_gluon.py, EXPERIMENTAL: dK/dV, dQ) against the `tl`
ones on the FlashAttention grid (bf16, causal, B*T = 16384, H*D = 2048), and the whole forward+backward with
them against cuDNN's:

    python tools/gpu_attention_bwd_gluon.py     # on a Hopper GPU; one line per point

Per point: each kernel alone (ms; tl at its tuned config, each Gluon config) with the largest difference of
the Gluon gradients from the tl ones (relative to their largest value), then fwd+bwd ms with the tl and the
Gluon backward and cuDNN's (TFLOP/s counted as 3.5x the causal forward's FLOPs).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import kernels  # noqa: E402
from kernels import attention_bwd_gluon as gluon_bwd  # noqa: E402

att = sys.modules["kernels.attention"]  # (the package exports a function of the same name)
bwd = sys.modules["kernels.attention_bwd"]


def main():
    for D in (128, 64):
        for T in (1024, 4096, 16384):
            B, H = 16384 // T, 2048 // D
            q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16) * 0.5 for _ in range(3))
            dout = torch.randn_like(q)
            out, lse = att.attention_fwd(q, k, v, True)
            row = []
            bwd.GLUON_BWD = False
            grads, (pre, dkdv, dq_) = bwd.backward_launches(dout, q, k, v, out, lse, True, D ** -0.5)
            pre()
            dkdv()  # (tunes)
            dq_()
            row.append(f"tl dkdv {do_bench(dkdv):.3f} dq {do_bench(dq_):.3f}")
            for kind, table, step, outputs in (("dkdv", "CONFIGS", 1, (1, 2)), ("dq", "DQ_CONFIGS", 2, (0,))):
                for config in getattr(gluon_bwd, table)[D]:
                    bwd.GLUON_BWD = True
                    saved = getattr(gluon_bwd, table)
                    setattr(gluon_bwd, table, {D: (config,)})
                    gluon_bwd._picked.clear()
                    try:
                        mine, launches = bwd.backward_launches(dout, q, k, v, out, lse, True, D ** -0.5)
                        launches[0]()
                        launches[step]()
                        ms = do_bench(launches[step])
                    finally:
                        setattr(gluon_bwd, table, saved)
                    diff = max(((mine[i].float() - grads[i].float()).abs().max() / grads[i].float().abs().max()).item()
                               for i in outputs)
                    row.append(f"{kind} {config} {ms:.3f} (diff {diff:.0e})")
            flops = 4 * B * H * T * T * D * 0.5 * 3.5
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            for name, on in (("tl", False), ("gluon", True)):
                bwd.GLUON_BWD = on
                gluon_bwd._picked.clear()
                torch.autograd.grad(kernels.attention(*leaves), leaves, dout)  # (the first call tunes)
                ms = do_bench(lambda: torch.autograd.grad(kernels.attention(*leaves), leaves, dout))
                row.append(f"fwd+bwd {name} {ms:.3f} {flops / ms * 1e-9:4.0f}")
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                ms = do_bench(lambda: torch.autograd.grad(F.scaled_dot_product_attention(*leaves, is_causal=True),
                                                          leaves, dout))
            row.append(f"cudnn {ms:.3f} {flops / ms * 1e-9:4.0f}")
            print(f"D{D} T{T}: " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
