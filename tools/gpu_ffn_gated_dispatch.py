"""The gated FFN as the suite calls it, with the Gluon gated forward on and off, in one process:

    python tools/gpu_ffn_gated_dispatch.py     # on a Hopper GPU; one line per shape and mode

bf16, M 16384, swiglu and geglu at 768 -> 2048 and 2048 -> 5440, no biases (as bench/test_ffn.py), four input
sets rotated; per shape and mode (fwd without grad, fwd+bwd): kernels.ffn's median ms (do_bench) with
matmul.GLUON_GATED_FWD off and on, the forward's pick (matmul._GLUON_PICKS) and the in-projection alone
(matmul.linear_act_fwd) both ways.
"""
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import kernels  # noqa: E402
from kernels import matmul  # noqa: E402

M = 16384


def main():
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; ms (median), off / on = Gluon gated forward")
    for act in ("swiglu", "geglu"):
        for D, H in ((768, 2048), (2048, 5440)):
            sets = []
            for _ in range(4):
                x = torch.randn(M, D, device="cuda", dtype=torch.bfloat16)
                w_in = torch.randn(2 * H, D, device="cuda", dtype=torch.bfloat16) * D ** -0.5
                w_out = torch.randn(D, H, device="cuda", dtype=torch.bfloat16) * H ** -0.5
                sets.append((x, w_in, w_out, torch.randn(M, D, device="cuda", dtype=torch.bfloat16)))
            for mode in ("fwd", "fwd+bwd"):
                row = []
                for on in (False, True, False, True):  # twice each, alternating: the GPU's drift shows
                    matmul.GLUON_GATED_FWD = on
                    cycle = itertools.cycle(sets)
                    leaves = [[t.detach().requires_grad_(mode == "fwd+bwd") for t in s[:3]] for s in sets]
                    cyc = itertools.cycle(zip(leaves, sets))

                    def call():
                        (x, w_in, w_out), s = next(cyc)
                        if mode == "fwd":
                            with torch.no_grad():
                                return kernels.ffn(x, w_in, None, w_out, None, act)
                        y = kernels.ffn(x, w_in, None, w_out, None, act)
                        return torch.autograd.grad(y, (x, w_in, w_out), s[3])
                    for _ in range(3):
                        call()
                    row.append(do_bench(call, warmup=25, rep=200, return_mode="median"))
                    x, w_in = next(cycle)[:2]

                    def proj():
                        matmul.linear_act_fwd(x, w_in, None, act, mode == "fwd+bwd")
                    proj()
                    row.append(do_bench(proj, warmup=25, rep=200, return_mode="median"))
                picks = {k[2]: v for k, v in matmul._GLUON_PICKS.items() if k[0] == act and k[4] == D}
                flops = 2 * M * D * 2 * H
                print(f"{act} {D}->{H} {mode:7s} ffn off {row[0]:.3f} / on {row[2]:.3f}, again {row[4]:.3f} / "
                      f"{row[6]:.3f} | in-proj off {flops / row[1] * 1e-9:.0f} / on {flops / row[3] * 1e-9:.0f} "
                      f"TFLOP/s, again {flops / row[5] * 1e-9:.0f} / {flops / row[7] * 1e-9:.0f} | picks {picks}",
                      flush=True)


if __name__ == "__main__":
    main()
