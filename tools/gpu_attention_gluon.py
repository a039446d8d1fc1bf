"""Time the Gluon attention forward (kernels/attention_gluon.py), each config and the tuned dispatch,
against ours in `tl` and SDPA's cuDNN and flash backends on the FlashAttention grid (bf16,
B*T = 16384, H*D = 2048):

    python tools/gpu_attention_gluon.py     # on a Hopper GPU; prints one line per point, TFLOP/s
    GLUON_MORE=1 python tools/gpu_attention_gluon.py   # plus settings outside CONFIGS: pipelined 128 x 128,
        # 128 x 64, the ping-pong's block_n 64 and 3 stages
    GLUON_ORDER=1 python tools/gpu_attention_gluon.py  # each config also with one head at a time
        # (attention_gluon.HEAD_GROUPS off): "grouped / one head" TFLOP/s
    GLUON_CAUSAL=1 ...                                 # the causal half of the grid only
    GLUON_D=128 GLUON_T=512,1024 ...                   # these head dims and lengths only
    GLUON_QUICK=1 ...                                  # each config and cuDNN only (no tuned dispatch, tl, fa2),
        # each config's output first checked against cuDNN's ("WRONG" where off)

The persistent candidate against pipelined 64 x 64, the ping-pong and cuDNN where it matters (about a minute):
    GLUON_D=128 GLUON_T=512,1024,2048,4096 GLUON_QUICK=1 python tools/gpu_attention_gluon.py
"""
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from kernels import attention_gluon  # noqa: E402

attention = sys.modules["kernels.attention"]  # (the package exports a function of the same name)


def name(config):
    kind, a, b = config
    return {"pipelined": f"{a}x{b}", "pingpong": f"pp{a}/{b}", "persistent": f"ps{a}x{b}"}[kind]


def _ints(var, default):
    return tuple(int(x) for x in os.environ[var].split(",")) if os.environ.get(var) else default


def main():
    default_order = attention_gluon.HEAD_GROUPS
    quick = os.environ.get("GLUON_QUICK") == "1"
    points = [(D, T) for D in _ints("GLUON_D", (128, 64)) for T in _ints("GLUON_T", (512, 1024, 2048, 4096, 8192,
                                                                                     16384))]
    for causal in (True,) if os.environ.get("GLUON_CAUSAL") == "1" else (True, False):
        for D, T in points:
            B, H = 16384 // T, 2048 // D
            q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16) * 0.5 for _ in range(3))
            flops = 4 * B * H * T * T * D * (0.5 if causal else 1.0)
            scale = 1 / math.sqrt(D)
            row = []
            more = ((("pipelined", 128, 128), ("pipelined", 128, 64), ("pingpong", 64, 2), ("pingpong", 64, 3),
                     ("persistent", 128, 128) if D == 128 else ("persistent", 64, 64))
                    if os.environ.get("GLUON_MORE") == "1" else ())
            if quick:
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            for config in attention_gluon.CONFIGS[D] + more:
                rates = []
                if quick:
                    err = (attention_gluon.run_config(q, k, v, causal, scale, config)[0] - expected).abs().max().item()
                    rates.append("WRONG" if err > 3e-2 else "")
                for grouped in (True, False) if os.environ.get("GLUON_ORDER") == "1" else (True,):
                    attention_gluon.HEAD_GROUPS = grouped
                    ms = do_bench(lambda: attention_gluon.run_config(q, k, v, causal, scale, config))
                    rates.append(f"{flops / ms * 1e-9:4.0f}")
                attention_gluon.HEAD_GROUPS = default_order
                row.append(f"{name(config)} {' / '.join(r for r in rates if r)}")
            if quick:
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    ms = do_bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
                print(f"causal={causal!s:5s} D{D} T{T}: " + " | ".join(row) + f" | cudnn {flops / ms * 1e-9:4.0f}",
                      flush=True)
                continue
            attention.attention_fwd(q, k, v, causal, scale)  # the first call picks the config (untimed)
            ms = do_bench(lambda: attention.attention_fwd(q, k, v, causal, scale))
            picked = attention_gluon._picked.get(attention_gluon.picked_key(q, k, causal))
            row.append(f"ours {flops / ms * 1e-9:4.0f} ({name(picked)})" if picked else "ours (tl)")
            ms = do_bench(lambda: attention.attention_fwd(q, k, v, causal, scale, use_tma=False))  # the tl kernel
            row.append(f"tl {flops / ms * 1e-9:4.0f}")
            for peer, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("fa2", SDPBackend.FLASH_ATTENTION)):
                with sdpa_kernel(backend):
                    ms = do_bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
                row.append(f"{peer} {flops / ms * 1e-9:4.0f}")
            print(f"causal={causal!s:5s} D{D} T{T}: " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
