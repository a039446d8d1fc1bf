"""Time the Gluon dK/dV kernel (kernels/attention_bwd_gluon.py, EXPERIMENTAL) against the `tl` one on the
FlashAttention grid (bf16, causal, B*T = 16384, H*D = 2048), and the whole forward+backward with it against
cuDNN's:

    python tools/gpu_attention_bwd_gluon.py     # on a Hopper GPU; one line per point

Per point: the dK/dV kernel alone (ms; tl at its tuned config, each Gluon config), the largest difference of
the Gluon dK, dV from the tl ones (relative to their largest value), then fwd+bwd ms with the tl and the
Gluon dK/dV and cuDNN's (TFLOP/s counted as 3.5x the causal forward's FLOPs).
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
            bwd.GLUON_DKDV = False
            (_, dk, dv), (pre, dkdv, _) = bwd.backward_launches(dout, q, k, v, out, lse, True, D ** -0.5)
            pre()
            dkdv()  # (tunes)
            row.append(f"dkdv tl {do_bench(dkdv):.3f}")
            for config in gluon_bwd.CONFIGS[D]:
                bwd.GLUON_DKDV = True
                saved, gluon_bwd.CONFIGS = gluon_bwd.CONFIGS, {D: (config,)}
                gluon_bwd._picked.clear()
                try:
                    (_, dk2, dv2), (pre2, dkdv2, _) = bwd.backward_launches(dout, q, k, v, out, lse, True, D ** -0.5)
                    pre2()
                    dkdv2()
                    ms = do_bench(dkdv2)
                finally:
                    gluon_bwd.CONFIGS = saved
                diff = max(((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
                           for a, b in ((dk2, dk), (dv2, dv)))
                row.append(f"{config} {ms:.3f} (diff {diff:.0e})")
            flops = 4 * B * H * T * T * D * 0.5 * 3.5
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            for name, on in (("tl", False), ("gluon", True)):
                bwd.GLUON_DKDV = on
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
